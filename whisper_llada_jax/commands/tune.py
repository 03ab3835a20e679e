"""``whisper-llada tune``: the fewest forward passes within a WER budget, written to decode.yaml."""

from __future__ import annotations

import argparse

NAME = "tune"
HELP = "search threshold / steps / block length for the fewest forward passes within a WER budget of exact decoding"
EXAMPLES = """examples:
  # a dev set, at most +0.5 WER points against the model's exact decoding; sets the choice in
  # MODEL_DIR/decode.yaml (--overwrite: the MODEL_DIR has one already, as every trained model does)
  whisper-llada tune --model runs/demo/model --data manifest:dev.jsonl --budget 0.5 --overwrite
  # only print the table and the choice
  whisper-llada tune --model runs/demo/model --data "tfds:librispeech/lazy_decode?split=dev_clean" \\
      --limit 200 --budget 0.2 --dry-run

The exact mode is the MODEL_DIR's decode.yaml (or the paper defaults) as it is now. Candidates:
fewer fixed steps, threshold decoding (0.5-0.9) over one block or semi-AR blocks of a half /
quarter canvas, and the length prior (docs/decoding.md). The choice sets decoder, steps,
block_length, threshold, length_prior and query_slots in decode.yaml; other fields are kept.
An existing decode.yaml is changed only with --overwrite (refused before anything is decoded,
as is a MODEL_DIR that cannot be written); it is replaced atomically.
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="a Whisper-LLaDA MODEL_DIR")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="dev data: tfds:NAME?split=S, librispeech:DIR, manifest:FILE.jsonl, synthetic:n=N")
    p.add_argument("--budget", type=float, default=0.5, metavar="POINTS",
                   help="largest WER increase over the exact mode, in points (default 0.5)")
    p.add_argument("--thresholds", default="0.9,0.8,0.7,0.6,0.5", metavar="P,P",
                   help="threshold values to try (comma-separated)")
    p.add_argument("--query-slots", default="4,8", metavar="N,N", help="length-prior query slots to try")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N utterances")
    p.add_argument("--dry-run", action="store_true", help="print the table and the choice; write nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="change an existing MODEL_DIR/decode.yaml (its other fields are kept)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (random remasking)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="feature-extraction worker processes")


def run(args: argparse.Namespace) -> int:
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir, read_decode_defaults
    from whisper_llada_jax.commands.evaluate import limited
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.errors import UserError
    from whisper_llada_jax.evaluation import tune

    if args.budget < 0:
        raise UserError(f"--budget {args.budget} must be >= 0", hint="WER points above the exact mode, e.g. 0.5")
    if not args.dry_run:  # before hours of decoding, not after
        check_decode_file(args.model, args.overwrite)
    base = read_decode_defaults(args.model)
    if base.strategy != "none" or base.decoder == "autoregressive":
        raise UserError(f"{args.model}/decode.yaml decodes with decoder {base.decoder} / strategy {base.strategy}",
                        hint="tune searches diffusion decoding from an all-masked canvas")
    source = limited(parse_source(args.data), args.limit)
    loaded = load_model_dir(args.model, for_decoding=True)
    decode_fn = tune.dataset_decoder(loaded, source, seed=args.seed, num_workers=args.workers)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
        slots = [int(q) for q in args.query_slots.split(",") if q.strip()]
    except ValueError:
        raise UserError(f"--thresholds {args.thresholds!r} / --query-slots {args.query_slots!r}: not numbers",
                        hint="e.g. --thresholds 0.9,0.7 --query-slots 4,8") from None
    grid = tune.candidates(base, thresholds, slots)
    best, results = tune.search(decode_fn, base, args.budget, grid, log=print)
    print(tune.report(best, results, args.budget))
    if best is results[0]:
        print("no candidate beats the exact mode within the budget; decode.yaml left as it is")
    elif args.dry_run:
        print(f"--dry-run: would set {tune.choice_fields(best.cfg)} in {args.model}/decode.yaml")
    else:
        path = tune.write_decode_choice(args.model, best.cfg)
        print(f"wrote {path}")
    return 0


def check_decode_file(model_dir: str, overwrite: bool) -> None:
    """The choice can be written into ``MODEL_DIR/decode.yaml``: an existing one only with
    ``--overwrite``, and the folder must be writable."""
    from pathlib import Path

    from whisper_llada_jax.checkpoints.model_dir import DECODE_FILE
    from whisper_llada_jax.errors import UserError
    from whisper_llada_jax.outputs import check_writable, remove_stale_temporaries

    path = Path(model_dir) / DECODE_FILE
    if not Path(model_dir).is_dir():
        return  # reading the MODEL_DIR, next, says what is wrong with it
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; tune would change its decoding fields",
                        hint="add --overwrite to set the choice in it (its other fields are kept), or --dry-run "
                             "to only print the table")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a decode.yaml", hint="move it away")
    remove_stale_temporaries(path)
    try:
        check_writable(path, "MODEL_DIR/decode.yaml")
    except UserError as e:
        raise UserError(e.message, hint="copy the MODEL_DIR somewhere writable, or use --dry-run to only print "
                                        "the choice") from None

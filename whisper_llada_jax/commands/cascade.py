"""``whisper-llada cascade``: first pass (Whisper or Whisper-LLaMA), then LLaDA deliberation."""

from __future__ import annotations

import argparse
from pathlib import Path

from whisper_llada_jax.commands import seed_arg

NAME = "cascade"
HELP = "first pass with Whisper or an autoregressive MODEL_DIR, then Whisper-LLaDA deliberation"
EXAMPLES = """examples:
  # the bundled Whisper tiny.en as first pass, deliberation with 30 % lowest-confidence masking
  whisper-llada cascade --first bundled:tiny.en --model runs/demo/model \\
      --data manifest:tests/data/clips/manifest.jsonl \\
      --decode "strategy=diffusion,masking=low_confidence,mask_ratio=0.3" --out eval/cascade
  # the paper's cascade: Whisper-LLaMA first pass, mask-ratio grid on LibriSpeech test-other
  whisper-llada cascade --first runs/whisper_llama/model --model runs/paper/model \\
      --data "tfds:librispeech/lazy_decode?split=test_other" \\
      --decode "strategy=diffusion" --grid masking_x_ratio --out eval/cascade_other

--first defaults to the Whisper directory recorded in MODEL_DIR (first_pass.json), if any.
Writes OUT/first_pass.jsonl, OUT/hypotheses/<config>.jsonl, OUT/results.json and results.md.
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--first", metavar="DIR",
                   help="first pass: a Whisper directory (HF / CTranslate2), bundled:tiny.en, "
                        "or an autoregressive (Whisper-LLaMA) MODEL_DIR")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="the Whisper-LLaDA MODEL_DIR that deliberates")
    p.add_argument("--data", required=True, metavar="SPEC", help="data source spec (as for evaluate)")
    p.add_argument("--decode", action="append", default=[], metavar="CONFIG",
                   help="deliberation config: YAML path, name, or inline k=v,... (default strategy=diffusion)")
    p.add_argument("--grid", choices=["masking_x_ratio", "chunks"], help="expand into a paper table layout")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (new or empty; written atomically: it appears complete at the end)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier cascade at --out as a whole (a folder holding other files is still "
                        "refused)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N utterances")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="first-pass batch size")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--strict", action="store_true", help="fail on unreadable / too long / empty utterances")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="mesh.* / distributed.* overrides as for `train` (e.g. mesh.fsdp=4 mesh.tensor=2): the "
                        "deliberating model on this host's devices with the training rules (default: one device)")


def run(args: argparse.Namespace) -> int:
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir, read_decode_defaults
    from whisper_llada_jax.commands.evaluate import WRITES, limited
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.errors import UserError
    from whisper_llada_jax.evaluation.cascade import run_cascade
    from whisper_llada_jax.evaluation.evaluate import parse_decode_spec
    from whisper_llada_jax.inference.placement import inference_mesh
    from whisper_llada_jax.outputs import check_output, data_paths, staged_dir

    check_output(args.out, [args.model, args.first, *data_paths(args.data)], overwrite=args.overwrite,
                 replaces=WRITES)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    base = read_decode_defaults(args.model)
    configs = [parse_decode_spec(s, base) for s in args.decode or ["strategy=diffusion"]]
    mesh, rules = inference_mesh(args.overrides, "cascade")
    loaded = load_model_dir(args.model, mesh, rules)
    first = args.first or loaded.first_pass
    if not first:
        raise UserError("no first-pass model given", hint="pass --first DIR (a Whisper directory or bundled:tiny.en)")
    source = limited(parse_source(args.data), args.limit)
    with staged_dir(args.out) as out:
        doc = run_cascade(first, loaded, source, configs, out, grid=args.grid, batch_size=args.batch_size,
                          seed=args.seed, strict=args.strict, label=args.data)
    if not doc:  # not process 0: its rows went to process 0, which writes the results
        return 0
    fp = doc["first_pass"]
    print(f"first pass ({fp['kind']}, {fp['model']}): WER {100 * fp['wer']['wer']:.2f} % "
          f"over {fp['kept']} utterances ({fp['seen'] - fp['kept']} skipped)")
    print((Path(args.out) / "results.md").read_text())
    return 0

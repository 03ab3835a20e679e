"""``whisper-llada evaluate``: decode a dataset with one or more configs and score them."""

from __future__ import annotations

import argparse
from pathlib import Path

from whisper_llada_jax.commands import seed_arg

NAME = "evaluate"
HELP = "decode a dataset with one or more decode configs and report WER, RTF and forward passes"
EXAMPLES = """examples:
  # the paper's standalone decoding table (steps x block length) on LibriSpeech test-clean
  whisper-llada evaluate --model runs/paper/model \\
      --data "tfds:librispeech/lazy_decode?split=test_clean" --grid steps_x_block --out eval/steps
  # two configs side by side on a manifest, one given inline
  whisper-llada evaluate --model runs/demo/model --data manifest:test.jsonl \\
      --decode configs/decode/semi_ar.yaml --decode "decoder=diffusion,steps=64,threshold=0.9" --out eval/fast
  # deliberation of a first pass (JSON lines with id + first_pass or hypothesis): mask ratio grid
  whisper-llada evaluate --model runs/paper/model --data librispeech:LibriSpeech/test-other \\
      --first-pass whisper_llama.jsonl --decode "strategy=diffusion" --grid masking_x_ratio --out eval/delib
  # a model too big for one chip: placed over this host's chips with the training rules
  whisper-llada evaluate --model models/paper --data librispeech:LibriSpeech/test-clean \\
      --out eval/clean mesh.data=1 mesh.fsdp=-1

data: tfds:NAME?split=S[&data_dir=D], librispeech:DIR, manifest:FILE.jsonl (first_pass may be
given there), synthetic:n=N. Writes OUT/results.json, OUT/results.md and one
OUT/hypotheses/<config>.jsonl per config, each file atomically. A non-empty OUT is refused
unless --overwrite is given. Unusable clips (unreadable, an empty reference, longer than the
model's window) are skipped with one line each on the console, results.md says over how many
clips the WER is and results.json lists them under "skipped" (--strict: an error).
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="a Whisper-LLaDA MODEL_DIR")
    p.add_argument("--data", required=True, metavar="SPEC", help="data source spec (see below)")
    p.add_argument("--decode", action="append", default=[], metavar="CONFIG",
                   help="decode config: YAML path, name under configs/decode/, or inline k=v,k=v (repeatable)")
    p.add_argument("--first-pass", metavar="FILE.jsonl", help="first-pass transcripts for deliberation")
    p.add_argument("--grid", choices=["steps_x_block", "masking_x_ratio", "chunks"],
                   help="expand each --decode config into one of the paper's table layouts")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (new or empty; written atomically: it appears complete at the end)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation at --out as a whole (a folder holding other files is "
                        "still refused)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N utterances")
    p.add_argument("--seed", type=seed_arg, default=0, help="RNG seed for random remasking / masking")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="feature-extraction worker processes")
    p.add_argument("--strict", action="store_true", help="fail on unreadable / too long / empty utterances")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="mesh.* overrides as for `train` (e.g. mesh.fsdp=4 mesh.tensor=2): the model is placed "
                        "on this host's devices with the training rules (default: one device); with "
                        "distributed.* (or on a pod) each process decodes its share and process 0 writes")
    p.add_argument("--profile", metavar="DIR",
                   help="write a JAX profiler trace of the evaluation into DIR (TensorBoard profile tab / Perfetto)")


# What evaluate (and cascade) write into --out: --overwrite replaces a folder holding only these.
WRITES = ("results.json", "results.md", "hypotheses", "first_pass.jsonl")


def profile_path(profile: str | None, out: str, staged: Path) -> Path | None:
    """Where the trace goes: a --profile inside --out is written into the staged --out (it
    appears with the results; written beside them it would be taken for another run's output)."""
    import jax

    from whisper_llada_jax.errors import UserError

    if profile is None:
        return None
    given, target = Path(profile).expanduser().resolve(), Path(out).expanduser().resolve()
    if given != target and target not in given.parents:
        return Path(profile)
    if given == target:
        raise UserError(f"--profile {profile} is --out", hint="give a folder inside --out, e.g. OUT/profile, or elsewhere")
    if jax.process_count() > 1:
        raise UserError(f"--profile {profile} lies inside --out; with several processes each writes its own trace",
                        hint="give --profile a folder outside --out")
    return staged / given.relative_to(target)


def limited(source, limit: int | None):
    if limit is None:
        return source
    from whisper_llada_jax.data.sources import ListSource

    if limit < 1:
        from whisper_llada_jax.errors import UserError

        raise UserError(f"--limit {limit} must be >= 1")
    return ListSource([source[i] for i in range(min(limit, len(source)))], name=f"{source!r}[:{limit}]")


def run(args: argparse.Namespace) -> int:
    from whisper_llada_jax import backend
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir, read_decode_defaults
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.errors import UserError
    from whisper_llada_jax.data.manifest import read_first_passes
    from whisper_llada_jax.evaluation.evaluate import evaluate, parse_decode_spec
    from whisper_llada_jax.inference.placement import inference_mesh
    from whisper_llada_jax.outputs import check_output, data_paths, staged_dir

    writes = WRITES
    if args.profile and Path(args.out).resolve() in Path(args.profile).resolve().parents:  # a trace in --out
        writes += (Path(args.profile).resolve().relative_to(Path(args.out).resolve()).parts[0],)
    check_output(args.out, [args.model, args.first_pass, *data_paths(args.data)], overwrite=args.overwrite,
                 replaces=writes)
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    base = read_decode_defaults(args.model)
    configs = [parse_decode_spec(s, base) for s in args.decode] or [("default", base)]
    first_pass = read_first_passes(args.first_pass) if args.first_pass else None
    source = limited(parse_source(args.data), args.limit)
    from whisper_llada_jax.training.profiling import trace

    mesh, rules = inference_mesh(args.overrides, "evaluate")
    backend.announce("evaluate")
    loaded = load_model_dir(args.model, mesh, rules)
    with staged_dir(args.out) as out, trace(profile_path(args.profile, args.out, out)):
        doc = evaluate(loaded, source, configs, out, first_pass=first_pass, grid=args.grid, seed=args.seed,
                       num_workers=args.workers, strict=args.strict, extra={"data": args.data})
    if not doc:  # not process 0: its rows went to process 0, which writes the results
        return 0
    if args.profile:
        print(f"profiler trace in {args.profile} (tensorboard --logdir {args.profile}, or ui.perfetto.dev)")
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {Path(args.out) / 'results.json'} ({len(doc['results'])} configs)")
    return 0

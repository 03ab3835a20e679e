"""``whisper-llada export``: a MODEL_DIR or a training run's checkpoint step -> a MODEL_DIR,
Hugging Face LLaDA, a PEFT adapter, or the published .pth."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

NAME = "export"
HELP = "export a MODEL_DIR or a checkpoint step: model-dir, hf (LLaDA), peft (LoRA adapter), reference-pth"
EXAMPLES = """examples:
  # the trained projector + LoRA in the published layout, loadable by the PyTorch system
  whisper-llada export --model runs/paper/model --format reference-pth --out export/pth
  # LLaDA with the LoRA folded in, as a Hugging Face checkpoint (+ tokenizer.json)
  whisper-llada export --model runs/paper/model --format hf --merge-lora --out export/llada_merged
  # only the LoRA adapter (adapter_model.safetensors + adapter_config.json)
  whisper-llada export --model runs/paper/model --format peft --out export/adapter
  # a training run's best checkpoint (lowest recorded validation metric) as a MODEL_DIR
  whisper-llada export --checkpoint runs/paper --step best --format model-dir --out models/paper_best
  # a given step straight to the published layout
  whisper-llada export --checkpoint runs/paper --step 40000 --format reference-pth --out export/step40k.pth

hf without --merge-lora writes the base LLaDA plus the LoRA as a PEFT adapter in OUT/adapter
(PeftModel.from_pretrained(base, "OUT/adapter") in PyTorch).
The projector exists only in the reference-pth layout. reference-pth writes OUT/checkpoint.pth
(or OUT itself when it ends in .pth). An existing OUT (or .pth) is refused unless --overwrite
is given; OUT may never be, contain or lie inside the MODEL_DIR or RUN_DIR.
--checkpoint RUN_DIR is a `whisper-llada train` workdir: the step's parameters are restored (no
optimiser moments, no data pipeline) onto the run's mesh (change it with mesh.KEY=VALUE arguments), and
written one tensor at a time; no host holds the whole model. Run it on every host of a pod
(the processes find each other as in `train`, or from distributed.KEY=VALUE arguments).
"""

FORMATS = ("model-dir", "hf", "peft", "reference-pth")
ADAPTER_DIR = "adapter"
# What each folder format writes: --overwrite replaces a folder holding only these.
WRITES = {"hf": ("config.json", "model*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                 "generation_config.json", ADAPTER_DIR),
          "peft": ("adapter_model.safetensors", "adapter_config.json")}


def register(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="MODEL_DIR", help="the MODEL_DIR to export")
    src.add_argument("--checkpoint", metavar="RUN_DIR", help="a training run's workdir: export one of its checkpoint steps")
    p.add_argument("--step", default=None, metavar="best|latest|N",
                   help="with --checkpoint: the step with the lowest recorded checkpoint.best_metric, the "
                        "latest, or step N (default: latest)")
    p.add_argument("overrides", nargs="*", metavar="mesh.KEY=VALUE",
                   help="with --checkpoint: the mesh to restore onto, when it differs from the run's; "
                        "distributed.KEY=VALUE for a multi-process set-up JAX does not detect")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format (model-dir: with --checkpoint)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically; new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export at --out (a folder holding other files is still refused)")
    p.add_argument("--merge-lora", action="store_true", help="hf: fold the LoRA adapters into the weights")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="hf / peft: tensor dtype (default: as stored)")


def pth_path(out: str | Path) -> Path:
    out = Path(out)
    return out if out.suffix == ".pth" else out / "checkpoint.pth"


def run(args: argparse.Namespace) -> int:
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir
    from whisper_llada_jax.errors import UserError

    check_out(args)
    if args.checkpoint:
        return _run_from_checkpoint(args)
    if args.step is not None:
        raise UserError("--step applies to --checkpoint RUN_DIR only", hint="drop --step, or export from the run")
    if args.format == "model-dir":
        raise UserError("--format model-dir exports a checkpoint step: use --checkpoint RUN_DIR",
                        hint=f"{args.model} is a MODEL_DIR already")
    if args.overrides:
        raise UserError(f"{args.overrides}: mesh overrides apply to --checkpoint only")
    return _export(args, load_model_dir(args.model))


def check_out(args: argparse.Namespace) -> None:
    """Refuses an --out that would clobber something, before anything is loaded."""
    from whisper_llada_jax.checkpoints.model_dir import FILES
    from whisper_llada_jax.outputs import check_output

    source = args.model or args.checkpoint
    if args.format == "reference-pth":
        check_output(pth_path(args.out), [source], overwrite=args.overwrite, kind="file")
    else:
        writes = FILES if args.format == "model-dir" else WRITES[args.format]
        check_output(args.out, [source], overwrite=args.overwrite, replaces=writes)


def _run_from_checkpoint(args: argparse.Namespace) -> int:
    import jax

    from whisper_llada_jax.checkpoints.model_dir import load_model_dir
    from whisper_llada_jax.outputs import scratch_dir
    from whisper_llada_jax.training.export import export_model_dir

    step_spec = args.step or "latest"
    if args.format == "model-dir":
        step, out = export_model_dir(args.checkpoint, step_spec, args.out, args.overrides)
        if jax.process_index() == 0:
            print(f"wrote {out}: MODEL_DIR of {args.checkpoint} step {step}")
        return 0
    # Other formats: the step as a temporary MODEL_DIR beside OUT (streamed from the shards),
    # then exported from there by process 0 like any MODEL_DIR (a kill leaves the temporary
    # folder, removed by the next export to OUT).
    with scratch_dir(args.out) as tmp:
        step, model_dir = export_model_dir(args.checkpoint, step_spec, Path(tmp) / "model", args.overrides)
        if jax.process_index() == 0:
            print(f"{args.checkpoint} step {step}:")
            _export(args, load_model_dir(model_dir))
    return 0


def _export(args: argparse.Namespace, loaded) -> int:
    import jax.numpy as jnp

    from whisper_llada_jax.checkpoints.llada_hf import export_llada_hf
    from whisper_llada_jax.checkpoints.model_dir import TOKENIZER_FILE
    from whisper_llada_jax.checkpoints.peft import export_peft
    from whisper_llada_jax.checkpoints.reference_pth import export_reference_pth
    from whisper_llada_jax.errors import UserError
    from whisper_llada_jax.outputs import atomic_dir

    source = args.model or args.checkpoint
    cfg, variables = loaded.config, loaded.variables
    lora = variables.get("lora", {}).get("llm")
    if args.merge_lora and args.format != "hf":
        raise UserError(f"--merge-lora applies to --format hf only, not {args.format}")
    if args.format == "hf":
        merged = lora if args.merge_lora else None
        out = Path(args.out)
        with atomic_dir(out) as tmp:  # the model, its tokenizer and adapter appear together or not at all
            export_llada_hf(variables["params"]["llm"], cfg.llm, tmp, lora=merged, lora_cfg=cfg.lora,
                            merge=args.merge_lora, tokens=cfg.tokens, dtype=args.dtype)
            shutil.copyfile(loaded.path / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            if lora and not args.merge_lora:
                # In its own folder: beside model.safetensors it would be read as part of the base model.
                export_peft(lora, cfg.lora, tmp / ADAPTER_DIR,
                            dtype=None if args.dtype is None else jnp.dtype(args.dtype))
        what = "LLaDA" + (" (LoRA merged)" if merged else f" + PEFT adapter in {ADAPTER_DIR}/" if lora else "")
        print(f"wrote {out}: {what}; the projector is only in --format reference-pth")
    elif args.format == "peft":
        if not lora:
            raise UserError(f"{source}: has no LoRA adapters (lora.enabled is false)", hint="use --format hf")
        out = export_peft(lora, cfg.lora, args.out, dtype=None if args.dtype is None else jnp.dtype(args.dtype))
        print(f"wrote {out}: PEFT LoRA adapter (rank {cfg.lora.rank}, targets {list(cfg.lora.targets)})")
    else:
        if args.dtype:
            raise UserError("--dtype does not apply to reference-pth (it is always float32, like the reference)")
        out = export_reference_pth(pth_path(args.out), cfg, variables)
        print(f"wrote {out}: projector{' + LoRA' if lora else ''} in the published .pth layout")
    return 0

"""``whisper-llada export``: MODEL_DIR -> Hugging Face LLaDA, a PEFT adapter, or the published .pth."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

NAME = "export"
HELP = "export a MODEL_DIR to PyTorch formats: hf (LLaDA), peft (LoRA adapter), reference-pth"
EXAMPLES = """examples:
  # the trained projector + LoRA in the published layout, loadable by the PyTorch system
  whisper-llada export --model runs/paper/model --format reference-pth --out export/pth
  # LLaDA with the LoRA folded in, as a Hugging Face checkpoint (+ tokenizer.json)
  whisper-llada export --model runs/paper/model --format hf --merge-lora --out export/llada_merged
  # only the LoRA adapter (adapter_model.safetensors + adapter_config.json)
  whisper-llada export --model runs/paper/model --format peft --out export/adapter

hf without --merge-lora writes the base LLaDA plus the LoRA as a PEFT adapter in OUT/adapter
(PeftModel.from_pretrained(base, "OUT/adapter") in PyTorch).
The projector exists only in the reference-pth layout. reference-pth writes OUT/checkpoint.pth
(or OUT itself when it ends in .pth). An existing OUT (or .pth) is refused unless --overwrite
is given; OUT may never be, contain or lie inside the MODEL_DIR.
"""

FORMATS = ("hf", "peft", "reference-pth")
ADAPTER_DIR = "adapter"
# What each folder format writes: --overwrite replaces a folder holding only these.
WRITES = {"hf": ("config.json", "model*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                 "generation_config.json", ADAPTER_DIR),
          "peft": ("adapter_model.safetensors", "adapter_config.json")}


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="the MODEL_DIR to export")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
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
    import jax.numpy as jnp

    from whisper_llada_jax.checkpoints.llada_hf import export_llada_hf
    from whisper_llada_jax.checkpoints.model_dir import TOKENIZER_FILE, load_model_dir
    from whisper_llada_jax.checkpoints.peft import export_peft
    from whisper_llada_jax.checkpoints.reference_pth import export_reference_pth
    from whisper_llada_jax.errors import UserError
    from whisper_llada_jax.outputs import atomic_dir, check_output

    if args.format == "reference-pth":
        check_output(pth_path(args.out), [args.model], overwrite=args.overwrite, kind="file")
    else:
        check_output(args.out, [args.model], overwrite=args.overwrite, replaces=WRITES[args.format])
    loaded = load_model_dir(args.model)
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
            raise UserError(f"{args.model}: has no LoRA adapters (lora.enabled is false)", hint="use --format hf")
        out = export_peft(lora, cfg.lora, args.out, dtype=None if args.dtype is None else jnp.dtype(args.dtype))
        print(f"wrote {out}: PEFT LoRA adapter (rank {cfg.lora.rank}, targets {list(cfg.lora.targets)})")
    else:
        if args.dtype:
            raise UserError("--dtype does not apply to reference-pth (it is always float32, like the reference)")
        out = export_reference_pth(pth_path(args.out), cfg, variables)
        print(f"wrote {out}: projector{' + LoRA' if lora else ''} in the published .pth layout")
    return 0

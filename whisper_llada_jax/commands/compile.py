"""``whisper-llada compile``: compile the train step for a TPU pod here and report its memory."""

from __future__ import annotations

import argparse

NAME = "compile"
HELP = "ahead-of-time compile the train step for a TPU topology (no TPU needed) and report memory/FLOPs"
EXAMPLES = """examples:
  whisper-llada compile --config tiny --topology v5e:2x2
  whisper-llada compile --config paper --topology v5p:2x2x2 mesh.fsdp=8 mesh.data=1
  whisper-llada compile --config paper --topology v5e:4x4 --num-slices 2 mesh.dcn_data=2
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="train config: name under configs/train/ or a YAML path")
    p.add_argument("--topology", required=True, help="chip:shape of one slice, e.g. v5p:2x2x2, v5e:4x4, v6e:2x2")
    p.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN (multi-slice)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="train config overrides")


def run(args) -> int:
    from whisper_llada_jax.errors import ConfigError
    from whisper_llada_jax.training.aot import HEADER, compile_in_subprocess
    from whisper_llada_jax.training.config import load_train_config

    if args.num_slices < 1:
        raise ConfigError("--num-slices must be >= 1")
    load_train_config(args.config, args.overrides)  # bad fields fail here, before libtpu starts
    r = compile_in_subprocess(args.config, list(args.overrides), args.topology, args.num_slices)
    print(f"compiled the train step for {r.topology} x {r.num_slices} slice(s) ({r.chips} chips) "
          f"in {r.compile_seconds:.1f} s")
    print(f"per chip: arguments {r.argument_gib:.3f} GiB, temporaries {r.temp_gib:.3f} GiB, "
          f"outputs {r.output_gib:.3f} GiB (aliased {r.alias_gib:.3f}), total {r.total_gib:.3f} of "
          f"{r.hbm_gib:.0f} GiB HBM -> {'fits' if r.fits else 'DOES NOT FIT'}")
    print(f"step FLOPs per chip {r.flops_per_chip:.4g}; at {r.peak_tflops:.0f} TFLOP/s peak: "
          f"{r.step_seconds_at_peak * 1e3:.2f} ms per step (XLA counts a scanned loop body once: with "
          f"scan_layers this is about one layer's worth, see docs/scaling.md)")
    print()
    print(HEADER)
    print(r.markdown())
    return 0 if r.fits else 1

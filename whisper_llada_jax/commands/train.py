"""``whisper-llada train``: masked-diffusion training from a YAML config plus overrides."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train the projector + LoRA (or more) with the masked-diffusion objective"
EXAMPLES = """examples:
  whisper-llada train --config tiny steps=50 workdir=runs/tiny
  whisper-llada train --config configs/train/paper.yaml data.train_source=librispeech:/data/LibriSpeech \\
      mesh.fsdp=8 checkpoint.dir=gs://bucket/run1
  # every field of the config can be overridden as key.sub=value (see configs/train/paper.yaml)
  # a profiler trace of steps 11..15 in runs/tiny/profile (TensorBoard profile tab / Perfetto)
  whisper-llada train --config tiny workdir=runs/tiny --profile-steps 10:15
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="name under configs/train/ or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.peak_lr=1e-4")
    p.add_argument("--coordinator", default=None, help="multi-host: host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    p.add_argument("--profile-steps", default=None, metavar="START:STOP",
                   help="JAX profiler trace of steps START+1..STOP into WORKDIR/profile (sets profile_steps)")


def config_from_args(args):
    from whisper_llada_jax.training.config import load_train_config

    extra = []
    if args.coordinator:
        extra.append(f"distributed.coordinator_address={args.coordinator}")
    if args.num_processes is not None:
        extra.append(f"distributed.num_processes={args.num_processes}")
    if args.process_id is not None:
        extra.append(f"distributed.process_id={args.process_id}")
    if args.profile_steps:
        from whisper_llada_jax.training.profiling import parse_steps

        start, stop = parse_steps(args.profile_steps)
        extra.append(f"profile_steps=[{start},{stop}]")
    return load_train_config(args.config, [*args.overrides, *extra])


def run(args) -> int:
    from whisper_llada_jax import backend
    from whisper_llada_jax.mesh import initialize_distributed
    from whisper_llada_jax.training.trainer import train

    cfg = config_from_args(args)
    initialize_distributed(cfg.distributed)  # before the first device query fixes the backend
    backend.refuse_cpu_for_large_mesh(cfg.mesh)
    backend.announce("train")
    train(cfg)
    return 0

"""What a decode loop does on an NVIDIA GPU, read from the compiler alone (no GPU needed).

    pip install -e '.[gpu-compile]'
    python benchmarks/gpu_loop_compile.py [--batches 1,64] [--gemm cublas|triton] [--json out.json]
    python benchmarks/gpu_loop_compile.py --device   # on a GPU machine: its own compiler's choices

Compiles the whole decode of the length prior (8 query slots, a 128-slot canvas) and of the
autoregressive baseline, with abstract weights and inputs, for an H100 (XLA's GPU compiler
without a device, through the CUDA PJRT plugin, with the target described in
``benchmarks/h100_target.txtpb``), at LLaDA-8B layer shapes (the baseline: LLaMA-8B's 8 KV
heads), bf16, 2 layers, a ``[prompt | audio]`` prefix of 20 + 352 vectors. The ``while_loop``'s
body is one later forward (one token step for the baseline); the script lists, per forward:

- kernels: the body's launches (fusions, library calls, copies) for the 2 layers;
- K/V copies: kernels whose output is a layer's K/V buffer (any layout, padded or not) and
  that are not the in-place write of the new entries (a scatter or dynamic-update-slice);
- weight joins: concatenations whose output is a weight matrix;
- the bytes those two move (read + write) over 32 layers, and that time at the 3.84 TB/s of
  the issue-13 cost model.

Two sides: ``before``, the K/V buffer of exactly ``P + R`` slots and XLA's dot merger on (the
code the 2026-11-30 H200 run measured), and ``now``: ``decoding.backbone.CACHE_ALIGN`` slots
and ``LOOP_COMPILER_OPTIONS``. ``--gemm``: XLA's matrix products as cuBLAS calls (the Triton GEMM
emitter off; the default) or as Triton fusions. On a card XLA's autotuner picks between the two
per product; without one, Triton finds no tile size for the 8B first forward's products beyond
batch 1, and such a compile is reported as failed. ``--device`` compiles for the attached GPU
instead, with XLA's own (autotuned) choice of products: which of these loops a run there pays.
``WHISPER_LLADA_ATTENTION=cudnn`` compiles every loop with cuDNN's fused attention instead of
XLA's (the extra installs cuDNN, which plans the kernel; no GPU needed).
A static reading of the compiled program: what a GPU run takes is for the GPU to say.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

if "--device" not in sys.argv:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs nothing; the CUDA plugin only compiles

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from whisper_llada_jax.config import LLMConfig, TokenConfig  # noqa: E402
from whisper_llada_jax.decoding import api, backbone  # noqa: E402
from whisper_llada_jax.decoding.backbone import Prefix  # noqa: E402
from whisper_llada_jax.decoding.config import DecodeConfig  # noqa: E402
from whisper_llada_jax.models.llada import LLaDA, attention_implementation  # noqa: E402

TARGET = Path(__file__).resolve().parent / "h100_target.txtpb"
LAYERS, FULL_LAYERS, PREFIX, GEN, QUERY_SLOTS = 2, 32, 20 + 352, 128, 8
BANDWIDTH = 3.84e12  # bytes/s, the issue-13 cost model's
MASK, EOS = 126336, 126081
_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}
_PLUMBING = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "conditional"}


def gpu_device():
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="cuda", topology="1x1x1", target_config=TARGET.read_text())
    except (NotImplementedError, RuntimeError) as e:
        sys.exit(f"no deviceless CUDA compiler ({e}): pip install -e '.[gpu-compile]'")
    return jax.sharding.SingleDeviceSharding(topo.devices[0])


def program(fn, options: bool):
    """A decode program as jitted by ``decoding.api`` (``LOOP_COMPILER_OPTIONS``), or the same
    function jitted without options (XLA's defaults: the dot merger on)."""
    if options:
        return fn
    static = {api._diffusion_program: ("bb", "cond", "plan", "gen_len", "buckets", "prior"),
              api._autoregressive_program: ("bb", "cond", "max_new", "eos_id")}[fn]
    return jax.jit(fn.__wrapped__, static_argnames=static)


def compile_loop(mode: str, b: int, dev, side: str, gemm: str | None) -> tuple[str, LLMConfig]:
    """The optimised HLO of the whole decode program on ``side`` (``before`` / ``now``), and the
    LLM's config."""
    now = side == "now"
    backbone.CACHE_ALIGN = 8 if now else 1  # read when the program is traced
    jax.clear_caches()
    cfg = LLMConfig(dtype="bfloat16", param_dtype="bfloat16", scan_layers=False, n_layers=LAYERS)
    if mode == "autoregressive":
        cfg = dataclasses.replace(cfg, causal=True, n_kv_heads=8, vocab_size=128256, mlp_hidden=14336)
    model = LLaDA(cfg)
    v = jax.eval_shape(lambda k: nn.unbox(model.init(k, jnp.zeros((1, 4), jnp.int32))), jax.random.key(0))
    place = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), tree)  # noqa: E731
    pre = Prefix(jax.ShapeDtypeStruct((b, PREFIX, cfg.d_model), jnp.bfloat16), jax.ShapeDtypeStruct((b, PREFIX), bool))
    bb = api.backbone_of(model)
    if mode == "autoregressive":
        lowered = program(api._autoregressive_program, now).lower(*place((v, pre, jnp.ones(b, bool))), bb=bb,
                                                                  cond=api.Conditioner(), max_new=GEN, eos_id=EOS)
    else:
        lp = DecodeConfig(gen_len=GEN, steps=GEN, block_length=GEN, threshold=0.9, length_prior=True,
                          query_slots=QUERY_SLOTS)
        plan, prior = api.diffusion_plans(lp, TokenConfig(mask=MASK, eos=EOS))
        args = place((v, pre, jnp.int32(GEN), jax.random.key(0), jnp.arange(b), jnp.ones(b, bool)))
        lowered = program(api._diffusion_program, now).lower(*args, bb=bb, cond=api.Conditioner(), plan=plan,
                                                             gen_len=GEN, buckets=(), prior=prior)
    options = None if gemm is None else {"xla_gpu_enable_triton_gemm": gemm == "triton"}
    return lowered.compile(compiler_options=options).as_text(), cfg


def loop_body(hlo: str) -> list[str]:
    """The top-level instructions of the while loops' bodies (and the branches they call)."""
    comps, current = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[0]
            comps[current] = []
        elif current and line.strip() not in ("", "}"):
            comps[current].append(line)
    todo, seen, out = re.findall(r"body=(%[\w.\-]+)", hlo), set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in comps.get(name, []):
            out.append(line)
            for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
                todo += [g.strip() for g in group.split(",")]
            todo += re.findall(r"(?:true_computation|false_computation|body)=(%[\w.\-]+)", line)
    return out


def elements(shape: str) -> list[tuple[str, int]]:
    return [(m.group(1), math.prod(int(d) for d in m.group(2).split(",") if d))
            for m in re.finditer(r"(\w+)\[([\d,]*)\]", shape) if m.group(1) in _BYTES]


def census(lines: list[str], b: int, cfg: LLMConfig) -> dict:
    """Kernels, K/V copies and weight joins of one loop body, with the bytes they move."""
    kv_row = cfg.n_kv_heads * cfg.head_dim  # elements per slot of one layer's K (or V) buffer, per row
    buffer = lambda n: b * kv_row * (PREFIX + GEN) * 0.98 <= n <= b * kv_row * (PREFIX + GEN + 64)  # noqa: E731
    kernels = copies = joins = 0
    copy_bytes = join_bytes = 0.0
    for line in lines:
        m = re.match(r"^\s*(?:ROOT )?%[\w.\-]+ = (.*?) ([\w-]+)\((.*)$", line)
        if not m or m.group(2) in _PLUMBING:
            continue
        shape, op, rest = m.groups()
        kernels += 1
        out = elements(shape)
        cm = re.search(r"calls=%([\w.\-]+)", rest)
        called = cm.group(1) if cm else ""
        in_place = re.search(r"scatter|dynamic_update_slice|dynamic-update-slice", op + called)
        nbytes = sum(_BYTES[t] * n for t, n in out)
        if any(buffer(n) for _, n in out) and not in_place and op != "custom-call":
            copies += 1
            copy_bytes += 2 * nbytes  # read + write
        if "concatenate" in op + called and any(n >= cfg.d_model ** 2 for _, n in out):
            joins += 1
            join_bytes += 2 * nbytes
    scale = FULL_LAYERS / LAYERS  # both are per layer
    return {"kernels": kernels, "kv_copies": copies, "weight_joins": joins,
            "gb_per_forward_32_layers": scale * (copy_bytes + join_bytes) / 1e9,
            "ms_per_forward_32_layers": 1e3 * scale * (copy_bytes + join_bytes) / BANDWIDTH}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--gemm", choices=("cublas", "triton"), default=None,
                    help="default: cublas without a device, the compiler's own choice with --device")
    ap.add_argument("--device", action="store_true", help="compile for the attached GPU")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0]) if args.device else gpu_device()
    gemm = args.gemm or (None if args.device else "cublas")
    attention = attention_implementation() or "xla"  # WHISPER_LLADA_ATTENTION
    rows = []
    for mode in ("length_prior", "autoregressive"):
        for b in [int(x) for x in args.batches.split(",")]:
            for side in ("before", "now"):
                row = {"mode": mode, "batch": b, "side": side, "gemm": gemm or "autotuned", "attention": attention}
                try:
                    hlo, cfg = compile_loop(mode, b, dev, side, gemm)
                    row.update(census(loop_body(hlo), b, cfg))
                except jax.errors.JaxRuntimeError as e:  # Triton without an autotuner: no tile size
                    row["error"] = str(e).splitlines()[0][:120]
                rows.append(row)
                print(json.dumps(rows[-1]), flush=True)
    where = "the attached device" if args.device else "no device"
    print(f"\nCompiled for {dev.device_set.pop().device_kind} ({where}), {gemm or 'autotuned'} GEMMs, {attention} attention, "
          "2 layers of LLaDA-8B "
          f"(baseline: LLaMA-8B) shapes, bf16, prefix {PREFIX}, canvas {GEN}, {QUERY_SLOTS} query slots; "
          "bytes and time over 32 layers at 3.84 TB/s\n")
    print("| decode loop | batch | side | kernels per forward (2 layers) | K/V copies | weight joins | "
          "GB moved by them per forward | ms at 3.84 TB/s |\n|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['mode']} | {r['batch']} | {r['side']} | did not compile: {r['error']} | | | | |")
            continue
        print(f"| {r['mode']} | {r['batch']} | {r['side']} | {r['kernels']} | {r['kv_copies']} | "
              f"{r['weight_joins']} | {r['gb_per_forward_32_layers']:.2f} | {r['ms_per_forward_32_layers']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

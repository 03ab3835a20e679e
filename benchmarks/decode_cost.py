"""Machine-independent cost of one decoding forward at paper size: XLA's cost analysis.

    python benchmarks/decode_cost.py [--tiny] [--json out.json]

Compiles (never runs: parameters and inputs are abstract) each kind of forward the decoders
run, with the real decoding building blocks, and prints per forward XLA's ``cost_analysis``
FLOPs and the bytes produced by ``concatenate`` ops in the optimised HLO (RoPE's rotate-half
and the ``[prefix | response]`` embedding everywhere; before the cache was written in place,
also the whole layer cache joined with the new keys and values, in every layer), for the
LLaDA-8B shape (the autoregressive step: LLaMA-8B shape, 8 KV heads), bf16, batch 1. (XLA's
"bytes accessed" is not reported: it counts a scatter's whole operand although XLA updates
scatter and dynamic-update-slice operands in place, and on CPU it counts bf16-to-fp32 converts.)
A 32-layer stack is extrapolated from compiled 2- and 3-layer stacks (the middle layers are
identical; the first and the last differ: cost(L) = cost(2) + (L - 2) * (cost(3) - cost(2))),
which keeps this a CPU-minutes job. Cache buffers are donated, as a ``while_loop`` carry is. Rows:

- ``exact, head on all R``: a full forward over ``[prompt | audio | R slots]`` and the LM head
  on every response slot (one-block diffusion; semi-AR before the head was restricted);
- ``exact semi-AR, head on block``: the same forward, the head on the current block only;
- ``prefix cache hit``: the R response slots written into a ``P + R`` buffer in place;
- ``dual cache hit``: one block written in place;
- ``length prior, later forward``: ``query_slots`` slots scattered into the buffer, head on them;
- ``autoregressive step``: one token written into a ``P + max_new`` buffer, head on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from whisper_llada_jax.config import LLMConfig  # noqa: E402
from whisper_llada_jax.decoding import length_prior  # noqa: E402
from whisper_llada_jax.decoding.backbone import Backbone, Prefix, cached_forward, full_forward, positions  # noqa: E402
from whisper_llada_jax.models.llada import KV, LLaDA  # noqa: E402

LLADA = LLMConfig(dtype="bfloat16", param_dtype="bfloat16", scan_layers=False)  # defaults: LLaDA-8B
LLAMA = dataclasses.replace(LLADA, causal=True, n_kv_heads=8, vocab_size=128256, mlp_hidden=14336)
TINY = dataclasses.replace(LLADA, vocab_size=512, d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, mlp_hidden=128)


_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "pred": 1}


def concatenated_bytes(hlo: str) -> float:
    """Bytes produced by every ``concatenate`` of an optimised HLO module (fusions included)."""
    total = 0.0
    for m in re.finditer(r"= (\w+)\[([\d,]*)\]\{[^}]*\} concatenate\(", hlo):
        total += _BYTES.get(m.group(1), 4) * math.prod(int(d) for d in m.group(2).split(",") if d)
    return total


def cost(fn, *args, donate=()) -> tuple[float, float]:
    """(FLOPs, bytes concatenated) of ``fn`` compiled for abstract ``args``."""
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list) else c
    return float(c["flops"]), concatenated_bytes(compiled.as_text())


def forwards(cfg: LLMConfig, p: int, r: int, block: int, q: int, max_new: int) -> dict[str, tuple[float, float]]:
    """Cost of each forward kind for one config (its ``n_layers``)."""
    sd = jax.ShapeDtypeStruct
    model = LLaDA(cfg)
    bb = Backbone(model, composite=False)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    dt = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    prefix = Prefix(sd((1, p, cfg.d_model), dt), sd((1, p), jnp.bool_))
    ids = lambda n: sd((1, n), jnp.int32)
    buf = lambda t: KV(*((sd((1, cfg.n_kv_heads, t, cfg.head_dim), dt),) * cfg.n_layers,) * 2)  # one per layer
    out = {}
    if not cfg.causal:
        def exact(rows):
            def f(v, pre, x):
                h, _ = full_forward(bb, v, pre, x, jnp.ones(x.shape, bool), return_kv=False)
                return bb.head(v, h[:, :rows])
            return cost(f, params, prefix, ids(r))

        def hit(n):
            def f(v, pre, x, kv):
                valid = jnp.concatenate([pre.valid, jnp.ones((1, r), bool)], axis=1)
                pos = positions(pre.valid, jnp.ones((1, r), bool))
                h, kv = cached_forward(bb, v, x, pos[:, p:p + n], kv, jnp.int32(p), valid, pos)
                return h, kv  # the head is counted in the exact rows
            return cost(f, params, prefix, ids(n), buf(p + r), donate=(3,))

        def window(v, pre, x, kv, idx):
            resp = jnp.ones((1, r), bool)
            pos = positions(pre.valid, resp)
            h, kv = length_prior.window_forward(bb, v, x, idx, jnp.ones(idx.shape, bool), kv, pos,
                                                jnp.concatenate([pre.valid, resp], axis=1))
            return bb.head(v, h), kv

        out["exact, head on all R"] = exact(r)
        out["exact semi-AR, head on block"] = exact(block)
        out["prefix cache hit (R slots)"] = hit(r)
        out["dual cache hit (one block)"] = hit(block)
        out["length prior, later forward"] = cost(window, params, prefix, ids(r), buf(p + r), ids(q), donate=(3,))
    else:
        def step(v, x, kv, slot):
            t = p + max_new
            h, kv = cached_forward(bb, v, x, jnp.full((1, 1), slot), kv, slot, jnp.arange(t)[None] <= slot,
                                   jnp.arange(t)[None])
            return bb.head(v, h), kv
        out["autoregressive step"] = cost(step, params, ids(1), buf(p + max_new), sd((), jnp.int32), donate=(2,))
    return out


def extrapolated(cfg: LLMConfig, layers: int, **shape) -> dict[str, tuple[float, float]]:
    # The first layer (its fixed-prefix rows projected apart) and the last (queries for the
    # response only) differ from the rest, so the middle layers' cost is 3 layers' minus 2's.
    two = forwards(dataclasses.replace(cfg, n_layers=2), **shape)
    three = forwards(dataclasses.replace(cfg, n_layers=3), **shape)
    return {k: tuple(a + (layers - 2) * (b - a) for a, b in zip(two[k], three[k])) for k in two}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (checks the script)")
    ap.add_argument("--prefix", type=int, default=360, help="prompt + audio vectors (8 + 352 untrimmed)")
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--query-slots", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--json", type=Path, help="also write one object per row")
    args = ap.parse_args(argv)
    llada, llama = (TINY, dataclasses.replace(TINY, causal=True, n_kv_heads=2)) if args.tiny else (LLADA, LLAMA)
    shape = dict(p=args.prefix, r=args.gen_len, block=args.block, q=args.query_slots, max_new=args.max_new)
    rows = {**extrapolated(llada, llada.n_layers, **shape), **extrapolated(llama, llama.n_layers, **shape)}
    print(f"| forward (batch 1, P={args.prefix}, R={args.gen_len}, block {args.block}, "
          f"query_slots {args.query_slots}) | GFLOP | MB concatenated |\n|---|---:|---:|")
    for name, (flops, nbytes) in rows.items():
        print(f"| {name} | {flops / 1e9:.1f} | {nbytes / 1e6:.1f} |")
    if args.json:
        out = [{"forward": k, "flops": f, "concatenated_bytes": b} for k, (f, b) in rows.items()]
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Cost of the length prior's cached forwards on this machine, at a mid-size fp32 shape.

    python benchmarks/cache_forward.py [--batch 8] [--rounds 5] [--save tokens.npy] [--tiny]

Random weights never clear a threshold, so at threshold 1.0 the length prior reveals one slot
per forward: one full forward over ``[prefix | 128 slots]`` and then 127 later forwards of 8
query slots against the K/V cache of all 500 positions. Timing that program and a one-step
exact decode (the full forward alone), sides alternated, gives the time of one later forward,
which reads the weights and the cache. Run it at two commits (``git worktree``) to compare
cache layouts; ``--save`` writes the decoded tokens so the two runs can be checked for identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from whisper_llada_jax.config import LLMConfig, TokenConfig  # noqa: E402
from whisper_llada_jax.decoding import api  # noqa: E402
from whisper_llada_jax.decoding.backbone import Prefix  # noqa: E402
from whisper_llada_jax.decoding.config import DecodeConfig  # noqa: E402
from whisper_llada_jax.models.llada import LLaDA  # noqa: E402

MID = LLMConfig(vocab_size=2048, d_model=1024, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=128, mlp_hidden=2048)
TINY = dataclasses.replace(MID, vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=16,
                           mlp_hidden=64)
TOKENS = TokenConfig(bos=1, eos=2, pad=2, mask=3, start_header=4, end_header=5, eot=6)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side, sides alternated (median)")
    ap.add_argument("--save", type=Path, help="write the length prior's decoded tokens (.npy)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (checks the script)")
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else MID
    p, gen = (12, 16) if args.tiny else (372, 128)
    model = LLaDA(cfg)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 4), jnp.int32)))(jax.random.key(0))
    rs = np.random.RandomState(0)
    prefix = Prefix(jnp.asarray(rs.normal(size=(args.batch, p, cfg.d_model)) * 0.02, jnp.float32),
                    jnp.ones((args.batch, p), bool))
    first = DecodeConfig(gen_len=gen, steps=1, block_length=gen)
    later = dataclasses.replace(first, threshold=1.0, length_prior=True, query_slots=8)
    run = lambda c: api.diffusion_decode(model, variables, prefix, c, jax.random.key(0), tokens=TOKENS)  # noqa: E731
    out = run(later)  # compiles; one slot per forward
    forwards = int(np.max(out.nfe))
    run(first)
    times = {"first": [], "later": []}
    for r in range(args.rounds):
        for name, c in ((("first", first), ("later", later)) if r % 2 == 0 else (("later", later), ("first", first))):
            t = time.perf_counter()
            jax.block_until_ready(run(c).tokens)
            times[name].append(time.perf_counter() - t)
    t_first, t_all = float(np.median(times["first"])), float(np.median(times["later"]))
    per_later = (t_all - t_first) / max(1, forwards - 1)
    print(f"{cfg.n_layers} layers x width {cfg.d_model}, batch {args.batch}, {p} + {gen} positions: "
          f"full forward {1e3 * t_first:.1f} ms; {forwards} forwards in {1e3 * t_all:.1f} ms; "
          f"later forward {1e3 * per_later:.2f} ms (medians of {args.rounds}; "
          f"load {open('/proc/loadavg').read().split()[0]})")
    if args.save:
        np.save(args.save, np.asarray(out.tokens))
    return {"first_s": t_first, "later_s": per_later, "forwards": forwards}


if __name__ == "__main__":
    main()

"""Train-step throughput (tokens/s) and FLOP utilisation on this machine's CPU.

    .venv/bin/python benchmarks/train_throughput.py [--config tiny] [--steps 20] [--batch 8] [--no-write]

Runs the real sharded train step (one CPU device) on synthetic batches. FLOPs per step are
XLA's own count for the compiled step (``cost_analysis``); utilisation is that rate divided
by a dense fp32 matmul's rate measured in the same run on the same device (this CPU has no
published peak), so both numbers share every caveat of the machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    """FLOP/s of a jitted n x n fp32 matmul on the default device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def measure(config: str, overrides: list[str], batch: int, steps: int) -> dict:
    from whisper_llada_jax import mesh as mesh_lib
    from whisper_llada_jax.config import with_defaults
    from whisper_llada_jax.training import step as step_lib
    from whisper_llada_jax.training.config import load_train_config
    from whisper_llada_jax.training.state import setup_state
    from whisper_llada_jax.training.trainer import (build_model, load_data_config, model_init_fn, synthetic_batch,
                                                    tokens_per_batch)

    cfg = load_train_config(config, with_defaults(["mesh.data=-1"], overrides))
    r = load_data_config(cfg).max_response_len
    model, mcfg = build_model(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1])
    rules = mesh_lib.rules(cfg.mesh)
    with jax.set_mesh(mesh):
        setup = setup_state(model_init_fn(model, mcfg, r), mesh, rules, cfg.optim, cfg.seed)
        host = step_lib.device_batch(synthetic_batch(mcfg, batch, r))
        fn = step_lib.jit_train_step(step_lib.make_train_step(model, cfg, mcfg, setup.tx), setup, mesh, host, rules)
        gb = mesh_lib.global_batch(mesh, host)
        t0 = time.perf_counter()
        compiled = fn.lower(setup.abstract, gb).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0))
        state = setup.state
        state, m = compiled(state, gb)  # warm-up
        jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            state, m = compiled(state, gb)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    tokens = tokens_per_batch(mcfg, batch, r)
    peak = matmul_peak()
    n_params = sum(x.size for x in jax.tree.leaves(state.trainable)) + sum(x.size for x in jax.tree.leaves(state.frozen))
    return {"config": config, "params": n_params, "batch": batch, "tokens": tokens, "step_ms": step_s * 1e3,
            "tokens_per_s": tokens / step_s, "gflop_per_step": flops / 1e9, "gflops": flops / step_s / 1e9,
            "peak_gflops": peak / 1e9, "utilisation": flops / step_s / peak, "compile_s": compile_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    res = measure(a.config, a.overrides, a.batch, a.steps)
    table = ("| config | params | batch | LLM tokens / step | step (ms, median) | tokens/s | XLA GFLOP / step | "
             "GFLOP/s | fp32 matmul GFLOP/s (same device) | utilisation | compile (s) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
             f"| {res['config']} | {res['params']:,} | {res['batch']} | {res['tokens']} | {res['step_ms']:.1f} | "
             f"{res['tokens_per_s']:,.0f} | {res['gflop_per_step']:.2f} | {res['gflops']:.1f} | {res['peak_gflops']:.1f} | "
             f"{res['utilisation']:.1%} | {res['compile_s']:.1f} |")
    print(table)
    if not a.no_write:
        from _report import write_section

        body = (table + "\n\nOne train step (forward, backward, AdamW update) of the tiny random model, one CPU "
                "device, synthetic batches; tokens = prompt + audio + response positions through the LLM. "
                "Utilisation = XLA-counted FLOP/s over the same device's dense fp32 matmul FLOP/s "
                "(a small model is dominated by overheads, so this is low by nature). The machine was "
                "shared with other jobs while this ran.")
        write_section("train_throughput", "Train-step throughput on CPU (tiny config)", body,
                      "benchmarks/train_throughput.py")


if __name__ == "__main__":
    main()

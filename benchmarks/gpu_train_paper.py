"""The paper configuration's train step on one GPU: Whisper-large-v3 + Q-Former + LLaDA-8B + LoRA.

    .venv/bin/python benchmarks/gpu_train_paper.py [--batches 4,8] [--steps 5] [--response 128]

Random weights (bf16, the frozen encoder and LLM), LoRA + projector trainable in fp32, remat as
in configs/model/paper.yaml, synthetic 30 s inputs: each row is the real ~500-token sequence
(16 prompt + 352 audio + 128 response). For each batch size: compile time, per-device memory
from ``memory_analysis``, median step time, tokens/s and model FLOP utilisation against the
card's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s). Prints one Markdown table; about
3-4 minutes on an H100. A batch that does not fit is reported as such, not retried.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_for(kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in kind), None)


def model_flops(mcfg, batch: int, response: int) -> float:
    """Forward 2*N*T for the frozen encoder and LLM, plus backward through the LLM's activations
    (2*N*T, no weight gradients for frozen weights) and the small trainable parts (ignored)."""
    w, l = mcfg.whisper, mcfg.llm
    enc_params = w.encoder_layers * (4 * w.d_model**2 + 2 * w.d_model * w.encoder_ffn)
    enc_tokens = w.encoder_frames
    llm_params = l.n_layers * (4 * l.d_model * l.n_heads * l.head_dim + 3 * l.d_model * l.mlp_hidden)
    t = len(mcfg.tokens.prompt_ids) + mcfg.audio_tokens + response
    attn = l.n_layers * 4 * t * t * l.n_heads * l.head_dim  # QK^T and PV, forward
    head = 2 * l.d_model * l.vocab_size * response
    llm_fwd = 2 * llm_params * t + attn + head
    remat = 1.0 if l.remat != "none" else 0.0  # full remat recomputes the forward once in backward
    return batch * (2 * enc_params * enc_tokens + llm_fwd * (2.0 + remat))


def run(batch: int, steps: int, response: int) -> dict:
    from whisper_llada_jax import mesh as mesh_lib
    from whisper_llada_jax.training import step as step_lib
    from whisper_llada_jax.training.config import load_train_config
    from whisper_llada_jax.training.state import setup_state
    from whisper_llada_jax.training.trainer import build_model, model_init_fn, synthetic_batch

    cfg = load_train_config("paper", ["mesh.data=1", f"data.batch_size={batch}", f"data.max_response_len={response}"])
    model, mcfg = build_model(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1])
    rules = mesh_lib.rules(cfg.mesh)
    out = {"batch": batch}
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        setup = setup_state(model_init_fn(model, mcfg, response), mesh, rules, cfg.optim, 0)
        jax.block_until_ready(setup.state)
        out["init_s"] = time.perf_counter() - t0
        host = step_lib.device_batch(synthetic_batch(mcfg, batch, response))
        fn = step_lib.jit_train_step(step_lib.make_train_step(model, cfg, mcfg, setup.tx), setup, mesh, host, rules)
        gb = mesh_lib.global_batch(mesh, host)
        t0 = time.perf_counter()
        compiled = fn.lower(setup.abstract, gb).compile()
        out["compile_s"] = time.perf_counter() - t0
        m = compiled.memory_analysis()
        out["mem_gib"] = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                          - m.alias_size_in_bytes) / 2**30 if m is not None else float("nan")
        state = setup.state
        try:
            state, met = compiled(state, gb)
            jax.block_until_ready(met)
        except Exception as e:  # out of memory at run time
            out["error"] = str(e).splitlines()[0][:80]
            return out
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            state, met = compiled(state, gb)
            jax.block_until_ready(met)
            times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    tokens = batch * (len(mcfg.tokens.prompt_ids) + mcfg.audio_tokens + response)
    out.update(step_ms=step_s * 1e3, tokens_per_s=tokens / step_s, tflops=model_flops(mcfg, batch, response) / step_s / 1e12,
               loss=float(met["loss"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="4,8")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--response", type=int, default=128)
    a = ap.parse_args()
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    peak = peak_for(kind)
    print(f"device: {kind}, jax {jax.__version__}; paper model, LoRA + projector trainable, bf16, remat full")
    rows = []
    for b in (int(x) for x in a.batches.split(",")):
        try:
            r = run(b, a.steps, a.response)
        except Exception as e:  # compile-time out of memory
            r = {"batch": b, "error": str(e).splitlines()[0][:80]}
        rows.append(r)
        print(r, flush=True)
    print()
    print("| batch | init (s) | compile (s) | memory per device (GiB) | step (ms) | tokens/s | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['batch']} | | | | failed: {r['error']} | | | |")
            continue
        mfu = f"{r['tflops'] * 1e12 / peak:.1%}" if peak else "n/a"
        print(f"| {r['batch']} | {r['init_s']:.1f} | {r['compile_s']:.1f} | {r['mem_gib']:.1f} | {r['step_ms']:.0f} | "
              f"{r['tokens_per_s']:,.0f} | {r['tflops']:.0f} | {mfu} |")


if __name__ == "__main__":
    main()

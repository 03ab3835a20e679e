"""Paper-size decoding on one GPU: the PyTorch reference loop vs the fused JAX decoders.

    python benchmarks/gpu_decode_paper.py            # LLaDA-8B shape, random bf16 weights
    python benchmarks/gpu_decode_paper.py --tiny     # a small shape, to check the script on CPU

LLaDA-8B-shaped LLM with random bf16 weights on both sides (not the same weights: copying 16 GB
would eat the time budget; timing does not depend on the values), prefix = 20 prompt vectors +
352 audio vectors (the projector output for 30 s; the encoder is 13 ms of it, SPEC section 10),
128 response slots. Random weights never reach the 0.9 threshold and never emit eos, so every
mode decodes the whole canvas: worst-case step counts. Prints a Markdown table; about 4
minutes on one H100 / H200 (most of it compiling the 8B programs).
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
import torch
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.decode_torch_reference import reference_decode  # noqa: E402
from tests.reference_torch.llada import LLaDAReference  # noqa: E402
from whisper_llada_jax.config import LLMConfig, TokenConfig  # noqa: E402
from whisper_llada_jax.decoding import api  # noqa: E402
from whisper_llada_jax.decoding.backbone import Prefix  # noqa: E402
from whisper_llada_jax.decoding.config import DecodeConfig  # noqa: E402
from whisper_llada_jax.models.llada import LLaDA  # noqa: E402

PAPER = LLMConfig(dtype="bfloat16", param_dtype="bfloat16", scan_layers=True)  # defaults: LLaDA-8B
TINY = dataclasses.replace(PAPER, vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=32,
                           mlp_hidden=256)
TOK = TokenConfig()
TINY_TOK = TokenConfig(bos=1, eos=2, pad=2, mask=3, start_header=4, end_header=5, eot=6)


def jax_model(cfg: LLMConfig):
    model = LLaDA(cfg)  # weights created on the device under jit, never on the host
    init = jax.jit(lambda k: nn.unbox(model.init(k, jnp.zeros((1, 4), jnp.int32))))
    return model, init(jax.random.key(0))


def torch_model(cfg: LLMConfig, device: str):
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)  # CPU bf16 matmuls crawl
    with torch.device(device):
        m = LLaDAReference(vocab=cfg.vocab_size, d=cfg.d_model, layers=cfg.n_layers, heads=cfg.n_heads,
                           kv_heads=cfg.n_kv_heads, hidden=cfg.mlp_hidden, theta=cfg.rope_theta, eps=cfg.norm_eps)
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.02)
    torch.set_default_dtype(torch.float32)
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--torch-utts", type=int, default=2)
    args = ap.parse_args()
    global TOK
    cfg = TINY if args.tiny else PAPER
    TOK = TINY_TOK if args.tiny else TOK
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompt, audio, gen = (20, 352, 128) if not args.tiny else (4, 16, 128)
    rs = np.random.RandomState(0)
    emb = (rs.normal(size=(16, prompt + audio, cfg.d_model)) * 0.02).astype(np.float32)
    rows = []

    tm = torch_model(cfg, device)
    t_emb = torch.from_numpy(emb).to(device=device, dtype=next(tm.parameters()).dtype)
    for steps in (64, 32):
        kw = dict(gen_len=gen, steps=steps, block_length=gen, mask_id=TOK.mask, eos_id=TOK.eos)
        with torch.device(device):
            reference_decode(tm, t_emb[:1], **dict(kw, steps=2, gen_len=4, block_length=4))  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(args.torch_utts):
                reference_decode(tm, t_emb[i:i + 1], **kw)
            if device == "cuda":
                torch.cuda.synchronize()
        rows.append((f"PyTorch reference loop, steps {steps}", 1, (time.perf_counter() - t) / args.torch_utts))
        print(rows[-1], flush=True)
    del tm, t_emb
    if device == "cuda":
        torch.cuda.empty_cache()

    model, v = jax_model(cfg)
    trimmed = prompt + audio // 4  # ~7.5 s of audio: 22 of 88 windows (+ margin)
    modes = [
        ("JAX exact diffusion, steps 64", DecodeConfig(gen_len=gen, steps=64, block_length=gen), None),
        ("JAX exact diffusion, steps 32", DecodeConfig(gen_len=gen, steps=32, block_length=gen), None),
        ("JAX exact semi-AR blocks of 32, steps 64", DecodeConfig(decoder="semi_ar", gen_len=gen, steps=64,
                                                                  block_length=32), None),
        (f"JAX semi-AR 32 + dual cache, steps 64, trimmed audio ({audio // 4} of {audio})",
         DecodeConfig(decoder="semi_ar", gen_len=gen, steps=64, block_length=32, cache="dual"), trimmed),
    ]
    for name, dcfg, keep in modes:
        for b in (1, 16):
            e = emb[:b, :keep] if keep else emb[:b]
            pre = Prefix(jnp.asarray(e, jnp.bfloat16), jnp.ones(e.shape[:2], bool))
            run = lambda c: api.diffusion_decode(model, v, pre, c, jax.random.key(0), tokens=TOK)  # noqa: E731
            # Compile with one step per block: steps are traced, so the timed call reuses it.
            run(dataclasses.replace(dcfg, steps=dcfg.num_blocks))
            t = time.perf_counter()
            out = run(dcfg)
            rows.append((name, b, (time.perf_counter() - t) / b, float(out.nfe.mean())))
            print(rows[-1], flush=True)

    base = {r[0].split(", steps ")[1]: r[2] for r in rows[:2]}
    print(f"\n{jax.devices()[0].device_kind}, {'tiny shape' if args.tiny else 'LLaDA-8B shape'}, bf16, random weights, "
          f"prefix {prompt}+{audio}, {gen} slots\n")
    print("| decoder | batch | s / utterance | vs PyTorch loop (same steps) |\n|---|---|---|---|")
    for r in rows:
        steps = r[0].split("steps ")[-1].split(",")[0] if "steps" in r[0] else "64"
        ref = base.get(steps, base["64"])
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {ref / r[2]:.1f}x |")


if __name__ == "__main__":
    main()

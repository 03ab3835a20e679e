"""Decoding throughput on this machine: the fused JAX decoders vs the PyTorch reference loop.

    .venv/bin/python benchmarks/decode_throughput.py [--quick]

A small LLaDA (vocab 256, width 128, 2 layers) is first overfit on 32 "utterances": random
prefix vectors standing in for ``[prompt | audio]`` (4 prompt + 48 audio vectors, of which only
the first 8-20 carry the utterance and the rest are one shared "silence" vector, like the
projector output over the zero padding of a short clip), each paired with 6-22 tokens padded
with eos to 32 slots. Then, in one run on the same machine: the PyTorch reference loop (batch 1,
full forward per step) and every JAX mode at batch 1 and 16, as utterances/s, forward passes
per utterance, ratios to the PyTorch loop, share of utterances identical to the exact mode, and
token WER against the memorised targets. The trimmed audio span is simulated on this bare LLM
by cutting the silence tail of the prefix at the batch's longest real span + 4 vectors, rounded
up to 8 (the composite does the same from ``audio_len`` in whole projector windows).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jiwer
import numpy as np
import optax
import torch
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._report import write_section  # noqa: E402
from benchmarks.decode_torch_reference import reference_decode, torch_model_from_jax  # noqa: E402
from tests.reference_decode import overfit_backbone  # noqa: E402
from whisper_llada_jax.config import LLMConfig, TokenConfig  # noqa: E402
from whisper_llada_jax.decoding import api  # noqa: E402
from whisper_llada_jax.decoding.backbone import Prefix  # noqa: E402
from whisper_llada_jax.decoding.config import DecodeConfig  # noqa: E402
from whisper_llada_jax.models.llada import LLaDA  # noqa: E402

TOK = TokenConfig(bos=1, eos=2, pad=2, mask=3, start_header=4, end_header=5, eot=6, prompt_ids=(1, 4, 5, 6))
LLM = LLMConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=32, mlp_hidden=384,
                rope_theta=10000.0, max_len=512, init_std=0.02)
N, GEN, PROMPT, AUDIO = 32, 32, 4, 48


def make_data(seed=0):
    rs = np.random.RandomState(seed)
    lens = rs.randint(6, 23, N)
    targets = np.full((N, GEN), TOK.eos, np.int32)
    for i, n in enumerate(lens):
        targets[i, :n] = rs.randint(8, LLM.vocab_size, n)
    real = rs.randint(8, 21, N)  # prefix vectors that carry the utterance
    emb = rs.normal(size=(N, PROMPT + AUDIO, LLM.d_model)).astype(np.float32)
    emb[:, :PROMPT] = emb[0, :PROMPT]  # the same prompt for everyone
    silence = rs.normal(size=(LLM.d_model,)).astype(np.float32)
    for i, r in enumerate(real):
        emb[i, PROMPT + r:] = silence
    return targets, emb, real


def train(model, targets, emb, steps):
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    prefix = Prefix(jnp.asarray(emb), jnp.ones(emb.shape[:2], bool))
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps, 0.1))
    return {"params": overfit_backbone(model, params, prefix, targets, optimizer=opt, steps=steps, t_min=0.02,
                                       mask_id=TOK.mask, key=jax.random.key(1))}


def text(row):
    return " ".join(map(str, api.response_tokens(row, GEN, TOK))) or "<empty>"


def trimmed(emb, real, rows):
    keep = PROMPT + min(AUDIO, int(np.ceil((real[rows].max() + 4) / 8) * 8))
    return emb[rows, :keep]


def run_mode(model, v, emb, real, cfg, rows, trim):
    e = trimmed(emb, real, rows) if trim else emb[rows]
    pre = Prefix(jnp.asarray(e), jnp.ones(e.shape[:2], bool))
    return api.diffusion_decode(model, v, pre, cfg, jax.random.key(0), tokens=TOK, row_ids=rows)


def timed(model, v, emb, real, cfg, trim, batch, count):
    """utterances/s over ``count`` utterances in batches of ``batch`` (after a warm-up call)."""
    rows = [np.arange(i, i + batch) for i in range(0, count, batch)]
    run_mode(model, v, emb, real, cfg, rows[0], trim)  # compile
    outs, t = [], time.perf_counter()
    for r in rows:
        outs.append(run_mode(model, v, emb, real, cfg, r, trim))
    dt = time.perf_counter() - t
    return count / dt, np.concatenate([o.tokens for o in outs]), np.concatenate([o.nfe for o in outs])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer utterances / training steps (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.manual_seed(0)
    steps_train, n_b1, n_torch = (60, 2, 2) if args.quick else (400, 8, 8)
    targets, emb, real = make_data()
    model = LLaDA(LLM)
    t0 = time.perf_counter()
    v = train(model, targets, emb, steps_train)
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)

    # PyTorch reference loop, batch 1 (the reference runs batch 1 only)
    tm = torch_model_from_jax(LLM, v["params"])
    ref_cfg = dict(gen_len=GEN, steps=16, block_length=GEN, mask_id=TOK.mask, eos_id=TOK.eos)
    reference_decode(tm, torch.from_numpy(emb[:1]), **ref_cfg)  # warm-up
    t = time.perf_counter()
    torch_out = [reference_decode(tm, torch.from_numpy(emb[i:i + 1]), **ref_cfg) for i in range(n_torch)]
    torch_ups = n_torch / (time.perf_counter() - t)
    torch_nfe = np.mean([n for _, n in torch_out])

    exact = dict(gen_len=GEN, steps=16, block_length=GEN)
    semi = dict(decoder="semi_ar", gen_len=GEN, steps=16, block_length=8)
    modes = [
        ("exact diffusion (32 slots, 16 steps)", DecodeConfig(**exact), False),
        ("exact semi-AR (blocks of 8, 16 steps)", DecodeConfig(**semi), False),
        ("(a) prefix cache", DecodeConfig(**exact, cache="prefix"), False),
        ("(a) dual cache, semi-AR", DecodeConfig(**semi, cache="dual"), False),
        ("(b) threshold 0.9, semi-AR", DecodeConfig(**{**semi, "steps": GEN}, threshold=0.9), False),
        ("(c) length buckets 16/24", DecodeConfig(**exact, length_buckets=(16, 24)), False),
        ("(e) trimmed audio span", DecodeConfig(**exact), True),
        ("(a+b+e) dual cache + threshold 0.9 + trimmed, semi-AR",
         DecodeConfig(**{**semi, "steps": GEN}, threshold=0.9, cache="dual"), True),
    ]
    refs = [text(r) for r in targets]
    rows, base = [], {}
    for name, cfg, trim in modes:
        ups1, _, _ = timed(model, v, emb, real, cfg, trim, 1, n_b1)
        ups16, toks, nfe = timed(model, v, emb, real, cfg, trim, 16, N)
        hyp = [text(r) for r in toks]
        if not base:
            torch_match = np.mean([torch_out[i][0] == list(toks[i]) for i in range(n_torch)])
        base.setdefault(cfg.decoder, hyp)  # the first (exact) row of each decoder is its baseline
        wer = 100 * jiwer.wer(refs, hyp)
        same = np.mean([h == b for h, b in zip(hyp, base[cfg.decoder])])
        rows.append((name, nfe.mean(), ups1, ups1 / torch_ups, ups16, ups16 / torch_ups, same, wer))
        print(rows[-1], flush=True)

    exact_wer = {"diffusion": rows[0][-1], "semi_ar": rows[1][-1]}
    lines = ["| mode | forward passes / utt | utt/s batch 1 | vs PyTorch | utt/s batch 16 | vs PyTorch | "
             "identical to exact | token WER % (change) |", "|---|---|---|---|---|---|---|---|",
             f"| PyTorch reference loop (batch 1) | {torch_nfe:.1f} | {torch_ups:.2f} | 1.0x | - | - | - | - |"]
    for (name, nfe, u1, r1, u16, r16, same, wer), (_, cfg, _) in zip(rows, modes):
        lines.append(f"| {name} | {nfe:.1f} | {u1:.1f} | {r1:.1f}x | {u16:.1f} | {r16:.1f}x | {same:.0%} | "
                     f"{wer:.2f} ({wer - exact_wer[cfg.decoder]:+.2f}) |")
    body = "\n".join(lines) + (
        f"\n\nSmall LLaDA (vocab 256, width 128, 2 layers), prefix {PROMPT}+{AUDIO} vectors, {GEN} response slots, "
        f"overfit for {steps_train} Adam steps on {N} utterances (see the script's docstring). PyTorch: "
        f"{n_torch} utterances, torch {torch.__version__}, {torch.get_num_threads()} threads; JAX batch 1: "
        f"{n_b1} utterances, batch 16: {N}. The PyTorch loop and the JAX exact mode agree on "
        f"{torch_match:.0%} of the utterances both decoded (fp32; argmax ties aside they compute the same loop). "
        f"'Identical' and the WER change compare each mode with the exact mode of the same decoder "
        f"(diffusion or semi-AR). WER counts tokens as words against the memorised targets. Machine load: "
        f"{os.getloadavg()[0]:.1f} (1-min load average at the end; other jobs shared the CPU).")
    print(body)
    if not args.no_write:
        write_section("decode_throughput", "Decoding throughput: fused JAX modes vs the PyTorch reference loop (CPU)",
                      body, "python benchmarks/decode_throughput.py")


if __name__ == "__main__":
    main()

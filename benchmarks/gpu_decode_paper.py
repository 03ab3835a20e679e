"""Paper-size decoding on one GPU: exact diffusion, the length-prior fast mode and the
autoregressive baseline, with a trained model's forward counts and lengths.

    python benchmarks/gpu_decode_paper.py                      # LLaDA-8B / LLaMA-8B shapes, bf16
    python benchmarks/gpu_decode_paper.py --counts counts.json # per-utterance counts measured on your model
    python benchmarks/gpu_decode_paper.py --tiny               # a tiny shape on CPU: checks the script

Compiling the 8B programs dominates (about 35 s each on an H200, 4-5 per batch size): batch 1
and 16 take about 6 minutes, batch 64 about 5. On a lease with a per-call limit, run
``--batches 1,16`` and then ``--batches 64 --no-probe``; the time budget stops a call from
starting a batch size it cannot finish. ``--lp-canvas`` adds two programs per batch size.

Random bf16 weights never emit eos and never clear a threshold, so decoding them end to end
would always run the worst case. Instead every mode runs with the **per-utterance forward counts
and lengths of a trained model** (``--counts FILE``: a JSON list of ``{"exact_nfe", "fast_nfe",
"length"}`` per utterance, e.g. from ``benchmarks/decode_throughput.py --counts``; the default
is the demo model's means quoted in issue 13: 9 exact forwards, 3 length-prior forwards, 27
response tokens). A batch of B utterances takes the first B entries (cycled) and runs in lock
step, so it costs its longest row; batch 1 therefore times the first utterance, and a second
table gives the mean over every utterance from that run's per-forward times (each mode's cost at
batch 1 is linear in its counts; the autoregressive slope comes from an extra one-token run):

- **exact diffusion**: the real fused program with ``steps = max exact_nfe`` of the batch (one
  block, so exactly that many full forwards over ``[prompt | audio | 128 slots]``);
- **length prior** (threshold + query window, docs/decoding.md): its first forward is a full
  forward (timed as exact diffusion with one step); each later forward runs ``query_slots``
  slots against the cache, timed from a run of the real program at threshold 1.0 (one slot
  revealed per forward, so it runs about 128 + 128 / query_slots forwards): per-utterance time
  = first + (max fast_nfe - 1) x later;
- **autoregressive baseline** (LLaMA-8B shape: causal, 8 KV heads, the same engine: fused
  attention, in-place K/V writes, logits for the last slot only): the real program with
  ``max_new_tokens = max length + 1`` of the batch (random weights never stop early);
- a **single-forward probe** inside a ``while_loop``: scanned vs unrolled layer stack (the
  fixed per-forward cost the issue's cost model attributes ~9 ms to);
- with ``--lp-canvas N``, the **length prior on an N-slot canvas** as well (its first forward
  over ``[prompt | audio | N slots]``): the speed a canvas sized from the audio duration would
  give (a model trained as the reference, padded to its group's longest transcript, never sees
  a 128-slot canvas that is mostly eos). Speed only: what such a canvas does to WER needs a
  trained model. N must hold the longest ``length`` of the counts plus its eos.

Each batch size also prints the later length-prior forward against its read floor: the weights
plus that batch's K/V cache read once, at the bandwidth of a 4 GiB device copy measured first.

Decoders run the unrolled layer stack (``--scan`` for the scanned one) and XLA's attention;
``WHISPER_LLADA_ATTENTION=cudnn`` runs every decoder, the baseline included, with cuDNN's fused
attention instead (the table's footer says which). Prints a Markdown table
(seconds per utterance and utterances/s per batch size) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from whisper_llada_jax.config import LLMConfig, TokenConfig  # noqa: E402
from whisper_llada_jax.decoding import api  # noqa: E402
from whisper_llada_jax.decoding.backbone import Prefix  # noqa: E402
from whisper_llada_jax.decoding.config import DecodeConfig  # noqa: E402
from whisper_llada_jax.models.llada import LLaDA, attention_implementation  # noqa: E402

PAPER = LLMConfig(dtype="bfloat16", param_dtype="bfloat16", scan_layers=False)  # defaults: LLaDA-8B
TINY = dataclasses.replace(PAPER, vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                           mlp_hidden=128)
DEFAULT_COUNTS = [{"exact_nfe": 9, "fast_nfe": 3, "length": 27}]  # issue 13, the demo model's means


def init(cfg: LLMConfig):
    model = LLaDA(cfg)  # weights created on the device under jit, never on the host
    return model, jax.jit(lambda k: nn.unbox(model.init(k, jnp.zeros((1, 4), jnp.int32))))(jax.random.key(0))


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` (results fetched to the host) after one warm-up call."""
    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def forward_probe(cfg: LLMConfig, b: int, t: int, n: int) -> dict[bool, float]:
    """ms per forward of ``n`` chained forwards in one while_loop, scanned and unrolled."""
    out = {}
    for scan in (True, False):
        c = dataclasses.replace(cfg, scan_layers=scan)
        model, params = init(c)

        @jax.jit
        def loop(p, x0):
            def body(carry):
                i, x = carry
                h = model.apply(p, embeds=x, return_hidden=True).hidden
                return i + 1, x + 1e-3 * h.astype(x.dtype)  # each forward feeds the next: nothing hoisted
            return jax.lax.while_loop(lambda carry: carry[0] < n, body, (0, x0))[1]

        x0 = jnp.zeros((b, t, c.d_model), jnp.bfloat16)
        out[scan] = 1e3 * timed(lambda p=params: loop(p, x0), 1) / n
        del params
    return out


def copy_bandwidth(nbytes: int) -> float:
    """Bytes/s of a device-to-device pass over ``nbytes`` (bytes read plus bytes written): the
    unit of the later forward's read floor."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    step = jax.jit(lambda a: a + 1)
    return 2 * x.nbytes / timed(lambda: step(x), 5)


def read_floor(params, cfg: LLMConfig, b: int, slots: int, bandwidth: float) -> float:
    """Seconds to read the weights and a ``b``-row cache of ``slots`` positions once."""
    weights = sum(a.nbytes for a in jax.tree.leaves(params))
    cache = 2 * cfg.n_layers * b * slots * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    return (weights + cache) / bandwidth


def batches(counts: list[dict], b: int) -> dict:
    """The lock-step cost drivers of one batch of ``b`` consecutive utterances (cycled)."""
    rows = [counts[i % len(counts)] for i in range(b)]
    return {k: max(int(r[k]) for r in rows) for k in ("exact_nfe", "fast_nfe", "length")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true", help="tiny shapes (CPU check)")
    ap.add_argument("--counts", type=Path, help="JSON list of {exact_nfe, fast_nfe, length} per utterance")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--query-slots", type=int, default=4,
                    help="the length prior's query window: that of the mode the counts come from "
                         "(decode_throughput.py --counts takes threshold 0.7, 4 query slots)")
    ap.add_argument("--scan", action="store_true", help="decoders with the scanned layer stack")
    ap.add_argument("--no-probe", dest="probe", action="store_false",
                    help="skip the scanned vs unrolled forward probe (a second call's batch sizes)")
    ap.add_argument("--lp-canvas", type=int, metavar="N",
                    help="also time the length prior on an N-slot canvas (one sized from the audio duration)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row (median)")
    ap.add_argument("--time-budget", type=float, default=390.0, metavar="S",
                    help="start no new batch size after this many seconds (keeps a lent GPU call short)")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(TINY if args.tiny else PAPER, scan_layers=args.scan)
    tok = TokenConfig(bos=1, eos=2, pad=2, mask=3, start_header=4, end_header=5, eot=6) if args.tiny else TokenConfig()
    prompt, audio, gen = (4, 16, 32) if args.tiny else (20, 352, 128)
    counts = json.loads(args.counts.read_text()) if args.counts else DEFAULT_COUNTS
    longest = max(int(c["length"]) for c in counts)
    if args.lp_canvas is not None and not longest < args.lp_canvas <= gen:
        ap.error(f"--lp-canvas {args.lp_canvas}: give {longest + 1} to {gen} slots (the counts' longest "
                 f"transcript, {longest} tokens, plus its eos; at most the {gen}-slot canvas)")
    sizes = [int(b) for b in args.batches.split(",")]
    t_start = time.perf_counter()
    attention = f"{attention_implementation() or 'xla'} attention (WHISPER_LLADA_ATTENTION)"
    print(f"{jax.devices()[0].device_kind}; {attention}; counts: {len(counts)} utterances, means "
          + ", ".join(f"{k} {np.mean([c[k] for c in counts]):.1f}" for k in ("exact_nfe", "fast_nfe", "length")),
          flush=True)

    probe = {}
    if args.probe:
        probe = forward_probe(dataclasses.replace(cfg, scan_layers=True), 1, 32, 4 if args.tiny else 16)
        print(f"probe B=1 T=32: scanned {probe[True]:.2f} ms/forward, unrolled {probe[False]:.2f}", flush=True)

    rows, skipped, means = [], [], []
    model, v = init(cfg)
    ar_cfg = dataclasses.replace(cfg, causal=True, n_kv_heads=max(1, cfg.n_heads // 4))
    ar_model, ar_v = init(ar_cfg)
    bandwidth = copy_bandwidth(1 << 20 if args.tiny else 4 << 30)
    print(f"device copy: {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
    rs = np.random.RandomState(0)
    for b in sizes:  # every mode at one batch size before the next, so a cut run stays comparable
        if time.perf_counter() - t_start > args.time_budget:
            skipped.append(b)
            continue
        need = batches(counts, b)
        emb = jnp.asarray(rs.normal(size=(b, prompt + audio, cfg.d_model)) * 0.02, jnp.bfloat16)
        pre = Prefix(emb, jnp.ones(emb.shape[:2], bool))
        exact = DecodeConfig(gen_len=gen, steps=gen, block_length=gen)

        def run(c):
            return api.diffusion_decode(model, v, pre, c, jax.random.key(0), tokens=tok).tokens

        def length_prior(canvas: int) -> tuple[float, float, int]:
            """Its first forward, one later forward (from a threshold-1.0 run) and that run's forwards."""
            one_step = DecodeConfig(gen_len=canvas, steps=1, block_length=canvas)
            first = timed(lambda: run(one_step), args.repeats)
            lp = dataclasses.replace(one_step, steps=canvas, threshold=1.0, length_prior=True,
                                     query_slots=args.query_slots)
            n = int(api.diffusion_decode(model, v, pre, lp, jax.random.key(0), tokens=tok).nfe.max())
            return first, max(0.0, (timed(lambda: run(lp), 1) - first) / max(1, n - 1)), n

        steps = min(gen, need["exact_nfe"])
        t_exact = timed(lambda: run(dataclasses.replace(exact, steps=steps)), args.repeats)
        t_first, t_later, n_lp = length_prior(gen)
        t_fast = t_first + (need["fast_nfe"] - 1) * t_later
        c = DecodeConfig(decoder="autoregressive", max_new_tokens=need["length"] + 1)
        t_ar = timed(lambda: api.autoregressive_decode(ar_model, ar_v, pre, c, tokens=tok).tokens, args.repeats)
        if b == 1:  # one utterance at a time: every mode's cost is linear in its counts, so the
            # mean over all utterances follows from this run's per-forward times (AR: a second,
            # one-token run separates the prefill from the per-token cost)
            one = DecodeConfig(decoder="autoregressive", max_new_tokens=1)
            t_ar1 = timed(lambda: api.autoregressive_decode(ar_model, ar_v, pre, one, tokens=tok).tokens, args.repeats)
            per_token = max(0.0, (t_ar - t_ar1) / max(1, need["length"]))
            mean = lambda k: float(np.mean([min(int(c[k]), gen) for c in counts]))  # noqa: E731
            means = [("exact diffusion", mean("exact_nfe"), t_exact / steps * mean("exact_nfe")),
                     ("length prior", mean("fast_nfe"), t_first + (mean("fast_nfe") - 1) * t_later),
                     ("autoregressive baseline", mean("length") + 1, t_ar1 + mean("length") * per_token)]
        measured = [("exact diffusion (steps = measured forwards)", b, steps, t_exact),
                    (f"length prior, {args.query_slots} query slots", b, need["fast_nfe"], t_fast),
                    ("autoregressive baseline (greedy, K/V cache)", b, need["length"] + 1, t_ar)]
        if args.lp_canvas is not None:
            first_n, later_n, _ = length_prior(args.lp_canvas)
            measured.append((f"length prior, {args.query_slots} query slots, {args.lp_canvas}-slot canvas", b,
                             need["fast_nfe"], first_n + (need["fast_nfe"] - 1) * later_n))
        rows += measured
        floor = read_floor(v, cfg, b, prompt + audio + gen, bandwidth)
        print(*measured, f"(later forward {1e3 * t_later:.2f} ms from {n_lp} "
              f"forwards, {t_later / floor:.1f}x its read floor of {1e3 * floor:.2f} ms: weights + cache at the copy "
              "bandwidth)", flush=True)

    print(f"\n{jax.devices()[0].device_kind}, {'tiny shape' if args.tiny else '8B shapes'}, bf16 random weights, "
          f"prefix {prompt}+{audio}, {gen} slots, {'scanned' if args.scan else 'unrolled'} layers, "
          f"{attention}, "
          f"{time.perf_counter() - t_start:.0f} s in all\n")
    if probe:
        print(f"Single forward in a while_loop, B=1, T=32: scanned {probe[True]:.2f} ms, "
              f"unrolled {probe[False]:.2f} ms.\n")
    print("| decoder | batch | forwards (or tokens) per batch | s / utterance | utt/s |\n|---|---|---|---|---|")
    for name, b, n, t in rows:
        print(f"| {name} | {b} | {n} | {t / b:.4f} | {b / t:.1f} |")
    if means:
        print(f"\nBatch 1, mean over all {len(counts)} utterances (the rows above time the first one only), from "
              "this run's per-forward times:\n\n| decoder | forwards (or tokens) per utterance, mean | "
              "s / utterance | utt/s |\n|---|---|---|---|")
        for name, n, t in means:
            print(f"| {name} | {n:.2f} | {t:.4f} | {1 / t:.1f} |")
    if skipped:
        print(f"\nnot measured (time budget {args.time_budget:.0f} s spent): batch {skipped}")
    return rows


if __name__ == "__main__":
    main()

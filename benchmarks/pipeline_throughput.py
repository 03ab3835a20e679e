"""Input-pipeline throughput: utterances/s with FLAC decoding + resampling + log-mel features,
for 0, 1 and 2 worker processes, on this machine's CPUs.

    .venv/bin/python -m benchmarks.pipeline_throughput [--model paper] [--epochs 3]

Source: the bundled eSpeak NG clips (tests/data/clips, FLAC at their own rate, so resampling
runs), repeated ``--epochs`` times and shuffled; features for the chosen model config (paper:
128 mels x 3000 frames, i.e. a 30 s window per utterance). The first batch is timed apart
(it includes starting the worker processes); the rate is measured over the batches after it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks._report import write_section  # noqa: E402
from whisper_llada_jax.assets import BUNDLED_CLIPS  # noqa: E402
from whisper_llada_jax.config import load_model_config  # noqa: E402
from whisper_llada_jax.data.config import DataConfig  # noqa: E402
from whisper_llada_jax.data.pipeline import build_iterator  # noqa: E402


class _Words:
    def encode(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]


def measure(cfg: DataConfig, model) -> dict:
    t0 = time.perf_counter()
    it = build_iterator(cfg, model, _Words(), split="train", seed=0)
    first = next(it)
    t1, c1 = time.perf_counter(), time.process_time()
    n = 0
    for batch in it:
        n += int(batch["valid"].sum())
    t2, c2 = time.perf_counter(), time.process_time()
    it.close()
    return {"first_s": t1 - t0, "rest_utts": n, "rest_s": t2 - t1, "utt_per_s": n / (t2 - t1),
            "main_cpu_ms": 1000 * (c2 - c1) / n, "load": os.getloadavg()[0],
            "first_valid": int(first["valid"].sum()), "counts": it.counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="paper", help="model config whose feature shape is produced")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args()
    model = load_model_config(args.model)
    base = DataConfig(train_source=f"manifest:{BUNDLED_CLIPS}", batch_size=args.batch_size,
                      num_epochs=args.epochs, read_threads=1)
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        r = measure(dataclasses.replace(base, num_workers=w), model)
        rows.append((w, r))
        print(f"workers={w}: {r['utt_per_s']:.1f} utt/s over {r['rest_utts']} utterances, "
              f"first batch {r['first_s']:.2f} s, {r['counts']}", flush=True)
    ref = rows[0][1]["utt_per_s"]
    w_ = model.whisper
    lines = [f"Features: {w_.n_mels} mels x {w_.input_frames} frames (model config `{args.model}`), "
             f"batch {args.batch_size}, {rows[0][1]['counts']['kept'] // args.epochs} FLAC clips x "
             f"{args.epochs} epochs, shuffled; read_threads=1. Rate over all batches after the first.",
             "", "| worker processes | utterances/s | vs 0 workers | training-process CPU ms / utt | first batch (s) | load avg |",
             "|---|---|---|---|---|---|"]
    for w, r in rows:
        lines.append(f"| {w} | {r['utt_per_s']:.1f} | {r['utt_per_s'] / ref:.2f}x | {r['main_cpu_ms']:.0f} | "
                     f"{r['first_s']:.2f} | {r['load']:.1f} |")
    lines += ["", f"Machine: {os.cpu_count()} CPU cores shared with other jobs while measured (load average "
              "in the table): with fewer free cores than processes, workers only add inter-process copies "
              "(one 30 s feature block is 1.5 MB), so utterances/s does not scale here. What workers buy "
              "on such a machine is the training process's CPU per utterance (column 4): feature "
              "extraction moves out of it. Scaling on a host with idle cores was not measured."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("pipeline_throughput", "Input pipeline throughput (decode + resample + log-mel)", body,
                      "python -m benchmarks.pipeline_throughput")


if __name__ == "__main__":
    main()

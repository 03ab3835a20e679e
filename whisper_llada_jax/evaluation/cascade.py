"""The cascade: a first pass (Whisper, or the autoregressive Whisper-LLaMA baseline), then
deliberation by Whisper-LLaDA, in one run that keeps every intermediate transcript.

    OUT/first_pass.jsonl            id, reference, first_pass (and the first pass's WER)
    OUT/hypotheses/<config>.jsonl   id, reference, first_pass, hypothesis, nfe
    OUT/results.json / results.md   first-pass and deliberated WER per deliberation config
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from whisper_llada_jax.data.pipeline import SKIP_REASONS, decode_audio
from whisper_llada_jax.data.sources import ListSource, RecordSource, parse_source
from whisper_llada_jax.decoding.config import DecodeConfig
from whisper_llada_jax.errors import AudioError, DataError
from whisper_llada_jax.evaluation.evaluate import (check_unique_ids, decode_dataset, evaluate, report_skipped,
                                                   window_seconds)
from whisper_llada_jax.evaluation.wer import corpus_wer
from whisper_llada_jax.outputs import atomic_file


def whisper_first_pass(whisper_dir: str | Path, source: RecordSource, *, batch_size: int = 16,
                       max_seconds: float = 30.0, strict: bool = False) -> tuple[list[dict], dict]:
    """Transcribes every usable utterance with a Whisper directory (or ``bundled:tiny.en``).

    Returns records ``{id, audio, text, first_pass}`` and skip counts (the pipeline's rules:
    unreadable audio, empty transcripts, clips over ``max_seconds``)."""
    import jax

    from whisper_llada_jax.inference.placement import gather_all
    from whisper_llada_jax.inference.recognizer import WhisperRecognizer

    rec = WhisperRecognizer.from_dir(whisper_dir)
    counts = {"seen": 0, "kept": 0, **{r: 0 for r in SKIP_REASONS}}
    out: list[dict] = []
    skipped: list[dict] = []
    pending: list[tuple[dict, Any]] = []
    t0, audio_s = time.perf_counter(), 0.0

    groups = 0  # with several processes, group g is transcribed by process g % n; all gather at the end

    def flush():
        nonlocal groups
        if groups % jax.process_count() == jax.process_index():
            texts = rec.transcribe([a for _, a in pending], batch_size=batch_size)
            out.extend({**r, "first_pass": t.strip()} for (r, _), t in zip(pending, texts))
        else:
            out.extend({**r, "first_pass": None} for r, _ in pending)
        groups += 1
        pending.clear()

    for i in range(len(source)):
        r = source[i]
        counts["seen"] += 1
        where = r["audio"] if isinstance(r["audio"], str) else r["id"]
        reason, message = None, ""
        if not (r.get("text") or "").strip():
            reason, message = "empty_transcript", f"{where}: empty transcript"
        else:
            try:
                audio = decode_audio(r["audio"], r.get("sample_rate", 16000), str(where))
                if len(audio) > max_seconds * 16000:
                    reason, message = "too_long", f"{where}: audio is {len(audio) / 16000:.1f} s, longer than {max_seconds:g} s"
            except AudioError as e:
                reason, message = "unreadable", str(e)
        if reason:
            if strict:
                raise DataError(message, hint="fix or remove the utterance, or drop --strict")
            counts[reason] += 1
            skipped.append({"id": r["id"], "skip": reason, "message": message})
            continue
        counts["kept"] += 1
        audio_s += len(audio) / 16000
        pending.append((r, audio))
        if len(pending) >= 4 * batch_size:  # bounded memory; full batches for the recogniser
            flush()
    if pending:
        flush()
    if jax.process_count() > 1:  # every process needs every first pass: the second pass splits by batch
        done = {int(i): t for part in gather_all([(i, r["first_pass"]) for i, r in enumerate(out)
                                                  if r["first_pass"] is not None]) for i, t in part}
        out = [{**r, "first_pass": done[i]} for i, r in enumerate(out)]
    report_skipped(counts, skipped, "first pass")
    seconds = time.perf_counter() - t0
    return out, {**counts, "seconds": seconds, "audio_s": audio_s, "skipped": skipped}


def autoregressive_first_pass(model_dir: str | Path, source: RecordSource, *, batch_size: int = 16,
                              max_new_tokens: int = 128, strict: bool = False) -> tuple[list[dict], dict]:
    """First pass by an autoregressive MODEL_DIR (the Whisper-LLaMA baseline, causal LLM)."""
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir

    loaded = load_model_dir(model_dir)
    if not loaded.config.llm.causal:
        raise DataError(f"{model_dir}: not an autoregressive MODEL_DIR (llm.causal is false)",
                        hint="give a Whisper directory or a Whisper-LLaMA MODEL_DIR as the first pass")
    cfg = DecodeConfig(decoder="autoregressive", batch_size=batch_size, max_new_tokens=max_new_tokens,
                       gen_len=max_new_tokens)
    t0 = time.perf_counter()
    import jax

    from whisper_llada_jax.inference.placement import gather_all

    run = decode_dataset(loaded, source, cfg, strict=strict, share=(jax.process_index(), jax.process_count()))
    if jax.process_count() > 1:  # every process needs every first pass: the second pass splits by batch
        run["rows"] = sorted((r for part in gather_all(run["rows"]) for r in part), key=lambda r: r["batch"])
    report_skipped(run["counts"], run["skipped"], "first pass")
    by_id = {source[i]["id"]: i for i in range(len(source))}
    out = [{**source[by_id[r["id"]]], "first_pass": r["hypothesis"]} for r in run["rows"]]
    return out, {**run["counts"], "seconds": time.perf_counter() - t0, "audio_s": run["audio_s"],
                 "skipped": [{k: ex[k] for k in ("id", "skip", "message")} for ex in run["skipped"]]}


def run_cascade(first: str | Path, loaded: Any, data: str | RecordSource, configs: Sequence[tuple[str, DecodeConfig]],
                out_dir: str | Path, *, grid: str | None = None, batch_size: int = 16, seed: int = 0,
                strict: bool = False, num_workers: int = 0, label: str | None = None) -> dict:
    """First pass with ``first`` (Whisper dir / ``bundled:tiny.en`` / autoregressive MODEL_DIR),
    then each deliberation config of ``loaded`` over it; every transcript is written."""
    from whisper_llada_jax.checkpoints.model_dir import is_model_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = parse_source(data) if isinstance(data, str) else data
    check_unique_ids(source, data if isinstance(data, str) else repr(source))
    batch_size = max(1, min(batch_size, len(source)))  # padded batches: never more rows than utterances
    for name, cfg in configs:
        if cfg.strategy == "none":
            raise DataError(f"decode config {name!r} does not deliberate (strategy: none)",
                            hint="the cascade's second pass needs strategy diffusion or semi_ar")
    if is_model_dir(first):
        records, stats = autoregressive_first_pass(first, source, batch_size=batch_size, strict=strict)
        kind = "autoregressive"
    else:
        # the deliberating model's window: the first-pass WER is then over the clips it deliberates
        records, stats = whisper_first_pass(first, source, batch_size=batch_size, strict=strict,
                                            max_seconds=window_seconds(loaded.config))
        kind = "whisper"
    skipped = stats.pop("skipped")
    if not records:
        raise DataError(f"{data}: no usable utterance for the first pass", hint=f"skip counts: {stats}")
    fp_wer = corpus_wer([r["text"] for r in records], [r["first_pass"] for r in records])
    import jax

    if jax.process_index() == 0:  # every process holds the whole first pass; process 0 writes it
        with atomic_file(out_dir / "first_pass.jsonl") as f:
            for r in records:
                f.write(json.dumps({"id": r["id"], "reference": r["text"], "first_pass": r["first_pass"]},
                                   ensure_ascii=False) + "\n")
    summary = {"model": str(first), "kind": kind, "wer": fp_wer.to_dict(), **stats,
               "rtf": stats["seconds"] / stats["audio_s"] if stats["audio_s"] else 0.0}
    second = ListSource(records, name=f"first pass of {source!r}")
    return evaluate(loaded, second, configs, out_dir, grid=grid, seed=seed, strict=strict, num_workers=num_workers,
                    skipped_before=(stats, skipped), extra={"data": label or (data if isinstance(data, str) else repr(data)), "first_pass": summary})

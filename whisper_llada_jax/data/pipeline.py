"""The input pipeline: a Grain dataset per host, resumable, with fixed batch shapes.

Layout (Grain's dataset API)::

    MapDataset.source(records)[shard_index::shard_count]      disjoint host shares
      .shuffle(seed).repeat(num_epochs)                        train: new order each epoch
      .map(Preprocess)                                         decode, resample, log-mel
      .to_iter_dataset(ReadOptions)                            threads
      .mp_prefetch(MultiprocessingOptions)                     worker processes (num_workers > 0)
    -> BatchIterDataset                                        main process: skip/count,
                                                               tokenise, pad, batch

Why Grain rather than tf.data: every source (tfds ArrayRecord included) is random access, so
Grain gives exact per-host sharding, a global shuffle and a small JSON iterator state that
Orbax saves beside the train state (``grain.checkpoint.CheckpointHandler``); feature
extraction is NumPy, which tf.data could only run under ``py_function`` and the GIL.

Bad utterances (longer than ``max_seconds`` when set, empty transcript, unreadable audio, a
transcript longer than the canvas with ``long_transcripts: skip``) never crash an epoch: the worker returns a small marker instead of features; the main process counts it
(``iterator.counts``, part of the saved state) or, with ``strict``, raises ``DataError``
naming the file. Skipping happens after ``mp_prefetch``, so the output does not depend on
the worker count. A clip longer than the model's audio window (``whisper.input_frames``; the
full 30 s for the paper model) but within ``max_seconds`` (``null``: any length, the reference)
is cut to the window, keeps its whole transcript and is counted as ``truncated``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import grain
import numpy as np

from whisper_llada_jax.audio.features import log_mel_numpy, samples_for_frames
from whisper_llada_jax.audio.io import (SAMPLE_RATE, check_length, check_samples, load_audio, read_error_reason,
                                         read_soundfile, resample)
from whisper_llada_jax.data.config import DataConfig
from whisper_llada_jax.data.sources import RecordSource, parse_source
from whisper_llada_jax.errors import AudioError, DataError

SKIP_REASONS = ("too_long", "empty_transcript", "unreadable", "too_many_tokens")


def _pcm_scale(audio: np.ndarray) -> float:
    """Full scale of integer PCM: the dtype's, except int64, which no PCM format uses but
    tfds' Audio feature stores 16-bit samples in by default (its own full scale, 2**63, would
    make every clip silence): the narrowest of 16 / 32 bits holding the values."""
    if audio.dtype == np.int64:
        peak = int(np.max(np.abs(audio))) if audio.size else 0
        for bits in (16, 32):
            if peak <= 2 ** (bits - 1):
                return float(2 ** (bits - 1))
        raise AudioError("int64 audio exceeds the 32-bit PCM range")
    return float(np.iinfo(audio.dtype).max + 1)


def decode_audio(audio: Any, sample_rate: int = SAMPLE_RATE, where: str = "audio") -> np.ndarray:
    """Mono float32 at 16 kHz from a path, encoded file bytes (tfds lazy_decode) or an array
    (float in [-1, 1], or integer PCM as tfds' default Audio feature stores it), checked as
    ``load_audio`` checks a file (``audio.io.check_samples``)."""
    if isinstance(audio, (str, Path)):
        return load_audio(audio)
    if isinstance(audio, bytes):
        try:
            data, sr = read_soundfile(io.BytesIO(audio), where)
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f"{where}: cannot decode audio bytes ({read_error_reason(e)})") from None
        audio, sample_rate = data, int(sr)
    audio = np.asarray(audio)
    if audio.dtype == np.uint8:  # 8-bit PCM is offset binary
        audio = (audio.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(audio.dtype, np.integer):
        try:
            audio = audio.astype(np.float32) / _pcm_scale(audio)
        except AudioError as e:
            raise AudioError(f"{where}: {e.message}") from None
    elif not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"{where}: audio array of dtype {audio.dtype} is not PCM samples")
    if audio.ndim == 2:  # (n, channels)
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise AudioError(f"{where}: audio array has shape {audio.shape}, not (samples,) or (samples, channels)")
    check_samples(audio, int(sample_rate), where)
    return check_length(resample(audio.astype(np.float32), int(sample_rate)), where)


@dataclasses.dataclass(frozen=True)
class Preprocess(grain.transforms.Map):
    """Record -> {id, text, first_pass?, features (n_mels, frames), audio_len}, or a skip
    marker {skip: reason, id, where, message}. Runs in the worker processes."""

    n_mels: int
    n_samples: int
    max_seconds: float | None

    def map(self, rec: dict) -> dict:
        where = rec["audio"] if isinstance(rec["audio"], str) else rec["id"]
        base = {"id": rec["id"], "where": str(where)}
        text = (rec.get("text") or "").strip()
        if not text:
            return {**base, "skip": "empty_transcript", "message": f"{where}: empty transcript"}
        try:
            audio = decode_audio(rec["audio"], rec.get("sample_rate", SAMPLE_RATE), str(where))
        except AudioError as e:
            return {**base, "skip": "unreadable", "message": str(e)}
        seconds = len(audio) / SAMPLE_RATE
        if self.max_seconds is not None and seconds > self.max_seconds:
            return {**base, "skip": "too_long",
                    "message": f"{where}: audio is {seconds:.1f} s, longer than {self.max_seconds:g} s"}
        out = {"id": rec["id"], "where": str(where), "text": text, "audio_len": np.int32(min(len(audio), self.n_samples)),
               "truncated": len(audio) > self.n_samples,
               "features": log_mel_numpy(audio, self.n_mels, self.n_samples)[0]}
        if rec.get("first_pass") is not None:
            out["first_pass"] = str(rec["first_pass"])
        return out


class BatchIterator(grain.DatasetIterator):
    """Counts/raises on skip markers, tokenises and pads to fixed-shape batches.

    Its state is the parent's state plus the counters: a batch is emitted only once it is
    complete, so no half-built batch ever needs saving.
    """

    def __init__(self, parent: grain.DatasetIterator, cfg: "_BatchSpec"):
        super().__init__(parent)
        self._cfg = cfg
        self._counts = self._zero_counts()
        self._batches = 0
        self._exhausted = False
        self.skipped: list[dict] = []  # the first 100 markers of this run, for logs

    @staticmethod
    def _zero_counts() -> dict[str, int]:
        return {"seen": 0, "kept": 0, "truncated": 0, "cut_transcripts": 0, **{r: 0 for r in SKIP_REASONS}}

    @property
    def counts(self) -> dict[str, int]:
        """Utterances seen / kept / truncated to the model window / with a transcript cut to the
        canvas / skipped per reason (since the start, across restores)."""
        return dict(self._counts)

    def _next_kept(self) -> dict | None:
        while True:
            try:
                ex = next(self._parent)
            except StopIteration:
                return None
            self._counts["seen"] += 1
            if "skip" not in ex:
                ex = self._tokenise(ex)
            if "skip" in ex:
                if self._cfg.strict:
                    raise DataError(ex["message"], hint="fix or remove the utterance, or set strict: false to skip it")
                self._counts[ex["skip"]] += 1
                if len(self.skipped) < 100:
                    self.skipped.append(ex)
                continue
            self._counts["kept"] += 1
            self._counts["truncated"] += int(ex["truncated"])
            self._counts["cut_transcripts"] += int(ex["cut_transcript"])
            return ex

    def _tokenise(self, ex: dict) -> dict:
        """Adds the target ids; a transcript longer than the canvas is cut (``truncate``) or
        becomes a ``too_many_tokens`` skip marker (``skip``)."""
        tokens = list(self._cfg.tokenizer.encode(ex["text"]))
        r = self._cfg.max_response_len
        if len(tokens) > r and self._cfg.long_transcripts == "skip":
            return {"id": ex["id"], "where": ex["where"], "skip": "too_many_tokens",
                    "message": f"{ex['where']}: transcript is {len(tokens)} tokens, more than "
                               f"max_response_len {r}"}
        return {**ex, "tokens": tokens[:r], "cut_transcript": len(tokens) > r}

    def __next__(self) -> dict:
        rows = []
        while not self._exhausted and len(rows) < self._cfg.batch_size:
            ex = self._next_kept()
            if ex is None:
                self._exhausted = True
            else:
                rows.append(ex)
        if not rows and (self._cfg.num_batches is None or self._batches >= self._cfg.num_batches):
            raise StopIteration
        self._batches += 1
        return self._cfg.collate(rows)

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "counts": dict(self._counts),
                "batches": self._batches, "exhausted": self._exhausted}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._counts = {**self._zero_counts(), **{k: int(v) for k, v in state["counts"].items()}}
        self._batches = int(state["batches"])
        self._exhausted = bool(state["exhausted"])


@dataclasses.dataclass(frozen=True)
class _BatchSpec:
    batch_size: int
    max_response_len: int
    n_mels: int
    frames: int
    eos: int
    strict: bool
    long_transcripts: str  # "truncate" | "skip"
    tokenizer: Any
    num_batches: int | None  # eval: pad with empty batches up to this (same on every host)

    def collate(self, rows: list[dict]) -> dict:
        b, r = self.batch_size, self.max_response_len
        features = np.zeros((b, self.n_mels, self.frames), np.float32)
        audio_len = np.zeros((b,), np.int32)
        response_ids = np.full((b, r), self.eos, np.int32)
        response_len = np.zeros((b,), np.int32)
        valid = np.zeros((b,), bool)
        ids, texts, first = [""] * b, [""] * b, [""] * b
        for i, ex in enumerate(rows):
            tokens = ex["tokens"]
            features[i], audio_len[i], valid[i] = ex["features"], ex["audio_len"], True
            response_ids[i, :len(tokens)] = tokens
            response_len[i] = len(tokens)
            ids[i], texts[i] = ex["id"], ex["text"]
            first[i] = ex.get("first_pass", "")
        # The reference pads each batch to its longest response: the loss covers exactly those
        # positions, whatever the fixed canvas length.
        longest = int(response_len.max()) if rows else 0
        batch = {"features": features, "audio_len": audio_len, "response_ids": response_ids,
                 "response_len": response_len,
                 "response_mask": np.broadcast_to(np.arange(r) < longest, (b, r)).copy(),
                 "valid": valid, "ids": ids, "text": texts}
        if any("first_pass" in ex for ex in rows):
            batch["first_pass"] = first
        return batch


class BatchIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, spec: _BatchSpec):
        super().__init__(parent)
        self._spec = spec

    def __iter__(self) -> BatchIterator:
        return BatchIterator(self._parent.__iter__(), self._spec)


def _absl_flags_ready() -> None:
    # Grain's worker processes read absl flags; outside an absl app nobody parsed them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _open(source) -> RecordSource:
    return parse_source(source) if isinstance(source, str) else source


def build_iterator(data_cfg: DataConfig, model_cfg, tokenizer, *, split: str = "train",
                   shard_index: int = 0, shard_count: int = 1, seed: int = 0,
                   source: str | RecordSource | None = None) -> BatchIterator:
    """Batches for this host: ``split="train"`` shuffles (``seed``) and repeats
    ``num_epochs`` times; ``split="eval"`` visits every utterance of the host's share once, in
    order, and pads every host to the same number of batches. ``source`` (a spec string or a
    record source) overrides the config's source for the split.

    The returned iterator has ``get_state`` / ``set_state`` (JSON), ``counts``, and works with
    ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore`` in an Orbax manager.
    """
    if split not in ("train", "eval"):
        raise DataError(f"split {split!r} is not 'train' or 'eval'")
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
    if source is None:
        source = data_cfg.train_source if split == "train" else data_cfg.eval_source
    records = _open(source)
    ds = grain.MapDataset.source(records)[shard_index::shard_count]
    n_share = len(grain.MapDataset.source(records)[0::shard_count])  # largest share
    if split == "train":
        if data_cfg.shuffle:
            ds = ds.shuffle(seed=seed % 2**32)
        ds = ds.repeat(data_cfg.num_epochs)
        num_batches = None
    else:
        num_batches = math.ceil(n_share / data_cfg.batch_size)
    w = model_cfg.whisper
    n_samples = samples_for_frames(w.input_frames)
    ds = ds.map(Preprocess(w.n_mels, n_samples, data_cfg.max_seconds))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.read_threads,
                                                 prefetch_buffer_size=2 * data_cfg.batch_size))
    if data_cfg.num_workers > 0:
        _absl_flags_ready()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=data_cfg.num_workers, per_worker_buffer_size=data_cfg.worker_buffer_size))
    spec = _BatchSpec(data_cfg.batch_size, data_cfg.max_response_len, w.n_mels, w.input_frames,
                      model_cfg.tokens.eos, data_cfg.strict, data_cfg.long_transcripts, tokenizer, num_batches)
    return iter(BatchIterDataset(it_ds, spec))


def build_eval_iterator(data_cfg: DataConfig, model_cfg, tokenizer, *, shard_index: int = 0,
                        shard_count: int = 1, source=None) -> BatchIterator:
    """Every utterance of this host's share once, in source order."""
    return build_iterator(data_cfg, model_cfg, tokenizer, split="eval", shard_index=shard_index,
                          shard_count=shard_count, source=source)

"""Frozen Whisper encoder outputs for a manifest, computed once and cached on disk.

The demo's encoder is frozen, so its output for each clip never changes: one jitted call per
fixed-size batch turns raw audio into log-mel (jax.numpy) and encoder states, and the result is
stored as float16 ``.npy`` beside a stamp naming what produced it. The encoder input is
``input_frames`` mel frames (shorter than Whisper's 3000 for short clips: a documented
departure, see ``WhisperConfig.input_frames``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from whisper_llada_jax.audio.features import log_mel_jax, samples_for_frames
from whisper_llada_jax.audio.io import load_audio
from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.outputs import write_text


def frames_for_seconds(seconds: float, multiple: int = 34) -> int:
    """Mel frames covering ``seconds``, rounded up so the encoder output (half as many frames)
    is a whole number of 17-frame projector windows; at most Whisper's 3000."""
    frames = int(np.ceil(seconds * 100.0 / multiple)) * multiple
    return int(min(max(frames, multiple), 3000))


@functools.partial(jax.jit, static_argnames=("config",))
def _encode(params, audio, *, config: WhisperConfig):
    from whisper_llada_jax.models.whisper import WhisperEncoder

    features = log_mel_jax(audio, n_mels=config.n_mels, n_samples=samples_for_frames(config.input_frames))
    return WhisperEncoder(config).apply({"params": params}, features)


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    encoder_out: np.ndarray  # (N, frames, d) float16
    audio_len: np.ndarray  # (N,) int32 samples
    seconds: float  # wall time of the (warm) encoder passes, compile excluded


def encode_files(params, config: WhisperConfig, paths: Sequence[str | Path], batch_size: int = 32,
                 progress: bool = True, desc: str = "encoder") -> EncodedSplit:
    """Encoder states of every file. Batches are fixed-size (the last padded with silence), so
    the program compiles once; the first batch is run twice to time the encoder warm."""
    from tqdm import tqdm

    n_samples = samples_for_frames(config.input_frames)
    frames = config.encoder_frames
    out = np.zeros((len(paths), frames, config.d_model), np.float16)
    audio_len = np.zeros((len(paths),), np.int32)
    elapsed = 0.0
    with tqdm(total=len(paths), desc=desc, unit="clip", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            rows = paths[start:start + batch_size]
            batch = np.zeros((batch_size, n_samples), np.float32)
            for i, p in enumerate(rows):
                a = load_audio(p)[:n_samples]
                batch[i, :len(a)] = a
                audio_len[start + i] = len(a)
            if start == 0:
                jax.block_until_ready(_encode(params, batch, config=config))  # compile
            t0 = time.perf_counter()
            enc = np.asarray(_encode(params, batch, config=config))
            elapsed += time.perf_counter() - t0
            out[start:start + len(rows)] = enc[:len(rows)]
            bar.update(len(rows))
    return EncodedSplit(out, audio_len, elapsed)


def _fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cached_encode(cache_dir: str | Path, name: str, params, config: WhisperConfig, paths: Sequence[str | Path],
                  identity: dict, batch_size: int = 32, progress: bool = True) -> EncodedSplit:
    """``encode_files`` with a disk cache keyed by ``identity`` (checkpoint, corpus, frames)."""
    cache_dir = Path(cache_dir)
    key = _fingerprint({**identity, "input_frames": config.input_frames, "n_mels": config.n_mels,
                        "d_model": config.d_model, "paths": [str(p) for p in paths]})
    arr, meta = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
    if arr.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):  # cut short by a kill (older runs wrote it in place): recompute
            info = {}
        if isinstance(info, dict) and info.get("key") == key:
            return EncodedSplit(np.load(arr, mmap_mode="r"), np.asarray(info["audio_len"], np.int32),
                                float(info["seconds"]))
    split = encode_files(params, config, paths, batch_size, progress, desc=f"encoder ({name})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp.npy"
    np.save(tmp, split.encoder_out)
    tmp.replace(arr)
    # atomically, and after the array: a kill leaves either no record or a complete one
    write_text(meta, json.dumps({"key": key, "audio_len": split.audio_len.tolist(), "seconds": split.seconds}))
    return split

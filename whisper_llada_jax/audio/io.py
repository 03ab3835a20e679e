"""Audio input: load any file soundfile/librosa reads as 16 kHz mono float32, with checks.

Every problem with the user's file becomes one ``AudioError`` line naming the file; no
library traceback escapes. Whisper sees at most 30 s at a time: ``check_duration`` states
that limit where it applies, and ``chunk_audio`` / ``merge_chunk_texts`` let ``transcribe``
handle longer audio with overlapping windows.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from whisper_llada_jax.errors import AudioError

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0


def _read(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the file's rate; soundfile first, librosa as fallback."""
    import soundfile

    try:
        data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data, int(sr)
    except Exception as sf_error:  # libsndfile says only "format not recognised"; try audioread
        try:
            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data, sr = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
        except Exception:
            reason = str(sf_error).splitlines()[0] if str(sf_error) else type(sf_error).__name__
            raise AudioError(f"{path}: cannot read audio ({reason})",
                             hint="give a WAV, FLAC, OGG or MP3 file; the file may be corrupt") from None
        data = np.atleast_2d(data).T  # librosa gives (channels, frames)
        return np.ascontiguousarray(data, dtype=np.float32), int(sr)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr (the resampler librosa uses by default)."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads ``path`` as mono float32 at ``sample_rate``: shape (n,).

    Raises AudioError for a missing, unreadable or empty file and for NaN/inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: audio file does not exist", hint="check the path (manifest paths are relative to the manifest's folder)")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes)", hint="re-create or remove the file")
    data, sr = _read(path)
    if data.size == 0 or data.shape[0] == 0:
        raise AudioError(f"{path}: audio has no samples (zero length)", hint="re-create or remove the file")
    if not np.all(np.isfinite(data)):
        bad = int(np.sum(~np.isfinite(data)))
        raise AudioError(f"{path}: audio holds {bad} NaN/inf sample(s)", hint="the file is damaged; re-export it")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, sr, sample_rate)


def check_duration(audio: np.ndarray, path: str | Path = "audio", max_seconds: float = MAX_SECONDS,
                   sample_rate: int = SAMPLE_RATE) -> None:
    """Raises AudioError if ``audio`` is longer than the ``max_seconds`` a model input holds."""
    seconds = len(audio) / sample_rate
    if seconds > max_seconds:
        raise AudioError(f"{path}: audio is {seconds:.1f} s, longer than the {max_seconds:g} s limit",
                         hint="split the file, or use `whisper-llada transcribe`, which chunks long audio")


def chunk_audio(audio: np.ndarray, chunk_s: float = MAX_SECONDS, overlap_s: float = 5.0,
                sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    """Overlapping windows of at most ``chunk_s`` covering ``audio`` (one window if it fits)."""
    if not 0 <= overlap_s < chunk_s:
        raise ValueError(f"overlap_s={overlap_s} must be in [0, chunk_s={chunk_s})")
    size = int(round(chunk_s * sample_rate))
    step = size - int(round(overlap_s * sample_rate))
    if len(audio) <= size:
        return [audio]
    starts = list(range(0, len(audio) - size, step)) + [len(audio) - size]
    if len(starts) > 1 and starts[-1] - starts[-2] <= 0:
        starts.pop()
    # The last window is aligned to the end so that it is full length (more context).
    return [audio[s:s + size] for s in starts]


def _norm_word(w: str) -> str:
    return re.sub(r"[^\w']", "", w.lower())


def merge_chunk_texts(texts: Sequence[str], max_overlap_words: int = 30, min_match: int = 2) -> str:
    """Joins transcripts of overlapping windows, dropping the words both windows heard.

    The overlap is the longest run of equal words (case and punctuation ignored) between the
    tail of the text so far and the head of the next window; words cut at a window edge are
    thus skipped. Without a run of ``min_match`` words the texts are simply concatenated.
    """
    merged: list[str] = []
    for text in texts:
        words = text.split()
        if not words:
            continue
        if not merged:
            merged = words
            continue
        tail = merged[-max_overlap_words:]
        head = words[:max_overlap_words]
        matcher = difflib.SequenceMatcher(None, [_norm_word(w) for w in tail],
                                          [_norm_word(w) for w in head], autojunk=False)
        m = matcher.find_longest_match(0, len(tail), 0, len(head))
        if m.size >= min(min_match, len(head)):
            keep = len(merged) - len(tail) + m.a + m.size
            merged = merged[:keep] + words[m.b + m.size:]
        else:
            merged = merged + words
    return " ".join(merged)

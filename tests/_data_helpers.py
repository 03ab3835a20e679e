"""Small helpers shared by the data tests: a word tokenizer and fake LibriSpeech trees."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import soundfile as sf


class WordTokenizer:
    """Deterministic stand-in for the LLaDA tokenizer: one id per word (ids 16..127)."""

    def encode(self, text: str) -> list[int]:
        return [16 + zlib.crc32(w.encode()) % 112 for w in text.split()]


def write_clip(path: Path, seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, format="FLAC" if path.suffix == ".flac" else "WAV")
    return audio


def fake_librispeech(root: Path, subsets: dict[str, tuple[int, ...]], utts: int = 3) -> dict[str, str]:
    """``root/LibriSpeech/<subset>/SPEAKER/CHAPTER/*.flac + .trans.txt``; returns id -> text."""
    texts = {}
    for subset, speakers in subsets.items():
        for spk in speakers:
            ch = 1000 + spk
            d = root / "LibriSpeech" / subset / str(spk) / str(ch)
            lines = []
            for u in range(utts):
                key = f"{spk}-{ch}-{u:04d}"
                write_clip(d / f"{key}.flac", 0.5 + 0.25 * u, seed=spk * 10 + u)
                texts[key] = f"{subset.upper().replace('-', ' ')} SPEAKER {spk} SAYS NUMBER {u}"
                lines.append(f"{key} {texts[key]}")
            (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "LibriSpeech" / "SPEAKERS.TXT").write_text("; ID | SEX | SUBSET | MINUTES | NAME\n")
    (root / "LibriSpeech" / "CHAPTERS.TXT").write_text("; ID | READER | MINUTES | SUBSET\n")
    return texts

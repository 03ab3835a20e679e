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


def tiny_model_dir(root: Path, variables=None):
    """A tiny MODEL_DIR at ``root/model`` with a word tokenizer over the synthetic corpus.
    ``variables(cfg)`` gives its weights (default: the model's own initialisation)."""
    import dataclasses

    import jax

    from whisper_llada_jax.checkpoints.model_dir import save_model_dir
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.data.sources import _WORDS
    from whisper_llada_jax.models.composite import init_variables
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json

    tok_json = build_tokenizer_json([" ".join(_WORDS)] * 4, root / "tokenizer.json", vocab_size=120)
    cfg = load_model_config("tiny")
    cfg = dataclasses.replace(cfg, tokens=LLaDATokenizer(tok_json).token_config())
    weights = init_variables(cfg, jax.random.key(0)) if variables is None else variables(cfg)
    return save_model_dir(root / "model", cfg, weights, tok_json)

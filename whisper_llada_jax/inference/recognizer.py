"""A Whisper speech recogniser: any HF or CTranslate2 Whisper directory -> transcripts.

``WhisperRecognizer.from_dir(path)`` detects the layout (``model.bin`` = CTranslate2 /
faster-whisper; ``config.json`` + ``*.safetensors`` = Hugging Face), imports the weights
and the decoding facts (start prompt, suppressed tokens). ``transcribe`` runs log-mel,
encoder and greedy decoding as one jitted call per fixed-size batch: the last batch is
padded with silent rows, so a run compiles exactly once per batch size. Audio longer than
30 s is cut into overlapping windows whose transcripts are joined.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from whisper_llada_jax.assets import resolve_whisper_dir
from whisper_llada_jax.audio.features import HOP_LENGTH, N_SAMPLES, log_mel_jax
from whisper_llada_jax.audio.io import SAMPLE_RATE, chunk_audio, load_audio, merge_chunk_texts
from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.decoding.backbone import LOOP_COMPILER_OPTIONS
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.text.whisper_tokenizer import WhisperTokenizer

CHUNK_SECONDS = 30.0
CHUNK_OVERLAP_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class DecodingFacts:
    """What greedy decoding needs from a checkpoint, independent of its layout."""

    prompt: tuple[int, ...]
    eos_id: int
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    max_new_tokens: int


def detect_layout(path: Path) -> str:
    """``"ctranslate2"`` or ``"hf"``; a clear error for anything else."""
    if (path / "model.bin").exists():
        return "ctranslate2"
    if (path / "config.json").exists() and (any(path.glob("*.safetensors"))
                                            or (path / "model.safetensors.index.json").exists()):
        return "hf"
    raise CheckpointError(f"{path}: not a Whisper directory (no model.bin, and no config.json with *.safetensors)",
                          hint="give a Hugging Face or CTranslate2 (faster-whisper) Whisper directory")


def _load(path: Path, layout: str, dtype: str | None):
    """(WhisperConfig, params, WhisperGenerationConfig) from either layout."""
    from whisper_llada_jax.checkpoints import whisper_hf

    if layout == "ctranslate2":
        from whisper_llada_jax.checkpoints.ctranslate2 import CTranslate2WhisperSource, whisper_config_from_ct2

        source = CTranslate2WhisperSource(path)
        overrides = {"dtype": dtype, "param_dtype": dtype} if dtype else {}
        cfg, gen = whisper_config_from_ct2(path, source=source, **overrides)
        return cfg, whisper_hf.import_whisper_tensors(source, cfg), gen
    _, gen = whisper_hf.read_whisper_hf_config(path)
    cfg, params = whisper_hf.import_whisper_hf(path, dtype=dtype)
    return cfg, params, gen


def _features(audio, n_samples, n_mels: int, padding: str):
    """Log-mel of 30 s windows (B, n_mels, 3000).

    ``"audio"``: Whisper's / HF's rule, the waveform is padded with silence to 30 s first.
    ``"features"``: faster-whisper's rule, the log-mel of the clip (+ one hop of zeros) is
    computed and normalised on its own, and the frames after it are zeros. The two differ in
    the padded frames (silence is ``(max - 8 + 4) / 4`` there, not 0), which changes greedy
    transcripts on some short clips; ``"features"`` reproduces faster-whisper's inputs.
    """
    features = log_mel_jax(audio, n_mels=n_mels, n_samples=N_SAMPLES)
    if padding == "features":
        frames = jnp.arange(features.shape[-1])
        valid = n_samples // HOP_LENGTH + 1  # frames of the clip padded by one hop
        features = jnp.where(frames[None, None, :] < valid[:, None, None], features, 0.0)
    return features


# compiler options only on a top-level jit (jax refuses them on a nested one, and _greedy is
# also called inside other programs)
@functools.partial(jax.jit, static_argnames=("config", "facts", "padding"), compiler_options=LOOP_COMPILER_OPTIONS)
def _recognise_batch(params, audio, n_samples, *, config: WhisperConfig, facts: DecodingFacts, padding: str):
    """(B, 480000) samples -> (tokens (B, max_new_tokens), lengths (B,)) in one compiled call.
    Module-level with hashable static arguments, so every recogniser of the same checkpoint
    shape shares the compiled program."""
    from whisper_llada_jax.models.whisper import Whisper

    model = Whisper(config)
    features = _features(audio, n_samples, config.n_mels, padding)
    encoder_out = model.apply({"params": params}, features, method="encode")
    return _greedy(model, params, encoder_out, facts)


def _greedy(model, params, encoder_out, facts: DecodingFacts):
    """``greedy_decode`` with a checkpoint's decoding facts: (tokens, lengths)."""
    from whisper_llada_jax.decoding.whisper_greedy import greedy_decode

    return greedy_decode(model, params, encoder_out, facts.prompt,
                         max_new_tokens=facts.max_new_tokens, eos_id=facts.eos_id,
                         suppress_tokens=facts.suppress_tokens,
                         begin_suppress_tokens=facts.begin_suppress_tokens)


def n_windows(audio: np.ndarray) -> int:
    """How many 30 s windows ``transcribe`` cuts ``audio`` (16 kHz) into."""
    return len(chunk_audio(audio, CHUNK_SECONDS, CHUNK_OVERLAP_SECONDS, SAMPLE_RATE))


class WhisperRecognizer:
    """Greedy Whisper transcription (no timestamps, temperature 0), batched and jitted."""

    def __init__(self, config: WhisperConfig, params, tokenizer: WhisperTokenizer, facts: DecodingFacts,
                 path: str | Path = "<memory>", feature_padding: str = "audio"):
        if config.input_frames != 3000:
            raise CheckpointError(f"{path}: the recogniser needs whisper.input_frames=3000 (30 s), "
                                  f"got {config.input_frames}")
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.facts = facts
        self.path = str(path)
        if feature_padding not in ("audio", "features"):
            raise ValueError(f"feature_padding must be 'audio' or 'features', got {feature_padding!r}")
        self.feature_padding = feature_padding

    @classmethod
    def from_dir(cls, path: str | Path, *, dtype: str | None = None, language: str | None = None,
                 max_new_tokens: int | None = None, feature_padding: str | None = None) -> "WhisperRecognizer":
        """Loads an HF or CTranslate2 Whisper directory (or ``bundled:tiny.en``).

        ``feature_padding`` defaults to the convention of the engine that reads the layout:
        ``"features"`` (faster-whisper) for CTranslate2 directories, ``"audio"`` (transformers,
        OpenAI) for Hugging Face ones, so each gives its own engine's transcripts.
        """
        path = resolve_whisper_dir(path)
        layout = detect_layout(path)
        cfg, params, gen = _load(path, layout, dtype)
        if language is not None and not gen.is_multilingual:
            raise CheckpointError(f"{path}: English-only checkpoint, it takes no language token",
                                  hint="leave the language unset, or use a multilingual checkpoint")
        tokenizer = WhisperTokenizer.from_file(path, multilingual=gen.is_multilingual)
        prompt = tuple(tokenizer.start_prompt(language))
        budget = cfg.max_target_positions - len(prompt)
        facts = DecodingFacts(
            prompt=prompt,
            eos_id=tokenizer.eot,
            # HF/CT2 store -1 for "the configured list"; only real ids reach the decoder.
            suppress_tokens=tuple(sorted({t for t in gen.suppress_tokens if 0 <= t < cfg.vocab_size})),
            begin_suppress_tokens=tuple(t for t in gen.begin_suppress_tokens if 0 <= t < cfg.vocab_size),
            max_new_tokens=min(max_new_tokens or budget, budget),
        )
        padding = feature_padding or ("features" if layout == "ctranslate2" else "audio")
        return cls(cfg, params, tokenizer, facts, path, feature_padding=padding)

    # ------------------------------------------------------------------ batches
    def _batches(self, windows: Sequence[np.ndarray], batch_size: int):
        for start in range(0, len(windows), batch_size):
            rows = windows[start:start + batch_size]
            batch = np.zeros((batch_size, N_SAMPLES), np.float32)  # padding rows stay silent
            lengths = np.zeros((batch_size,), np.int32)
            for i, w in enumerate(rows):
                batch[i, :len(w)] = w[:N_SAMPLES]
                lengths[i] = min(len(w), N_SAMPLES)
            yield batch, lengths, len(rows)

    def _decode_rows(self, tokens: np.ndarray, lengths: np.ndarray, n: int) -> list[str]:
        return [self.tokenizer.decode(tokens[i, :lengths[i]]).strip() for i in range(n)]

    def transcribe_windows(self, windows: Sequence[np.ndarray], batch_size: int = 16, progress=None) -> list[str]:
        """One transcript per <= 30 s window. The next batch is dispatched before the previous
        one's tokens are fetched, so host-side text decoding overlaps device work."""
        texts: list[str] = []
        pending = None
        for batch, lengths, n in self._batches(windows, batch_size):
            out = _recognise_batch(self.params, jnp.asarray(batch), jnp.asarray(lengths), config=self.config,
                                   facts=self.facts, padding=self.feature_padding)
            if pending is not None:
                texts += self._finish(*pending, progress)
            pending = (out, n)
        if pending is not None:
            texts += self._finish(*pending, progress)
        return texts

    def transcribe_encoded(self, encoder_out: np.ndarray, batch_size: int = 16, progress=None) -> list[str]:
        """Transcripts from encoder outputs ``(N, frames, d)`` computed elsewhere (a cache): no
        log-mel and no encoder pass. The last batch is padded with its first row, so every batch
        has one compiled shape."""
        from whisper_llada_jax.models.whisper import Whisper

        model = Whisper(self.config)
        texts: list[str] = []
        for start in range(0, len(encoder_out), batch_size):
            rows = np.asarray(encoder_out[start:start + batch_size], np.float32)
            n = len(rows)
            batch = np.concatenate([rows, np.repeat(rows[:1], batch_size - n, axis=0)])
            texts += self._finish(_greedy(model, self.params, batch, self.facts), n, progress)
        return texts

    def _finish(self, out, n: int, progress) -> list[str]:
        tokens, lengths = jax.device_get(out)
        if progress is not None:
            progress.update(n)
        return self._decode_rows(np.asarray(tokens), np.asarray(lengths), n)

    def transcribe(self, audios: Sequence[np.ndarray], batch_size: int = 16, progress=None) -> list[str]:
        """16 kHz mono float32 arrays -> transcripts. Audio longer than 30 s is split into
        30 s windows overlapping by 5 s, and the windows' texts are joined."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        owner, windows = [], []
        for i, audio in enumerate(audios):
            pieces = chunk_audio(np.asarray(audio, np.float32), CHUNK_SECONDS, CHUNK_OVERLAP_SECONDS, SAMPLE_RATE)
            owner += [i] * len(pieces)
            windows += pieces
        texts = self.transcribe_windows(windows, batch_size, progress)
        grouped: list[list[str]] = [[] for _ in audios]
        for i, text in zip(owner, texts):
            grouped[i].append(text)
        return [g[0] if len(g) == 1 else merge_chunk_texts(g) for g in grouped]

    def transcribe_files(self, paths: Sequence[str | Path], batch_size: int = 16, progress: bool = False) -> list[str]:
        """Audio files -> transcripts (files read with ``audio.io.load_audio``: any format,
        resampled to 16 kHz mono; bad files raise AudioError naming the file)."""
        audios = [load_audio(p) for p in paths]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(n_windows(a) for a in audios), desc="transcribing", unit="window", file=sys.stderr)
        try:
            return self.transcribe(audios, batch_size, bar)
        finally:
            if bar is not None:
                bar.close()

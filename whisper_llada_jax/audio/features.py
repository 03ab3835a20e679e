"""Whisper log-mel features (SPEC section 2) in NumPy (data pipeline) and jax.numpy (in-graph).

16 kHz audio padded/trimmed to ``n_samples``; STFT with n_fft 400, hop 160, periodic Hann,
centred reflect padding; power spectrum with the last frame dropped; Slaney mel filterbank
(librosa's); ``log10(max(mel, 1e-10))``; per-example dynamic range of 8 (in log10 units);
``(x + 4) / 4``. Output (B, n_mels, n_samples // 160) float32.

``n_samples`` defaults to Whisper's 30 s. A shortened encoder input of F frames uses
``n_samples = F * HOP_LENGTH`` (see ``WhisperConfig.input_frames``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 -> 3000 frames


def n_frames(n_samples: int = N_SAMPLES) -> int:
    """Mel frames for ``n_samples`` of audio (the centred STFT's last frame is dropped)."""
    return n_samples // HOP_LENGTH


def samples_for_frames(frames: int) -> int:
    """Audio length that gives exactly ``frames`` mel frames."""
    return frames * HOP_LENGTH


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised filterbank (n_mels, 201), 0-8000 Hz, computed once."""
    import librosa

    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32)
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=None)
def hann_window() -> np.ndarray:
    """Periodic Hann window of length N_FFT (torch.hann_window's default)."""
    n = np.arange(N_FFT)
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)
    w.setflags(write=False)
    return w


@functools.lru_cache(maxsize=None)
def _frame_index(n_samples: int) -> np.ndarray:
    """(frames, N_FFT) sample indices into the reflect-padded signal, last frame dropped."""
    frames = n_frames(n_samples)
    return np.arange(frames)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None, :]


def pad_or_trim(audio: np.ndarray | Sequence[np.ndarray], n_samples: int = N_SAMPLES) -> np.ndarray:
    """(B, n_samples) float32 from one clip (n,), a batch (B, n) or a list of clips."""
    if isinstance(audio, np.ndarray) and audio.ndim in (1, 2):
        clips = [audio] if audio.ndim == 1 else list(audio)
    elif isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be (n,) or (B, n), got shape {audio.shape}")
    else:
        clips = list(audio)
    out = np.zeros((len(clips), n_samples), np.float32)
    for i, clip in enumerate(clips):
        clip = np.asarray(clip, np.float32).reshape(-1)[:n_samples]
        out[i, :len(clip)] = clip
    return out


def _check_n_samples(n_samples: int) -> None:
    if n_samples <= N_FFT // 2:
        raise ValueError(f"n_samples={n_samples} is too short for reflect padding (needs > {N_FFT // 2})")


def log_mel_numpy(audio: np.ndarray | Sequence[np.ndarray], n_mels: int = 80,
                  n_samples: int = N_SAMPLES) -> np.ndarray:
    """Log-mel features (B, n_mels, n_samples // 160) float32 in NumPy."""
    _check_n_samples(n_samples)
    x = pad_or_trim(audio, n_samples)
    x = np.pad(x, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    frames = x[:, _frame_index(n_samples)] * hann_window()  # (B, T, N_FFT)
    spec = np.fft.rfft(frames, axis=-1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)  # (B, T, 201)
    mel = np.einsum("btf,mf->bmt", power, mel_filters(n_mels))
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


def log_mel_jax(audio, n_mels: int = 80, n_samples: int = N_SAMPLES):
    """Log-mel features (B, n_mels, n_samples // 160) float32 in jax.numpy; jit-able.

    ``audio`` is (n,) or (B, n); it is zero-padded or trimmed to ``n_samples`` (static).
    The matmul runs at highest precision so bf16 default precision on TPU cannot leak in.
    """
    import jax
    import jax.numpy as jnp

    _check_n_samples(n_samples)
    x = jnp.asarray(audio, jnp.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio must be (n,) or (B, n), got shape {x.shape}")
    x = x[:, :n_samples]
    x = jnp.pad(x, ((0, 0), (0, n_samples - x.shape[1])))
    x = jnp.pad(x, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    frames = x[:, _frame_index(n_samples)] * jnp.asarray(hann_window())
    spec = jnp.fft.rfft(frames, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = jnp.einsum("btf,mf->bmt", power, jnp.asarray(mel_filters(n_mels)),
                     precision=jax.lax.Precision.HIGHEST)
    log = jnp.log10(jnp.maximum(mel, 1e-10))
    log = jnp.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
    return (log + 4.0) / 4.0

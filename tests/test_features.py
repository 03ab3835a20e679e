"""Log-mel features match transformers' WhisperFeatureExtractor (NumPy and jitted JAX paths,
80 and 128 mels, batched, random and real synthetic-speech audio, full and shortened inputs)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from whisper_llada_jax.audio.features import (N_SAMPLES, log_mel_jax, log_mel_numpy, mel_filters,
                                              n_frames, pad_or_trim, samples_for_frames)
from whisper_llada_jax.audio.io import load_audio

CLIPS = Path(__file__).parent / "data" / "clips"


def _reference(audio, n_mels, n_samples=N_SAMPLES):
    fe = WhisperFeatureExtractor(feature_size=n_mels)  # built locally, nothing downloaded
    return fe(list(audio), sampling_rate=16000, return_tensors="np", padding="max_length",
              max_length=n_samples, truncation=True).input_features


def _batch():
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(n).astype(np.float32) * s
             for n, s in ((3 * 16000, 0.1), (31 * 16000, 0.5), (12345, 0.01))]
    rows = [json.loads(line) for line in (CLIPS / "manifest.jsonl").read_text().splitlines()[:3]]
    speech = [load_audio(CLIPS / r["audio"]) for r in rows]
    return noise + speech


@pytest.fixture(scope="module")
def batch():
    return _batch()


@pytest.mark.parametrize("n_mels", [80, 128])
def test_numpy_and_jax_match_transformers(batch, n_mels):
    ref = _reference(batch, n_mels)
    assert ref.shape == (len(batch), n_mels, 3000)
    np_out = log_mel_numpy(batch, n_mels)
    assert np_out.dtype == np.float32 and np_out.shape == ref.shape
    np.testing.assert_allclose(np_out, ref, atol=1e-4, rtol=0)
    fn = jax.jit(log_mel_jax, static_argnames=("n_mels", "n_samples"))
    jax_out = np.asarray(fn(pad_or_trim(batch), n_mels=n_mels))
    assert jax_out.dtype == np.float32
    np.testing.assert_allclose(jax_out, ref, atol=1e-4, rtol=0)


def test_shortened_input(batch):
    frames = 400  # the demo's shortened encoder input
    n = samples_for_frames(frames)
    ref = _reference(batch, 80, n)
    assert ref.shape[-1] == frames == n_frames(n)
    np.testing.assert_allclose(log_mel_numpy(batch, 80, n), ref, atol=1e-4, rtol=0)
    # The JAX path pads/trims itself: longer and shorter inputs both land on n samples.
    for length in (n - 777, n + 5000):
        clip = np.zeros(length, np.float32)
        clip[: min(length, len(batch[3]))] = batch[3][: min(length, len(batch[3]))]
        out = np.asarray(jax.jit(lambda x: log_mel_jax(x, 80, n))(clip))
        np.testing.assert_allclose(out, _reference([clip], 80, n), atol=1e-4, rtol=0)


def test_single_clip_and_filters():
    clip = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    assert log_mel_numpy(clip).shape == (1, 80, 3000)
    # One computation either way; BLAS may still round a reduction differently from call to call
    # (OpenBLAS picks kernels by alignment and CPU), so a tolerance far below a real error's size.
    np.testing.assert_allclose(log_mel_numpy(clip), log_mel_numpy([clip]), rtol=0, atol=1e-5)
    assert mel_filters(128).shape == (128, 201) and mel_filters(80) is mel_filters(80)
    # Silence: everything clamps to log10(1e-10) -> (-10 + 4) / 4.
    np.testing.assert_allclose(log_mel_numpy(np.zeros(100, np.float32), 80, 1600), -1.5, rtol=0, atol=1e-6)

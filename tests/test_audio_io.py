"""Audio loading: every bad-input case gives one AudioError naming the file; resampling,
mixdown, duration limit, and chunking of long audio with overlap-aware text merging."""

import numpy as np
import pytest
import soundfile

from whisper_llada_jax.audio.io import (MAX_SECONDS, check_duration, chunk_audio, load_audio,
                                        merge_chunk_texts)
from whisper_llada_jax.errors import AudioError


def _sine(freq, sr, seconds, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _assert_one_line_error(excinfo, path, words):
    msg = str(excinfo.value)
    assert str(path) in msg and "\n" not in msg
    assert any(w in msg for w in words), msg
    assert excinfo.value.__cause__ is None or excinfo.value.__suppress_context__


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as e:
        load_audio(path)
    _assert_one_line_error(e, path, ["does not exist"])


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as e:
        load_audio(path)
    _assert_one_line_error(e, path, ["cannot read"])


def test_truncated_flac(tmp_path):
    good = tmp_path / "good.flac"
    soundfile.write(good, _sine(440, 16000, 1.0), 16000)
    bad = tmp_path / "cut.flac"
    bad.write_bytes(good.read_bytes()[:30])
    with pytest.raises(AudioError) as e:
        load_audio(bad)
    _assert_one_line_error(e, bad, ["cannot read", "no samples"])


def test_empty_file_and_zero_length_wav(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError) as e:
        load_audio(empty)
    _assert_one_line_error(e, empty, ["empty"])
    zero = tmp_path / "zero.wav"
    soundfile.write(zero, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError) as e:
        load_audio(zero)
    _assert_one_line_error(e, zero, ["zero length"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    audio = _sine(440, 16000, 0.5)
    audio[100] = bad
    path = tmp_path / "nan.wav"
    soundfile.write(path, audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as e:
        load_audio(path)
    _assert_one_line_error(e, path, ["NaN/inf"])


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError):
        load_audio(tmp_path)


def test_stereo_mixdown(tmp_path):
    left = _sine(300, 16000, 0.5)
    right = _sine(700, 16000, 0.5, amp=0.25)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    out = load_audio(path)
    assert out.dtype == np.float32 and out.shape == (8000,)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_resample_from_44k1(tmp_path):
    path = tmp_path / "cd.flac"
    soundfile.write(path, _sine(440, 44100, 2.0), 44100, subtype="PCM_24")
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.shape == (32000,)
    # The tone keeps its pitch and level after resampling (away from the edges).
    ref = _sine(440, 16000, 2.0)
    np.testing.assert_allclose(out[1000:-1000], ref[1000:-1000], atol=2e-3)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 1.0


def test_native_rate_is_untouched(tmp_path):
    audio = _sine(1000, 16000, 0.25)
    path = tmp_path / "x.wav"
    soundfile.write(path, audio, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), audio)


def test_check_duration():
    check_duration(np.zeros(int(MAX_SECONDS * 16000), np.float32), "ok.wav")
    with pytest.raises(AudioError, match=r"long\.wav: audio is 31\.0 s, longer than the 30 s limit"):
        check_duration(np.zeros(31 * 16000, np.float32), "long.wav")


def test_chunk_audio_covers_everything_with_overlap():
    sr = 16000
    audio = np.arange(75 * sr, dtype=np.float32)
    chunks = chunk_audio(audio, chunk_s=30.0, overlap_s=5.0)
    assert [c[0] / sr for c in chunks] == [0.0, 25.0, 45.0]
    assert all(len(c) == 30 * sr for c in chunks)
    assert chunks[-1][-1] == audio[-1]
    short = audio[: 10 * sr]
    assert len(chunk_audio(short)) == 1 and chunk_audio(short)[0] is short
    with pytest.raises(ValueError):
        chunk_audio(audio, chunk_s=10.0, overlap_s=10.0)


def test_merge_chunk_texts():
    a = "the quick brown fox jumps over the lazy dog and then"
    b = "the lazy dog and then runs into the forest"
    assert merge_chunk_texts([a, b]) == "the quick brown fox jumps over the lazy dog and then runs into the forest"
    # Case, punctuation and a word cut at the window edge do not break the join.
    a = "We walked to the market. Then we bought"
    b = "ought bread, then we bought apples and pears."
    assert merge_chunk_texts([a, b]) == "We walked to the market. Then we bought apples and pears."
    # No shared words: plain concatenation; empty windows are skipped.
    assert merge_chunk_texts(["one two", "", "three four"]) == "one two three four"
    assert merge_chunk_texts([]) == ""

"""Audio input: load any file soundfile/librosa reads as 16 kHz mono float32, with checks.

Every problem with the user's file becomes one ``AudioError`` line naming the file; no
library traceback escapes. Whisper sees at most 30 s at a time: ``check_duration`` states
that limit where it applies, and ``chunk_audio`` / ``merge_chunk_texts`` let ``transcribe``
handle longer audio with overlapping windows.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from whisper_llada_jax.errors import AudioError

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0
# Plausible file sample rates: telephone speech is 8 kHz, studio audio at most 384 kHz.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768000
# Float audio lies in [-1, 1]; overs from processing stay within a few dB. Beyond +36 dBFS a
# file is damaged or holds integer-scale values as floats.
MAX_PEAK = 64.0
_LISTED = 10  # bad files named in one error
MIN_SAMPLES = 160  # one log-mel hop (10 ms at 16 kHz)


def _name(path) -> str:
    """The path as an error message shows it: control characters (a newline in a file name)
    escaped, so that every error stays one line."""
    text = str(path)
    return repr(text)[1:-1] if any(ord(c) < 32 or c == "\x7f" for c in text) else text


def read_error_reason(error: Exception) -> str:
    """libsndfile's complaint without its "Error opening 'PATH': " prefix (the message names the
    file already); its "does not exist" for an existing file it cannot parse is replaced."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = re.sub(r"^Error opening .*?: ", "", text).rstrip(".")
    if "does not exist" in text or "not a regular file" in text:
        return "unrecognised format or damaged data"
    return text


def read_soundfile(source, where: str) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the rate of a file libsndfile reads (a path as bytes, or a
    file object of encoded bytes); AudioError for a WAV cut short (``_cut_short``), before any
    sample is decoded. libsndfile's own errors propagate."""
    import soundfile

    with soundfile.SoundFile(source) as f:
        cut = _cut_short(f.extra_info)
        if cut is not None:
            declared, held = cut
            raise AudioError(f"{where}: WAV file is cut short: its header declares {declared} bytes of audio, "
                             f"the file holds {held} ({held / declared:.0%})",
                             hint="the copy or the recording was interrupted; copy or export it again")
        return f.read(dtype="float32", always_2d=True), int(f.samplerate)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the file's rate; soundfile first, librosa as fallback."""
    try:
        # bytes: a file name that is not UTF-8 (Linux allows any bytes) still opens
        return read_soundfile(os.fsencode(path), _name(path))
    except AudioError:
        raise
    except Exception as sf_error:  # libsndfile says only "format not recognised"; try audioread
        try:
            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data, sr = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
        except Exception:
            raise AudioError(f"{_name(path)}: cannot read audio ({read_error_reason(sf_error)})",
                             hint="give a WAV, FLAC, OGG or MP3 file; the file may be corrupt") from None
        data = np.atleast_2d(data).T  # librosa gives (channels, frames)
        return np.ascontiguousarray(data, dtype=np.float32), int(sr)


# libsndfile's log line for a WAV whose data chunk runs past the end of the file
_WAV_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Data sizes streaming writers put in the header when the length is not known yet (0xFFFFFFFF,
# 0x7FFFFFFF and the like): the file is whole, only the header never got the real size.
_UNKNOWN_SIZE = 0x7FFFF000


def _cut_short(log: str) -> tuple[int, int] | None:
    """(declared, held) bytes of a WAV's audio data when the header declares more than the file
    holds (libsndfile then reads the part that is there without a word, and a transcript of
    half a clip would be scored against the whole clip's text); None for a whole file."""
    m = _WAV_DATA.search(log)
    if m is None:
        return None
    declared, held = int(m.group(1)), int(m.group(2))
    return (declared, held) if held < declared < _UNKNOWN_SIZE else None


def check_samples(data: np.ndarray, sample_rate: int, where: str) -> None:
    """Refuses audio no model input can be made of: no samples, a rate outside
    [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] (a damaged header: 1 Hz would make 100 samples 100 s),
    NaN/inf samples, or float samples beyond +-MAX_PEAK (float audio lies in [-1, 1]; 1e30 turns
    the log-mel into NaN and integer-scale floats shift it: either way garbage transcripts)."""
    if data.size == 0:
        raise AudioError(f"{where}: audio has no samples (zero length)", hint="re-create or remove the file")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{where}: sample rate {sample_rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz",
                         hint="the header is damaged or the file is not speech audio; re-export it")
    finite = np.isfinite(data)
    if not finite.all():
        raise AudioError(f"{where}: audio holds {int(data.size - finite.sum())} NaN/inf sample(s)",
                         hint="the file is damaged; re-export it")
    peak = float(np.max(np.abs(data)))
    if peak > MAX_PEAK:
        raise AudioError(f"{where}: audio peaks at {peak:.3g}, far outside the [-1, 1] range of float audio "
                         f"(limit +-{MAX_PEAK:g})",
                         hint="the file is damaged, or holds integer-scale samples as floats (divide 16-bit "
                              "values by 32768); re-export it")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr (the resampler librosa uses by default)."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def check_file(path: str | Path) -> Path:
    """``path`` as a Path if it names a non-empty regular file; else AudioError saying what it is
    (missing, a broken link, a folder, a pipe or device, empty), before any decoder sees it."""
    path = Path(path)
    name = _name(path)
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
            looped = False
        except OSError as e:
            looped = e.errno == errno.ELOOP
        what = "symbolic link loop" if looped else "broken symbolic link"
        raise AudioError(f"{name}: {what} (to {_name(os.readlink(path))})",
                         hint="point it at an existing file or remove it")
    if not path.exists():
        raise AudioError(f"{name}: audio file does not exist",
                         hint="check the path (manifest paths are relative to the manifest's folder)")
    if path.is_dir():
        raise AudioError(f"{name}: is a directory, not an audio file", hint="give the audio files inside it")
    if not path.is_file():
        raise AudioError(f"{name}: is not a regular file (a pipe, socket or device)", hint="give an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{name}: audio file is empty (0 bytes)", hint="re-create or remove the file")
    return path


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads ``path`` as mono float32 at ``sample_rate``: shape (n,).

    Raises AudioError (one line naming the file) for a missing, unreadable or empty file and
    for samples no transcript can be made of (``check_samples``).
    """
    path = check_file(path)
    data, sr = _read(path)
    check_samples(data, sr, _name(path))
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return check_length(resample(mono, sr, sample_rate), _name(path), sample_rate)


def check_length(audio: np.ndarray, where: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``audio`` (at ``sample_rate``) if it lasts at least one 10 ms log-mel hop; a shorter clip
    (1 sample; at 44.1 kHz it resamples to nothing) holds no speech, and Whisper would answer
    it with a made-up word."""
    if len(audio) * SAMPLE_RATE < MIN_SAMPLES * sample_rate:
        raise AudioError(f"{where}: audio is {1000 * len(audio) / sample_rate:.2g} ms long, shorter than one "
                         f"{1000 * MIN_SAMPLES / SAMPLE_RATE:g} ms frame", hint="the file holds no speech; remove it")
    return audio


def load_audio_files(paths: Sequence[str | Path], max_seconds: float | None = None, *,
                     keep_bytes: int | None = None, limit_hint: str | None = None) -> list[np.ndarray | None]:
    """``load_audio`` over every path (with ``check_duration`` when ``max_seconds`` is set);
    a batch command's up-front check. Every bad file is found before the first is reported:
    one AudioError lists them all (up to ``_LISTED``), so one fix-up round is enough.
    Returns the samples; with ``keep_bytes``, only the first clips' up to that many bytes and
    None for the rest (read again when needed), so a long manifest is not held in memory."""
    out: list[np.ndarray | None] = []
    problems, long_hint, held, full = [], None, 0, False
    for p in paths:
        try:
            audio = load_audio(p)
        except AudioError as e:
            problems.append(e)
            continue
        if max_seconds is not None:
            try:
                check_duration(audio, _name(p), max_seconds=max_seconds, hint=limit_hint)
            except AudioError as e:
                problems.append(e)
                long_hint = e.hint
                continue
        if keep_bytes is not None and (full or held + audio.nbytes > keep_bytes):
            full = True  # kept: a prefix of the clips (the decoder reads them in order)
            out.append(None)
        else:
            out.append(audio)
            held += audio.nbytes
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listed = "; ".join(e.message for e in problems[:_LISTED])
        more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        hint = "re-export or remove each file listed" + (f"; too long: {long_hint}" if long_hint else "")
        raise AudioError(f"{len(problems)} of {len(paths)} audio files cannot be used: {listed}{more}", hint=hint)
    return out


def check_duration(audio: np.ndarray, path: str | Path = "audio", max_seconds: float = MAX_SECONDS,
                   sample_rate: int = SAMPLE_RATE, hint: str | None = None) -> None:
    """Raises AudioError if ``audio`` is longer than the ``max_seconds`` a model input holds:
    cutting it would score (or output) a transcript of audio the model never heard."""
    seconds = len(audio) / sample_rate
    if seconds > max_seconds:
        raise AudioError(f"{path}: audio is {seconds:.1f} s, longer than the {max_seconds:g} s limit",
                         hint=hint or f"split the file into clips of at most {max_seconds:g} s "
                                      "(`whisper-llada transcribe --whisper` chunks long audio itself)")


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

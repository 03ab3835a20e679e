"""Text to speech with eSpeak NG, from PyPI (``espeakng-loader``) or the Debian CLI.

``espeakng-loader`` ships ``libespeak-ng.so`` and its voice data; we drive the C API with
ctypes in synchronous mode and collect the 16-bit samples from the synth callback.

Every utterance is a pure function of (text, voice, wpm, seed). The library does not give that
by itself: it keeps process-global state that carries from one utterance to the next (the phase
of the pitch flutter, ``Flutter_ix`` in ``wavegen.c``, which shifts every pitch period and so the
length by a few ms; the echo buffer; resonator and voice-selection state) and seeds its noise
generator (breath, Klatt) from ``time(NULL)`` when it is initialised. So the library is
initialised once per process (English voice selected) and never speaks there: each utterance
is spoken in a child ``fork``-ed from that pristine state, with the generator seeded from
``seed`` (``espeak_ng_SetRandSeed``), and its samples come back through a pipe. The fork and
the child's exit cost about 3 ms of CPU per utterance, about as much as speaking it.

When the library cannot be loaded (or the platform has no ``fork``), the ``espeak-ng`` command
is used instead: a fresh process per utterance carries nothing over; its ``-D`` option (eSpeak
NG >= 1.52) seeds the generator with 1, the only seed it offers, so older versions are
deterministic only for voices without breath noise (``Synthesizer.deterministic`` says which).
Output is float32 mono at 16 kHz (eSpeak NG speaks at 22.05 kHz; resampled with soxr).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import traceback
from pathlib import Path

import numpy as np

from whisper_llada_jax.audio.io import SAMPLE_RATE, resample
from whisper_llada_jax.errors import UserError

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_EE_OK = 0
# The forked child's reply: status, eSpeak error code, then the int16 samples.
_HEADER = struct.Struct("<ii")
_OK, _BAD_VOICE, _SYNTH_FAILED = 0, 1, 2

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


class TTSError(UserError):
    """eSpeak NG is not available or rejected a voice/text."""


class _LibraryEngine:
    """libespeak-ng from espeakng-loader, driven through its C API; one utterance per fork."""

    name = "espeakng-loader"
    deterministic = True

    def __init__(self):
        import espeakng_loader

        if not hasattr(os, "fork"):
            raise OSError("this platform has no fork(): every utterance needs a fresh library state")
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]  # eSpeak NG >= 1.52
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise OSError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive on self
        self.lib.espeak_SetSynthCallback(self._callback)
        # The state every utterance starts from includes the English voice and dictionary: the
        # children then skip reading them from disk (about 4 ms of an utterance's 9).
        if self.lib.espeak_SetVoiceByName(b"en") != _EE_OK:
            raise OSError(f"eSpeak NG data at {data.decode()} has no English voice")
        self._lock = threading.Lock()

    def _collect(self, wav, n, events):
        if n > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    def _speak(self, text: str, voice: str, wpm: int, seed: int) -> tuple[int, int, bytes]:
        """In the forked child: (status, eSpeak error code, int16 samples)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            return _BAD_VOICE, 0, b""
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(wpm), 0)
        self.lib.espeak_ng_SetRandSeed(seed)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if err != _EE_OK:
            return _SYNTH_FAILED, err, b""
        return _OK, 0, b"".join(self._chunks)

    def synth(self, text: str, voice: str, wpm: int, seed: int) -> tuple[np.ndarray, int]:
        with self._lock:  # one fork at a time: another thread's child would inherit this pipe's ends
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: speak, send, exit without running any of the parent's cleanup
                code = 1
                try:
                    os.close(read_fd)
                    status, err, pcm = self._speak(text, voice, wpm, seed)
                    with os.fdopen(write_fd, "wb") as out:
                        out.write(_HEADER.pack(status, err) + pcm)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            os.close(write_fd)
            try:
                with os.fdopen(read_fd, "rb") as pipe:
                    reply = pipe.read()
            finally:
                _, exit_status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(exit_status) != 0 or len(reply) < _HEADER.size:
            raise TTSError(f"eSpeak NG crashed speaking {text[:40]!r} with voice {voice!r} "
                           f"(exit status {os.waitstatus_to_exitcode(exit_status)})")
        status, err = _HEADER.unpack_from(reply)
        if status == _BAD_VOICE:
            raise TTSError(f"eSpeak NG has no voice {voice!r}", hint="see `espeak-ng --voices=en`")
        if status == _SYNTH_FAILED:
            raise TTSError(f"eSpeak NG could not speak {text[:40]!r} (error {err})")
        pcm = np.frombuffer(reply, np.int16, offset=_HEADER.size)
        return pcm.astype(np.float32) / 32768.0, self.rate


class _CLIEngine:
    """The Debian ``espeak-ng`` command (writes a 22.05 kHz WAV), one process per utterance."""

    name = "espeak-ng CLI"

    def __init__(self):
        self.exe = shutil.which("espeak-ng")
        if self.exe is None:
            raise OSError("espeak-ng not on PATH")
        # -D ("deterministic random mode", eSpeak NG >= 1.52) seeds the noise generator with 1.
        usage = subprocess.run([self.exe, "--help"], capture_output=True, text=True, check=False).stdout
        self.deterministic = "\n-D" in usage

    def synth(self, text: str, voice: str, wpm: int, seed: int) -> tuple[np.ndarray, int]:
        import soundfile

        if seed != 1:
            raise TTSError(f"the espeak-ng command cannot seed its noise with {seed} (only with 1, -D)",
                           hint="use seed=1, or install espeakng-loader for any seed")
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            flags = ["-D"] if self.deterministic else []
            proc = subprocess.run([self.exe, *flags, "-v", voice, "-s", str(int(wpm)), "-w", str(wav), "--", text],
                                  capture_output=True, text=True)
            if proc.returncode != 0 or not wav.exists():
                raise TTSError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()[:200]}")
            audio, sr = soundfile.read(str(wav), dtype="float32")
        return audio, int(sr)


_LIBRARY: _LibraryEngine | None = None


def _library_engine() -> _LibraryEngine:
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = _LibraryEngine()
    return _LIBRARY


class Synthesizer:
    """``synthesize(text, voice, wpm, seed) -> float32 (n,) at 16 kHz``, leading/trailing silence trimmed."""

    def __init__(self, engine: str = "auto"):
        errors = []
        order = {"auto": (_library_engine, _CLIEngine), "library": (_library_engine,), "cli": (_CLIEngine,)}
        if engine not in order:
            raise TTSError(f"unknown TTS engine {engine!r}", hint="use auto, library or cli")
        for make in order[engine]:
            try:
                self.engine = make()
                break
            except (OSError, ImportError, AttributeError) as e:
                errors.append(f"{'espeak-ng CLI' if make is _CLIEngine else 'espeakng-loader'}: {e}")
        else:
            raise TTSError("eSpeak NG is not available (" + "; ".join(errors) + ")",
                           hint="pip install 'whisper-llada-jax[demo]', or apt-get install espeak-ng")

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def deterministic(self) -> bool:
        """Whether every voice's output is a pure function of the arguments of ``synthesize``."""
        return self.engine.deterministic

    def synthesize(self, text: str, voice: str = "en-us", wpm: int = 160, seed: int = 1) -> np.ndarray:
        """``seed`` seeds eSpeak NG's noise generator (breath and Klatt voices)."""
        audio, sr = self.engine.synth(text, voice, wpm, seed)
        audio = resample(audio, sr, SAMPLE_RATE)
        return _trim_silence(audio)


def _trim_silence(audio: np.ndarray, threshold: float = 1e-3, margin: int = SAMPLE_RATE // 20) -> np.ndarray:
    """Drops leading/trailing near-silence, keeping a 50 ms margin (eSpeak pads generously)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    return audio[max(0, loud[0] - margin): loud[-1] + 1 + margin]

"""Text to speech with eSpeak NG, from PyPI (``espeakng-loader``) or the Debian CLI.

``espeakng-loader`` ships ``libespeak-ng.so`` and its voice data; we drive the C API with
ctypes in synchronous mode and collect the 16-bit samples from the synth callback. The
library keeps global state: it is initialised once per process and shared by every
``Synthesizer`` there (initialising twice, or a rejected voice name, changes later output by a
few samples, so the corpus builder synthesises in fresh worker processes). When the library cannot be loaded, the ``espeak-ng`` command is used instead.
Output is float32 mono at 16 kHz (eSpeak NG speaks at 22.05 kHz; resampled with soxr).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
import threading
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

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


class TTSError(UserError):
    """eSpeak NG is not available or rejected a voice/text."""


class _LibraryEngine:
    """libespeak-ng from espeakng-loader, driven through its C API."""

    name = "espeakng-loader"

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise OSError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive on self
        self.lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _collect(self, wav, n, events):
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, voice: str, wpm: int) -> tuple[np.ndarray, int]:
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise TTSError(f"eSpeak NG has no voice {voice!r}", hint="see `espeak-ng --voices=en`")
            self.lib.espeak_SetParameter(_ESPEAK_RATE, int(wpm), 0)
            self._chunks = []
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise TTSError(f"eSpeak NG could not speak {text[:40]!r} (error {err})")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0, self.rate


class _CLIEngine:
    """The Debian ``espeak-ng`` command (writes a 22.05 kHz WAV)."""

    name = "espeak-ng CLI"

    def __init__(self):
        self.exe = shutil.which("espeak-ng")
        if self.exe is None:
            raise OSError("espeak-ng not on PATH")

    def synth(self, text: str, voice: str, wpm: int) -> tuple[np.ndarray, int]:
        import soundfile

        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            proc = subprocess.run([self.exe, "-v", voice, "-s", str(int(wpm)), "-w", str(wav), "--", text],
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
    """``synthesize(text, voice, wpm) -> float32 (n,) at 16 kHz``, leading/trailing silence trimmed."""

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

    def synthesize(self, text: str, voice: str = "en-us", wpm: int = 160) -> np.ndarray:
        audio, sr = self.engine.synth(text, voice, wpm)
        audio = resample(audio, sr, SAMPLE_RATE)
        return _trim_silence(audio)


def _trim_silence(audio: np.ndarray, threshold: float = 1e-3, margin: int = SAMPLE_RATE // 20) -> np.ndarray:
    """Drops leading/trailing near-silence, keeping a 50 ms margin (eSpeak pads generously)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    return audio[max(0, loud[0] - margin): loud[-1] + 1 + margin]

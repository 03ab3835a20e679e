"""eSpeak NG synthesis (espeakng-loader library and the CLI fallback), the sentence generator
and the cached, deterministic demo corpus."""

import json
import os
import stat
import sys

import numpy as np
import pytest

from whisper_llada_jax.audio.io import load_audio
from whisper_llada_jax.demo import corpus as corpus_mod
from whisper_llada_jax.demo import tts
from whisper_llada_jax.demo.corpus import DEFAULT_VOICES, build_corpus, load_cached
from whisper_llada_jax.demo.text_corpus import generate_sentences, spell_number, spell_time, split_sentences


def test_spelled_numbers_and_times():
    assert [spell_number(n) for n in (0, 13, 40, 47, 100, 305, 999)] == [
        "zero", "thirteen", "forty", "forty seven", "one hundred", "three hundred and five",
        "nine hundred and ninety nine"]
    assert spell_time(7, 0) == "seven o'clock" and spell_time(9, 5) == "nine oh five"
    assert spell_time(11, 45) == "eleven forty five"


def test_sentences_deterministic_unique_disjoint():
    a = split_sentences(2000, 200, 200, seed=0)
    assert a == split_sentences(2000, 200, 200, seed=0)
    assert a != split_sentences(2000, 200, 200, seed=1)
    assert [len(a[s]) for s in ("train", "val", "test")] == [2000, 200, 200]
    train, val, test = set(a["train"]), set(a["val"]), set(a["test"])
    assert len(train) == 2000 and not (train & test) and not (train & val) and not (val & test)
    # Varied: many sentence openings and a real vocabulary, not one template.
    pool = generate_sentences(2400, seed=3)
    assert len(set(pool)) == 2400
    assert len({" ".join(s.split()[:2]) for s in pool}) > 100
    assert len({w for s in pool for w in s.split()}) > 250


def test_library_engine_speaks_every_default_voice():
    synth = tts.Synthesizer("library")
    assert synth.name == "espeakng-loader"
    lengths = []
    for voice in DEFAULT_VOICES:
        audio = synth.synthesize("Please close the window.", voice, 160)
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.all(np.isfinite(audio))
        assert 0.8 < len(audio) / 16000 < 3.0, voice
        assert 0.05 < np.abs(audio).max() <= 1.2 and np.sqrt(np.mean(audio ** 2)) > 0.01
        lengths.append(len(audio))
    # Speed is honoured: the same text at 100 wpm is much longer than at 250 wpm.
    slow = synth.synthesize("Please close the window before it rains.", "en-us", 100)
    fast = synth.synthesize("Please close the window before it rains.", "en-us", 250)
    assert len(slow) > 1.6 * len(fast)
    with pytest.raises(tts.TTSError):
        synth.synthesize("hello", "no-such-voice", 160)


def test_library_utterance_depends_only_on_its_arguments():
    """eSpeak NG carries state between utterances (pitch-flutter phase, noise generator, echo):
    the same clip spoken after different clips in one process must still be the same samples."""
    synth = tts.Synthesizer("library")
    plain = ("Sarah cleaned an empty ticket at the park last week.", "en-us", 154)
    breathy = ("Please fix the heavy bottle before Friday.", "en+f3", 170)  # breath noise and echo
    other = ("The train to Boston left at nine fifteen in the evening.", "en-gb-scotland", 133)
    first = {c: synth.synthesize(*c) for c in (plain, breathy)}
    for before in ([plain], [other], [breathy, other, breathy]):
        for clip in (plain, breathy):
            for c in before:
                synth.synthesize(*c)
            np.testing.assert_array_equal(synth.synthesize(*clip), first[clip], err_msg=f"{clip[1]} after {len(before)}")
    # The noise seed is honoured (and is what makes breathy voices repeatable).
    assert not np.array_equal(synth.synthesize(*breathy, seed=2), first[breathy])
    np.testing.assert_array_equal(synth.synthesize(*breathy, seed=1), first[breathy])


def test_library_child_failure_is_one_clear_error(monkeypatch):
    synth = tts.Synthesizer("library")

    def crash(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(synth.engine, "_speak", crash)  # runs in the forked child
    with pytest.raises(tts.TTSError, match="crashed speaking 'hello'"):
        synth.synthesize("hello", "en-us", 160)
    monkeypatch.undo()
    assert len(synth.synthesize("hello", "en-us", 160)) > 1000  # the parent's engine is unharmed


_FAKE_ESPEAK = """#!{python}
import sys, numpy as np, soundfile
args = sys.argv[1:]
if args == ["--help"]:
    print("eSpeak NG text-to-speech: 1.52.0\\n-D\\t   Enable deterministic random mode")
    sys.exit(0)
out = args[args.index("-w") + 1]
open(r"{args_file}", "w").write(" ".join(args))
t = np.arange(22050) / 22050
soundfile.write(out, 0.5 * np.sin(2 * np.pi * 300 * t), 22050)
"""


def test_cli_fallback_when_library_is_missing(tmp_path, monkeypatch):
    exe = tmp_path / "espeak-ng"
    exe.write_text(_FAKE_ESPEAK.format(python=sys.executable, args_file=tmp_path / "called.args"))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    def broken(self):
        raise OSError("libespeak-ng.so: cannot open shared object file")

    monkeypatch.setattr(tts, "_LIBRARY", None)
    monkeypatch.setattr(tts._LibraryEngine, "__init__", broken)
    synth = tts.Synthesizer("auto")
    assert synth.name == "espeak-ng CLI" and synth.deterministic
    audio = synth.synthesize("hello there", "en+f3", 150)
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) < 5  # 1 s at 22.05 kHz -> 16 kHz
    assert (tmp_path / "called.args").read_text().split()[:5] == ["-D", "-v", "en+f3", "-s", "150"]
    with pytest.raises(tts.TTSError, match="only with 1"):
        synth.synthesize("hello there", "en+f3", 150, seed=7)
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(tts.TTSError, match="not available"):
        tts.Synthesizer("auto")


def test_corpus_plan_uses_many_voices_and_speeds():
    params = corpus_mod.corpus_params(2000, 200, 200, 0, DEFAULT_VOICES, (130, 190))
    plan = corpus_mod._plan(params)
    utts = [u for s in plan.values() for u in s]
    assert len(utts) == 2400 and len({u["id"] for u in utts}) == 2400
    assert len({u["voice"] for u in utts}) >= 6
    wpm = [u["wpm"] for u in utts]
    assert min(wpm) >= 130 and max(wpm) <= 190 and len(set(wpm)) > 40
    assert plan == corpus_mod._plan(dict(params))


def test_build_corpus_deterministic_cached_and_sane(tmp_path):
    kw = dict(n_train=10, n_val=3, n_test=3, seed=5, progress=False)
    a = build_corpus(tmp_path / "a", workers=2, **kw)
    assert a.counts == {"train": 10, "val": 3, "test": 3} and a.engine == "espeakng-loader"
    rows = {s: [json.loads(x) for x in a.manifest(s).read_text().splitlines()] for s in ("train", "val", "test")}
    texts = {s: {r["text"] for r in rows[s]} for s in rows}
    assert not texts["test"] & texts["train"] and not texts["val"] & texts["train"]
    for r in rows["train"] + rows["test"]:
        audio = load_audio(a.root / r["audio"])
        assert 0.7 < len(audio) / 16000 < 8.0 and abs(len(audio) / 16000 - r["seconds"]) < 1e-3
        assert np.abs(audio).max() > 0.05 and np.sqrt(np.mean(audio ** 2)) > 0.01
    assert a.max_seconds == max(r["seconds"] for s in rows.values() for r in s) or \
        abs(a.max_seconds - max(r["seconds"] for s in rows.values() for r in s)) < 1e-3
    # Same seed, another folder, one worker (so every clip follows other clips than with two):
    # the same manifests and the same files, byte for byte.
    b = build_corpus(tmp_path / "b", workers=1, **kw)
    for s in ("train", "val", "test"):
        assert a.manifest(s).read_text() == b.manifest(s).read_text()
    for r in rows["train"] + rows["val"] + rows["test"]:
        assert (a.root / r["audio"]).read_bytes() == (b.root / r["audio"]).read_bytes(), r
    first = rows["train"][0]["audio"]
    # Cached: a second call with the same parameters synthesises nothing.
    mtime = (a.root / first).stat().st_mtime_ns
    assert build_corpus(tmp_path / "a", workers=2, **kw) == a
    assert (a.root / first).stat().st_mtime_ns == mtime
    assert load_cached(tmp_path / "a", corpus_mod.corpus_params(11, 3, 3, 5, DEFAULT_VOICES, (130, 190))) is None

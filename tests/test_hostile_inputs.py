"""Hostile input data: audio files and manifests that are damaged, mistyped or odd but valid.

Every unusable clip gives one AudioError line naming the file and saying what is wrong (never a
traceback, never garbage features); usable odd clips (any rate, width, channel count; silence)
load. Per command (docs/decoding.md, "Bad input"): ``transcribe`` / ``deliberate`` check every
clip before a model loads and refuse with one error listing them all; ``evaluate`` / ``tune`` /
``cascade`` / training skip a bad clip, name it, and say over how many clips a WER was scored.
"""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from whisper_llada_jax import cli
from whisper_llada_jax.audio.io import load_audio, load_audio_files
from whisper_llada_jax.commands.transcribe import read_transcribe_manifest
from whisper_llada_jax.data.manifest import read_first_passes, read_manifest
from whisper_llada_jax.data.pipeline import decode_audio
from whisper_llada_jax.data.sources import librispeech_folder
from whisper_llada_jax.errors import AudioError, DataError
from tests._data_helpers import write_clip
from tests.test_output_safety import _fails, model_dir  # noqa: F401  (the tiny MODEL_DIR fixture)

SR = 16000


def _noise(n, scale=0.1, seed=0):
    return (scale * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _float_wav(value, where=100):
    def make(p):
        a = _noise(SR)
        a[where] = value
        sf.write(p, a, SR, subtype="FLOAT")
    return make


def _symlink(p):
    os.symlink(p.parent / "gone.wav", p)


def _fifo(p):
    os.mkfifo(p)


# name -> (writer, words the one-line error must hold)
UNUSABLE = {
    "zero_bytes.wav": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "zero_bytes.flac": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "no_samples.wav": (lambda p: sf.write(p, np.zeros(0, np.float32), SR), "no samples"),
    "one_sample.wav": (lambda p: sf.write(p, np.array([0.1], np.float32), SR), "shorter than one 10 ms frame"),
    "one_sample_44k.wav": (lambda p: sf.write(p, np.array([0.1], np.float32), 44100), "shorter than one"),
    "text.wav": (lambda p: p.write_text("this is not audio\n"), "cannot read audio"),
    "image.wav": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200)), "cannot read audio"),
    "random.mp3": (lambda p: p.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes()),
                   "unrecognised format or damaged data"),
    "folder.wav": (lambda p: p.mkdir(), "is a directory"),
    "dangling.wav": (_symlink, "broken symbolic link"),
    "loop.wav": (lambda p: os.symlink(p.name, p), "symbolic link loop (to loop.wav)"),
    "pipe.wav": (_fifo, "not a regular file"),
    "nan.wav": (_float_wav(np.nan), "1 NaN/inf sample"),
    "inf.wav": (_float_wav(-np.inf), "1 NaN/inf sample"),
    "spike_1e30.wav": (_float_wav(1e30), "peaks at 1e+30"),
    "all_1e30.wav": (lambda p: sf.write(p, _noise(SR) * 1e30, SR, subtype="FLOAT"), "far outside the [-1, 1]"),
    "int_scale.wav": (lambda p: sf.write(p, _noise(SR) * 32767, SR, subtype="FLOAT"), "integer-scale"),
    "double_1e300.wav": (lambda p: sf.write(p, _noise(SR).astype(np.float64) * 1e300, SR, subtype="DOUBLE"),
                         "NaN/inf"),  # overflows float32
    "rate_1hz.wav": (lambda p: sf.write(p, _noise(100), 1), "sample rate 1 Hz"),
    "new\nline.wav": (lambda p: p.write_bytes(b""), "new\\nline.wav: audio file is empty"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    for name, (make, _) in UNUSABLE.items():
        make(d / name)
    good = d / "good.flac"
    write_clip(good, 1.0, seed=3)
    truncated = d / "truncated.flac"
    truncated.write_bytes(good.read_bytes()[:200])
    whole = d / "whole.wav"
    sf.write(whole, _noise(SR), SR, subtype="PCM_16")
    (d / "cut_short.wav").write_bytes(whole.read_bytes()[:SR])  # a copy interrupted half-way
    return d


CUT = {"truncated.flac": "cannot read audio", "cut_short.wav": "WAV file is cut short: its header declares 32000 bytes"}


@pytest.mark.parametrize("name", sorted(UNUSABLE) + sorted(CUT))
def test_unusable_audio_is_one_line_naming_the_file(hostile, name):
    path = hostile / name
    words = UNUSABLE[name][1] if name in UNUSABLE else CUT[name]
    with pytest.raises(AudioError) as e:
        load_audio(path)
    msg = str(e.value)
    assert words in msg and "\n" not in msg, msg
    assert repr(str(path))[1:-1] in msg or str(path) in msg
    assert e.value.__cause__ is None or e.value.__suppress_context__


@pytest.mark.parametrize("write, rate, channels", [
    (lambda p, a, r: sf.write(p, a, r, subtype="PCM_U8"), 16000, 1),
    (lambda p, a, r: sf.write(p, a, r, subtype="PCM_S8", format="FLAC"), 16000, 1),
    (lambda p, a, r: sf.write(p, a, r, subtype="PCM_24"), 16000, 1),
    (lambda p, a, r: sf.write(p, a, r, subtype="PCM_32"), 16000, 1),
    (lambda p, a, r: sf.write(p, a, r), 8000, 1),
    (lambda p, a, r: sf.write(p, a, r), 44100, 1),
    (lambda p, a, r: sf.write(p, a, r, format="FLAC"), 96000, 1),
    (lambda p, a, r: sf.write(p, a, r), 16000, 2),
    (lambda p, a, r: sf.write(p, a, r), 16000, 6),
    (lambda p, a, r: sf.write(p, 3.0 * a, r, subtype="FLOAT"), 16000, 1),  # overs a float file may have
])
def test_odd_but_valid_audio_loads_as_16k_mono(tmp_path, write, rate, channels):
    t = np.arange(rate // 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    path = tmp_path / "x y ü -z.wav"  # spaces, unicode, a dash
    write(path, data, rate)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.shape == (8000,) and np.isfinite(out).all()
    peak = np.abs(out[500:-500]).max()
    assert 0.45 < peak / (3.0 if peak > 1 else 1.0) < 0.56  # the tone's level survives width, rate, mixdown


def test_a_file_name_that_is_not_utf8(tmp_path, capsys):
    """Linux file names are bytes: one that is not UTF-8 still reads; transcribe, whose output
    names every file in UTF-8 JSON, refuses it up front instead of failing while writing."""
    write_clip(tmp_path / "x.wav", 0.5, seed=4)
    path = tmp_path / os.fsdecode(b"caf\xe9.wav")
    os.rename(tmp_path / "x.wav", path)
    assert load_audio(path).shape == (8000,)
    _fails(capsys, ["transcribe", "--whisper", "bundled:tiny.en", str(path)], "caf\\udce9.wav: the file name is not UTF-8")


def test_a_wav_whose_header_never_got_its_length_is_whole(tmp_path):
    """Streaming writers put 0xFFFFFFFF (length unknown) in the header: such a file is whole."""
    path = tmp_path / "streamed.wav"
    sf.write(path, _noise(SR), SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    at = raw.find(b"data") + 4
    raw[at:at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    assert len(load_audio(path)) == SR


def test_silence_and_dc_offset_load(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(SR, np.float32), SR)
    sf.write(tmp_path / "dc.wav", np.full(SR, 0.5, np.float32), SR)
    assert not load_audio(tmp_path / "silence.wav").any()
    np.testing.assert_allclose(load_audio(tmp_path / "dc.wav"), 0.5, atol=1e-4)


def test_batch_check_lists_every_bad_file_once(hostile):
    paths = [hostile / "good.flac", hostile / "nan.wav", hostile / "folder.wav", hostile / "zero_bytes.wav"]
    with pytest.raises(AudioError) as e:
        load_audio_files(paths)
    msg = str(e.value)
    assert msg.startswith("3 of 4 audio files cannot be used") and "\n" not in msg
    assert all(str(hostile / n) in msg for n in ("nan.wav", "folder.wav", "zero_bytes.wav"))
    assert "good.flac" not in msg
    write_clip(hostile / "six_s.wav", 6.0, seed=1)
    with pytest.raises(AudioError, match=r"six_s\.wav: audio is 6\.0 s, longer than the 4 s limit"):
        load_audio_files([hostile / "good.flac", hostile / "six_s.wav"], max_seconds=4.0)
    assert len(load_audio_files([hostile / "good.flac"] * 2)) == 2


def test_in_memory_audio_from_datasets(tmp_path):
    """tfds' default Audio feature stores 16-bit samples in int64: scaled as 16-bit, not by 2**63
    (which made every clip silence); bytes and arrays are checked like files."""
    tone = (0.5 * np.sin(2 * np.pi * 300 * np.arange(SR) / SR)).astype(np.float32)
    as_int64 = np.round(tone * 32767).astype(np.int64)
    np.testing.assert_allclose(decode_audio(as_int64), tone, atol=1e-4)
    np.testing.assert_allclose(decode_audio(as_int64.astype(np.int16)), tone, atol=1e-4)
    np.testing.assert_allclose(decode_audio((np.round(tone * 127) + 128).astype(np.uint8)), tone, atol=1e-2)
    sf.write(tmp_path / "t.flac", tone, SR)
    np.testing.assert_allclose(decode_audio((tmp_path / "t.flac").read_bytes()), tone, atol=1e-4)
    sf.write(tmp_path / "t.wav", tone, SR, subtype="PCM_16")
    cut_short = (tmp_path / "t.wav").read_bytes()[:SR]
    for bad, words in ((cut_short, "WAV file is cut short"), (tone * 1e30, "peaks at"), (np.array([np.nan] * 400, np.float32), "NaN/inf"),
                       (np.zeros(0, np.float32), "no samples"), (np.array(["a"] * 400), "not PCM samples"),
                       (np.zeros((2, 2, 400), np.float32), "shape"), (b"not audio", "cannot decode audio bytes"),
                       (np.array([2 ** 40] * 400, np.int64), "32-bit PCM range")):
        with pytest.raises(AudioError, match=rf"utt-7: .*{words}"):
            decode_audio(bad, where="utt-7")
    with pytest.raises(AudioError, match="sample rate 1 Hz"):
        decode_audio(tone, sample_rate=1, where="utt-7")


# ----------------------------------------------------------------------------- manifests
def _line(**entry):
    return json.dumps(entry, ensure_ascii=False)


def test_manifest_encodings_and_line_ends(tmp_path):
    """A byte-order mark, CRLF, blank (trailing) lines and a transcript holding U+2028 (which
    JSON writers leave unescaped; str.splitlines broke the record in two) all read."""
    write_clip(tmp_path / "a.flac", 0.5, 1)
    write_clip(tmp_path / "b.flac", 0.5, 2)
    body = "\r\n".join([_line(id="a", audio="a.flac", text="x\u2028y"), _line(id=0, audio="b.flac", text="z")])
    path = tmp_path / "m.jsonl"
    path.write_bytes(("\ufeff" + body + "\r\n\r\n  \n").encode())
    for read in (read_manifest, read_transcribe_manifest):
        recs = read(path)
        assert [(r["id"], r["text"]) for r in recs] == [("a", "x\u2028y"), ("0", "z")]  # id 0 is an id
        assert recs[1]["audio"] == str(tmp_path / "b.flac")
    (tmp_path / "ann.json").write_text("\ufeff" + json.dumps({"annotation": [{"path": "a.flac", "text": "x"}]}))
    assert read_manifest(tmp_path / "ann.json")[0]["id"] == "a"
    fp = tmp_path / "fp.jsonl"
    fp.write_bytes(("\ufeff" + _line(id="a", hypothesis="h\u2028i") + "\r\n").encode())
    assert read_first_passes(fp) == {"a": "h\u2028i"}


@pytest.mark.parametrize("fields, want", [
    ({"hypothesis": "a b"}, "a b"),  # what transcribe writes
    ({"first_pass": "a b"}, "a b"),
    ({"hypothesis": "a b", "first_pass": None}, "a b"),  # null: absent
    ({"hypothesis": ""}, ""),  # an empty first pass (a silent clip)
    ({"hypothesis": "x", "first_pass": "y"}, "both 'hypothesis' and 'first_pass'"),  # a deliberation's output
    ({"hypothesis": None}, "expected a JSON object with id and hypothesis"),
    ({"hypothesis": 3}, "'hypothesis' must be a string"),
])
def test_one_first_pass_reader_for_deliberate_and_evaluate(tmp_path, fields, want):
    """deliberate and evaluate --first-pass read first-pass files with one reader (they used to
    pick different fields from a deliberation's output, and read null differently)."""
    from whisper_llada_jax.errors import DataError

    fp = tmp_path / "fp.jsonl"
    fp.write_text(json.dumps({"id": "u1", **fields}) + "\n")
    if "'" in want or "expected" in want:
        with pytest.raises(DataError, match="fp.jsonl:1") as err:
            read_first_passes(fp)
        assert want in str(err.value)
    else:
        assert read_first_passes(fp) == {"u1": want}


@pytest.mark.parametrize("entry, words", [
    ({"id": "a", "audio": "a.flac", "text": ["x", "y"]}, "'text' must be a string, got list"),
    ({"id": "a", "audio": "a.flac", "text": 5}, "'text' must be a string, got int"),
    ({"id": "a", "audio": 5, "text": "x"}, "'audio' must be a string"),
    ({"id": "a", "audio": "", "text": "x"}, "'audio' is empty"),
    ({"id": {"k": 1}, "audio": "a.flac", "text": "x"}, "'id' must be a string or an integer, got dict"),
    ({"id": True, "audio": "a.flac", "text": "x"}, "got bool"),
    ({"id": " ", "audio": "a.flac", "text": "x"}, "'id' is empty"),
    ({"id": "a", "audio": "a.flac", "text": "x", "first_pass": 5}, "'first_pass' must be a string"),
    ('{"id": "a", "audio": "a.flac", "text": NaN}', "NaN is not valid JSON"),
    ('["a.flac", "x"]', "expected a JSON object, got list"),
    ('{"id": "a\\udce9", "audio": "a.flac", "text": "x"}', "'id' holds an unpaired surrogate escape"),
    ('{"id": "a", "audio": "a.flac", "text": "caf\\udce9"}', "'text' holds an unpaired surrogate escape"),
])
def test_manifest_wrong_types_name_the_line_and_field(tmp_path, entry, words):
    path = tmp_path / "m.jsonl"
    path.write_text(_line(id="ok", audio="ok.flac", text="fine") + "\n"
                    + (entry if isinstance(entry, str) else _line(**entry)) + "\n")
    readers = [read_manifest] + ([] if "first_pass" in words else [read_transcribe_manifest])
    for read in readers:
        with pytest.raises(DataError, match=rf"m\.jsonl:2: .*{words}".replace("[", r"\[")):
            read(path)


def test_one_manifest_reader_for_every_command(tmp_path):
    """transcribe reads what evaluate reads (NeMo-style ``audio_filepath``; an unused
    ``duration``, even a string, is ignored: the audio's own length counts), the reference
    optional; a duplicate id names its line."""
    path = tmp_path / "m.jsonl"
    path.write_text(_line(audio_filepath="a.flac", duration="3.2", text="x") + "\n"
                    + _line(audio_filepath="b.flac", duration=1.5) + "\n")
    assert read_transcribe_manifest(path) == [{"id": "a", "audio": str(tmp_path / "a.flac"), "text": "x"},
                                              {"id": "b", "audio": str(tmp_path / "b.flac")}]
    assert read_manifest(path.with_name("m.jsonl"), require_text=False)[0]["id"] == "a"
    (tmp_path / "m.csv").write_text("id,audio,text\na,a.flac,x\n")
    with pytest.raises(DataError, match=r"m\.csv: CSV / TSV manifests are not read"):
        read_transcribe_manifest(tmp_path / "m.csv")
    path.write_text(_line(id="u", audio="a.flac") + "\n" + _line(id="u", audio="b.flac") + "\n")
    with pytest.raises(DataError, match=r"m\.jsonl:2: duplicate id 'u'"):
        read_transcribe_manifest(path)


def test_manifest_path_relative_to_the_cwd_is_named(tmp_path, monkeypatch):
    (tmp_path / "lists").mkdir()
    write_clip(tmp_path / "clips" / "a.flac", 0.5, 1)
    path = tmp_path / "lists" / "m.jsonl"
    path.write_text(_line(id="a", audio="clips/a.flac") + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"m\.jsonl:1: clips/a\.flac is not in the manifest's folder .* working directory"):
        read_transcribe_manifest(path)


def test_deliberate_manifest_may_leave_out_the_reference(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(_line(id="a", audio="a.flac") + "\n")
    with pytest.raises(DataError, match=r"m\.jsonl:1: needs a \"text\" field"):
        read_manifest(path)
    assert read_manifest(path, require_text=False) == [{"id": "a", "audio": str(tmp_path / "a.flac")}]


def test_a_source_spec_without_a_path_is_refused_not_read_as_the_cwd():
    from whisper_llada_jax.data.sources import parse_source

    for spec in ("manifest:", "librispeech: "):
        with pytest.raises(DataError, match="names no path"):
            parse_source(spec)


def test_librispeech_transcripts_not_utf8_are_a_data_error(tmp_path):
    d = tmp_path / "19" / "198"
    d.mkdir(parents=True)
    (d / "19-198.trans.txt").write_bytes("19-198-0000 CAF\xc9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"19-198\.trans\.txt: cannot read the transcript file"):
        librispeech_folder(tmp_path)


# ----------------------------------------------------------------------------- commands
def _tripwire(monkeypatch, module, name):
    def boom(*a, **k):
        raise AssertionError(f"{name} ran: the bad input should have been refused before")
    monkeypatch.setattr(module, name, boom)


def test_transcribe_refuses_every_bad_clip_before_a_model_loads(model_dir, hostile, tmp_path, capsys,  # noqa: F811
                                                                monkeypatch):
    """--model: a clip longer than the model's window (4 s here; it cannot chunk), a folder, NaN
    samples: one error naming all three, the hint pointing at --whisper; no output file, and
    nothing decoded (so nothing is ever written for some files and not others)."""
    from whisper_llada_jax.inference import driver, recognizer

    _tripwire(monkeypatch, driver, "transcribe_files")
    _tripwire(monkeypatch, recognizer.WhisperRecognizer, "from_dir")
    write_clip(hostile / "long.wav", 6.0, seed=2)
    bad = [hostile / "long.wav", hostile / "folder.wav", hostile / "nan.wav"]
    out = tmp_path / "out.jsonl"
    err = _fails(capsys, ["transcribe", "--model", str(model_dir), str(hostile / "good.flac"), *map(str, bad),
                          "-o", str(out)], "3 of 4 audio files cannot be used",
                 "long.wav: audio is 6.0 s, longer than the 4 s limit", "folder.wav: is a directory", "nan.wav: audio holds",
                 "--whisper")
    assert "good.flac" not in err.splitlines()[0] and not out.exists()
    # --whisper chunks long audio, but the folder and the NaN clip are refused the same way
    err = _fails(capsys, ["transcribe", "--whisper", "bundled:tiny.en", str(hostile / "good.flac"), *map(str, bad)],
                 "2 of 4 audio files cannot be used", "folder.wav", "nan.wav")
    assert "long.wav" not in err and capsys.readouterr().out == ""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(_line(id="a", audio=str(hostile / "spike_1e30.wav")) + "\n")
    _fails(capsys, ["transcribe", "--whisper", "bundled:tiny.en", "--manifest", str(manifest)], "peaks at 1e+30")


def test_deliberate_refuses_a_bad_clip_before_the_model_loads(model_dir, hostile, tmp_path, capsys,  # noqa: F811
                                                               monkeypatch):
    from whisper_llada_jax.inference import driver

    _tripwire(monkeypatch, driver, "load_model_dir")
    write_clip(hostile / "long.wav", 6.0, seed=2)
    manifest, first = tmp_path / "m.jsonl", tmp_path / "fp.jsonl"
    manifest.write_text(_line(id="a", audio=str(hostile / "good.flac"), text="x") + "\n"
                        + _line(id="b", audio=str(hostile / "long.wav"), text="y") + "\n")
    first.write_text(_line(id="a", hypothesis="x") + "\n" + _line(id="b", hypothesis="y") + "\n")
    _fails(capsys, ["deliberate", "--model", str(model_dir), "--manifest", str(manifest), "--first-pass", str(first),
                    "-o", str(tmp_path / "o.jsonl")], "long.wav: audio is 6.0 s, longer than the 4 s limit")
    assert not (tmp_path / "o.jsonl").exists()


def _fake_decoder(monkeypatch):
    from whisper_llada_jax.inference import driver

    def fake_run_decode(loaded, batch, cfg, rng):
        return [{"hypothesis": t, "tokens": [], "nfe": 1} for t in batch["text"]]
    monkeypatch.setattr(driver, "run_decode", fake_run_decode)


def test_evaluate_skips_names_and_counts_bad_clips(model_dir, hostile, tmp_path, capsys, monkeypatch):  # noqa: F811
    """A clip longer than the model's window is skipped (too_long), not cut and scored against
    its whole reference; unreadable clips and empty transcripts are skipped; results.md and
    results.json say the WER covers 1 of 5 clips and which were left out."""
    _fake_decoder(monkeypatch)
    write_clip(hostile / "long.wav", 6.0, seed=2)
    manifest = tmp_path / "m.jsonl"
    rows = [("good", "good.flac", "a b"), ("long", "long.wav", "long words"), ("nan", "nan.wav", "n"),
            ("gone", "missing.wav", "g"), ("silent_ref", "good.flac", "")]
    manifest.write_text("".join(_line(id=i, audio=str(hostile / a), text=t) + "\n" for i, a, t in rows))
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", f"manifest:{manifest}", "--out", str(out),
                     "--decode", "gen_len=8,steps=8"]) == 0
    err = capsys.readouterr().err
    for uid, reason in (("long", "too_long"), ("nan", "unreadable"), ("gone", "unreadable"),
                        ("silent_ref", "empty_transcript")):
        assert f"skipped {uid} ({reason})" in err, err
    assert "skipped 4 of 5 utterance(s)" in err
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"][0]["utterances"] == 1 and doc["results"][0]["data"]["truncated"] == 0
    assert sorted(s["id"] for s in doc["skipped"]) == ["gone", "long", "nan", "silent_ref"]
    assert "scored 1 of 5 utterances; skipped: too_long 1, empty_transcript 1, unreadable 2" in \
        (out / "results.md").read_text()
    # nothing usable: an error, not a 0 % WER over no clips
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(_line(id="nan", audio=str(hostile / "nan.wav"), text="n") + "\n")
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", f"manifest:{only_bad}", "--out",
                     str(tmp_path / "e2"), "--decode", "gen_len=8,steps=8"]) == 2
    err = capsys.readouterr().err
    assert "skipped nan (unreadable)" in err and "Traceback" not in err
    assert "error: " in err and "no utterance could be decoded (scored 0 of 1 utterances" in err
    assert not (tmp_path / "e2" / "results.json").exists()


def test_evaluate_refuses_a_missing_first_pass_before_decoding(model_dir, hostile, tmp_path, capsys,  # noqa: F811
                                                               monkeypatch):
    from whisper_llada_jax.inference import driver

    _tripwire(monkeypatch, driver, "run_decode")
    manifest, first = tmp_path / "m.jsonl", tmp_path / "fp.jsonl"
    manifest.write_text("".join(_line(id=i, audio=str(hostile / "good.flac"), text="a") + "\n" for i in "ab"))
    first.write_text(_line(id="a", hypothesis="a") + "\n" + _line(id="zz", hypothesis="z") + "\n")
    _fails(capsys, ["evaluate", "--model", str(model_dir), "--data", f"manifest:{manifest}", "--first-pass",
                    str(first), "--decode", "strategy=diffusion,gen_len=8,steps=8", "--out", str(tmp_path / "e")],
           "no first-pass transcript for 1 of 2 utterance(s): 'b'")


def test_tune_names_the_clips_it_leaves_out(model_dir, hostile, tmp_path, capsys, monkeypatch):  # noqa: F811
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir
    from whisper_llada_jax.data.sources import ListSource
    from whisper_llada_jax.decoding.config import DecodeConfig
    from whisper_llada_jax.evaluation import tune

    _fake_decoder(monkeypatch)
    src = ListSource([{"id": "good", "audio": str(hostile / "good.flac"), "text": "a b"},
                      {"id": "nan", "audio": str(hostile / "nan.wav"), "text": "n"}])
    fn = tune.dataset_decoder(load_model_dir(model_dir), src)
    cfg = DecodeConfig(gen_len=8, steps=8, block_length=8)
    assert len(fn(cfg).hypotheses) == 1 and len(fn(cfg).hypotheses) == 1
    err = capsys.readouterr().err
    assert err.count("skipped nan (unreadable)") == 1 and "tune: skipped 1 of 2" in err

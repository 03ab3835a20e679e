"""`whisper-llada transcribe`: audio arguments, stdout vs file, long audio chunking, bad
input (one clear line, exit code 2), and the --model branch's wiring to inference.driver.

The full manifest run on the real tiny.en is in test_faster_whisper_parity.py.
"""

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

from whisper_llada_jax import cli
from whisper_llada_jax.assets import BUNDLED_CLIPS
from whisper_llada_jax.audio.io import load_audio
from whisper_llada_jax.config import CONFIG_DIR
from whisper_llada_jax.decoding.config import DecodeConfig
from whisper_llada_jax.evaluation.wer import normalize

CLIPS = BUNDLED_CLIPS.parent
MANIFEST = [json.loads(line) for line in BUNDLED_CLIPS.read_text().splitlines() if line.strip()]
WHISPER = ["transcribe", "--whisper", "bundled:tiny.en", "--batch-size", "8"]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _fails(capsys, argv, match: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert "Traceback" not in err
    assert err.startswith("error: ") and len([x for x in err.splitlines() if x.startswith("error")]) == 1


def test_audio_arguments_to_stdout_and_a_long_file_chunked(tmp_path, capsys):
    """A clip plus a 40 s recording (two 30 s windows) in one call; stdout output."""
    order = [4, 5, 6, 7, 9, 10, 11, 8]  # first and last: clips tiny.en gets word for word
    first, last = MANIFEST[order[0]], MANIFEST[order[-1]]
    gap = np.zeros(16000 * 2, np.float32)
    long = np.concatenate([x for i in order for x in (load_audio(CLIPS / MANIFEST[i]["audio"]), gap)])
    assert 35 * 16000 < len(long) < 45 * 16000
    sf.write(tmp_path / "long.wav", long, 16000)

    argv = WHISPER + [str(CLIPS / first["audio"]), str(tmp_path / "long.wav"), "--output", "-"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    out = _lines(captured.out)
    assert [o["id"] for o in out] == [first["audio"].rsplit(".", 1)[0], "long"]
    assert all("reference" not in o for o in out)
    assert normalize(out[0]["hypothesis"]) == normalize(first["text"])
    long_words = normalize(out[1]["hypothesis"]).split()
    # The start of the first window and the end of the second both made it into the text,
    # and the 5 s overlap did not duplicate the sentence it covers.
    assert long_words[:4] == normalize(first["text"]).split()[:4]
    assert long_words[-4:] == normalize(last["text"]).split()[-4:]
    assert " ".join(long_words).count(normalize(last["text"])) == 1
    assert "transcribing" in captured.err  # tqdm progress bar on stderr, not stdout


def test_manifest_to_file_with_references(tmp_path, capsys):
    sub = tmp_path / "data"
    sub.mkdir()
    for m in MANIFEST[9:11]:
        (sub / m["audio"]).write_bytes((CLIPS / m["audio"]).read_bytes())
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": f"data/{MANIFEST[9]['audio']}", "text": "ref a"}) + "\n\n"
                        + json.dumps({"audio": f"data/{MANIFEST[10]['audio']}"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(WHISPER + ["--manifest", str(manifest), "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    rows = _lines(out.read_text())
    assert [r["id"] for r in rows] == ["a", MANIFEST[10]["audio"].rsplit(".", 1)[0]]
    assert rows[0]["reference"] == "ref a" and "reference" not in rows[1]
    assert rows[0]["audio"] == str(sub / MANIFEST[9]["audio"])
    assert normalize(rows[1]["hypothesis"]) == normalize(MANIFEST[10]["text"])


def test_bad_inputs_one_line_exit_2(tmp_path, capsys):
    good = str(CLIPS / MANIFEST[0]["audio"])
    _fails(capsys, WHISPER + [str(tmp_path / "missing.wav")], "missing.wav: audio file does not exist")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 50)
    _fails(capsys, WHISPER + [str(tmp_path / "corrupt.wav")], "corrupt.wav: cannot read audio")
    (tmp_path / "empty.flac").write_bytes(b"")
    _fails(capsys, WHISPER + [str(tmp_path / "empty.flac")], "empty.flac: audio file is empty")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "audio": good}) + "\n{not json\n")
    _fails(capsys, WHISPER + ["--manifest", str(bad)], f"{bad}:2: not valid JSON")
    bad.write_text(json.dumps({"id": "x", "text": "no audio"}) + "\n")
    _fails(capsys, WHISPER + ["--manifest", str(bad)], f"{bad}:1: needs an \"audio\" path")
    bad.write_text(json.dumps({"id": "x", "audio": good}) + "\n" + json.dumps({"id": "x", "audio": good}) + "\n")
    _fails(capsys, WHISPER + ["--manifest", str(bad)], "duplicate id 'x'")
    bad.write_text(json.dumps({"id": "x", "audio": "nope.flac"}) + "\n")
    _fails(capsys, WHISPER + ["--manifest", str(bad)], f"{tmp_path / 'nope.flac'}: audio file does not exist")
    bad.write_text("\n")
    _fails(capsys, WHISPER + ["--manifest", str(bad)], "manifest holds no utterances")
    _fails(capsys, WHISPER + ["--manifest", str(tmp_path / "none.jsonl")], "manifest does not exist")
    _fails(capsys, WHISPER + ["--manifest", "/dev/null"], "/dev/null: manifest is not a regular file (a pipe or device)")

    _fails(capsys, WHISPER, "no input")
    _fails(capsys, WHISPER + ["--manifest", str(bad), good], "either --manifest or AUDIO")
    _fails(capsys, WHISPER + ["--steps", "8", good], "--steps only apply to --model")
    _fails(capsys, WHISPER + ["--batch-size", "0", good], "--batch-size must be >= 1")
    _fails(capsys, WHISPER + [good, "--output", str(tmp_path)], "--output is a folder")
    _fails(capsys, ["transcribe", "--whisper", str(tmp_path / "nodir"), good], "Whisper directory does not exist")
    (tmp_path / "notwhisper").mkdir()
    _fails(capsys, ["transcribe", "--whisper", str(tmp_path / "notwhisper"), good], "not a Whisper directory")
    with pytest.raises(SystemExit) as e:  # argparse: exactly one of --whisper / --model
        cli.main(["transcribe", good])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["transcribe", "--whisper", "a", "--model", "b", good])
    assert "not allowed with argument" in capsys.readouterr().err


def test_failed_run_leaves_no_output_file(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    good = str(CLIPS / MANIFEST[0]["audio"])
    (tmp_path / "corrupt.wav").write_bytes(b"\x00" * 100)
    assert cli.main(WHISPER + [good, str(tmp_path / "corrupt.wav"), "--output", str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "corrupt.wav"]
    capsys.readouterr()


def test_model_branch_builds_decode_config_and_writes_nfe(tmp_path, capsys, monkeypatch):
    """--model: the flags become a DecodeConfig handed to inference.driver.transcribe_files."""
    from whisper_llada_jax.inference import driver

    seen = {}

    def fake_transcribe_files(model_dir, items, cfg, batch_size, audio=None, **placement):
        seen.update(model_dir=model_dir, items=list(items), cfg=cfg, batch_size=batch_size, audio=audio)
        for i, it in enumerate(seen["items"]):
            yield {"id": it["id"], "hypothesis": f"hyp {i}", "nfe": 10 + i}

    monkeypatch.setattr(driver, "transcribe_files", fake_transcribe_files)
    # only its config is read (the canvas is checked against llm.max_len before any audio; the
    # clips, 2.7 and 3.5 s, against its 4 s window)
    (tmp_path / "config.yaml").write_text((CONFIG_DIR / "model" / "tiny.yaml").read_text())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": m["id"], "audio": str(CLIPS / m["audio"]), "text": m["text"]}) + "\n"
                                for m in MANIFEST[1:3]))
    argv = ["transcribe", "--model", str(tmp_path), "--manifest", str(manifest), "--decoder", "semi_ar",
            "--steps", "32", "--block-length", "32", "--gen-len", "64", "--remasking", "random",
            "--temperature", "0.5", "--threshold", "0.9", "--cache", "dual", "--audio-span", "trimmed",
            "--batch-size", "4"]
    assert cli.main(argv) == 0
    want = dataclasses.replace(DecodeConfig(), decoder="semi_ar", steps=32, block_length=32, gen_len=64,
                               remasking="random", temperature=0.5, threshold=0.9, cache="dual",
                               audio_span="trimmed", batch_size=2)  # capped at the 2 inputs
    assert seen["cfg"] == want and seen["batch_size"] == 2 and seen["model_dir"] == str(tmp_path)
    # the clips the up-front check read are handed over, not read a second time
    assert [len(a) for a in seen["audio"]] == [len(load_audio(CLIPS / m["audio"])) for m in MANIFEST[1:3]]
    assert [it["id"] for it in seen["items"]] == [m["id"] for m in MANIFEST[1:3]]
    rows = _lines(capsys.readouterr().out)
    assert rows == [{"id": m["id"], "audio": str(CLIPS / m["audio"]), "hypothesis": f"hyp {i}",
                     "reference": m["text"], "nfe": 10 + i} for i, m in enumerate(MANIFEST[1:3])]
    # Unset flags keep DecodeConfig's defaults (the batch capped at the one input).
    assert cli.main(["transcribe", "--model", str(tmp_path), str(CLIPS / MANIFEST[1]["audio"])]) == 0
    assert seen["cfg"] == dataclasses.replace(DecodeConfig(), batch_size=1)
    capsys.readouterr()


def test_help_lists_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["transcribe", "--help"])
    text = capsys.readouterr().out
    assert "whisper-llada transcribe --whisper bundled:tiny.en --manifest" in text
    assert "--decoder {diffusion,semi_ar,autoregressive}" in text and "--audio-span {full,trimmed}" in text

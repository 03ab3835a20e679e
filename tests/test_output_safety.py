"""Nothing lost, nothing misattributed: every command refuses to clobber an existing output or
an input, writes through a temporary file renamed at the end (a failure half-way keeps the old
output), uses the user's umask, and never gives two utterances one id."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import soundfile as sf

from whisper_llada_jax import cli
from whisper_llada_jax.checkpoints.model_dir import load_model_dir
from whisper_llada_jax.checkpoints.tensors import SafetensorsSource, save_safetensors
from whisper_llada_jax.inference import driver
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.outputs import atomic_file


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random MODEL_DIR (NumPy values: nothing compiles)."""
    from flax import linen as nn

    from whisper_llada_jax.models.composite import abstract_variables

    from tests._data_helpers import tiny_model_dir

    rng = np.random.default_rng(0)
    return tiny_model_dir(tmp_path_factory.mktemp("safety"), lambda cfg: jax.tree.map(
        lambda s: np.asarray(0.02 * rng.normal(size=s.shape), s.dtype), nn.unbox(abstract_variables(cfg))))


def _fails(capsys, argv, *match: str) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    for m in match:
        assert m in err, err
    return err


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def umask_027():
    old = os.umask(0o027)  # not the usual 022: the modes below must come from the user's umask
    yield
    os.umask(old)


def test_export_and_import_refuse_to_clobber(model_dir, tmp_path, capsys, monkeypatch, umask_027):
    before = _snapshot(model_dir)
    peft = ["export", "--model", str(model_dir), "--format", "peft"]
    # a folder with unrelated files, an existing file, the MODEL_DIR itself, a folder inside it
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _fails(capsys, peft + ["--out", str(busy)], "non-empty folder", "--overwrite")
    _fails(capsys, peft + ["--out", str(busy), "--overwrite"], "notes.txt", "would delete")
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    _fails(capsys, peft + ["--out", str(a_file)], "existing file")
    _fails(capsys, peft + ["--out", str(model_dir)], "is the input")
    _fails(capsys, peft + ["--out", str(model_dir / "adapter")], "is inside the input")
    _fails(capsys, peft + ["--out", str(model_dir.parent), "--overwrite"], "contains the input")
    _fails(capsys, ["export", "--model", str(model_dir), "--format", "reference-pth",
                    "--out", str(model_dir / "x.pth")], "inside the input")
    assert a_file.read_text() == "keep" and _snapshot(model_dir) == before
    # `--out .`: one clear error, no temporary folder left behind
    monkeypatch.chdir(tmp_path)
    listing = sorted(os.listdir(tmp_path))
    _fails(capsys, peft + ["--out", ".", "--overwrite"], "working directory")
    assert sorted(os.listdir(tmp_path)) == listing
    # a fresh export; again refused; --overwrite replaces it, with the user's umask
    out = tmp_path / "adapter"
    assert cli.main(peft + ["--out", str(out)]) == 0
    _fails(capsys, peft + ["--out", str(out)], "non-empty folder")
    assert cli.main(peft + ["--out", str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert out.stat().st_mode & 0o777 == 0o750
    assert (out / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o640
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries
    # import: refused before any checkpoint is read (the inputs here do not even exist)
    _fails(capsys, ["import", "--whisper", "w", "--llada", "l", "--config", "tiny", "--out", str(busy)],
           "non-empty folder")
    _fails(capsys, ["import", "--whisper", str(model_dir), "--llada", "l", "--config", "tiny",
                    "--out", str(model_dir / "sub")], "inside the input")


def test_atomic_file_keeps_the_old_output_on_failure(tmp_path, umask_027):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write("partial\n")
            raise RuntimeError("a bad clip")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["out.jsonl"]
    with atomic_file(tmp_path / "new" / "deep.jsonl") as f:  # missing folders are created
        f.write("x\n")
    assert (tmp_path / "new" / "deep.jsonl").stat().st_mode & 0o777 == 0o640


def _fake_decoder(fail_after=None):
    """Stands in for the decoder: echoes each item's audio path as its hypothesis."""
    def transcribe_files(model_dir, items, cfg, batch_size=None, **kw):
        for n, it in enumerate(items):
            if fail_after is not None and n == fail_after:
                raise CheckpointError("a bad clip half-way")
            yield {"id": it["id"], "hypothesis": it["audio"], "reference": it.get("text"),
                   "first_pass": it.get("first_pass"), "nfe": 1}
    return transcribe_files


def test_deliberate_and_transcribe_write_atomically_and_spare_inputs(model_dir, tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"u{i}", "audio": f"clips/u{i}.wav", "text": "a b"}) + "\n"
                                for i in range(3)))
    first = tmp_path / "fp.jsonl"
    first.write_text("".join(json.dumps({"id": f"u{i}", "hypothesis": "a b"}) + "\n" for i in range(3)))
    clips = tmp_path / "clips"  # every clip is read before the model loads: they must exist
    clips.mkdir()
    for i in range(3):
        sf.write(clips / f"u{i}.wav", np.zeros(1600, np.float32), 16000)
    out = tmp_path / "delib.jsonl"
    out.write_text("old results\n")
    argv = ["deliberate", "--model", str(model_dir), "--manifest", str(manifest), "--first-pass", str(first),
            "--gen-len", "16", "--steps", "16"]
    _fails(capsys, argv + ["--output", str(out)], "already exists", "--overwrite")
    monkeypatch.setattr(driver, "transcribe_files", _fake_decoder(fail_after=2))
    _fails(capsys, argv + ["--output", str(out), "--overwrite"], "a bad clip half-way")
    assert out.read_text() == "old results\n"  # neither truncated nor half-written
    assert sorted(os.listdir(tmp_path)) == ["clips", "delib.jsonl", "fp.jsonl", "m.jsonl"]
    monkeypatch.setattr(driver, "transcribe_files", _fake_decoder())
    deep = tmp_path / "new" / "folder" / "delib.jsonl"  # a missing output folder is created
    assert cli.main(argv + ["--output", str(deep)]) == 0
    assert "wrote 3 transcripts" in capsys.readouterr().err
    assert [json.loads(x)["id"] for x in deep.read_text().splitlines()] == ["u0", "u1", "u2"]
    # an output that is an input is refused, the input untouched
    text = manifest.read_text()
    _fails(capsys, argv + ["--output", str(first), "--overwrite"], "is the input")
    _fails(capsys, ["transcribe", "--model", str(model_dir), "--manifest", str(manifest),
                    "--output", str(manifest), "--overwrite"], "is the input")
    assert manifest.read_text() == text


def test_transcribe_gives_files_with_one_stem_distinct_ids(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(driver, "transcribe_files", _fake_decoder())
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        sf.write(tmp_path / d / "x.wav", np.zeros(1600, np.float32), 16000)
    sf.write(tmp_path / "d1" / "y.wav", np.zeros(1600, np.float32), 16000)
    files = [str(tmp_path / "d1" / "x.wav"), str(tmp_path / "d2" / "x.wav"), str(tmp_path / "d1" / "y.wav")]
    assert cli.main(["transcribe", "--model", str(model_dir), *files]) == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == ["d1/x", "d2/x", "y"]  # stems stay the ids where unique
    assert [r["audio"] for r in records] == files and all(r["hypothesis"] == r["audio"] for r in records)
    _fails(capsys, ["transcribe", "--model", str(model_dir), files[0], files[0]], "given twice")


def test_evaluate_refuses_duplicate_ids_and_clobbering(model_dir, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": "same", "audio": f"{d}/x.wav", "text": "a b"}) + "\n"
                                for d in ("d1", "d2")))
    argv = ["evaluate", "--model", str(model_dir), "--data", f"manifest:{manifest}",
            "--decode", "gen_len=8,steps=8,batch_size=2"]
    _fails(capsys, argv + ["--out", str(tmp_path / "eval")], "duplicate id 'same'", "d1/x.wav", "d2/x.wav")
    assert not (tmp_path / "eval" / "results.json").exists()
    (tmp_path / "a_file").write_text("keep")
    _fails(capsys, argv + ["--out", str(tmp_path / "a_file")], "existing file")
    _fails(capsys, argv + ["--out", str(model_dir)], "is the input")
    _fails(capsys, ["cascade", "--model", str(model_dir), "--first", "bundled:tiny.en", "--data", f"manifest:{manifest}",
                    "--out", str(tmp_path)], "contains the input")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "results.json").write_text("{}")
    _fails(capsys, ["cascade", "--model", str(model_dir), "--first", "bundled:tiny.en", "--data", f"manifest:{manifest}",
                    "--out", str(busy)], "non-empty folder", "--overwrite")
    assert (busy / "results.json").read_text() == "{}"
    assert (tmp_path / "a_file").read_text() == "keep"


def test_nan_and_integer_weights_fail_at_load_naming_the_tensor(model_dir, tmp_path):
    src = SafetensorsSource(model_dir / "params.safetensors")
    tensors = {k: np.array(src.get(k)) for k in src.keys()}
    name = "llm/blocks_1/ff_out/kernel"
    for label, bad, match in (("nan", np.where(np.arange(tensors[name].size).reshape(tensors[name].shape) == 7,
                                               np.nan, tensors[name]).astype(np.float32), "1 NaN / inf"),
                              ("inf", np.full_like(tensors[name], np.inf), "NaN / inf"),
                              ("int", tensors[name].astype(np.int32), "dtype int32")):
        broken = tmp_path / label
        shutil.copytree(model_dir, broken)
        save_safetensors({**tensors, name: bad}, broken / "params.safetensors")
        with pytest.raises(CheckpointError, match=f"'{name}'.*{match}" if label != "nan" else match) as e:
            load_model_dir(broken)
        assert name in str(e.value)


def test_evaluate_names_every_skipped_clip_on_the_console(model_dir, tmp_path, capsys):
    sf.write(tmp_path / "good.wav", 0.1 * np.sin(np.arange(8000, dtype=np.float32) / 9), 16000)
    (tmp_path / "bad1.wav").write_bytes(b"not audio at all")
    (tmp_path / "bad2.flac").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": n, "audio": f"{n}.{ext}", "text": "a b"}) + "\n"
                                for n, ext in (("good", "wav"), ("bad1", "wav"), ("bad2", "flac"))))
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", f"manifest:{manifest}", "--out", str(out),
                     "--decode", "decoder=semi_ar,gen_len=8,steps=8,block_length=8,batch_size=2"]) == 0
    err = capsys.readouterr().err
    assert "skipped bad1 (unreadable)" in err and "bad1.wav" in err
    assert "skipped bad2 (unreadable)" in err and "bad2.flac" in err
    assert "skipped 2 of 3 utterance(s)" in err and "unreadable 2" in err
    assert json.loads((out / "results.json").read_text())["results"][0]["utterances"] == 1

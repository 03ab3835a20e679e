"""Record sources: LibriSpeech folders, both manifest layouts, synthetic, and the spec parser."""

import json

import numpy as np
import pytest

from tests._data_helpers import fake_librispeech, write_clip
from whisper_llada_jax.data.manifest import read_manifest, write_manifest
from whisper_llada_jax.data.sources import SyntheticSource, parse_source
from whisper_llada_jax.errors import DataError


def test_librispeech_folder(tmp_path):
    texts = fake_librispeech(tmp_path, {"dev-clean": (84, 174)}, utts=2)
    src = parse_source(f"librispeech:{tmp_path / 'LibriSpeech' / 'dev-clean'}")
    assert len(src) == 4
    got = {src[i]["id"]: src[i] for i in range(len(src))}
    assert {k: r["text"] for k, r in got.items()} == texts
    for key, rec in got.items():
        spk, ch, _ = key.split("-")
        assert rec["audio"].endswith(f"dev-clean/{spk}/{ch}/{key}.flac")
    # a bare directory means the same thing
    assert [parse_source(str(tmp_path))[i]["id"] for i in range(4)] == [src[i]["id"] for i in range(4)]


def test_jsonl_manifest_relative_paths_and_first_pass(tmp_path):
    write_clip(tmp_path / "a" / "one.wav", 0.5, 0)
    lines = [{"id": "u1", "audio": "a/one.wav", "text": "HELLO", "first_pass": "hallo"},
             {"audio": str(tmp_path / "a" / "one.wav"), "text": "WORLD"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    recs = read_manifest(tmp_path / "m.jsonl")
    assert recs[0] == {"id": "u1", "audio": str(tmp_path / "a" / "one.wav"), "text": "HELLO", "first_pass": "hallo"}
    assert recs[1]["id"] == "one" and "first_pass" not in recs[1]
    write_manifest(tmp_path / "copy.jsonl", recs)
    assert read_manifest(tmp_path / "copy.jsonl") == recs
    assert len(parse_source(f"manifest:{tmp_path / 'm.jsonl'}")) == 2


def test_reference_annotation_layout(tmp_path):
    doc = {"annotation": [
        {"path": "x/1.flac", "text": "THE CAT", "origin_transcripts": ["the cap", "the cat"]},
        {"path": "/abs/2.flac", "text": "A DOG", "origin_transcripts": "a dog"},
        {"path": "3.flac", "text": "NO FIRST PASS"}]}
    (tmp_path / "test.json").write_text(json.dumps(doc))
    src = parse_source(str(tmp_path / "test.json"))
    assert [src[i]["first_pass"] if "first_pass" in src[i] else None for i in range(3)] == ["the cap", "a dog", None]
    assert src[0]["audio"] == str(tmp_path / "x" / "1.flac") and src[1]["audio"] == "/abs/2.flac"
    assert [src[i]["id"] for i in range(3)] == ["1", "2", "3"]


def test_bad_manifests_raise_data_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "audio": "a.wav", "text": "x"}\n{not json}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "notext.jsonl").write_text('{"id": "a", "audio": "a.wav"}\n')
    with pytest.raises(DataError, match=r"notext.jsonl:1: needs a \"text\" field"):
        read_manifest(tmp_path / "notext.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        parse_source(f"manifest:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(DataError, match="cannot tell"):
        parse_source("ftp://somewhere")
    with pytest.raises(DataError, match="synthetic source"):
        parse_source("synthetic:n=4,colour=red")


def test_synthetic_is_deterministic_per_index():
    a, b = parse_source("synthetic:n=8,seed=3,min_s=0.5,max_s=1.0"), SyntheticSource(n=8, seed=3, min_s=0.5, max_s=1.0)
    assert len(a) == 8
    for i in (0, 5):
        ra, rb = a[i], b[i]
        assert ra["id"] == rb["id"] and ra["text"] == rb["text"]
        np.testing.assert_array_equal(ra["audio"], rb["audio"])
        assert ra["audio"].dtype == np.float32 and 0.5 * 16000 <= len(ra["audio"]) <= 16000
    assert a[0]["text"] != SyntheticSource(n=8, seed=4)[0]["text"] or a[1]["text"] != SyntheticSource(n=8, seed=4)[1]["text"]

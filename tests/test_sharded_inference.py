"""Sharded and multi-process inference give the tokens of a one-device run, in input order.

(a) one process, 8 CPU devices, mesh data=2 x fsdp=2 x tensor=2: the weights are split over
fsdp x tensor, each batch over data x fsdp (3 rows padded to 4); `transcribe`, `deliberate` and
`evaluate` write the same hypotheses as without a mesh.
(b) two processes x 4 CPU devices (jax.distributed over gloo): each decodes every other batch on
its own fsdp x tensor mesh and process 0 writes one `transcribe` output, equal to the
one-process one-device output (`evaluate` on two processes: tests/test_pod_rehearsal.py). Each
process runs this file as a script.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from whisper_llada_jax.cli import main
from whisper_llada_jax.models.composite import init_variables

CLIPS = Path(__file__).parent / "data" / "clips"
MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
DECODE = ["--gen-len", "8", "--steps", "8", "--batch-size", "3"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny MODEL_DIR with large random weights (hypotheses of several words, not all eos)."""
    from tests._data_helpers import tiny_model_dir

    rng = np.random.default_rng(1)
    return tiny_model_dir(tmp_path_factory.mktemp("sharded"), lambda cfg: jax.tree.map(
        lambda x: rng.normal(size=x.shape).astype(x.dtype), init_variables(cfg, jax.random.key(0))))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Five bundled clips that fit the tiny model's 4 s (two batches of 3: the second has a
    padding row)."""
    lines = [x for x in (CLIPS / "manifest.jsonl").read_text().splitlines() if json.loads(x)["seconds"] < 3.9][:5]
    path = tmp_path_factory.mktemp("manifest") / "m.jsonl"
    path.write_text("".join(json.dumps({**json.loads(x), "audio": str(CLIPS / json.loads(x)["audio"])}) + "\n"
                            for x in lines))
    return path


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_mesh_decodes_the_one_device_tokens(model_dir, manifest, tmp_path, monkeypatch):
    from whisper_llada_jax.inference import placement

    put, placed = placement.put_rows, []
    monkeypatch.setattr(placement, "put_rows", lambda x, mesh: placed.append(put(x, mesh)) or placed[-1])
    base = ["transcribe", "--model", str(model_dir), "--manifest", str(manifest), *DECODE]
    assert main([*base, "-o", str(tmp_path / "one.jsonl")]) == 0
    assert main([*base, "-o", str(tmp_path / "mesh.jsonl"), *MESH]) == 0
    # the mesh run's batches: 3 rows padded to 4, split over data x fsdp (one row per device pair)
    x = placed[-1]
    assert x.shape[0] == 4 and x.sharding.spec[0] == ("data", "fsdp") and len(x.sharding.device_set) == 8
    assert {s.data.shape[0] for s in x.addressable_shards} == {1}
    one, mesh = _rows(tmp_path / "one.jsonl"), _rows(tmp_path / "mesh.jsonl")
    assert [r["id"] for r in one] == [json.loads(x)["id"] for x in manifest.read_text().splitlines()]
    assert sum(len(r["hypothesis"].split()) for r in one) >= 5  # not all empty: a real comparison
    assert mesh == one

    delib = ["deliberate", "--model", str(model_dir), "--manifest", str(manifest), "--first-pass",
             str(tmp_path / "one.jsonl"), "--mask-ratio", "0.5", *DECODE]
    assert main([*delib, "-o", str(tmp_path / "d_one.jsonl")]) == 0
    assert main([*delib, "-o", str(tmp_path / "d_mesh.jsonl"), *MESH]) == 0
    assert _rows(tmp_path / "d_mesh.jsonl") == _rows(tmp_path / "d_one.jsonl")
    assert any(r["hypothesis"] != r["first_pass"] for r in _rows(tmp_path / "d_one.jsonl"))

    ev = ["evaluate", "--model", str(model_dir), "--data", f"manifest:{manifest}",
          "--decode", "gen_len=8,steps=8,batch_size=3"]
    assert main([*ev, "--out", str(tmp_path / "e_one")]) == 0
    assert main([*ev, "--out", str(tmp_path / "e_mesh"), *MESH]) == 0
    (hyp,) = (tmp_path / "e_one" / "hypotheses").glob("*.jsonl")
    assert (tmp_path / "e_mesh" / "hypotheses" / hyp.name).read_text() == hyp.read_text()
    wer = [json.loads((tmp_path / d / "results.json").read_text())["results"][0]["wer"] for d in ("e_one", "e_mesh")]
    assert wer[0] == wer[1]


def test_mesh_overrides_are_checked(model_dir, manifest, tmp_path, capsys):
    base = ["transcribe", "--model", str(model_dir), "--manifest", str(manifest), "-o", str(tmp_path / "x.jsonl")]
    assert main([*base, "mesh.data=3"]) == 2
    assert "mesh" in capsys.readouterr().err
    assert main([*base, "mesh.dataa=2"]) == 2
    assert main(["transcribe", "--whisper", "bundled:tiny.en", str(CLIPS / "clip000.flac"), "mesh.fsdp=2"]) == 2
    assert "only apply to --model" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
    data = ["--model", str(model_dir), "--data", f"manifest:{manifest}"]
    assert main(["evaluate", *data, "--out", str(tmp_path / "e"), "mesh.tensor=3"]) == 2
    assert main(["cascade", "--first", "bundled:tiny.en", *data, "--out", str(tmp_path / "c"), "mesh.fsdp=16"]) == 2
    assert main(["evaluate", *data, "--out", str(tmp_path / "e"), "train.steps=3"]) == 2
    err = capsys.readouterr().err
    # tensor=3 does not divide the 8 devices; fsdp=16 needs more devices than CPU JAX has
    assert "mesh:" in err and "needs 16 devices but JAX runs on the CPU backend with 8" in err
    assert "only mesh.* and distributed.*" in err


def test_cascade_first_pass_split_over_processes_equals_one_process(monkeypatch):
    """Whisper first pass: process p of 2 transcribes groups p, p + 2, ... and the gathered
    texts are those of one process (simulated: the gather is played back between two runs)."""
    from whisper_llada_jax.data.sources import ListSource
    from whisper_llada_jax.evaluation import cascade
    from whisper_llada_jax.inference import placement, recognizer

    class Fake:
        def transcribe(self, audios, batch_size):
            return [f" {len(a)} samples" for a in audios]

    monkeypatch.setattr(recognizer.WhisperRecognizer, "from_dir", staticmethod(lambda d: Fake()))
    source = ListSource([{"id": f"u{i}", "audio": np.zeros(1600 * (i + 1), np.float32), "sample_rate": 16000,
                          "text": "" if i == 3 else "words"} for i in range(11)], name="eleven")
    one, _ = cascade.whisper_first_pass("fake", source, batch_size=1)
    sent = {}

    def run_as(index, gathered):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda: index)
        def gather_all(obj):
            sent[index] = obj
            return gathered(obj)

        monkeypatch.setattr(placement, "gather_all", gather_all)
        return cascade.whisper_first_pass("fake", source, batch_size=1)[0]

    run_as(1, lambda obj: [[(i, "") for i in range(10)], obj])
    two = run_as(0, lambda obj: [obj, sent[1]])
    assert [r["first_pass"] for r in two] == [r["first_pass"] for r in one] and len(one) == 10
    assert sorted(i for part in sent.values() for i, _ in part) == list(range(10))  # each text made once
    assert {i // 4 % 2 for i, _ in sent[1]} == {1}  # groups of 4 x batch_size: process 1 has groups 1, 3, ...


@pytest.mark.slow
def test_two_processes_transcribe_like_one_device(model_dir, manifest, tmp_path):
    """5 clips in batches of 2: process 0 decodes batches 0 and 2, process 1 batch 1 (evaluate
    on two processes: tests/test_pod_rehearsal.py)."""
    from tests import _multiprocess as mp

    tr = ["transcribe", "--model", str(model_dir), "--manifest", str(manifest), "--gen-len", "8", "--steps", "8",
          "--batch-size", "2"]
    assert main([*tr, "-o", str(tmp_path / "one.jsonl")]) == 0
    port = mp.free_port()
    two = [*tr, "-o", str(tmp_path / "two.jsonl"), "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"]
    outs = mp.finish(mp.start(__file__, [[json.dumps([[*two, *mp.distributed_args(i, port)]])] for i in range(2)]))
    one = (tmp_path / "one.jsonl").read_text()
    assert len(one.splitlines()) == 5 and (tmp_path / "two.jsonl").read_text() == one
    assert "wrote 5 transcripts" in outs[0][1] and "wrote" not in outs[1][1]  # process 0 writes, alone


if __name__ == "__main__":
    from tests import _multiprocess as mp  # the tests' root is on PYTHONPATH (mp.start)

    mp.worker_setup()
    mp.run_commands(json.loads(sys.argv[1]))

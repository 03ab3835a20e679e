"""Two processes x 4 CPU devices (jax.distributed, gloo) evaluate one MODEL_DIR: each places the
model on its own devices with the training rules (fsdp x tensor), decodes its share of the
batches, and process 0 writes one hypotheses file in input order, the same as a one-process
one-device evaluation. Each process runs this file as a script: ``python THIS ARGS...``."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = "manifest:" + str(Path(__file__).parent / "data" / "clips" / "manifest.jsonl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _evaluate_args(model, out):
    return ["evaluate", "--model", str(model), "--data", DATA, "--limit", "5",
            "--decode", "gen_len=8,steps=8,batch_size=2", "--out", str(out)]


@pytest.mark.slow
def test_two_processes_evaluate_like_one_device(tmp_path):
    import jax

    from tests.reference_torch.composite import build_reference, write_checkpoints
    from whisper_llada_jax import cli
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir, save_model_dir
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    cfg = load_model_config("tiny", ["whisper.max_source_positions=200"])
    ref = build_reference(cfg, seed=3)
    tok = build_tokenizer_json(["the cat sat on the mat", "hello world"] * 3, tmp_path / "tokenizer.json")
    whisper, llada, pth = write_checkpoints(ref, cfg, tmp_path / "ckpt", tok)
    assert cli.main(["import", "--whisper", str(whisper), "--llada", str(llada), "--projector-checkpoint", str(pth),
                     "--config", "tiny", "--out", str(tmp_path / "imported")]) == 0
    loaded = load_model_dir(tmp_path / "imported")
    rng = np.random.default_rng(1)  # larger weights than the reference's init: hypotheses of many words
    loud = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), loaded.variables)
    model = tmp_path / "model"
    save_model_dir(model, loaded.config, loud, loaded.tokenizer.json)
    assert cli.main(_evaluate_args(model, tmp_path / "one")) == 0

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, __file__, str(model), str(tmp_path / "two"), str(i), str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-3000:] for _, err in outs)
    assert "evaluate: backend cpu, 8 devices (4 local), process 1 of 2" in outs[1][0]
    (one,) = (tmp_path / "one" / "hypotheses").glob("*.jsonl")
    two = tmp_path / "two" / "hypotheses" / one.name
    rows = [json.loads(line) for line in one.read_text().splitlines()]
    assert len(rows) == 5 and sum(len(r["hypothesis"].split()) for r in rows) >= 5
    assert two.read_text() == one.read_text()
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["results"][0] for d in ("one", "two"))
    assert a["wer"] == b["wer"] and a["utterances"] == b["utterances"] == 5
    assert a["data"] == b["data"]


def _worker(model, out, pid, port):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from whisper_llada_jax import cli

    sys.exit(cli.main([*_evaluate_args(model, out), "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2",
                       f"distributed.coordinator_address=localhost:{port}", "distributed.num_processes=2",
                       f"distributed.process_id={pid}", "distributed.cpu_collectives=gloo",
                       "distributed.initialization_timeout=120"]))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

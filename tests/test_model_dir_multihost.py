"""Two processes x 4 CPU devices (jax.distributed, gloo) write one MODEL_DIR from variables
sharded over both (no process holds any leaf whole): process 0 gathers one tensor at a time and
the file holds exactly the global arrays. Each process runs this file as a script:
``python THIS OUT TOKENIZER PROCESS_ID PORT``."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(out, tokenizer, pid, port):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid, initialization_timeout=120)
    from jax.experimental import multihost_utils

    from whisper_llada_jax.checkpoints.model_dir import load_model_dir, save_model_dir
    from whisper_llada_jax.checkpoints.tensors import flatten
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.models.composite import init_variables
    from whisper_llada_jax.training.config import MeshConfig
    from whisper_llada_jax.training.mesh import make_mesh, rules

    config = load_model_config("tiny")
    mesh_cfg = MeshConfig(data=1, fsdp=4, tensor=2)
    variables = init_variables(config, jax.random.key(3), mesh=make_mesh(mesh_cfg), rules=rules(mesh_cfg))
    q = flatten(variables["params"])["llm/blocks_0/q_proj/kernel"]
    assert not q.is_fully_addressable and len(q.addressable_shards) == 4
    save_model_dir(out, config, variables, tokenizer)
    expected = multihost_utils.process_allgather(variables, tiled=True)
    multihost_utils.sync_global_devices("written")
    if pid == 0:
        loaded = load_model_dir(out)
        for collection in ("params", "lora"):
            got, want = flatten(loaded.variables[collection]), flatten(expected[collection])
            assert set(got) == set(want)
            for k, v in want.items():
                np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v), err_msg=k)
        print("MODEL_DIR OK")


@pytest.mark.slow
def test_two_processes_write_one_model_dir_from_sharded_variables(tmp_path):
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    tok = build_tokenizer_json(["the cat sat on the mat", "hello world"] * 3, tmp_path / "tokenizer.json")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path / "model"), str(tok), str(i), str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-3000:] for _, err in outs)
    assert "MODEL_DIR OK" in outs[0][0]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.yaml", "lora.safetensors", "params.safetensors", "tokenizer.json"]


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

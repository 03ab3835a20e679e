"""Two processes x 4 CPU devices (jax.distributed, gloo) write one MODEL_DIR from variables
sharded over both (no process holds any leaf whole): process 0 gathers one tensor at a time and
the file holds exactly the global arrays; and `import` onto a mesh spanning both processes
writes the same MODEL_DIR as a one-device import. Each process runs this file as a script:
``python THIS OUT TOKENIZER PROCESS_ID PORT [import ARGS...]``."""

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


def _import_worker(pid, port, args):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from whisper_llada_jax import cli

    sys.exit(cli.main([*args, "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2",
                       f"distributed.coordinator_address=localhost:{port}", "distributed.num_processes=2",
                       f"distributed.process_id={pid}", "distributed.cpu_collectives=gloo",
                       "distributed.initialization_timeout=120"]))


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


def _two(*args):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, __file__, *args[:2], str(i), str(port), *args[2:]],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-3000:] for _, err in outs)
    return outs


@pytest.mark.slow
def test_import_onto_a_mesh_spanning_two_processes(tmp_path):
    from tests.reference_torch.composite import build_reference, write_checkpoints
    from whisper_llada_jax import cli
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    cfg = load_model_config("tiny", ["whisper.max_source_positions=200"])
    tok = build_tokenizer_json(["the cat sat on the mat", "hello world"] * 3, tmp_path / "tokenizer.json")
    whisper, llada, pth = write_checkpoints(build_reference(cfg, seed=4), cfg, tmp_path / "ckpt", tok)
    args = ["import", "--whisper", str(whisper), "--llada", str(llada), "--projector-checkpoint", str(pth),
            "--config", "tiny"]
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    outs = _two("-", "-", *args, "--out", str(tmp_path / "two"))
    assert "import: backend cpu, 8 devices (4 local), process 0 of 2" in outs[0][0]
    for name in ("config.yaml", "tokenizer.json", "params.safetensors", "lora.safetensors"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.slow
def test_two_processes_write_one_model_dir_from_sharded_variables(tmp_path):
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    tok = build_tokenizer_json(["the cat sat on the mat", "hello world"] * 3, tmp_path / "tokenizer.json")
    outs = _two(str(tmp_path / "model"), str(tok))
    assert "MODEL_DIR OK" in outs[0][0]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.yaml", "lora.safetensors", "params.safetensors", "tokenizer.json"]


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if len(sys.argv) > 5:
        _import_worker(int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
    else:
        _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

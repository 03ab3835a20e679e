"""Two processes x 4 CPU devices (jax.distributed, gloo): `import` onto an (fsdp 4, tensor 2)
mesh spanning both processes, each device reading only its block; sharded leaves no process
holds whole are gathered one at a time to process 0, which writes the MODEL_DIR: the same bytes
as a one-device import. Each process runs this file as a script:
``python THIS PROCESS_ID PORT IMPORT_ARGS...``."""

import os
import socket
import subprocess
import sys

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


def _two(*args):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), *args],
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
    outs = _two(*args, "--out", str(tmp_path / "two"))
    assert "import: backend cpu, 8 devices (4 local), process 0 of 2" in outs[0][0]
    for name in ("config.yaml", "tokenizer.json", "params.safetensors", "lora.safetensors"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _import_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])

"""`whisper-llada compile` lowers and compiles the real train step for a TPU topology here
(libtpu's compile-only devices; no TPU attached) and reports per-chip memory and FLOPs.

The command runs in a child process, as a user runs it: a process that has loaded libtpu's
compile-only client crashes in a later ``jax.profiler`` trace (another test's, in the same
pytest worker)."""

import subprocess

import pytest

from tests._cli import run_cli
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training.aot import HEADER, parse_topology


def _compile(*args: str) -> subprocess.CompletedProcess:
    return run_cli(["compile", *args])


def test_compile_tiny_for_v5e_2x2():
    proc = _compile("--config", "tiny", "--topology", "v5e:2x2", "mesh.data=2", "mesh.fsdp=2")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "(4 chips)" in out and "of 16 GiB HBM -> fits" in out
    assert HEADER.splitlines()[0] in out
    row = [ln for ln in out.splitlines() if ln.startswith("| v5e:2x2 |")][0].split("|")
    assert row[3].strip() == "2x2x1" and row[4].strip() == "8"  # mesh, global batch (one host of 4 chips)
    arguments, temps, flops = float(row[5]), float(row[6]), float(row[10])
    assert arguments > 0 and temps > 0 and flops > 0


def test_compile_rejects_bad_topology_and_mesh():
    with pytest.raises(ConfigError, match="not like v5p:2x2x2"):
        parse_topology("v5p-8")
    assert parse_topology("v5p:2x2x2") == ("v5p", 8)
    proc = _compile("--config", "tiny", "--topology", "v5e:2x2", "mesh.data=3")
    assert proc.returncode == 2 and "need 3 devices, there are 4" in proc.stderr, proc.stderr[-3000:]

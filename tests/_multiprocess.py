"""Simulated hosts for the multi-process tests: N processes x 4 CPU devices on this machine,
joined by jax.distributed with gloo collectives (what a pod's hosts do over the network).

A test starts its workers with ``start(script, args)``; the script calls ``worker_setup()``
before anything imports JAX's backend, then runs its commands. Each process runs with
``distributed_args(pid, port)`` (the ``distributed.*`` overrides of the CLI) or the launchers'
environment (``distributed_env``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DEVICES = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def distributed_args(pid: int, port: int, processes: int = 2) -> list[str]:
    """The ``distributed.*`` overrides of process ``pid`` (train, import, export, inference)."""
    return [f"distributed.coordinator_address=localhost:{port}", f"distributed.num_processes={processes}",
            f"distributed.process_id={pid}", "distributed.cpu_collectives=gloo",
            "distributed.initialization_timeout=120"]


def distributed_env(pid: int, port: int, processes: int = 2) -> dict[str, str]:
    """The same set-up as the launchers give it (launch/*.sh): environment variables, so each
    command line is exactly the runbook's."""
    return {"WLJ_COORDINATOR": f"localhost:{port}", "WLJ_NUM_PROCESSES": str(processes),
            "WLJ_PROCESS_ID": str(pid), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}


def start(script: str | Path, args: list[list[str]], env: list[dict] | None = None) -> list[subprocess.Popen]:
    """One process per entry of ``args``: ``python SCRIPT *args[i]``, stdout / stderr piped.
    The conftest's 8-device XLA_FLAGS are dropped: ``worker_setup`` sets 4 per process."""
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [base.get("PYTHONPATH")])])
    return [subprocess.Popen([sys.executable, str(script), *a], env={**base, **((env or [{}] * len(args))[i])},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, a in enumerate(args)]


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process; every one must exit 0."""
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(err[-3000:] for _, err in outs)
    return outs


def worker_setup(hang_seconds: float = 480) -> None:
    """In a worker, before JAX starts its backend: 4 CPU devices, fp32 at highest precision.
    A worker still running after ``hang_seconds`` prints every thread's stack and exits (a
    collective one process never joined would otherwise hang until the test's timeout)."""
    import faulthandler

    faulthandler.dump_traceback_later(float(os.environ.get("WLJ_TEST_HANG_SECONDS", hang_seconds)), exit=True)
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={LOCAL_DEVICES} "
                               "--xla_backend_optimization_level=0")
    os.environ["JAX_PLATFORMS"] = "cpu"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")


def run_commands(runs: list[list[str]]) -> None:
    """``whisper-llada ARGV`` for each ARGV in order, in this process (one jax.distributed
    start-up serves them all); exits 1 at the first that fails."""
    from whisper_llada_jax import cli

    for argv in runs:
        if cli.main(argv):
            sys.exit(1)

"""Which accelerator JAX found: the one start-up line, and the refusal to train a pod-sized mesh
on CPU JAX (a TPU VM or GPU node where ``pip install -e .`` gave the CPU wheels)."""

from __future__ import annotations

import math

import jax

from whisper_llada_jax.errors import ConfigError

INSTALL_HINT = ("install JAX for your accelerator: pip install 'whisper-llada-jax[tpu]' on a TPU VM, "
                "pip install 'whisper-llada-jax[cuda12]' on an NVIDIA GPU machine")


def backend_line(command: str) -> str:
    """``train: backend tpu, 32 devices (4 local), process 0 of 8``."""
    line = f"{command}: backend {jax.default_backend()}, {jax.device_count()} devices"
    if jax.process_count() > 1:
        line += f" ({jax.local_device_count()} local), process {jax.process_index()} of {jax.process_count()}"
    return line


def announce(command: str) -> None:
    """Prints the backend line (once per process) when a train, import or evaluation starts."""
    print(backend_line(command), flush=True)


def devices_needed(mesh_cfg) -> int:
    """The fewest devices a MeshConfig can run on: the product of its fixed axes (-1 counts as 1)
    times its DCN factors."""
    ici = math.prod(s for s in (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor) if s != -1)
    return ici * mesh_cfg.dcn_data * mesh_cfg.dcn_fsdp * mesh_cfg.dcn_tensor


def refuse_cpu_for_large_mesh(mesh_cfg, command: str = "train", available: int | None = None) -> None:
    """ConfigError when JAX runs on CPU and the mesh asks for more devices than there are
    (``available``, default all devices): the usual cause is CPU JAX on an accelerator machine,
    and the fix is the install, not the mesh."""
    if jax.default_backend() != "cpu":
        return
    need, have = devices_needed(mesh_cfg), jax.device_count() if available is None else available
    if need > have:
        raise ConfigError(
            f"{command}: the mesh (data={mesh_cfg.data}, fsdp={mesh_cfg.fsdp}, tensor={mesh_cfg.tensor}, "
            f"dcn {mesh_cfg.dcn_data}x{mesh_cfg.dcn_fsdp}x{mesh_cfg.dcn_tensor}) needs {need} devices but JAX "
            f"runs on the CPU backend with {have}",
            hint=f"{INSTALL_HINT}; or shrink mesh.* to fit {have} CPU device(s)")

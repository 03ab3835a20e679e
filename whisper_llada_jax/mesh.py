"""Device mesh (data, fsdp, tensor), multi-host start-up, and shardings from logical names.

``resolve_mesh_shape`` checks a MeshConfig against the device count before anything compiles,
so an impossible mesh fails at start-up with one line. Multi-slice runs (``dcn_*`` > 1) build a
hybrid mesh: ICI axes inside a slice, DCN factors across slices.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from whisper_llada_jax import sharding as sharding_lib
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training.config import DistributedConfig, MeshConfig

AXES = sharding_lib.MESH_AXES
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both


def _resolve(sizes: Sequence[int], n: int, what: str) -> tuple[int, ...]:
    sizes = list(sizes)
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh: {what} sizes {dict(zip(AXES, sizes))} must be positive or -1")
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh: at most one of {what} axes may be -1, got {dict(zip(AXES, sizes))}")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if n % fixed:
            raise ConfigError(f"mesh: {what} axes {dict(zip(AXES, sizes))} do not divide {n} devices",
                              hint="choose sizes whose product divides the device count")
        sizes[free[0]] = n // fixed
    if math.prod(sizes) != n:
        raise ConfigError(f"mesh: {what} axes {dict(zip(AXES, sizes))} need {math.prod(sizes)} devices, "
                          f"there are {n}", hint="make data x fsdp x tensor equal the device count or use -1")
    return tuple(sizes)


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int, num_slices: int = 1
                       ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici_shape, dcn_shape) with -1 resolved; ConfigError when impossible."""
    dcn = (cfg.dcn_data, cfg.dcn_fsdp, cfg.dcn_tensor)
    if any(d < 1 for d in dcn) or math.prod(dcn) != num_slices:
        raise ConfigError(f"mesh: dcn sizes {dict(zip(AXES, dcn))} must multiply to the {num_slices} slice(s)")
    if num_devices % num_slices:
        raise ConfigError(f"mesh: {num_devices} devices do not split into {num_slices} slices")
    ici = _resolve((cfg.data, cfg.fsdp, cfg.tensor), num_devices // num_slices, "per-slice")
    return ici, dcn


def num_slices_of(devices: Sequence[Any]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over ``devices`` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = num_slices_of(devices)
    ici, dcn = resolve_mesh_shape(cfg, len(devices), slices)
    if slices > 1:
        arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
    elif devices[0].platform in ("tpu", "gpu", "cuda", "rocm"):
        arr = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
    else:
        arr = np.asarray(devices).reshape(ici)
    return Mesh(arr, AXES)


def rules(cfg: MeshConfig) -> tuple[tuple[str, Any], ...]:
    """Config overrides first (first match wins), then the project's default table."""
    extra = sharding_lib.rules_from_config(cfg.rules) if cfg.rules else ()
    return tuple(extra) + tuple(sharding_lib.DEFAULT_RULES)


def logical_shardings(specs: Any, mesh: Mesh, rule_table) -> Any:
    """Tree of logical PartitionSpecs (from ``nn.get_partition_spec``) -> NamedShardings."""
    return nn.logical_to_mesh_sharding(specs, mesh, rule_table)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Per-host arrays (each host's rows) -> global arrays split over (data, fsdp)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local.items()}


def placement_from_overrides(overrides: Sequence[str], command: str) -> tuple[MeshConfig | None, DistributedConfig]:
    """(MeshConfig, DistributedConfig) from the ``mesh.*`` / ``distributed.*`` overrides that
    ``import`` and the inference commands take as ``train`` does; the mesh is None when no
    ``mesh.*`` is given (one device)."""
    from whisper_llada_jax import config as config_lib

    data = config_lib.parse_overrides(list(overrides))
    other = sorted(set(data) - {"mesh", "distributed"})
    if other:
        raise ConfigError(f"{command}: unknown override(s) {other}: only mesh.* and distributed.* are taken here",
                          hint="e.g. mesh.fsdp=4 mesh.tensor=2")
    mesh = config_lib.from_dict(MeshConfig, data["mesh"], "mesh") if "mesh" in data else None
    return mesh, config_lib.from_dict(DistributedConfig, data.get("distributed", {}), "distributed")


def initialize_distributed(cfg: DistributedConfig) -> None:
    """``jax.distributed.initialize`` for multi-process runs; nothing for one process.

    Unset fields fall back to JAX's own detection (TPU pods, SLURM, Open MPI); explicit
    values come from the config or the launchers' ``WLJ_COORDINATOR`` / ``WLJ_NUM_PROCESSES`` /
    ``WLJ_PROCESS_ID`` environment variables.
    """
    coord = cfg.coordinator_address or os.environ.get("WLJ_COORDINATOR")
    nproc = cfg.num_processes if cfg.num_processes is not None else _env_int("WLJ_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id is not None else _env_int("WLJ_PROCESS_ID")
    auto = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")) \
        and os.environ.get("WLJ_AUTO_DISTRIBUTED", "1") == "1"
    if cfg.cpu_collectives != "none":
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    if nproc == 1 or (coord is None and nproc is None and not auto):
        return  # one process: nothing to coordinate
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=coord, num_processes=nproc, process_id=pid,
                               initialization_timeout=cfg.initialization_timeout)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None

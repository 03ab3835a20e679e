"""Where inference runs: the model on a mesh of this host's devices, the data split over hosts.

``transcribe``, ``deliberate``, ``evaluate`` and ``cascade`` take the ``mesh.*`` overrides of
``train`` (and ``distributed.*`` for several processes). Each process places the whole model on
a mesh of its own devices with the training rules (``fsdp`` and ``tensor`` shard the weights;
``data`` x ``fsdp`` split each decode batch, padded to a multiple with rows that are not
decoded), and the processes split the data by whole batches: batch ``j`` goes to process
``j % n``. A batch is then exactly the one a single process decodes (its rows, its padding, its
batch-level choices: trimmed audio span, length bucket), and the RNG of a row depends only on
its utterance id and the batch number, never on the split: the tokens are those of a
one-device run. Process 0 gathers the rows (``gather_to_process_0``: their JSON through
``multihost_utils.process_allgather``) and writes the one output file in input order.

Why a mesh per host rather than one across hosts: decoding then needs no collective between
hosts inside its loops (only the gather of finished rows), and one host's chips hold the model
(LLaDA-8B is 16 GB in bf16: a v5e host has 4 x 16 GB, a v5p host 4 x 95 GB).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from whisper_llada_jax import mesh as mesh_lib


def inference_mesh(overrides: Sequence[str], command: str) -> tuple[Mesh | None, tuple | None]:
    """``(mesh, rules)`` from the ``mesh.*`` overrides, over this process's devices, or
    ``(None, None)`` (one device) without them. ``distributed.*`` (or a pod's environment)
    start a multi-process run first.

    Callers check their output paths before this; with several processes it waits until every
    process is here, so no process checks an output that process 0 has begun writing (commands
    run one after another in one process, where jax.distributed is already up, raced)."""
    mesh_cfg, dist_cfg = mesh_lib.placement_from_overrides(overrides, command)
    mesh_lib.initialize_distributed(dist_cfg)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"whisper-llada {command}: outputs checked")
    if mesh_cfg is None:
        return None, None
    from whisper_llada_jax import backend

    backend.refuse_cpu_for_large_mesh(mesh_cfg, command, available=jax.local_device_count())
    return mesh_lib.make_mesh(mesh_cfg, jax.local_devices()), mesh_lib.rules(mesh_cfg)


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(others, overrides)``: ``mesh.*=`` / ``distributed.*=`` words taken out of a list of
    positional arguments (``transcribe``'s AUDIO files); an existing file keeps its place."""
    import os

    others, overrides = [], []
    for a in args:
        is_override = a.split(".", 1)[0] in ("mesh", "distributed") and "=" in a and not os.path.exists(a)
        (overrides if is_override else others).append(a)
    return others, overrides


def model_mesh(variables: Any) -> Mesh | None:
    """The mesh the variables were placed on (``load_model_dir(mesh=...)``), or None."""
    for leaf in jax.tree.leaves(variables):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def batch_multiple(mesh: Mesh | None) -> int:
    """The batch is split over ``data`` x ``fsdp``: its rows must be a multiple of that."""
    if mesh is None:
        return 1
    return int(np.prod([mesh.shape[a] for a in mesh_lib.BATCH_AXES]))


def padded_rows(b: int, mesh: Mesh | None) -> int:
    m = batch_multiple(mesh)
    return -(-b // m) * m


def pad_rows(x: np.ndarray, rows: int, fill: Any = 0) -> np.ndarray:
    """``x`` with rows appended (``fill``) up to ``rows``."""
    x = np.asarray(x)
    if x.shape[0] == rows:
        return x
    return np.concatenate([x, np.full((rows - x.shape[0], *x.shape[1:]), fill, x.dtype)])


def put_rows(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """A batch-major array split over ``data`` x ``fsdp`` of ``mesh`` (default device without)."""
    if mesh is None:
        return jnp.asarray(x)
    return jax.device_put(np.asarray(x), mesh_lib.batch_sharding(mesh, np.ndim(x)))


def gather_all(obj: Any) -> list:
    """Every process's JSON-serialisable ``obj``, in process order, on every process. All
    processes must call it the same number of times."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([blob.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:blob.size] = blob
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(g[:n]).decode()) for g, n in zip(gathered, sizes)]


def gather_to_process_0(obj: Any) -> list | None:
    """``gather_all`` for the writer: the list on process 0, None on the others."""
    parts = gather_all(obj)
    return parts if jax.process_index() == 0 else None

"""Optimiser: AdamW with masked weight decay, the reference schedule, clipping, freezing.

Freezing partitions the variable tree into a *trainable* and a *frozen* tree (by regexes over
'/'-joined paths of ``{'params': ..., 'lora': ...}``). Only the trainable tree is differentiated
and handed to optax, so frozen parameters carry neither gradients nor optimiser state.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from whisper_llada_jax.checkpoints.tensors import flatten as _flatten, unflatten as _unflatten
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training.config import OptimConfig

_NO_DECAY_NAMES = ("bias", "scale")


def is_trainable(path: str, cfg: OptimConfig) -> bool:
    return (any(re.fullmatch(p, path) for p in cfg.trainable)
            and not any(re.fullmatch(p, path) for p in cfg.frozen))


def partition(variables: Mapping, cfg: OptimConfig) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts; works on arrays, ShapeDtypeStructs, shardings, specs."""
    flat = _flatten(variables)
    train = {k: v for k, v in flat.items() if is_trainable(k, cfg)}
    frozen = {k: v for k, v in flat.items() if k not in train}
    return _unflatten(train), _unflatten(frozen)


def check_partition(variables: Mapping, cfg: OptimConfig) -> None:
    """A config whose regexes select nothing (or a bad regex) fails at start-up."""
    for p in (*cfg.trainable, *cfg.frozen):
        try:
            re.compile(p)
        except re.error as e:
            raise ConfigError(f"optim.trainable/frozen: bad regex {p!r} ({e})") from None
    flat = _flatten(variables)
    if not any(is_trainable(k, cfg) for k in flat):
        raise ConfigError("optim.trainable: no parameter matches these regexes",
                          hint=f"paths look like {sorted(flat)[:3]}")


def merge(trainable: Mapping, frozen: Mapping) -> dict:
    """Inverse of ``partition``."""
    return _unflatten({**_flatten(frozen), **_flatten(trainable)})


def schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup init_lr -> peak_lr over warmup_steps; from then on the cosine peak_lr ->
    end_lr, whose phase counts from step 0 (the reference's scheduler): it reaches end_lr at
    step decay_steps and holds it, and at the end of warmup it has already left peak_lr a little."""
    warmup = optax.linear_schedule(cfg.init_lr, cfg.peak_lr, max(cfg.warmup_steps, 1))
    cosine = optax.cosine_decay_schedule(cfg.peak_lr, max(cfg.decay_steps, 1),
                                         alpha=cfg.end_lr / cfg.peak_lr if cfg.peak_lr else 0.0)

    def lr(step):
        return jnp.where(step < cfg.warmup_steps, warmup(step), cosine(step))

    return lr


def decay_mask(trainable: Mapping, logical_axes: Mapping | None = None) -> dict:
    """True where weight decay applies: matrices (not counting a scanned 'layers' axis) whose
    leaf name is not a bias or norm scale."""
    flat = _flatten(trainable)
    axes = _flatten(logical_axes) if logical_axes is not None else {}
    out = {}
    for path, leaf in flat.items():
        names = axes.get(path)
        ndim = len(leaf.shape) - (sum(n == "layers" for n in names) if names else 0)
        leaf_name = path.rsplit("/", 1)[-1]
        out[path] = bool(ndim >= 2 and leaf_name not in _NO_DECAY_NAMES and "norm" not in path.lower())
    return _unflatten(out)


def make_optimizer(cfg: OptimConfig, trainable: Mapping, logical_axes: Mapping | None = None
                   ) -> optax.GradientTransformation:
    """The optax chain for the trainable tree (gradient accumulation is done by the step)."""
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask(trainable, logical_axes),
                             mu_dtype=jnp.float32))
    return optax.chain(*parts)


def cast_master(trainable: Mapping, cfg: OptimConfig) -> dict:
    """Trainable leaves in the master dtype (fp32 by default); the model casts for compute."""
    dtype = jnp.dtype(cfg.master_dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, trainable)

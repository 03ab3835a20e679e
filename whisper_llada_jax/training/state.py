"""Train state: created abstractly, sharded by logical names, materialised under ``jit``.

``setup_state`` never builds an unsharded model: it traces ``init_fn`` with ``jax.eval_shape``,
derives every leaf's sharding from its logical axis names, then runs the initialiser (or the
partition of already-loaded variables) under ``jit`` with ``out_shardings``, so each device only
ever holds its own shards. The abstract state it returns is also the Orbax restore target.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn, struct
from jax.sharding import Mesh, PartitionSpec

from whisper_llada_jax import mesh as mesh_lib
from whisper_llada_jax.training import optim
from whisper_llada_jax.training.config import OptimConfig


@struct.dataclass
class TrainState:
    step: jax.Array  # () int32: optimiser updates done
    rng: jax.Array  # (2,) uint32 raw key, split every step (saved in checkpoints)
    trainable: dict  # master copy (fp32) of what trains
    frozen: dict  # everything else, in the model's param dtype; no grads, no optimiser state
    opt_state: Any
    nonfinite_step: jax.Array  # () int32: the update whose loss was NaN/inf (-1: none); updates stop there

    @property
    def variables(self) -> dict:
        return optim.merge(self.trainable, self.frozen)


@dataclasses.dataclass
class StateSetup:
    state: TrainState | None  # None for an abstract-only setup
    shardings: TrainState  # NamedSharding per leaf
    abstract: TrainState  # ShapeDtypeStructs carrying those shardings (Orbax restore target)
    tx: optax.GradientTransformation
    variable_shardings: dict
    logical_specs: dict  # logical PartitionSpec per variable


def build_state(variables: Mapping, rng: jax.Array, tx: optax.GradientTransformation,
                cfg: OptimConfig) -> TrainState:
    trainable, frozen = optim.partition(variables, cfg)
    trainable = optim.cast_master(trainable, cfg)
    return TrainState(step=jnp.zeros((), jnp.int32), rng=rng, trainable=trainable, frozen=frozen,
                      opt_state=tx.init(trainable), nonfinite_step=jnp.full((), -1, jnp.int32))


def _logical_names(specs: Mapping) -> dict:
    return jax.tree.map(lambda s: tuple(s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def state_shardings(abstract: TrainState, tx: optax.GradientTransformation, var_shardings: Mapping,
                    mesh: Mesh, cfg: OptimConfig) -> TrainState:
    """Shardings for every state leaf; optimiser moments follow their parameter."""
    rep = mesh_lib.replicated(mesh)
    train_sh, frozen_sh = optim.partition(var_shardings, cfg)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, train_sh,
                                   transform_non_params=lambda _: rep,
                                   is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return TrainState(step=rep, rng=rep, trainable=train_sh, frozen=frozen_sh, opt_state=opt_sh,
                      nonfinite_step=rep)


def abstract_setup(init_fn: Callable[[jax.Array], Mapping], mesh: Mesh, rules, cfg: OptimConfig,
                   train_rng: jax.Array | None = None) -> StateSetup:
    """Everything but the arrays: the abstract state (with shardings), the shardings, the
    optimiser. Used as is for ahead-of-time compilation and as the Orbax restore target."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # abstract: nothing runs (AOT has no executable devices)
    boxed = jax.eval_shape(init_fn, key)
    specs = nn.get_partition_spec(boxed)
    abstract_vars = nn.unbox(boxed)
    optim.check_partition(abstract_vars, cfg)
    var_sh = mesh_lib.logical_shardings(specs, mesh, rules)
    train_abs, _ = optim.partition(abstract_vars, cfg)
    train_names, _ = optim.partition(_logical_names(specs), cfg)
    tx = optim.make_optimizer(cfg, train_abs, train_names)
    rng = key if train_rng is None else train_rng
    abstract = jax.eval_shape(lambda v, r: build_state(v, r, tx, cfg), abstract_vars, rng)
    shardings = state_shardings(abstract, tx, var_sh, mesh, cfg)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return StateSetup(None, shardings, abstract, tx, var_sh, specs)


def setup_state(init_fn: Callable[[jax.Array], Mapping], mesh: Mesh, rules, cfg: OptimConfig,
                seed: int, variables: Mapping | None = None) -> StateSetup:
    """Abstract state -> shardings -> a materialised, sharded TrainState.

    ``init_fn(rng)`` returns the model's *boxed* variables (``nn.Partitioned`` leaves from
    ``model.init``). With ``variables`` (already loaded, e.g. from a MODEL_DIR straight into their
    shardings) the initialiser only supplies the abstract tree and is never run.
    """
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    setup = abstract_setup(init_fn, mesh, rules, cfg, train_rng)
    make = lambda v, r: build_state(v, r, setup.tx, cfg)  # noqa: E731
    if variables is None:
        fn = jax.jit(lambda r_init, r_train: make(nn.unbox(init_fn(r_init)), r_train),
                     out_shardings=setup.shardings)
        setup.state = fn(init_rng, train_rng)
    else:
        fn = jax.jit(make, in_shardings=(setup.variable_shardings, mesh_lib.replicated(mesh)),
                     out_shardings=setup.shardings)
        setup.state = fn(variables, train_rng)
    return setup

"""The train and eval steps: pure functions of (state, batch), jitted with explicit shardings.

One call of the train step is one optimiser update; with ``grad_accum`` > 1 the batch is split
into micro-batches that a ``lax.scan`` runs through, summing gradients. A non-finite loss turns
the update into a no-op and records the step in ``state.nonfinite_step`` so the trainer can stop
without syncing with the host every step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from whisper_llada_jax.config import ModelConfig
from whisper_llada_jax.training import mesh as mesh_lib
from whisper_llada_jax.training import objectives, optim
from whisper_llada_jax.training.config import TrainConfig
from whisper_llada_jax.training.state import StateSetup, TrainState

# Batch fields that go to the devices (the rest, e.g. ids/text, stay on the host).
DEVICE_KEYS = ("features", "encoder_out", "response_ids", "response_len", "valid")

Metrics = dict[str, jax.Array]


def device_batch(batch: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(batch[k]) for k in DEVICE_KEYS if k in batch and batch[k] is not None}


def _forward(model, variables, batch, ids, rng, train: bool):
    audio = {"encoder_out": batch["encoder_out"]} if "encoder_out" in batch else {"features": batch["features"]}
    return model.apply(variables, ids, **audio, deterministic=not train, rngs={"dropout": rng} if train else {})


def make_loss_fn(model, tcfg: TrainConfig, mcfg: ModelConfig) -> Callable:
    """loss_fn(trainable, frozen, batch, rng, train) -> (loss, LossOut)."""
    weighting = "inv_t" if tcfg.objective == "diffusion_inv_t" else "reference"

    def loss_fn(trainable, frozen, batch, rng, train: bool):
        variables = optim.merge(trainable, frozen)
        ids = batch["response_ids"]
        rmask = batch["loss_mask"]
        noise_rng, drop_rng = jax.random.split(rng)
        if tcfg.objective == "autoregressive":
            logits = _forward(model, variables, batch, ids, drop_rng, train)
            out = objectives.next_token_loss(logits, ids, rmask)
        else:
            c = objectives.corrupt(noise_rng, ids, rmask, mcfg.tokens.mask, tcfg.t_eps)
            logits = _forward(model, variables, batch, c.noisy_ids, drop_rng, train)
            out = objectives.diffusion_loss(logits, ids, c, rmask, weighting)
        return out.loss, out

    return loss_fn


def _with_loss_mask(batch: dict, span: str) -> dict:
    # Computed on the whole batch so micro-batches share the reference's "longest in batch".
    r = batch["response_ids"].shape[1]
    return {**batch, "loss_mask": objectives.response_mask(batch["response_len"], batch["valid"], r, span)}


def make_train_step(model, tcfg: TrainConfig, mcfg: ModelConfig, tx: optax.GradientTransformation
                    ) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
    loss_fn = make_loss_fn(model, tcfg, mcfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = tcfg.optim.grad_accum
    lr_fn = optim.schedule(tcfg.optim)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        batch = _with_loss_mask(batch, tcfg.loss_span)
        next_rng, step_rng = jax.random.split(state.rng)
        if k == 1:
            (loss, out), grads = grad_fn(state.trainable, state.frozen, batch, step_rng, True)
            n, correct = out.num_tokens, out.correct
        else:
            # Row j of every micro-batch comes from each device's own rows: no resharding.
            micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)
            zeros = jax.tree.map(jnp.zeros_like, state.trainable)

            def body(carry, xs):
                g_acc, l_acc, n_acc, c_acc = carry
                mb, r = xs
                (l, o), g = grad_fn(state.trainable, state.frozen, mb, r, True)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, n_acc + o.num_tokens, c_acc + o.correct), None

            init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
            (grads, loss, n, correct), _ = jax.lax.scan(body, init, (micro, jax.random.split(step_rng, k)))
            grads = jax.tree.map(lambda g: g / k, grads)
            loss = loss / k

        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        ok = jnp.isfinite(loss) & (state.nonfinite_step < 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = state.replace(
            step=jnp.where(ok, state.step + 1, state.step),
            rng=next_rng,
            trainable=keep(trainable, state.trainable),
            opt_state=keep(opt_state, state.opt_state),
            nonfinite_step=jnp.where(ok | (state.nonfinite_step >= 0), state.nonfinite_step, state.step + 1),
        )
        metrics = {"loss": loss, "accuracy": correct / jnp.maximum(n, 1.0), "tokens": n,
                   "lr": lr_fn(state.step), "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return train_step


def make_eval_step(model, tcfg: TrainConfig, mcfg: ModelConfig) -> Callable[[TrainState, dict, jax.Array], Metrics]:
    """Sums for an exact validation average; the corruption RNG is supplied so every
    evaluation of the same data masks the same positions."""
    loss_fn = make_loss_fn(model, tcfg, mcfg)

    def eval_step(state: TrainState, batch: dict, rng: jax.Array) -> Metrics:
        _, out = loss_fn(state.trainable, state.frozen, _with_loss_mask(batch, tcfg.loss_span), rng, False)
        return {"loss_sum": out.loss_sum, "tokens": out.num_tokens, "correct": out.correct}

    return eval_step


def batch_shardings(mesh: Mesh, example: dict[str, Any]) -> dict:
    return {k: mesh_lib.batch_sharding(mesh, np.ndim(v)) for k, v in example.items()}


def with_rules(fn: Callable, rules) -> Callable:
    """Traces ``fn`` with the logical rules active, so the model's activation constraints
    (``nn.with_logical_constraint``) resolve to mesh axes (call it under ``jax.set_mesh``)."""

    def wrapped(*args):
        with nn.logical_axis_rules(rules):
            return fn(*args)

    return wrapped


def jit_train_step(fn, setup: StateSetup, mesh: Mesh, example_batch: dict, rules=()):
    """Explicit in/out shardings; the state's buffers are donated to the new state."""
    rep = mesh_lib.replicated(mesh)
    return jax.jit(with_rules(fn, rules), in_shardings=(setup.shardings, batch_shardings(mesh, example_batch)),
                   out_shardings=(setup.shardings, rep), donate_argnums=0)


def jit_eval_step(fn, setup: StateSetup, mesh: Mesh, example_batch: dict, rules=()):
    rep = mesh_lib.replicated(mesh)
    return jax.jit(with_rules(fn, rules), in_shardings=(setup.shardings, batch_shardings(mesh, example_batch), rep),
                   out_shardings=rep)

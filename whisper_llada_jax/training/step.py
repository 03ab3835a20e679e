"""The train and eval steps: pure functions of (state, batch), jitted with explicit shardings.

One call of the train step is one optimiser update. The masking noise, the response spans and
the loss weights are drawn for the whole batch first (``prepare``); with ``grad_accum`` > 1 the
prepared batch is split into micro-batches that a ``lax.scan`` runs through, summing losses and
gradients, which is exactly the full batch's gradient. A non-finite loss turns
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

from whisper_llada_jax import mesh as mesh_lib
from whisper_llada_jax.config import ModelConfig
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training import objectives, optim
from whisper_llada_jax.training.config import TrainConfig
from whisper_llada_jax.training.state import StateSetup, TrainState

# Batch fields that go to the devices (the rest, e.g. ids/text, stay on the host).
DEVICE_KEYS = ("features", "encoder_out", "audio_len", "response_ids", "response_len", "valid",
               "first_pass_ids", "first_pass_len")

Metrics = dict[str, jax.Array]

# first_pass_rate's row choice: a stream folded from the step's key, so the other draws (and
# every run without the option) are unchanged.
FIRST_PASS_STREAM = 0x66707273

# Encoder frames per audio sample: 160-sample mel hop, then the encoder's stride-2 conv.
SAMPLES_PER_ENCODER_FRAME = 320


def device_batch(batch: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(batch[k]) for k in DEVICE_KEYS if k in batch and batch[k] is not None}


def audio_windows_needed(audio_len: jax.Array, mcfg: ModelConfig, margin_windows: int) -> jax.Array:
    """(B,) projector windows covering each clip plus a margin, at most all of them: the span
    decoding's ``audio_span: trimmed`` keeps for a batch's longest clip before it rounds up
    (``inference.driver.trimmed_audio_tokens``)."""
    frames = -(-audio_len.astype(jnp.int32) // SAMPLES_PER_ENCODER_FRAME)
    need = -(-frames // mcfg.projector.stride) + margin_windows
    return jnp.clip(need, 1, mcfg.num_windows)


def _check_batch(tcfg: TrainConfig, batch: dict, train: bool) -> None:
    """Trace-time checks of what the options need from the (global) batch."""
    b = batch["response_ids"].shape[0]
    grouped = tcfg.loss_span == "group_longest" or tcfg.loss_norm == "group_mean"
    if grouped and b % tcfg.group_size:
        raise ConfigError(f"group_size={tcfg.group_size} does not divide the global batch of {b} rows",
                          hint="make data.batch_size x processes a multiple of group_size")
    if tcfg.audio_span != "full" and "audio_len" not in batch:
        raise ConfigError(f"audio_span={tcfg.audio_span} needs each clip's length: the batches carry no audio_len",
                          hint="give batches an audio_len (samples) field, as the data pipeline does")
    if tcfg.first_pass_rate and train and not {"first_pass_ids", "first_pass_len"} <= set(batch):
        raise ConfigError(f"first_pass_rate={tcfg.first_pass_rate} needs each row's first pass: the batches carry "
                          "no first_pass_ids / first_pass_len",
                          hint="give training batches those fields (the demo's do, from tiny.en on the training "
                               "split; the manifest pipeline does not), or set first_pass_rate: 0")


def prepare(batch: dict, rng: jax.Array, tcfg: TrainConfig, mcfg: ModelConfig, train: bool = True) -> dict:
    """Corruption, span and loss weights on the whole (global) batch, before any micro-batching.

    Adds ``inputs`` (what the LLM reads in the response slots), ``scored`` / ``weights`` (the
    loss is ``sum(ce * weights)``, see ``objectives``) and, when slots or audio are hidden,
    ``attention_mask`` / ``positions`` over ``[prompt | audio | response]``: a hidden key is
    never attended to and the visible ones keep the positions of the truncated sequence, so
    every visible position computes what the reference's shorter input would.
    With ``first_pass_rate`` a share of the rows reads its first pass instead of the transcript
    (``objectives.first_pass_inputs``). Evaluation (``train=False``) neither drops audio, draws a
    random span (true length) nor reads first passes.
    """
    _check_batch(tcfg, batch, train)
    ids, valid = batch["response_ids"], batch["valid"]
    b, r = ids.shape
    noise_rng, drop_rng, span_rng = jax.random.split(rng, 3)
    source, span_len = ids, batch["response_len"]  # what the response slots read before masking
    if tcfg.first_pass_rate and train:
        source, span_len = objectives.first_pass_inputs(
            jax.random.fold_in(rng, FIRST_PASS_STREAM), ids, batch["response_len"], batch["first_pass_ids"],
            batch["first_pass_len"], valid, tcfg.first_pass_rate, mcfg.tokens.eos)
    span = objectives.response_mask(span_len, valid, r, tcfg.loss_span, tcfg.group_size)
    out = {k: v for k, v in batch.items() if k not in ("response_len", "first_pass_ids", "first_pass_len")}
    if tcfg.objective == "autoregressive":
        out["inputs"], scored = ids, span
        weights = objectives.token_weights(span, valid, tcfg.loss_norm, tcfg.group_size)
    else:
        vocab = None
        if tcfg.substitution_rate:
            vocab = objectives.vocab_range(mcfg.tokens, mcfg.llm.vocab_size, tcfg.substitution_range)
        c = objectives.corrupt(noise_rng, source, span, mcfg.tokens.mask, tcfg.t_eps, tcfg.substitution_rate, vocab)
        out["inputs"] = c.noisy_ids
        scored = c.masked if tcfg.loss_positions == "masked" else span
        inv_t = {"span_len": jnp.sum(span, axis=1), "t": c.t} if tcfg.objective == "diffusion_inv_t" else {}
        weights = objectives.token_weights(scored, valid, tcfg.loss_norm, tcfg.group_size, **inv_t)
    out["scored"], out["weights"] = scored, weights

    audio = mcfg.audio_tokens
    keep = None  # (B,) audio vectors each row sees
    if tcfg.audio_span != "full":
        need = audio_windows_needed(batch["audio_len"], mcfg, tcfg.audio_margin_windows)
        if tcfg.audio_span == "random" and train:
            need = jax.random.randint(span_rng, (b,), need, mcfg.num_windows + 1)
        keep = need * mcfg.projector.num_queries
    if tcfg.audio_drop_rate and train:
        drop = jax.random.uniform(drop_rng, (b,)) < tcfg.audio_drop_rate
        keep = jnp.where(drop, 0, audio if keep is None else keep)
    if tcfg.loss_span != "canvas" or keep is not None:
        p = len(mcfg.tokens.prompt_ids)
        keep = jnp.full((b,), audio, jnp.int32) if keep is None else keep.astype(jnp.int32)
        a = jnp.arange(audio, dtype=jnp.int32)[None, :]
        out["attention_mask"] = jnp.concatenate([jnp.ones((b, p), bool), a < keep[:, None], span], axis=1)
        out["positions"] = jnp.concatenate([
            jnp.broadcast_to(jnp.arange(p + audio, dtype=jnp.int32), (b, p + audio)),
            p + keep[:, None] + jnp.arange(r, dtype=jnp.int32)[None, :]], axis=1)
    return out


def make_loss_fn(model, tcfg: TrainConfig, mcfg: ModelConfig) -> Callable:
    """loss_fn(trainable, frozen, prepared_batch, rng, train) -> (loss, LossOut); the loss is the
    batch's share of the full-batch loss (its weights carry the full batch's normalisers)."""
    shift = tcfg.objective == "autoregressive"

    def loss_fn(trainable, frozen, batch, rng, train: bool):
        variables = optim.merge(trainable, frozen)
        audio = {"encoder_out": batch["encoder_out"]} if "encoder_out" in batch else {"features": batch["features"]}
        logits = model.apply(variables, batch["inputs"], **audio, deterministic=not train,
                             attention_mask=batch.get("attention_mask"), positions=batch.get("positions"),
                             shift=shift, rngs={"dropout": rng} if train else {})
        out = objectives.weighted_loss(logits, batch["response_ids"], batch["scored"], batch["weights"])
        return out.loss, out

    return loss_fn


def make_train_step(model, tcfg: TrainConfig, mcfg: ModelConfig, tx: optax.GradientTransformation
                    ) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
    loss_fn = make_loss_fn(model, tcfg, mcfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = tcfg.optim.grad_accum
    lr_fn = optim.schedule(tcfg.optim)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        next_rng, noise_rng, dropout_rng = jax.random.split(state.rng, 3)
        batch = prepare(batch, noise_rng, tcfg, mcfg)
        if k == 1:
            (loss, out), grads = grad_fn(state.trainable, state.frozen, batch, dropout_rng, True)
            n, correct = out.num_tokens, out.correct
        else:
            # Every normaliser is already in the weights, so micro-batches of any rows sum to the
            # full batch's loss and gradient. Row j of every micro-batch comes from each device's
            # own rows: no resharding.
            micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)
            zeros = jax.tree.map(jnp.zeros_like, state.trainable)

            def body(carry, xs):
                g_acc, l_acc, n_acc, c_acc = carry
                mb, r = xs
                (l, o), g = grad_fn(state.trainable, state.frozen, mb, r, True)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, n_acc + o.num_tokens, c_acc + o.correct), None

            init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
            (grads, loss, n, correct), _ = jax.lax.scan(body, init, (micro, jax.random.split(dropout_rng, k)))

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
        _, out = loss_fn(state.trainable, state.frozen, prepare(batch, rng, tcfg, mcfg, train=False), rng, False)
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

"""Training objectives, independent of the model (SPEC section 7).

Masked diffusion: per sample a ratio t ~ U(0, 1); each response position (up to the longest
response in the batch, so eos padding takes part as in the reference) is replaced by the mask id
with probability t; the loss is the cross-entropy at masked positions. Prompt and audio are not
part of the response tensor, so they can never be masked.

- ``"reference"`` weighting: mean CE over all masked positions of the batch (no 1/t).
- ``"inv_t"`` weighting (LLaDA's SFT recipe): each masked token's CE divided by its sample's t,
  summed per sample, divided by that sample's response length, averaged over samples.

Both are safe when nothing is masked (the loss is then 0 with a zero gradient).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Corruption(NamedTuple):
    noisy_ids: jax.Array  # (B, R) int32: response ids with masked positions set to mask_id
    masked: jax.Array  # (B, R) bool: positions that were masked (the loss positions)
    t: jax.Array  # (B,) f32: per-sample mask ratio


def response_mask(response_len: jax.Array, valid: jax.Array, length: int, span: str = "batch_longest") -> jax.Array:
    """(B, R) bool on valid rows: positions before the batch's longest valid response
    (``span="batch_longest"``, the reference) or every position (``"canvas"``)."""
    if span == "canvas":
        return jnp.broadcast_to(valid[:, None], (valid.shape[0], length))
    if span != "batch_longest":
        raise ValueError(f"unknown loss span {span!r}")
    longest = jnp.max(jnp.where(valid, response_len, 0))
    return (jnp.arange(length)[None, :] < longest) & valid[:, None]


def corrupt(rng: jax.Array, response_ids: jax.Array, mask: jax.Array, mask_id: int,
            t_eps: float = 0.0) -> Corruption:
    """Masks each position of ``mask`` with its sample's probability t ~ eps + (1 - eps) U(0, 1)."""
    t_rng, u_rng = jax.random.split(rng)
    b, r = response_ids.shape
    t = jax.random.uniform(t_rng, (b,), jnp.float32)
    t = t_eps + (1.0 - t_eps) * t
    u = jax.random.uniform(u_rng, (b, r), jnp.float32)
    masked = (u < t[:, None]) & mask
    noisy = jnp.where(masked, jnp.asarray(mask_id, response_ids.dtype), response_ids)
    return Corruption(noisy, masked, t)


class LossOut(NamedTuple):
    loss: jax.Array  # scalar
    num_tokens: jax.Array  # scalar f32: tokens scored (masked positions / next-token targets)
    correct: jax.Array  # scalar f32: scored tokens whose argmax equals the target
    loss_sum: jax.Array  # scalar f32: summed per-token CE (for exact validation averages)


def _token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def diffusion_loss(logits: jax.Array, targets: jax.Array, corruption: Corruption, mask: jax.Array,
                   weighting: Literal["reference", "inv_t"] = "reference") -> LossOut:
    """Masked-diffusion loss of response logits ``(B, R, V)`` against the clean ``targets``."""
    ce = _token_ce(logits, targets)
    w = corruption.masked.astype(jnp.float32)
    n = jnp.sum(w)
    loss_sum = jnp.sum(ce * w)
    if weighting == "reference":
        loss = loss_sum / jnp.maximum(n, 1.0)
    elif weighting == "inv_t":
        per_sample = jnp.sum(ce * w, axis=1) / jnp.maximum(corruption.t, 1e-6)
        length = jnp.sum(mask, axis=1).astype(jnp.float32)
        rows = (length > 0).astype(jnp.float32)
        per_sample = per_sample / jnp.maximum(length, 1.0)
        loss = jnp.sum(per_sample * rows) / jnp.maximum(jnp.sum(rows), 1.0)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * w)
    return LossOut(loss, n, correct, loss_sum)


def next_token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> LossOut:
    """Autoregressive baseline: ``logits[:, i]`` predicts ``targets[:, i + 1]``; mean CE over
    target positions inside ``mask`` (the first response token is predicted from the prefix,
    whose logits the response-only forward does not return, so it is not scored)."""
    logits, targets, w = logits[:, :-1], targets[:, 1:], mask[:, 1:].astype(jnp.float32)
    ce = _token_ce(logits, targets)
    n = jnp.sum(w)
    loss_sum = jnp.sum(ce * w)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * w)
    return LossOut(loss_sum / jnp.maximum(n, 1.0), n, correct, loss_sum)

"""Training objectives, independent of the model (SPEC section 7).

Masked diffusion: per sample a ratio t ~ U(0, 1); each response position inside the row's span
is replaced by the mask id with probability t; the loss is the cross-entropy at masked
positions. Prompt and audio are not part of the response tensor, so they can never be masked.

**Span** (``response_mask``): the response slots that exist for a row. The reference pads each
GPU's batch of 4 to its longest transcript and feeds nothing beyond; here the canvas has a
static length, so slots beyond a group's longest are hidden from attention (``key_mask``) and
from the loss, which gives the same numbers as the truncated forward.

**Weights** (``token_weights``): every scored token gets a constant weight such that the loss
is ``sum(ce * weight)`` over the *whole* batch: the normalisers (token counts, group counts)
are computed on the full batch before any micro-batching, so summing micro-batch losses and
gradients gives exactly the full batch's (MaxText's ``total_weights``, divided in advance).

- ``token_mean``: one mean over every scored token of the batch.
- ``group_mean`` (the reference under DDP): each group of ``group_size`` consecutive rows (one
  GPU's batch) takes its own mean; the loss is the mean over groups holding a valid row.
- ``inv_t`` weighting (LLaDA's SFT recipe): a masked token's CE is divided by its sample's t
  and by the row's span length, and rows (not tokens) are averaged.

Every normaliser is guarded: nothing scored gives a loss of 0 with a zero gradient.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from whisper_llada_jax.errors import ConfigError

Span = Literal["group_longest", "batch_longest", "canvas"]


class Corruption(NamedTuple):
    noisy_ids: jax.Array  # (B, R) int32: response ids after masking (and substitution)
    masked: jax.Array  # (B, R) bool: positions replaced by mask_id
    t: jax.Array  # (B,) f32: per-sample mask ratio
    substituted: jax.Array | None = None  # (B, R) bool: unmasked positions given a random id


def _group_max(x: jax.Array, group_size: int) -> jax.Array:
    """Per-row max of ``x (B,)`` over its group of ``group_size`` consecutive rows."""
    b = x.shape[0]
    if b % group_size:
        raise ValueError(f"batch of {b} rows does not split into groups of {group_size}")
    g = jnp.max(x.reshape(b // group_size, group_size), axis=1)
    return jnp.repeat(g, group_size)


def response_mask(response_len: jax.Array, valid: jax.Array, length: int, span: Span = "batch_longest",
                  group_size: int = 4) -> jax.Array:
    """(B, R) bool, False on padding rows: the slots before the longest valid response of the
    row's group of ``group_size`` consecutive rows (``group_longest``, the reference), of the
    whole batch (``batch_longest``), or every slot (``canvas``)."""
    if span == "canvas":
        return jnp.broadcast_to(valid[:, None], (valid.shape[0], length))
    if span not in ("group_longest", "batch_longest"):
        raise ValueError(f"unknown loss span {span!r}")
    lens = jnp.where(valid, response_len, 0)
    longest = _group_max(lens, group_size if span == "group_longest" else lens.shape[0])
    return (jnp.arange(length)[None, :] < longest[:, None]) & valid[:, None]


def vocab_range(tokens, vocab_size: int, explicit: tuple[int, ...] = ()) -> tuple[int, int]:
    """``[low, high)`` ids that count as real vocabulary for substitution noise: ``explicit``
    when given, else the ids below the lowest special id when the specials sit at the top of
    the vocabulary (LLaDA: 0..126079), or above the highest special id when they sit at the
    bottom (the small demo / test tokenizers; ``vocab_size`` may then exceed the tokenizer's,
    so give ``explicit`` there)."""
    if explicit:
        lo, hi = explicit
    else:
        special = (tokens.bos, tokens.eos, tokens.pad, tokens.mask, tokens.start_header, tokens.end_header,
                   tokens.eot)
        if min(special) >= vocab_size // 2:
            lo, hi = 0, min(special)
        else:
            lo, hi = max(special) + 1, vocab_size
    if not 0 <= lo < hi <= vocab_size:
        raise ConfigError(f"substitution_range: the substitution vocabulary [{lo}, {hi}) is empty or outside "
                          f"[0, {vocab_size}) (llm.vocab_size)", hint="set substitution_range: [low, high] inside the vocabulary")
    return int(lo), int(hi)


def corrupt(rng: jax.Array, response_ids: jax.Array, mask: jax.Array, mask_id: int,
            t_eps: float = 0.0, substitution_rate: float = 0.0,
            substitution_vocab: tuple[int, int] | None = None) -> Corruption:
    """Masks each position of ``mask`` with its sample's probability t ~ eps + (1 - eps) U(0, 1)
    (and every one that already holds ``mask_id``); then (``substitution_rate`` > 0) replaces each still-unmasked position of ``mask`` with
    probability ``substitution_rate`` by an id drawn uniformly from ``substitution_vocab``."""
    t_rng, u_rng, s_rng, v_rng = jax.random.split(rng, 4)
    b, r = response_ids.shape
    t = jax.random.uniform(t_rng, (b,), jnp.float32)
    t = t_eps + (1.0 - t_eps) * t
    u = jax.random.uniform(u_rng, (b, r), jnp.float32)
    # A slot that already holds the mask id (a first pass's unknown word, ``first_pass_inputs``)
    # counts as masked; a transcript never holds it.
    masked = ((u < t[:, None]) | (response_ids == mask_id)) & mask
    noisy = jnp.where(masked, jnp.asarray(mask_id, response_ids.dtype), response_ids)
    if not substitution_rate:
        return Corruption(noisy, masked, t, jnp.zeros_like(masked))
    if substitution_vocab is None:
        raise ValueError("corrupt: substitution_rate needs substitution_vocab=(low, high)")
    lo, hi = substitution_vocab
    sub = (jax.random.uniform(s_rng, (b, r), jnp.float32) < substitution_rate) & mask & ~masked
    random_ids = jax.random.randint(v_rng, (b, r), lo, hi, response_ids.dtype)
    return Corruption(jnp.where(sub, random_ids, noisy), masked, t, sub)


def first_pass_inputs(rng: jax.Array, response_ids: jax.Array, response_len: jax.Array, first_pass_ids: jax.Array,
                      first_pass_len: jax.Array, valid: jax.Array, rate: float, eos_id: int
                      ) -> tuple[jax.Array, jax.Array]:
    """Deliberation training on noisy first passes: each valid row, with probability ``rate``,
    reads its own first pass in place of its transcript before masking; the target stays the
    transcript. Returns ``(source (B, R), span_len (B,))``: what ``corrupt`` masks, and the
    lengths ``response_mask`` builds the span from.

    Lengths differ, and the first pass is read slot by slot as deliberation reads it: slot i
    holds first-pass token i (eos past its end, ``deliberation_canvas: training``) and is
    scored against transcript token i (eos past its end). Deliberation keeps the first pass's
    slots and writes its answer into them, so this is the task it decodes; where a word was
    inserted or dropped the slots after it are shifted against the transcript, and what is
    learnt there is to rewrite them (with ``loss_positions: all``) or, masked, to fill them in
    the transcript's order. A chosen row's span covers the longer of the two, so a first pass
    longer than its transcript is seen and its extra slots learn eos (``canvas`` covers every
    slot anyway)."""
    b, r = response_ids.shape
    use = (jax.random.uniform(rng, (b,)) < rate) & valid
    first = jnp.where(jnp.arange(r)[None, :] < first_pass_len[:, None], first_pass_ids, eos_id)
    source = jnp.where(use[:, None], first.astype(response_ids.dtype), response_ids)
    span_len = jnp.where(use, jnp.maximum(response_len, first_pass_len), response_len)
    return source, span_len


def token_weights(scored: jax.Array, valid: jax.Array, norm: Literal["token_mean", "group_mean"] = "group_mean",
                  group_size: int = 4, span_len: jax.Array | None = None, t: jax.Array | None = None
                  ) -> jax.Array:
    """(B, R) f32 constant weights with ``loss = sum(ce * weights)`` (module docstring).

    ``scored`` (B, R) bool: tokens in the loss. With ``t`` and ``span_len`` (inv_t weighting)
    a token counts ``1 / (t * span_len)`` of its row and each valid row counts one unit;
    otherwise each scored token counts one unit. ``norm`` divides by the units of the batch
    (``token_mean``) or of the row's group, then by the number of groups with a valid row
    (``group_mean``)."""
    s = scored.astype(jnp.float32)
    if t is None:
        w, units = s, jnp.sum(s, axis=1)
    else:
        span = span_len.astype(jnp.float32)
        w = s / (jnp.maximum(t, 1e-6) * jnp.maximum(span, 1.0))[:, None]
        units = ((span > 0) & valid).astype(jnp.float32)
    if norm == "token_mean":
        return w / jnp.maximum(jnp.sum(units), 1.0)
    if norm != "group_mean":
        raise ValueError(f"unknown loss normalisation {norm!r}")
    b = units.shape[0]
    if b % group_size:
        raise ValueError(f"batch of {b} rows does not split into groups of {group_size}")
    per_group = jnp.sum(units.reshape(b // group_size, group_size), axis=1)
    live_groups = jnp.sum(jnp.any(valid.reshape(b // group_size, group_size), axis=1))
    row_norm = jnp.repeat(jnp.maximum(per_group, 1.0), group_size) * jnp.maximum(live_groups, 1)
    return w / row_norm[:, None]


class LossOut(NamedTuple):
    loss: jax.Array  # scalar
    num_tokens: jax.Array  # scalar f32: tokens scored (masked positions / next-token targets)
    correct: jax.Array  # scalar f32: scored tokens whose argmax equals the target
    loss_sum: jax.Array  # scalar f32: summed per-token CE (for exact validation averages)


def token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def weighted_loss(logits: jax.Array, targets: jax.Array, scored: jax.Array, weights: jax.Array) -> LossOut:
    """``sum(ce * weights)`` with the token counts beside it (``weights`` from ``token_weights``)."""
    ce = token_ce(logits, targets)
    s = scored.astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * s)
    return LossOut(jnp.sum(ce * jax.lax.stop_gradient(weights)), jnp.sum(s), correct, jnp.sum(ce * s))


def diffusion_loss(logits: jax.Array, targets: jax.Array, corruption: Corruption, mask: jax.Array,
                   weighting: Literal["reference", "inv_t"] = "reference") -> LossOut:
    """Masked-diffusion loss of response logits ``(B, R, V)`` against the clean ``targets``:
    one mean over the batch's masked tokens (``reference``) or LLaDA's ``inv_t`` row mean."""
    valid = jnp.any(mask, axis=1)
    if weighting == "reference":
        w = token_weights(corruption.masked, valid, "token_mean")
    elif weighting == "inv_t":
        w = token_weights(corruption.masked, valid, "token_mean", span_len=jnp.sum(mask, 1), t=corruption.t)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    return weighted_loss(logits, targets, corruption.masked, w)


def next_token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> LossOut:
    """Autoregressive baseline: ``logits[:, i]`` predicts ``targets[:, i]`` (the model's logits
    are shifted: the first response token is predicted from the last prefix position, so every
    response token, the first included, is scored); mean CE over ``mask``."""
    w = token_weights(mask, jnp.any(mask, axis=1), "token_mean")
    return weighted_loss(logits, targets, mask, w)

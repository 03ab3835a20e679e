"""Deliberation (second pass) over first-pass transcripts, batched and fused (SPEC section 8).

``diffusion``: mask ``int(n * mask_ratio)`` of a row's ``n`` first-pass tokens (at random, or
where one forward with a pad-filled response gives the first-pass token the lowest
probability), then run ``min(steps, masked)`` steps of the denoising loop over the whole
response. ``semi_ar``: cut the first pass into ``num_chunks`` chunks (the last takes the
remainder) and, chunk after chunk, mask the chunk and re-decode it for ``steps // num_chunks``
steps with the earlier chunks already corrected.

Rows of different lengths share one padded buffer of ``R`` slots; padding slots are hidden from
attention and keep their RoPE positions out of the way, so each row computes exactly what it
would alone. Both strategies run through ``diffusion.denoise`` in one ``lax.while_loop``.

Deliberation inputs (``DecodeConfig``; the defaults are the reference): ``canvas="training"``
deliberates on the canvas a ``loss_span: canvas`` model was trained on (first pass + eos tail up to
``R``, all visible) instead of the ``n`` first-pass slots alone; ``confidence_fill="mask"`` fills
the confidence forward's response with the mask token (pad is eos for LLaDA: to the model an
all-eos response is an empty transcript); ``mask_threshold`` re-masks every first-pass token whose
confidence is below it instead of a fixed share; ``force_unknown`` always re-masks the slots that
arrive masked (one per word the vocabulary cannot represent, ``text/first_pass.py``).

``edit_length`` (fast mode d) lets the length change: every masked token becomes a span of
``1 + insert_slots`` masked slots and the row gets ``tail_slots`` more at its end; slots the
model fills with eos / pad are dropped from the output, so masked words can be replaced by
longer, shorter or no words. The reference cannot do this (its response length is fixed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

from whisper_llada_jax.decoding import schedule
from whisper_llada_jax.decoding.backbone import Backbone, Prefix, full_forward
from whisper_llada_jax.decoding.diffusion import Plan, denoise


@dataclasses.dataclass(frozen=True)
class DeliberationPlan:
    strategy: Literal["diffusion", "semi_ar"]
    masking: Literal["random", "low_confidence"]
    num_chunks: int
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    temperature: float = 0.0
    threshold: float | None = None
    cache: Literal["none", "prefix", "dual"] = "none"
    mask_id: int = 126336
    pad_id: int = 126081
    eos_id: int = 126081
    # edit_length (fast mode d): extra masked slots per masked token / at the end; canvas width
    edit_length: bool = False
    insert_slots: int = 1
    tail_slots: int = 4
    edit_width: int = 0
    # deliberation inputs (module docstring); the defaults are the reference's
    canvas: Literal["first_pass", "training"] = "first_pass"
    confidence_fill: Literal["pad", "mask"] = "pad"
    mask_threshold: float | None = None
    force_unknown: bool = False


def initial_mask(bb: Backbone, variables: Any, prefix: Prefix, first: jax.Array, length: jax.Array,
                 resp_valid: jax.Array, num_masked: jax.Array, plan: DeliberationPlan, rng: jax.Array,
                 row_ids: jax.Array):
    """Positions to mask ``(B, R)`` among the ``length`` first-pass slots: the ``num_masked``
    lowest-confidence or random positions (or, with ``mask_threshold``, every one below it),
    plus, with ``force_unknown``, every slot that already holds the mask token.

    Low confidence: one forward with the visible response (``resp_valid``) filled with pad (the
    reference's confidence pass) or mask tokens, reading each first-pass token's probability
    (ties: lower index first).
    """
    b, r = first.shape
    valid = jnp.arange(r)[None, :] < length[:, None]
    forced = valid & (first == plan.mask_id) if plan.force_unknown else jnp.zeros_like(valid)
    choose = valid & ~forced
    if plan.masking == "low_confidence":
        fill = plan.pad_id if plan.confidence_fill == "pad" else plan.mask_id
        h, _ = full_forward(bb, variables, prefix, jnp.full_like(first, fill), resp_valid, return_kv=False)
        p = schedule.token_probability(bb.head(variables, h), first)
        if plan.mask_threshold is not None:
            return (choose & (p < plan.mask_threshold)) | forced
        score = -p
    else:
        mask_rng = jax.random.fold_in(rng, 0x6D61736B)  # a stream apart from the step keys
        keys = jax.vmap(lambda i: jax.random.fold_in(mask_rng, i))(row_ids)
        score = jax.vmap(lambda k: jax.random.uniform(k, (r,)))(keys)
    return schedule.select_top(jnp.where(choose, score, schedule.NEG_INF), num_masked) | forced


def deliberate_tokens(bb: Backbone, variables: Any, prefix: Prefix, first: jax.Array, length: jax.Array,
                      num_masked: jax.Array, steps: jax.Array, rng: jax.Array, row_ids: jax.Array,
                      live: jax.Array, plan: DeliberationPlan, mask: jax.Array | None = None):
    """Fused deliberation. ``first (B, R)`` first-pass ids (padded), ``length (B,)`` their
    counts, ``num_masked (B,)`` = int(n * mask_ratio) (computed on the host, as the reference
    does in float64), ``steps`` the step budget (traced: one program serves every value),
    ``mask`` an optional injected choice of positions. Returns the corrected canvas ``(B, R)``
    (``(B, edit_width)`` with ``edit_length``) and forward passes ``(B,)``."""
    b, r = first.shape
    if plan.canvas == "training":  # first pass + eos tail, every slot visible (loss_span: canvas)
        first = jnp.where(jnp.arange(r)[None, :] < length[:, None], first, plan.eos_id)
        canvas_len = jnp.full_like(length, r)
    else:
        canvas_len = length
    resp_valid = jnp.arange(r)[None, :] < canvas_len[:, None]
    common = dict(remasking=plan.remasking, temperature=plan.temperature, threshold=plan.threshold,
                  cache="prefix" if plan.cache != "none" else "none", mask_id=plan.mask_id, eos_id=plan.eos_id)
    if plan.strategy == "diffusion":
        extra = jnp.zeros((b,), jnp.int32)
        if mask is None:
            mask = initial_mask(bb, variables, prefix, first, length, resp_valid, num_masked, plan, rng, row_ids)
            extra = jnp.full((b,), int(plan.masking == "low_confidence"), jnp.int32)
        elif plan.force_unknown:
            mask = mask | ((jnp.arange(r)[None, :] < length[:, None]) & (first == plan.mask_id))
        if plan.edit_length:
            first, canvas_len = expand_for_edits(first, length, mask, plan.insert_slots, plan.tail_slots,
                                                 plan.edit_width, plan.mask_id, plan.pad_id)
            mask = first == plan.mask_id
        x = jnp.where(mask, plan.mask_id, first)
        row_steps = jnp.minimum(steps, mask.sum(-1)).astype(jnp.int32)
        seg = Plan(num_segments=1, segments="whole", **common)
        out, nfe = denoise(bb, variables, prefix, x, canvas_len, row_steps, rng, row_ids, live, seg)
        return out, nfe + extra * live
    seg = Plan(num_segments=plan.num_chunks, segments="chunks", remask_segment=True, **common)
    row_steps = jnp.broadcast_to(steps // plan.num_chunks, (b,)).astype(jnp.int32)
    return denoise(bb, variables, prefix, first, length, row_steps, rng, row_ids, live, seg)


# ----------------------------------------------------------------------------- edit_length
def expand_for_edits(first: jax.Array, length: jax.Array, mask: jax.Array, insert_slots: int, tail_slots: int,
                     width: int, mask_id: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Canvas for ``edit_length``: every masked token becomes ``1 + insert_slots`` masked slots
    and ``tail_slots`` masked slots follow the row. Returns ``(canvas (B, width), lengths)``."""
    r = first.shape[1]
    valid = jnp.arange(r)[None, :] < length[:, None]
    span = jnp.where(valid, 1 + insert_slots * mask.astype(jnp.int32), 0)
    ends = jnp.cumsum(span, axis=1)  # slot s belongs to token searchsorted(ends, s, 'right')
    slots = jnp.arange(width)
    src = jax.vmap(lambda e: jnp.searchsorted(e, slots, side="right"))(ends)
    src_c = jnp.minimum(src, r - 1)
    tok = jnp.take_along_axis(first, src_c, axis=1)
    masked = jnp.take_along_axis(mask, src_c, axis=1)
    body = ends[:, -1]
    new_len = jnp.minimum(body + tail_slots, width)
    canvas = jnp.where(slots[None] < body[:, None], jnp.where(masked, mask_id, tok),
                       jnp.where(slots[None] < new_len[:, None], mask_id, pad_id))
    return canvas.astype(first.dtype), new_len.astype(length.dtype)

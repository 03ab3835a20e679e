"""Masked-diffusion decoding fused into one ``lax.while_loop`` (SPEC section 8).

One engine, ``denoise``, runs every diffusion-style loop of the project: plain diffusion (one
block), semi-autoregressive blocks, and both deliberation strategies. The canvas is split into
*segments* (blocks, deliberation chunks, or the whole response); each segment gets a number of
steps, reveals ``m // s`` (+1 for the first ``m % s`` steps) of its ``m`` masked tokens per step
by confidence, and the loop moves to the next segment when every live row has finished the
current one. The carry holds the canvas, per-row bookkeeping (done, eos seen, forward passes)
and, for the cache fast modes, a K/V buffer; keys for randomness are derived per (step, row)
and never reused. Nothing leaves the device until the loop ends.

Rows advance through segments in lock step (a row that finishes early waits without spending
forward passes). Candidates for revealing are the masked positions up to the end of the current
block (the reference sets -inf only *after* the block, so a position where the model revealed
the mask token itself stays a candidate in later blocks); logits are projected for
the current block (and, only in a step where such a slot exists, for the whole response); the
dual cache runs only the current block's tokens through the transformer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from whisper_llada_jax.decoding import schedule
from whisper_llada_jax.decoding.backbone import Backbone, Prefix, cache_buffer, cached_forward, full_forward, positions


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static shape of one fused denoising loop (hashable: part of the jit cache key)."""

    num_segments: int
    segments: Literal["blocks", "chunks", "whole"]
    block: int = 0  # block length of "blocks" segments
    block_window: bool = False  # logits only for the current block (dual cache)
    remask_segment: bool = False  # semi_ar deliberation: mask the chunk when it starts
    eos_rule: bool = False  # fill after the first revealed eos, stop after that block
    threshold: float | None = None
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    temperature: float = 0.0
    cache: Literal["none", "prefix", "dual"] = "none"
    mask_id: int = 126336
    eos_id: int = 126081


class Carry(NamedTuple):
    t: jax.Array  # global step counter
    c: jax.Array  # current segment
    i: jax.Array  # step within the segment
    x: jax.Array  # (B, R) canvas of response ids
    m: jax.Array  # (B,) masked tokens at the segment start
    done: jax.Array  # (B,) row finished for good
    eos_seen: jax.Array  # (B,)
    nfe: jax.Array  # (B,) forward passes this row took part in (also its RNG step index)
    cache: Any  # K/V buffer of the cache fast modes (None otherwise)
    tokens: jax.Array  # (B,) LLM query positions this row's forward passes processed


def segment_bounds(plan: Plan, c: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row ``[start, end)`` of segment ``c``; ``length (B,)`` is each row's response length."""
    if plan.segments == "blocks":
        start = jnp.broadcast_to(c * plan.block, length.shape)
        return start, start + plan.block
    if plan.segments == "whole":
        return jnp.zeros_like(length), length
    size = length // plan.num_segments  # the reference's chunks; the last takes the remainder
    start = c * size
    return start, jnp.where(c == plan.num_segments - 1, length, start + size)


def window(plan: Plan, c: jax.Array, r: int) -> tuple[jax.Array, int]:
    """Start and static size of the positions whose logits a step computes."""
    if plan.block_window:
        return c * plan.block, plan.block
    return jnp.zeros((), jnp.int32), r


def _window_hidden(bb: Backbone, variables, plan: Plan, prefix: Prefix, x, resp_valid, c, i, cache):
    """Final hidden states ``(B, W, D)`` for the logits window, and the (refreshed) cache."""
    p = prefix.embeds.shape[1]
    w0, w = window(plan, c, x.shape[1])
    take = lambda h: jax.lax.dynamic_slice_in_dim(h, w0, w, axis=1)

    if plan.cache == "none":
        h, _ = full_forward(bb, variables, prefix, x, resp_valid, return_kv=False)
        return take(h), cache

    pos = positions(prefix.valid, resp_valid)
    all_valid = jnp.concatenate([prefix.valid, resp_valid], axis=1)

    # (A refresh writing into the carried buffer in place would make XLA copy the buffer into
    # both branches of this cond; a fresh buffer, once per segment, is cheaper.)
    def refresh(_):
        h, kv = full_forward(bb, variables, prefix, x, resp_valid, return_kv=True,
                             kv=cache_buffer(bb, variables, prefix, x, resp_valid))
        return take(h), kv

    # On a cache hit the query tokens' fresh K/V are written over their own slots of the buffer
    # in place (the prefix cache's response slots, the dual cache's current block) and every
    # layer attends over the whole buffer; nothing is concatenated.
    def reuse(kv):
        if plan.cache == "prefix":  # the whole response, over the cached [prompt | audio]
            h, kv = cached_forward(bb, variables, x, pos[:, p:], kv, jnp.int32(p), all_valid, pos)
            return take(h), kv
        # dual: only the window runs; every other position (before and after) comes from the cache
        h, kv = cached_forward(bb, variables, take(x), jax.lax.dynamic_slice_in_dim(pos, p + w0, w, axis=1),
                               kv, p + w0, all_valid, pos)
        return h, kv

    return jax.lax.cond(i == 0, refresh, reuse, cache)


def _init_cache(bb: Backbone, variables, plan: Plan, prefix: Prefix, x, resp_valid):
    """A zero K/V buffer of every ``P + R`` position (filled by each segment's first forward)."""
    if plan.cache == "none":
        return None
    return cache_buffer(bb, variables, prefix, x, resp_valid)


def head_on_block(plan: Plan, r: int) -> bool:
    """Whether a step projects logits for the current block only (exact semi-AR blocks)."""
    return plan.segments == "blocks" and not plan.block_window and plan.block < r


def _tokens_and_confidence(bb: Backbone, variables, plan: Plan, h, keys, cand, c, w0):
    """Sampled tokens and their probabilities ``(B, R)`` from the response's hidden states
    ``h (B, W, D)`` of the logits window starting at ``w0`` (``cand (B, W)``).

    Only candidates are ever revealed, so logits are needed at candidate slots only. With semi-AR
    blocks these are the current block's masked slots, except where the model revealed the mask
    token itself in an earlier block (the reference keeps such a slot a candidate): the LM head
    (``V x D``, the largest matmul of a step at paper size) then runs on the ``block`` rows of the
    current block, and on the whole response only in a step where such a slot exists. Outside the
    block, a block-only step returns probability 0 (those slots are not candidates). The Gumbel
    noise is drawn for the whole response and sliced, so both ways sample the same tokens."""
    b, r = cand.shape  # the window; the whole response unless the dual cache runs one block
    r_all = plan.block * plan.num_segments if plan.segments == "blocks" else r

    def sample(hh, start):
        logits = bb.head(variables, hh)  # (B, rows, V) fp32
        gu = None
        if plan.temperature > 0:
            gu = schedule.gumbel_uniforms(keys, (max(r_all, r), logits.shape[-1]))
            gu = jax.lax.dynamic_slice_in_dim(gu, start, hh.shape[1], axis=1)
        x0 = schedule.sample_tokens(logits, plan.temperature, gu)
        return x0, schedule.token_probability(logits, x0)

    if not head_on_block(plan, r):
        return sample(h, w0)

    def block_only(h):
        w0 = c * plan.block
        x0, p = sample(jax.lax.dynamic_slice_in_dim(h, w0, plan.block, axis=1), w0)
        put = lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, w0, axis=1)
        return put(jnp.full((b, r), plan.mask_id, jnp.int32), x0), put(jnp.zeros((b, r), jnp.float32), p)

    before_block = jnp.arange(r)[None, :] < c * plan.block
    return jax.lax.cond((cand & before_block).any(), lambda h: sample(h, 0), block_only, h)


def denoise(bb: Backbone, variables: Any, prefix: Prefix, x: jax.Array, length: jax.Array,
            row_steps: jax.Array, rng: jax.Array, row_ids: jax.Array, live: jax.Array,
            plan: Plan, *, count_tokens: bool = False) -> tuple[jax.Array, ...]:
    """Runs the fused loop; returns the final canvas ``(B, R)`` and forward passes ``(B,)``
    (and, with ``count_tokens``, the LLM query positions processed per row ``(B,)``).

    x: initial canvas (mask ids where to decode); length: valid response length per row;
    row_steps: steps per segment per row; live: False for padding rows of a batch.
    """
    b, r = x.shape
    ar = jnp.arange(r)[None, :]
    resp_valid = ar < length[:, None]

    def regions(x, c):
        """(segment slots, reveal candidates, slots counted for the schedule's m)."""
        start, end = segment_bounds(plan, c, length)
        in_seg = (ar >= start[:, None]) & (ar < end[:, None])
        masked = (x == plan.mask_id) & resp_valid
        if plan.segments == "blocks":  # -inf only after the block; m counts the block
            return in_seg, masked & (ar < end[:, None]), masked & in_seg
        return in_seg, masked, masked  # deliberation: every masked slot, as the reference

    def body(s: Carry) -> Carry:
        x = s.x
        if plan.remask_segment:
            in_seg, _, _ = regions(x, s.c)
            x = jnp.where((s.i == 0) & in_seg & ~s.done[:, None], plan.mask_id, x)
        _, cand, counted = regions(x, s.c)
        m = jnp.where(s.i == 0, counted.sum(-1), s.m)
        # The thresholded loop has no step budget; the segment length bounds it.
        step_ok = (s.i < row_steps) if plan.threshold is None else (s.i < seg_len(s.c))
        active = ~s.done & cand.any(-1) & step_ok

        h, cache = _window_hidden(bb, variables, plan, prefix, x, resp_valid, s.c, s.i, s.cache)
        w0, w = window(plan, s.c, r)
        keys = schedule.row_keys(rng, s.nfe, row_ids)
        cand_w = jax.lax.dynamic_slice_in_dim(cand, w0, w, axis=1)
        x0, p = _tokens_and_confidence(bb, variables, plan, h, keys, cand_w, s.c, w0)
        conf = p if plan.remasking == "low_confidence" else schedule.remask_uniforms(keys, w)
        xw = jax.lax.dynamic_slice_in_dim(x, w0, w, axis=1)
        scores = jnp.where(cand_w, conf, schedule.NEG_INF)
        if plan.threshold is None:
            k = schedule.num_transfer(m, row_steps, s.i)
            reveal = schedule.select_top(scores, jnp.where(active, k, 0))
        else:  # the most confident always, plus everything at or above the threshold
            top1 = schedule.select_top(scores, jnp.ones((b,), jnp.int32))
            reveal = (top1 | (cand_w & (p >= plan.threshold))) & active[:, None]
        xw = jnp.where(reveal, x0, xw)
        x = jax.lax.dynamic_update_slice_in_dim(x, xw, w0, axis=1)
        eos_seen = s.eos_seen
        if plan.eos_rule:
            hit = jnp.zeros((b, r), bool)
            hit = jax.lax.dynamic_update_slice_in_dim(hit, reveal & (x0 == plan.eos_id), w0, axis=1)
            x, new_eos = schedule.fill_after_first(x, hit, plan.eos_id)
            eos_seen = eos_seen | new_eos
        x = jnp.where(s.done[:, None], s.x, x)  # finished rows never change

        # A row's segment is over when its steps are spent (thresholded: nothing left to reveal)
        # or nothing is masked at all; the batch moves on when every live row is over.
        _, cand, _ = regions(x, s.c)
        no_mask = ~((x == plan.mask_id) & resp_valid).any(-1)
        if plan.threshold is None:
            fin = (s.i + 1 >= row_steps) | no_mask
        else:
            fin = ~cand.any(-1) | (s.i + 1 >= seg_len(s.c))
        fin = fin | s.done
        advance = fin.all()
        c = jnp.where(advance, s.c + 1, s.c)
        done = s.done | (fin & eos_seen) | (no_mask & plan.eos_rule) | (advance & (c >= plan.num_segments))
        return Carry(s.t + 1, c, jnp.where(advance, 0, s.i + 1), x, m, done, eos_seen,
                     s.nfe + active.astype(jnp.int32), cache, s.tokens + active * queries(s.i))

    def queries(i):
        """Query positions one forward runs: all of them, or only the response / block on a cache hit."""
        full = prefix.embeds.shape[1] + r
        if plan.cache == "none":
            return full
        return jnp.where(i == 0, full, plan.block if plan.block_window else r)

    def seg_len(c):
        start, end = segment_bounds(plan, c, length)
        return end - start

    def cond(s: Carry):
        return (s.c < plan.num_segments) & ~s.done.all()

    init = Carry(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), x,
                 jnp.zeros((b,), jnp.int32), ~live, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
                 _init_cache(bb, variables, plan, prefix, x, resp_valid), jnp.zeros((b,), jnp.int32))
    out = jax.lax.while_loop(cond, body, init)
    return (out.x, out.nfe, out.tokens) if count_tokens else (out.x, out.nfe)

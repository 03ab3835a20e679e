"""Length-prior decoding (fast mode ``length_prior``): one full forward, then only the masked slots.

ASR responses are short: most of a 128-slot canvas ends up eos. This mode

1. runs **one full forward** over ``[prompt | audio | all-masked canvas]``. It is the first
   denoising step (it reveals the most confident slot plus every slot at or above
   ``threshold``) and it fills a K/V cache of every position;
2. **predicts the length** from that forward: the last slot whose argmax is not eos, plus
   ``length_margin`` slots. Every slot after the estimate is committed to eos. The estimate
   errs long on purpose (the *last* non-eos argmax, not the first eos): a slot beyond the true
   end costs little, since the model reveals eos there with high confidence, while a too-short
   estimate truncates the transcript;
3. then runs **queries only for the slots that need them**: the still-masked slots and those
   revealed since their K/V was last computed (their keys and values enter the cache one step
   late, when they ride along as queries), at most ``query_slots`` per forward, lowest position
   first. Everything else is read from the cache, and new K/V are written into it in place.
   Logits are computed for those query slots only.

What it approximates (docs/decoding.md): keys and values outside the query window are frozen at
the step they were last computed (the prefix's never after the first forward, although in the
exact model the prefix attends to the response); slots after the estimate keep the K/V of a
mask token although they hold eos; the reveal rule is the threshold rule, not the fixed
schedule. Cost per utterance: one forward over ``P + R`` tokens plus ``query_slots`` tokens per
later forward.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from whisper_llada_jax.decoding import schedule
from whisper_llada_jax.decoding.backbone import (Backbone, Prefix, cache_buffer, cache_slots, cached_forward,
                                                 full_forward, positions, to_slots)
from whisper_llada_jax.models.llada import KV


@dataclasses.dataclass(frozen=True)
class LengthPriorPlan:
    """Static shape of one length-prior loop (hashable: part of the jit cache key)."""

    threshold: float
    query_slots: int
    length_margin: int
    temperature: float = 0.0
    mask_id: int = 126336
    eos_id: int = 126081


class _Carry(NamedTuple):
    x: jax.Array  # (B, R) canvas
    stale: jax.Array  # (B, R) revealed since the slot's K/V were last computed
    kv: KV  # P + R slots per layer
    done: jax.Array  # (B,)
    nfe: jax.Array  # (B,) forward passes (also the RNG step index)
    tokens: jax.Array  # (B,) LLM query positions processed for the row


def estimate_length(x0: jax.Array, eos_id: int, margin: int) -> jax.Array:
    """``(B,)`` canvas length to decode: last non-eos argmax + 1 + margin, in ``[1, R]``."""
    r = x0.shape[1]
    slots = jnp.arange(r)[None, :]
    last = jnp.max(jnp.where(x0 != eos_id, slots, -1), axis=-1)
    return jnp.clip(last + 1 + margin, 1, r)


def _reveal(plan: LengthPriorPlan, logits, cand, keys):
    """Tokens and the reveal mask: the most confident candidate plus all at >= threshold."""
    gu = schedule.gumbel_uniforms(keys, logits.shape[1:]) if plan.temperature > 0 else None
    x0 = schedule.sample_tokens(logits, plan.temperature, gu)
    p = schedule.token_probability(logits, x0)
    scores = jnp.where(cand, p, schedule.NEG_INF)
    top1 = schedule.select_top(scores, jnp.ones((logits.shape[0],), jnp.int32))
    return x0, (top1 | (cand & (p >= plan.threshold)))


def window_forward(bb: Backbone, variables, x: jax.Array, idx: jax.Array, sel: jax.Array, kv: KV, pos: jax.Array,
                   all_valid: jax.Array) -> tuple[jax.Array, KV]:
    """Runs only the response slots ``idx (B, q)`` (``sel``: which of them count) against the
    cache ``kv`` of all ``P + R`` positions; every layer writes their fresh keys and values over
    their own cache entries in place before attending, so a selected slot is seen once, with its
    new input. Unselected query slots write nothing (their stored entries stay). Returns the
    window's hidden states ``(B, q, D)`` and the updated cache."""
    r = x.shape[1]
    p = pos.shape[1] - r
    cols = jnp.where(sel, p + idx, kv.length())  # unselected: past the buffer, dropped by the writes
    take = lambda a: jnp.take_along_axis(a, idx, axis=1)
    return cached_forward(bb, variables, take(x), take(pos[:, p:]), kv, cols, all_valid, pos)


def decode(bb: Backbone, variables, prefix: Prefix, gen_len: int, rng: jax.Array, row_ids: jax.Array,
           live: jax.Array, plan: LengthPriorPlan) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the canvas ``(B, R)``, forward passes ``(B,)`` and LLM tokens processed ``(B,)``."""
    b, p = prefix.valid.shape
    r, q = gen_len, min(plan.query_slots, gen_len)
    slots = jnp.arange(r)[None, :]
    resp_valid = jnp.ones((b, r), bool)
    pos = positions(prefix.valid, resp_valid)
    # the buffer's validity, extended to its slots once here rather than in every later forward
    all_valid = to_slots(jnp.concatenate([prefix.valid, resp_valid], axis=1), cache_slots(p + r), False)

    # 1. the full first forward: first reveal step, length estimate, K/V of every position
    x = jnp.full((b, r), plan.mask_id, jnp.int32)
    kv = cache_buffer(bb, variables, prefix, x, resp_valid)  # filled in place by the first forward
    h, kv = full_forward(bb, variables, prefix, x, resp_valid, return_kv=True, kv=kv)
    logits = bb.head(variables, h)
    keys = schedule.row_keys(rng, jnp.zeros((b,), jnp.int32), row_ids)
    x0_all = schedule.argmax(logits)
    length = estimate_length(x0_all, plan.eos_id, plan.length_margin)
    in_len = slots < length[:, None]
    x0, reveal = _reveal(plan, logits, in_len, keys)
    reveal = reveal & live[:, None]
    x = jnp.where(reveal, x0, x)
    x, _ = schedule.fill_after_first(x, reveal & (x0 == plan.eos_id), plan.eos_id)
    x = jnp.where(in_len | ~live[:, None], x, plan.eos_id)  # the length prior: eos after the estimate
    stale = reveal & (x != plan.eos_id)  # K/V computed with a mask input; eos slots are left as they are
    masked = x == plan.mask_id
    init = _Carry(x, stale, kv, ~live | ~masked.any(-1), live.astype(jnp.int32),
                  jnp.where(live, p + r, 0).astype(jnp.int32))

    # 2. queries only for the slots that need them, the rest from the cache
    def body(s: _Carry) -> _Carry:
        masked = s.x == plan.mask_id
        need = (masked | s.stale) & ~s.done[:, None]
        # the first q needing slots by position (stable sort puts them first, in order)
        idx = jnp.argsort(~need, axis=-1, stable=True)[:, :q]
        sel = jnp.take_along_axis(need, idx, axis=1)
        hidden, kv = window_forward(bb, variables, s.x, idx, sel, s.kv, pos, all_valid)
        rows = jnp.arange(b)[:, None]
        take = lambda a: jnp.take_along_axis(a, idx, axis=1)
        logits = bb.head(variables, hidden)  # (B, q, V): the query slots only
        cand = sel & take(masked)
        x0, reveal = _reveal(plan, logits, cand, schedule.row_keys(rng, s.nfe, row_ids))
        active = ~s.done
        reveal = reveal & active[:, None]
        put_x = lambda a, v: a.at[rows, jnp.where(reveal, idx, r)].set(v, mode="drop")
        x = put_x(s.x, x0)
        hit = put_x(jnp.zeros((b, r), bool), x0 == plan.eos_id)
        x, _ = schedule.fill_after_first(x, hit, plan.eos_id)
        stale = s.stale.at[rows, jnp.where(sel, idx, r)].set(False, mode="drop")  # refreshed just now
        stale = put_x(stale, True) & (x != plan.eos_id)  # revealed now: K/V refreshed next forward
        done = s.done | ~(x == plan.mask_id).any(-1)
        inc = active.astype(jnp.int32)
        return _Carry(x, stale, kv, done, s.nfe + inc, s.tokens + inc * q)

    out = jax.lax.while_loop(lambda s: ~s.done.all(), body, init)
    return out.x, out.nfe, out.tokens

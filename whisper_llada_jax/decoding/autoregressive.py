"""Greedy autoregressive decoding with a K/V cache: the Whisper-LLaMA first pass (SPEC section 4).

The causal LLaMA-style LLM (``llm.causal=True``, grouped-query attention) reads the same
``[prompt | audio]`` prefix as the diffusion model. One prefill forward fills a fixed buffer of
``P + max_new`` cache slots; each step then runs one token per row, whose keys and values every
layer writes into its slot of the buffer in place (``dynamic_update_slice``, no concatenation)
before attending over it, and the LM head runs on that one position only. One
``lax.while_loop``, batched, stopping each row at its first eos and the loop when every row has
stopped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from whisper_llada_jax.decoding import schedule
from whisper_llada_jax.decoding.backbone import Backbone, Prefix, cache_slots, to_slots
from whisper_llada_jax.models.llada import KV


class _Carry(NamedTuple):
    t: jax.Array  # tokens produced so far
    kv: KV  # cache_slots(P + max_new) slots per layer
    kv_valid: jax.Array  # (B, slots)
    kv_pos: jax.Array  # (B, slots)
    out: jax.Array  # (B, max_new), eos after a row's end
    done: jax.Array  # (B,)
    nfe: jax.Array  # (B,)


def greedy(bb: Backbone, variables: Any, prefix: Prefix, max_new: int, eos_id: int,
           live: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns ``(tokens (B, max_new) eos-padded, lengths (B,) before eos, nfe (B,))``."""
    b, p = prefix.valid.shape
    t_all = cache_slots(p + max_new)
    pos = jnp.maximum(jnp.cumsum(prefix.valid.astype(jnp.int32), axis=1) - 1, 0)
    # The fixed buffer: the prefill writes its K/V into slots [0, P) in place, then one slot per step.
    shape = jax.eval_shape(lambda: bb.hidden(variables, embeds=prefix.embeds, positions=pos,
                                             attention_mask=prefix.valid, return_kv=True).kv)
    kv0 = shape.zeros(t_all)
    kv_valid = to_slots(prefix.valid, t_all, False)
    kv_pos = to_slots(pos, t_all, 0)
    # Prefixes are left-padded, so the last slot is every row's last real token: the last layer's
    # queries and the head run on it only.
    first = bb.hidden(variables, embeds=prefix.embeds, positions=pos, cache=kv0, cache_index=0,
                      cache_mask=kv_valid, cache_positions=kv_pos, outputs_from=p - 1)
    tok = schedule.argmax(bb.head(variables, first.hidden[:, -1:]))[:, 0]
    next_pos = pos[:, -1] + 1

    def body(s: _Carry) -> _Carry:
        last = jax.lax.dynamic_slice_in_dim(s.out, s.t - 1, 1, axis=1)  # (B, 1)
        step_pos = next_pos[:, None] + s.t - 1
        slot = p + s.t - 1  # the input token's keys and values join the cache, written in place
        kv_valid = jax.lax.dynamic_update_slice_in_dim(s.kv_valid, jnp.ones((b, 1), bool), slot, axis=1)
        kv_pos = jax.lax.dynamic_update_slice_in_dim(s.kv_pos, step_pos, slot, axis=1)
        o = bb.hidden(variables, embeds=bb.embed(variables, last), positions=step_pos, cache=s.kv,
                      cache_index=slot, cache_mask=kv_valid, cache_positions=kv_pos)
        tok = schedule.argmax(bb.head(variables, o.hidden))[:, 0]
        tok = jnp.where(s.done, eos_id, tok)
        return _Carry(s.t + 1, o.kv, kv_valid, kv_pos,
                      jax.lax.dynamic_update_slice_in_dim(s.out, tok[:, None], s.t, axis=1),
                      s.done | (tok == eos_id), s.nfe + (~s.done).astype(jnp.int32))

    out0 = jnp.full((b, max_new), eos_id, jnp.int32).at[:, 0].set(jnp.where(live, tok, eos_id))
    init = _Carry(jnp.ones((), jnp.int32), first.kv, kv_valid, kv_pos, out0, ~live | (tok == eos_id),
                  live.astype(jnp.int32))
    s = jax.lax.while_loop(lambda s: (s.t < max_new) & ~s.done.all(), body, init)
    length = jnp.argmax(jnp.concatenate([s.out == eos_id, jnp.ones((b, 1), bool)], axis=1), axis=1)
    return s.out, length.astype(jnp.int32), s.nfe

"""Greedy autoregressive decoding with a K/V cache: the Whisper-LLaMA first pass (SPEC section 4).

The causal LLaMA-style LLM (``llm.causal=True``, grouped-query attention) reads the same
``[prompt | audio]`` prefix as the diffusion model. One prefill forward fills a fixed buffer of
``P + max_new`` cache slots; each step then runs one token per row against the buffer and
writes its keys and values with ``dynamic_update_slice``. One ``lax.while_loop``, batched,
stopping each row at its first eos and the loop when every row has stopped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from whisper_llada_jax.decoding.backbone import Backbone, Prefix
from whisper_llada_jax.models.llada import KV


class _Carry(NamedTuple):
    t: jax.Array  # tokens produced so far
    kv: KV  # (layers, B, P + max_new, kv_heads, head_dim)
    kv_valid: jax.Array  # (B, P + max_new)
    kv_pos: jax.Array  # (B, P + max_new)
    out: jax.Array  # (B, max_new), eos after a row's end
    done: jax.Array  # (B,)
    nfe: jax.Array  # (B,)


def greedy(bb: Backbone, variables: Any, prefix: Prefix, max_new: int, eos_id: int,
           live: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns ``(tokens (B, max_new) eos-padded, lengths (B,) before eos, nfe (B,))``."""
    b, p = prefix.valid.shape
    pos = jnp.maximum(jnp.cumsum(prefix.valid.astype(jnp.int32), axis=1) - 1, 0)
    first = bb.hidden(variables, embeds=prefix.embeds, positions=pos, attention_mask=prefix.valid, return_kv=True)
    # Prefixes are left-padded, so the last slot is every row's last real token.
    tok = jnp.argmax(bb.head(variables, first.hidden[:, -1:]), axis=-1)[:, 0].astype(jnp.int32)
    pad = lambda a: jnp.concatenate([a, jnp.zeros(a.shape[:2] + (max_new,) + a.shape[3:], a.dtype)], axis=2)
    next_pos = pos[:, -1] + 1

    def body(s: _Carry) -> _Carry:
        last = jax.lax.dynamic_slice_in_dim(s.out, s.t - 1, 1, axis=1)  # (B, 1)
        step_pos = next_pos[:, None] + s.t - 1
        o = bb.hidden(variables, embeds=bb.embed(variables, last), positions=step_pos,
                      attention_mask=jnp.ones((b, 1), bool), prefix_kv=s.kv, prefix_mask=s.kv_valid,
                      prefix_positions=s.kv_pos, return_kv=True)
        tok = jnp.argmax(bb.head(variables, o.hidden), axis=-1)[:, 0].astype(jnp.int32)
        tok = jnp.where(s.done, eos_id, tok)
        slot = p + s.t - 1  # the input token's keys and values join the cache
        put = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), slot, axis=2)
        return _Carry(s.t + 1, KV(put(s.kv.k, o.kv.k), put(s.kv.v, o.kv.v)),
                      jax.lax.dynamic_update_slice_in_dim(s.kv_valid, jnp.ones((b, 1), bool), slot, axis=1),
                      jax.lax.dynamic_update_slice_in_dim(s.kv_pos, step_pos, slot, axis=1),
                      jax.lax.dynamic_update_slice_in_dim(s.out, tok[:, None], s.t, axis=1),
                      s.done | (tok == eos_id), s.nfe + (~s.done).astype(jnp.int32))

    out0 = jnp.full((b, max_new), eos_id, jnp.int32).at[:, 0].set(jnp.where(live, tok, eos_id))
    init = _Carry(jnp.ones((), jnp.int32), KV(pad(first.kv.k), pad(first.kv.v)),
                  jnp.concatenate([prefix.valid, jnp.zeros((b, max_new), bool)], axis=1),
                  jnp.concatenate([pos, jnp.zeros((b, max_new), jnp.int32)], axis=1),
                  out0, ~live | (tok == eos_id), live.astype(jnp.int32))
    s = jax.lax.while_loop(lambda s: (s.t < max_new) & ~s.done.all(), body, init)
    length = jnp.argmax(jnp.concatenate([s.out == eos_id, jnp.ones((b, 1), bool)], axis=1), axis=1)
    return s.out, length.astype(jnp.int32), s.nfe

"""The small functional surface the decoders need from a model.

A ``Backbone`` wraps a Linen module (the bare ``LLaDA`` or the composite ``WhisperLLaDA``) and
exposes pure functions of ``variables``: embed ids, run the transformer to final hidden states
(optionally against a K/V cache buffer written in place), and project hidden states to logits. Decoders take the
variables as jit arguments (never closed over), so one compiled program serves any weights.

``Prefix`` is the conditioning part of the canvas, ``[prompt | audio]`` embeddings, with a
validity mask so rows may be left-padded (trimmed audio spans, text-only deliberation). RoPE
positions count valid slots only, so a padded row sees exactly the positions it would alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from whisper_llada_jax.models.llada import KV


class Prefix(NamedTuple):
    """``embeds (B, P, D)`` of ``[prompt | audio]`` and ``valid (B, P)`` (False = padding)."""

    embeds: jax.Array
    valid: jax.Array


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Decoder-facing view of a model. ``composite=True`` for ``WhisperLLaDA`` (calls
    ``llm_forward`` / ``embed``), False for a bare ``LLaDA`` (prefix embeddings given)."""

    module: nn.Module
    composite: bool = True

    def embed(self, variables: Any, ids: jax.Array) -> jax.Array:
        return self.module.apply(variables, ids, method="embed")

    def hidden(self, variables: Any, **kw):
        """``LLMOutput`` with ``hidden`` (final-norm states) and, if asked, ``kv``."""
        kw["return_hidden"] = True
        if self.composite:
            return self.module.apply(variables, method="llm_forward", **kw)
        return self.module.apply(variables, **kw)

    def head(self, variables: Any, hidden: jax.Array) -> jax.Array:
        """Logits ``(B, S, V)`` in fp32, computed only for the positions the decoder reads."""
        if self.composite:
            out = self.module.apply(variables, hidden, method="llm_head")
        else:
            out = self.module.apply(variables, hidden, method="head")
        return out.astype(jnp.float32)

    def logits(self, variables: Any, prefix: Prefix, ids: jax.Array, valid: jax.Array) -> jax.Array:
        """Response logits ``(B, R, V)`` of one plain full forward over ``[prefix | embed(ids)]``."""
        h, _ = full_forward(self, variables, prefix, ids, valid, return_kv=False)
        return self.head(variables, h)


# A K/V buffer has a multiple of CACHE_ALIGN slots, those past the real positions masked out.
# XLA's GPU matmuls pad a 16-bit dimension that is not a multiple of 8 (its cuBLAS padding pass):
# with 372 + 128 = 500 slots, every cached forward copied each layer's keys and values into a
# 504-slot buffer (compiled for an H100: docs/benchmarks.md, "The K/V buffer's length").
CACHE_ALIGN = 8

# Compiler options of the top-level jitted decode programs (jax takes them on a top-level jit
# only). XLA's GPU dot merger joins matmuls that share an input (a layer's q / k / v projections)
# by concatenating their weights, and inside a while_loop that concatenation runs again in every
# forward: 200 MB written per LLaDA-8B layer, 6.4 GB per forward (compiled for an H100:
# docs/benchmarks.md). Other backends ignore the option.
LOOP_COMPILER_OPTIONS = {"xla_gpu_dot_merger_threshold_mb": 0}


def cache_slots(positions: int) -> int:
    """Slots of a K/V buffer for ``positions`` positions."""
    return -(-positions // CACHE_ALIGN) * CACHE_ALIGN


def to_slots(a: jax.Array, slots: int, fill) -> jax.Array:
    """``(B, S)`` per-position values extended to a buffer's ``slots`` with ``fill`` (as they are
    when already that long: a loop extends its invariant mask once, outside)."""
    if a.shape[1] == slots:
        return a
    return jnp.pad(a, ((0, 0), (0, slots - a.shape[1])), constant_values=fill)


def cache_buffer(bb: Backbone, variables, prefix: Prefix, ids: jax.Array, resp_valid: jax.Array) -> KV:
    """A zero K/V buffer for every ``[prefix | response]`` position, ``cache_slots`` long."""
    shape = jax.eval_shape(lambda: full_forward(bb, variables, prefix, ids, resp_valid, return_kv=True)[1])
    return shape.zeros(cache_slots(prefix.valid.shape[1] + ids.shape[1]))


def positions(prefix_valid: jax.Array, resp_valid: jax.Array) -> jax.Array:
    """RoPE positions ``(B, P + R)`` counting valid slots only (padding gets position 0)."""
    valid = jnp.concatenate([prefix_valid, resp_valid], axis=1).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)


def full_forward(bb: Backbone, variables, prefix: Prefix, ids: jax.Array, resp_valid: jax.Array,
                 return_kv: bool, kv: KV | None = None) -> tuple[jax.Array, KV | None]:
    """Hidden states of the response ``(B, R, D)`` (and the K/V of every position). With a
    buffer ``kv`` (``cache_buffer``), every layer writes its keys and values into it in place
    (no per-layer stacking) and the updated buffer is returned. Only the response's states are
    computed in the last layer (``outputs_from``): nothing reads the prefix's. The prefix is the
    same at every step of a decode loop (``fixed_prefix``): the first layer's projections of it
    are computed once, outside the loop."""
    emb = jnp.concatenate([prefix.embeds, bb.embed(variables, ids).astype(prefix.embeds.dtype)], axis=1)
    mask = jnp.concatenate([prefix.valid, resp_valid], axis=1)
    pos = positions(prefix.valid, resp_valid)
    p = prefix.embeds.shape[1]
    if kv is not None:
        out = bb.hidden(variables, embeds=emb, positions=pos, cache=kv, cache_index=0,
                        cache_mask=to_slots(mask, kv.length(), False), outputs_from=p, fixed_prefix=p)
    else:
        out = bb.hidden(variables, embeds=emb, positions=pos, attention_mask=mask, return_kv=return_kv,
                        outputs_from=p, fixed_prefix=p)
    return out.hidden, out.kv


def cached_forward(bb: Backbone, variables, ids: jax.Array, pos: jax.Array, kv: KV, index: jax.Array,
                   kv_valid: jax.Array, kv_pos: jax.Array | None = None) -> tuple[jax.Array, KV]:
    """Hidden states of ``ids`` whose keys / values are written into the buffer ``kv`` in place
    at ``index`` (a scalar start, or one slot per token ``(B, S)``), attending over the whole
    buffer (``kv_valid``: the positions that may be attended to after the write; the buffer's
    slots past them never are). Returns the hidden states and the updated buffer."""
    slots = kv.length()
    out = bb.hidden(variables, embeds=bb.embed(variables, ids), positions=pos, cache=kv, cache_index=index,
                    cache_mask=to_slots(kv_valid, slots, False),
                    cache_positions=None if kv_pos is None else to_slots(kv_pos, slots, 0))
    return out.hidden, out.kv

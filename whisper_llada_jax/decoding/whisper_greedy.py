"""Greedy Whisper decoding with a KV cache: prompt prefill + one ``lax.while_loop``, one jit.

Matches transformers' greedy ``generate`` (num_beams=1): ``suppress_tokens`` are set to -inf
at every step, ``begin_suppress_tokens`` at the first generated position only; a row that
has produced eos keeps emitting eos, and the loop stops when every row is done or
``max_new_tokens`` tokens exist. The first pass of the cascade runs through here.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from whisper_llada_jax.errors import DecodeConfigError
from whisper_llada_jax.models.whisper import Whisper, WhisperKVCache, init_cache


def start_prompt(sot_id: int, *, no_timestamps_id: int | None, language_id: int | None = None,
                 transcribe_id: int | None = None) -> np.ndarray:
    """Decoder start prompt: English-only ``[<|startoftranscript|>, <|notimestamps|>]``;
    multilingual ``[sot, <|lang|>, <|transcribe|>, <|notimestamps|>]``."""
    if (language_id is None) != (transcribe_id is None):
        raise DecodeConfigError("start prompt: give both language_id and transcribe_id (multilingual) or neither")
    ids = [sot_id]
    if language_id is not None:
        ids += [language_id, transcribe_id]
    if no_timestamps_id is not None:
        ids.append(no_timestamps_id)
    return np.asarray(ids, np.int32)


def start_prompt_for(gen, language: str = "en") -> np.ndarray:
    """The start prompt from a ``WhisperGenerationConfig`` (checkpoint's own ids)."""
    if gen.is_multilingual:
        if "transcribe" not in gen.task_to_id:
            raise DecodeConfigError("generation_config.json: multilingual checkpoint without task_to_id['transcribe']")
        return start_prompt(gen.decoder_start_token_id, no_timestamps_id=gen.no_timestamps_token_id,
                            language_id=gen.language_id(language), transcribe_id=gen.task_to_id["transcribe"])
    return start_prompt(gen.decoder_start_token_id, no_timestamps_id=gen.no_timestamps_token_id)


@flax.struct.dataclass
class _Carry:
    step: jax.Array  # index of the next token to write in `tokens`
    last: jax.Array  # (B,) the token written at step - 1
    tokens: jax.Array  # (B, max_new_tokens)
    cache: WhisperKVCache
    done: jax.Array  # (B,) bool


def _bias(vocab: int, ids: Sequence[int]) -> jax.Array:
    bias = np.zeros((vocab,), np.float32)
    bias[np.asarray(ids, np.int64)] = -np.inf
    return jnp.asarray(bias)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "suppress", "begin_suppress"))
def _greedy(model: Whisper, variables, encoder_out, prompt, *, max_new_tokens: int, eos_id: int,
            suppress: tuple[int, ...], begin_suppress: tuple[int, ...]):
    cfg = model.config
    batch, n_prompt = encoder_out.shape[0], prompt.shape[0]
    suppress_bias = _bias(cfg.vocab_size, suppress)
    begin_bias = suppress_bias + _bias(cfg.vocab_size, begin_suppress)

    cache = init_cache(cfg, batch, n_prompt + max_new_tokens)
    ids = jnp.broadcast_to(prompt[None, :], (batch, n_prompt))
    logits, cache = model.apply(variables, ids, encoder_out.astype(cfg.dtype), cache, 0, method="decode")
    first = jnp.argmax(logits[:, -1] + begin_bias, axis=-1).astype(jnp.int32)
    tokens = jnp.full((batch, max_new_tokens), eos_id, jnp.int32).at[:, 0].set(first)
    carry = _Carry(jnp.int32(1), first, tokens, cache, first == eos_id)

    def cond(c: _Carry):
        return (c.step < max_new_tokens) & ~jnp.all(c.done)

    def body(c: _Carry):
        logits, cache = model.apply(variables, c.last[:, None], None, c.cache, n_prompt + c.step - 1,
                                    method="decode")
        nxt = jnp.argmax(logits[:, 0] + suppress_bias, axis=-1).astype(jnp.int32)
        nxt = jnp.where(c.done, eos_id, nxt)  # finished rows keep emitting eos
        tokens = lax.dynamic_update_slice(c.tokens, nxt[:, None], (0, c.step))
        return _Carry(c.step + 1, nxt, tokens, cache, c.done | (nxt == eos_id))

    out = lax.while_loop(cond, body, carry)
    is_eos = out.tokens == eos_id
    lengths = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), max_new_tokens).astype(jnp.int32)
    return out.tokens, lengths


def greedy_decode(model: Whisper, params: Mapping[str, Any], encoder_out: jax.Array, prompt, *,
                  max_new_tokens: int, eos_id: int, suppress_tokens: Sequence[int] = (),
                  begin_suppress_tokens: Sequence[int] = ()) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding of a batch from the encoder output (B, frames, d).

    ``params``: the Whisper ``params`` tree (or ``{"params": tree}``); ``prompt``: (P,) start ids
    shared by every row. Returns ``tokens (B, max_new_tokens)`` (eos after each row's end) and
    ``lengths (B,)``: the number of tokens before the first eos (the transcript's tokens).
    """
    cfg = model.config
    prompt = np.asarray(prompt, np.int32).reshape(-1)
    if max_new_tokens < 1:
        raise DecodeConfigError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if prompt.size + max_new_tokens > cfg.max_target_positions:
        raise DecodeConfigError(
            f"max_new_tokens: prompt ({prompt.size}) + max_new_tokens ({max_new_tokens}) exceeds the decoder's "
            f"{cfg.max_target_positions} positions", hint=f"use max_new_tokens <= {cfg.max_target_positions - prompt.size}")
    for name, ids in (("suppress_tokens", suppress_tokens), ("begin_suppress_tokens", begin_suppress_tokens),
                      ("prompt", prompt.tolist()), ("eos_id", [eos_id])):
        bad = [int(t) for t in ids if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise DecodeConfigError(f"{name}: token ids {bad[:5]} outside the vocabulary (size {cfg.vocab_size})")
    variables = params if set(params) == {"params"} else {"params": params}
    return _greedy(model, variables, encoder_out, jnp.asarray(prompt), max_new_tokens=int(max_new_tokens),
                   eos_id=int(eos_id), suppress=tuple(sorted({int(t) for t in suppress_tokens})),
                   begin_suppress=tuple(sorted({int(t) for t in begin_suppress_tokens})))

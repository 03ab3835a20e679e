"""The composite Whisper-LLaDA model: frozen Whisper encoder -> projector -> LLaDA with LoRA.

The LLM reads ``[chat prompt | audio vectors | response]`` (SPEC sections 1 and 4: the audio
comes right after the assistant header). Separate methods let decoders encode the audio once
(``encode_audio``) and reuse its vectors at every denoising step (``audio_embeds=`` /
``llm_forward``), and the text-only ablation drops the audio span altogether.

Variables: ``{"params": {"encoder", "projector", "llm"}, "lora": {"llm"}}``. The helpers at the
bottom give the abstract tree (``jax.eval_shape``, nothing allocated), its logical partition
specs, mesh shardings from the rules table, and a sharded ``init`` under ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from whisper_llada_jax.config import ModelConfig
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.models.llada import LLaDA, LLMOutput
from whisper_llada_jax.models.projector import make_projector
from whisper_llada_jax.models.whisper import WhisperEncoder
from whisper_llada_jax.sharding import DEFAULT_RULES


class WhisperLLaDA(nn.Module):
    """Whisper encoder (frozen) + window projector + LLaDA (LoRA in the ``lora`` collection)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.encoder = WhisperEncoder(cfg.whisper)
        self.projector = make_projector(cfg.projector, cfg.llm.d_model)
        self.llm = LLaDA(cfg.llm, cfg.lora if cfg.lora.enabled else None)

    # ------------------------------------------------------------------ audio
    def encode(self, features: jax.Array) -> jax.Array:
        """Encoder output ``(B, frames, d_whisper)`` (what data pipelines may cache)."""
        return self.encoder(features)

    def encode_audio(self, features: jax.Array | None = None, *, encoder_out: jax.Array | None = None,
                     deterministic: bool = True) -> jax.Array:
        """Audio vectors ``(B, audio_tokens, d_llm)`` from log-mel features or a cached encoder output.

        The encoder is frozen: its output sits behind ``stop_gradient``, so no gradient (and no
        backward compute) ever reaches it.
        """
        if (features is None) == (encoder_out is None):
            raise ValueError("encode_audio: give exactly one of features or encoder_out")
        if encoder_out is None:
            encoder_out = self.encoder(features)
        return self.projector(jax.lax.stop_gradient(encoder_out), deterministic)

    # ------------------------------------------------------------------ sequence
    def embed(self, ids: jax.Array) -> jax.Array:
        """LLM token embeddings ``(B, S, d_llm)``."""
        return self.llm.embed(ids)

    def prompt_ids(self) -> tuple[int, ...]:
        ids = self.config.tokens.prompt_ids
        if not ids:
            raise ConfigError("tokens.prompt_ids is empty: the chat prompt has not been tokenised",
                              hint="build the model with `whisper-llada import` (it fills the ids from tokenizer.json)")
        return ids

    def prefix_embeds(self, audio_embeds: jax.Array | None, batch: int) -> jax.Array:
        """``[chat prompt | audio]`` embeddings ``(B, P, d_llm)``; prompt only when audio is None."""
        ids = jnp.broadcast_to(jnp.asarray(self.prompt_ids(), jnp.int32), (batch, len(self.prompt_ids())))
        prompt = self.embed(ids)
        if audio_embeds is None:
            return prompt
        return jnp.concatenate([prompt, audio_embeds.astype(prompt.dtype)], axis=1)

    def prefix_length(self, text_only: bool = False) -> int:
        """P: prompt ids plus (unless text-only) the audio vectors."""
        return len(self.prompt_ids()) + (0 if text_only else self.config.audio_tokens)

    def __call__(self, response_ids: jax.Array, *, features: jax.Array | None = None,
                 encoder_out: jax.Array | None = None, audio_embeds: jax.Array | None = None,
                 text_only: bool = False, deterministic: bool = True, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, shift: bool = False) -> jax.Array:
        """Response logits ``(B, R, vocab)`` for ``response_ids (B, R)`` (masked or not).

        Audio from ``features``, ``encoder_out`` or precomputed ``audio_embeds`` (exactly one),
        or none with ``text_only``. Logits are computed for the response positions only;
        ``shift`` (causal models) returns them one position earlier, so ``logits[:, i]`` predicts
        ``response_ids[:, i]`` (the first from the last prefix position). ``attention_mask`` /
        ``positions`` ``(B, P + R)`` go to the LLM (training hides slots and audio with them).
        """
        b = response_ids.shape[0]
        audio = None
        if not text_only:
            audio = audio_embeds if audio_embeds is not None else self.encode_audio(
                features, encoder_out=encoder_out, deterministic=deterministic)
        prefix = self.prefix_embeds(audio, b)
        x = jnp.concatenate([prefix, self.embed(response_ids)], axis=1)
        hidden = self.llm(embeds=x, positions=positions, attention_mask=attention_mask, return_hidden=True,
                          deterministic=deterministic).hidden
        start = prefix.shape[1] - int(shift)
        return self.llm.head(hidden[:, start:start + response_ids.shape[1]])

    def llm_forward(self, **kwargs) -> LLMOutput:
        """The LLM's own ``__call__`` (decoders: ``apply(..., method="llm_forward")``)."""
        return self.llm(**kwargs)

    def llm_head(self, hidden: jax.Array) -> jax.Array:
        """Logits from final-norm hidden states (losses that need logits at a few positions)."""
        return self.llm.head(hidden)


# ---------------------------------------------------------------------- variables and shardings
def _init_fn(config: ModelConfig):
    if not config.tokens.prompt_ids:  # parameters do not depend on the prompt: any id will do
        config = dataclasses.replace(config, tokens=dataclasses.replace(config.tokens, prompt_ids=(config.tokens.bos,)))
    model = WhisperLLaDA(config)
    w = config.whisper

    # Parameter shapes do not depend on the input length: trace with the fewest mel frames
    # that still fill one projector window (the encoder halves the frame count).
    frames = min(w.input_frames, 2 * config.projector.window)

    def init(rng: jax.Array):
        features = jnp.zeros((1, w.n_mels, frames), jnp.float32)
        response = jnp.zeros((1, 1), jnp.int32)
        return model.init({"params": rng}, response, features=features)

    return model, init


@functools.lru_cache(maxsize=8)
def abstract_variables(config: ModelConfig) -> dict:
    """Boxed ShapeDtypeStructs (with logical axis names) of every collection; allocates nothing.
    Cached per config (tracing the paper model takes seconds): treat the result as read-only."""
    _, init = _init_fn(config)
    return jax.eval_shape(init, jax.random.key(0))


def logical_specs(config: ModelConfig) -> Any:
    """The tree of logical PartitionSpecs (``('embed', 'heads')`` ...) of the variables."""
    return nn.get_partition_spec(abstract_variables(config))


def mesh_shardings(config: ModelConfig, mesh: Mesh, rules: Sequence | None = None) -> Any:
    """NamedShardings for every variable on ``mesh`` via the logical rules table."""
    return nn.logical_to_mesh_sharding(logical_specs(config), mesh, tuple(rules or DEFAULT_RULES))


def init_variables(config: ModelConfig, rng: jax.Array, *, mesh: Mesh | None = None,
                   rules: Sequence | None = None) -> dict:
    """Randomly initialised, unboxed variables; on a mesh each leaf is created in its sharding
    under ``jit`` (never materialised whole on one device)."""
    _, init = _init_fn(config)
    unboxed = lambda r: nn.unbox(init(r))  # noqa: E731
    if mesh is None:
        return jax.jit(unboxed)(rng)
    return jax.jit(unboxed, out_shardings=mesh_shardings(config, mesh, rules))(rng)

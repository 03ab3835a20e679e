"""Whisper encoder and decoder in pure-functional Flax Linen (SPEC section 2, HF layout).

Parameter names mirror Hugging Face's (``conv1``, ``layers_N/self_attn/q_proj``, ...) so the
conversion table in ``checkpoints/whisper_hf.py`` is a plain rename + transpose. Every
parameter carries logical axis names (``sharding.py``); ``scan_layers`` stacks the layers
under one ``layers`` module with a leading ``layers`` axis.

The decoder supports a functional KV cache (``WhisperKVCache``): fixed-size self-attention
buffers written with ``dynamic_update_slice`` at ``index`` plus the cross-attention K/V,
computed once from the encoder output and then passed back in, so the whole cache can sit
in a ``lax.while_loop`` carry.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.errors import ConfigError

LN_EPS = 1e-5
INIT_STD = 0.02  # HF Whisper init_std

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _part(init, axes):
    return nn.with_logical_partitioning(init, axes)


def _dense(features: int, axes: tuple[str, str], cfg: WhisperConfig, bias: bool = True) -> nn.Dense:
    """A Dense (kernel ``(in, out)``) whose bias takes the output axis (``norm`` for width d)."""
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_part(nn.initializers.normal(INIT_STD), axes),
        bias_init=_part(nn.initializers.zeros_init(), (axes[1] if axes[1] != "embed" else "norm",)),
    )


def _layer_norm(cfg: WhisperConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=LN_EPS,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        scale_init=_part(nn.initializers.ones_init(), ("norm",)),
        bias_init=_part(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)  # Whisper uses the exact (erf) GELU


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed encoder positions: [sin | cos] of geometric timescales."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32))
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def _constrain(x, axes=("act_batch", "act_length", "act_embed")):
    return nn.with_logical_constraint(x, axes)


# ----------------------------------------------------------------------------- attention
class WhisperAttention(nn.Module):
    """Multi-head attention with HF's names; k_proj has no bias; q is scaled before QK^T."""

    cfg: WhisperConfig
    num_heads: int

    def setup(self):
        d = self.cfg.d_model
        self.q_proj = _dense(d, ("embed", "heads"), self.cfg)
        self.k_proj = _dense(d, ("embed", "kv_heads"), self.cfg, bias=False)
        self.v_proj = _dense(d, ("embed", "kv_heads"), self.cfg)
        self.out_proj = _dense(d, ("heads", "embed"), self.cfg)

    def _split(self, x):
        return x.reshape(*x.shape[:-1], self.num_heads, -1)

    def project_kv(self, x):
        """(B, S, d) -> K, V each (B, S, heads, head_dim)."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def __call__(self, x, k, v, mask=None):
        head_dim = self.cfg.d_model // self.num_heads
        # HF multiplies the projected query by head_dim^-0.5 before the product; same order here.
        q = self._split(self.q_proj(x) * jnp.asarray(head_dim**-0.5, x.dtype))
        o = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=1.0)
        return self.out_proj(o.reshape(*o.shape[:-2], -1))


def _mlp(layer, x):
    h = _gelu(layer.fc1(x))
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    return layer.fc2(h)


# ----------------------------------------------------------------------------- layers
class WhisperEncoderLayer(nn.Module):
    cfg: WhisperConfig

    def setup(self):
        self.self_attn = WhisperAttention(self.cfg, self.cfg.encoder_heads)
        self.self_attn_layer_norm = _layer_norm(self.cfg)
        self.fc1 = _dense(self.cfg.encoder_ffn, ("embed", "mlp"), self.cfg)
        self.fc2 = _dense(self.cfg.d_model, ("mlp", "embed"), self.cfg)
        self.final_layer_norm = _layer_norm(self.cfg)

    def __call__(self, x, _=None):
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.project_kv(h)
        x = _constrain(x + self.self_attn(h, k, v))
        x = _constrain(x + _mlp(self, self.final_layer_norm(x)))
        return x, None


class WhisperDecoderLayer(nn.Module):
    """Pre-LN causal self-attention, cross-attention, MLP.

    ``self_kv``: this layer's (K, V) cache buffers (B, L, heads, head_dim) or None (no cache:
    attend over the T input tokens). ``cross_kv``: precomputed (K, V) of the encoder output,
    or None to compute it from ``encoder_out``. Returns (x, (new K, new V of the T tokens,
    cross (K, V) if it was computed here else None)).
    """

    cfg: WhisperConfig

    def setup(self):
        heads = self.cfg.decoder_heads
        self.self_attn = WhisperAttention(self.cfg, heads)
        self.self_attn_layer_norm = _layer_norm(self.cfg)
        self.encoder_attn = WhisperAttention(self.cfg, heads)
        self.encoder_attn_layer_norm = _layer_norm(self.cfg)
        self.fc1 = _dense(self.cfg.decoder_ffn, ("embed", "mlp"), self.cfg)
        self.fc2 = _dense(self.cfg.d_model, ("mlp", "embed"), self.cfg)
        self.final_layer_norm = _layer_norm(self.cfg)

    def __call__(self, x, encoder_out, self_kv, cross_kv, index, mask):
        h = self.self_attn_layer_norm(x)
        k_new, v_new = self.self_attn.project_kv(h)
        if self_kv is None:
            k, v = k_new, v_new
        else:
            at = (0, index, 0, 0)
            k = lax.dynamic_update_slice(self_kv[0], k_new.astype(self_kv[0].dtype), at)
            v = lax.dynamic_update_slice(self_kv[1], v_new.astype(self_kv[1].dtype), at)
        x = _constrain(x + self.self_attn(h, k, v, mask))
        computed = None
        if cross_kv is None:
            cross_kv = computed = self.encoder_attn.project_kv(encoder_out)
        x = _constrain(x + self.encoder_attn(self.encoder_attn_layer_norm(x), *cross_kv))
        x = _constrain(x + _mlp(self, self.final_layer_norm(x)))
        return x, (k_new, v_new, computed)


def _stack(layer_cls, cfg: WhisperConfig, n: int, in_axes: tuple):
    """The layer class wrapped in remat and, with scan_layers, nn.scan over a 'layers' axis."""
    cls = layer_cls
    if cfg.remat != "none":
        cls = nn.remat(cls, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        cls = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
                      length=n, metadata_params={nn.PARTITION_NAME: "layers"})
    return cls


# ----------------------------------------------------------------------------- encoder
class WhisperEncoder(nn.Module):
    """log-mel features (B, n_mels, input_frames) -> hidden states (B, (input_frames+1)//2, d)."""

    config: WhisperConfig

    @nn.compact
    def __call__(self, features):
        cfg = self.config
        if features.ndim != 3 or features.shape[1] != cfg.n_mels:
            raise ConfigError(f"whisper.n_mels: encoder expects features (B, {cfg.n_mels}, frames), got {features.shape}",
                              hint="the feature extractor's n_mels must match the checkpoint")
        frames = (features.shape[2] + 1) // 2
        if frames > cfg.max_source_positions:
            raise ConfigError(f"whisper.input_frames: {features.shape[2]} mel frames give {frames} positions, "
                              f"more than max_source_positions={cfg.max_source_positions}",
                              hint="pad/trim audio to 30 s (3000 frames)")
        conv = functools.partial(nn.Conv, cfg.d_model, kernel_size=(3,), padding=((1, 1),),
                                 dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                 bias_init=_part(nn.initializers.zeros_init(), ("norm",)))
        x = jnp.transpose(features, (0, 2, 1)).astype(cfg.dtype)  # NCW -> NWC
        x = _gelu(conv(kernel_init=_part(nn.initializers.lecun_normal(), ("conv_width", "mel", "embed")),
                       name="conv1")(x))
        x = _gelu(conv(strides=(2,), name="conv2",
                       kernel_init=_part(nn.initializers.lecun_normal(),
                                         ("conv_width", "embed_unsharded", "embed")))(x))
        # Stored as a parameter (frozen by the trainer) so HF checkpoints round-trip exactly.
        pos = self.param("embed_positions",
                         _part(lambda *_: jnp.asarray(sinusoids(cfg.max_source_positions, cfg.d_model),
                                                      cfg.param_dtype), ("positions", "embed")))
        x = _constrain(x + pos[:frames].astype(cfg.dtype))
        Layer = _stack(WhisperEncoderLayer, cfg, cfg.encoder_layers, in_axes=(nn.broadcast,))
        if cfg.scan_layers:
            x, _ = Layer(cfg, name="layers")(x, None)
        else:
            for i in range(cfg.encoder_layers):
                x, _ = Layer(cfg, name=f"layers_{i}")(x, None)
        return _layer_norm(cfg, "layer_norm")(x)


# ----------------------------------------------------------------------------- decoder
@flax.struct.dataclass
class WhisperKVCache:
    """Decoder cache, layers stacked: self K/V (layers, B, max_len, heads, head_dim) and the
    cross-attention K/V of the encoder output (layers, B, frames, heads, head_dim) or None
    before the first (prefill) call."""

    self_k: jax.Array
    self_v: jax.Array
    cross_k: jax.Array | None = None
    cross_v: jax.Array | None = None


def init_cache(cfg: WhisperConfig, batch: int, max_len: int, dtype: Any = None) -> WhisperKVCache:
    """Empty self-attention buffers; the cross K/V are filled by the first decoder call."""
    heads = cfg.decoder_heads
    shape = (cfg.decoder_layers, batch, max_len, heads, cfg.d_model // heads)
    zeros = jnp.zeros(shape, dtype or cfg.dtype)
    return WhisperKVCache(zeros, zeros)


class WhisperDecoder(nn.Module):
    """Token ids (B, T) at positions index..index+T-1 -> (logits (B, T, vocab) f32, cache).

    Without ``cache`` it is a plain causal forward over the T tokens (``index`` 0) and needs
    ``encoder_out``. With ``cache`` the new K/V are written at ``index`` and the tokens attend
    to every cached position <= their own; the cross K/V come from ``encoder_out`` when given
    (prefill) and from the cache otherwise. Logits are tied to ``embed_tokens``.
    """

    config: WhisperConfig

    @nn.compact
    def __call__(self, ids, encoder_out=None, cache: WhisperKVCache | None = None, index=0):
        cfg = self.config
        T = ids.shape[1]
        if encoder_out is None and (cache is None or cache.cross_k is None):
            raise ValueError("WhisperDecoder needs encoder_out or a cache holding the cross-attention K/V")
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         embedding_init=_part(nn.initializers.normal(INIT_STD), ("vocab", "embed")),
                         name="embed_tokens")
        pos_table = self.param("embed_positions",
                               _part(nn.initializers.normal(INIT_STD), ("positions", "embed")),
                               (cfg.max_target_positions, cfg.d_model), cfg.param_dtype)
        index = jnp.asarray(index, jnp.int32)
        pos = lax.dynamic_slice_in_dim(pos_table, index, T, axis=0)
        x = _constrain(embed(ids) + pos.astype(cfg.dtype))

        key_len = T if cache is None else cache.self_k.shape[2]
        q_pos = index + jnp.arange(T)
        mask = (jnp.arange(key_len)[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, L)
        self_kv = None if cache is None else (cache.self_k, cache.self_v)
        cross_kv = None if encoder_out is not None else (cache.cross_k, cache.cross_v)

        Layer = _stack(WhisperDecoderLayer, cfg, cfg.decoder_layers,
                       in_axes=(nn.broadcast, 0, 0, nn.broadcast, nn.broadcast))
        if cfg.scan_layers:
            x, (k_new, v_new, computed) = Layer(cfg, name="layers")(x, encoder_out, self_kv, cross_kv, index, mask)
        else:
            outs = []
            for i in range(cfg.decoder_layers):
                layer_self = None if self_kv is None else (self_kv[0][i], self_kv[1][i])
                layer_cross = None if cross_kv is None else (cross_kv[0][i], cross_kv[1][i])
                x, out = Layer(cfg, name=f"layers_{i}")(x, encoder_out, layer_self, layer_cross, index, mask)
                outs.append(out)
            k_new, v_new, computed = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        x = _layer_norm(cfg, "layer_norm")(x)
        logits = embed.attend(x).astype(jnp.float32)
        logits = nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))
        if cache is None:
            return logits, None
        at = (0, 0, index, 0, 0)
        new_cache = WhisperKVCache(
            lax.dynamic_update_slice(cache.self_k, k_new.astype(cache.self_k.dtype), at),
            lax.dynamic_update_slice(cache.self_v, v_new.astype(cache.self_v.dtype), at),
            *(computed if computed is not None else (cache.cross_k, cache.cross_v)),
        )
        return logits, new_cache


# ----------------------------------------------------------------------------- full model
class Whisper(nn.Module):
    """Encoder + decoder; variables ``{"params": {"encoder": ..., "decoder": ...}}``."""

    config: WhisperConfig

    def setup(self):
        self.encoder = WhisperEncoder(self.config)
        self.decoder = WhisperDecoder(self.config)

    def __call__(self, features, decoder_ids):
        """Teacher-forced logits (B, T, vocab) for ``decoder_ids`` given the audio features."""
        return self.decoder(decoder_ids, self.encoder(features))[0]

    def encode(self, features):
        return self.encoder(features)

    def decode(self, ids, encoder_out=None, cache=None, index=0):
        return self.decoder(ids, encoder_out, cache, index)


def abstract_params(cfg: WhisperConfig, *, encoder_only: bool = False, batch: int = 1):
    """Boxed (logically partitioned) ShapeDtypeStruct tree of the ``params`` collection:
    ``{"encoder": ...}`` or ``{"encoder": ..., "decoder": ...}``. Nothing is allocated."""
    feats = jax.ShapeDtypeStruct((batch, cfg.n_mels, cfg.input_frames), jnp.float32)
    rng = jax.random.key(0)
    if encoder_only:
        enc = jax.eval_shape(WhisperEncoder(cfg).init, rng, feats)["params"]
        return {"encoder": enc}
    ids = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
    return jax.eval_shape(Whisper(cfg).init, rng, feats, ids)["params"]

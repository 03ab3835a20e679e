"""The LLaDA transformer (SPEC section 4), which with ``causal=True`` and fewer KV heads is
also the LLaMA-3-style decoder of the autoregressive baseline.

Pre-norm blocks: ``x += attn_out(attn(q, k, v of attn_norm(x)))``,
``x += ff_out(silu(ff_proj(h)) * up_proj(h))`` with ``h = ff_norm(x)``; logits
``ff_out(ln_f(x))``. Parameter names follow the HF LLaDA checkpoint so the conversion table is
a plain rename + transpose.

One attention mechanism serves every cache: with ``prefix_kv`` the current tokens attend to
``[prefix ; themselves]``, ``prefix_mask`` marking the valid cache slots (a fixed-size buffer
the decoders fill with ``dynamic_update_slice``), and for ``causal`` models visibility comes
from ``prefix_positions`` / ``positions``. ``return_kv`` hands back the current tokens' rotated
keys and values, ``(layers, B, S, kv_heads, head_dim)``, to be written into such a buffer.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from whisper_llada_jax.config import LLMConfig, LoRAConfig
from whisper_llada_jax.models.lora import Projection

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class KV(NamedTuple):
    """Rotated keys and values, each ``(layers, B, S, kv_heads, head_dim)``."""

    k: jax.Array
    v: jax.Array


class LLMOutput(NamedTuple):
    """``logits (B, S, V)`` (None with ``return_hidden``), ``kv`` (None unless ``return_kv``),
    ``hidden`` the final-norm output ``(B, S, D)`` (only with ``return_hidden``)."""

    logits: jax.Array | None
    kv: KV | None
    hidden: jax.Array | None = None


def dtype_of(name: str) -> Any:
    return _DTYPES[name]


class RMSNorm(nn.Module):
    """RMSNorm in fp32, cast back to the input dtype, then times the weight (LLaDA's order)."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                            (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype).astype(self.dtype) * weight.astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Half-rotation (NeoX / HF-Llama) RoPE in fp32. ``x (B, S, H, D)``, ``positions (B, S)``."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, S, D/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention_implementation() -> str | None:
    """``jax.nn.dot_product_attention``'s implementation: XLA (``None``) unless
    ``WHISPER_LLADA_ATTENTION=cudnn`` asks for the cuDNN fused kernel (GPU, bf16 / fp16 only),
    read when a program is traced."""
    impl = os.environ.get("WHISPER_LLADA_ATTENTION", "xla").lower()
    if impl not in ("xla", "cudnn"):
        raise ValueError(f"WHISPER_LLADA_ATTENTION={impl!r}: use xla or cudnn")
    return None if impl == "xla" else impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Grouped-query attention with an fp32 softmax, through ``jax.nn.dot_product_attention``.

    ``q (B, S, H, D)``, ``k, v (B, T, KV, D)`` (query head ``h`` uses KV head ``h // (H/KV)``,
    as HF's ``repeat_kv``), ``mask`` broadcastable to ``(B, S, T)`` (True = may attend).
    """
    b, s, h, d = q.shape
    if mask is not None:
        mask = jnp.broadcast_to(mask, (b, s, k.shape[1]))[:, None]  # (B, 1, S, T)
    dtype = q.dtype
    if dtype == jnp.float16 and jax.default_backend() == "cpu":
        # XLA's CPU dot has no fp16 x fp16 -> fp32 kernel (what the fused attention asks for):
        # compute in fp32 there, the same softmax precision, fp16 out.
        q = q.astype(jnp.float32)
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                       implementation=attention_implementation())
    return out.astype(dtype).reshape(b, s, h * d)


class Block(nn.Module):
    """One pre-norm LLaDA / LLaMA block. Returns ``(x, (k, v) or None)`` so it can be scanned."""

    config: LLMConfig
    lora: LoRAConfig | None = None

    def _proj(self, name: str, features: int, axes: tuple[str, str]) -> Projection:
        cfg = self.config
        lora = self.lora if self.lora is not None and self.lora.enabled and name in self.lora.targets else None
        return Projection(features, axes, lora=lora, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                          kernel_init=nn.initializers.normal(cfg.init_std), name=name)

    @nn.compact
    def __call__(self, x, layer_kv, positions, key_mask, prefix_mask, prefix_positions,
                 deterministic: bool = True, return_kv: bool = False):
        cfg = self.config
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        b, s, _ = x.shape
        hd = cfg.head_dim

        n = RMSNorm(cfg.norm_eps, dtype, pdtype, name="attn_norm")(x)
        q = self._proj("q_proj", cfg.n_heads * hd, ("embed", "heads"))(n, deterministic)
        k = self._proj("k_proj", cfg.n_kv_heads * hd, ("embed", "kv_heads"))(n, deterministic)
        v = self._proj("v_proj", cfg.n_kv_heads * hd, ("embed", "kv_heads"))(n, deterministic)
        q = nn.with_logical_constraint(q, ("act_batch", "act_length", "act_heads"))
        k = nn.with_logical_constraint(k, ("act_batch", "act_length", "act_kv_heads"))
        v = nn.with_logical_constraint(v, ("act_batch", "act_length", "act_kv_heads"))
        q = rope(q.reshape(b, s, cfg.n_heads, hd), positions, cfg.rope_theta)
        k = rope(k.reshape(b, s, cfg.n_kv_heads, hd), positions, cfg.rope_theta)
        v = v.reshape(b, s, cfg.n_kv_heads, hd)
        new_kv = (k, v) if return_kv else None

        # Keys: [prefix ; current]. Visibility: valid keys, and q_pos >= k_pos when causal.
        keys_k, keys_v, kmask, kpos = k, v, key_mask, positions
        if layer_kv is not None:
            pk, pv = layer_kv
            keys_k = jnp.concatenate([pk.astype(k.dtype), k], axis=1)
            keys_v = jnp.concatenate([pv.astype(v.dtype), v], axis=1)
            kmask = jnp.concatenate([prefix_mask, key_mask], axis=1)
            kpos = jnp.concatenate([prefix_positions, positions], axis=1)
        mask = kmask[:, None, :]  # (B, 1, T)
        if cfg.causal:
            mask = mask & (positions[:, :, None] >= kpos[:, None, :])
        attn = attention(q, keys_k, keys_v, mask)
        attn = nn.with_logical_constraint(attn, ("act_batch", "act_length", "act_heads"))
        x = x + self._proj("attn_out", cfg.d_model, ("heads", "embed"))(attn, deterministic)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="ff_norm")(x)
        gate = self._proj("ff_proj", cfg.mlp_hidden, ("embed", "mlp"))(h, deterministic)
        up = self._proj("up_proj", cfg.mlp_hidden, ("embed", "mlp"))(h, deterministic)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
        x = x + self._proj("ff_out", cfg.d_model, ("mlp", "embed"))(hidden, deterministic)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        return x, new_kv


def _block_class(cfg: LLMConfig) -> type[nn.Module]:
    """Block, wrapped in remat per ``cfg.remat`` (deterministic / return_kv stay static)."""
    if cfg.remat == "none":
        return Block
    return nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers,
                    static_argnums=(7, 8))


class LLaDA(nn.Module):
    """LLaDA / LLaMA transformer. Parameters: ``wte``, ``blocks_N`` (or scanned ``blocks``),
    ``ln_f``, ``ff_out`` (LM head; absent with ``tie_embeddings``)."""

    config: LLMConfig
    lora: LoRAConfig | None = None

    def setup(self):
        cfg = self.config
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.wte = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype,
                            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std),
                                                                        ("vocab", "embed")))
        block = _block_class(cfg)
        if cfg.scan_layers:
            scanned = nn.scan(block, variable_axes={"params": 0, "lora": 0},
                              split_rngs={"params": True, "dropout": True},
                              in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast,
                                       nn.broadcast, nn.broadcast),
                              length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            self.blocks = scanned(cfg, self.lora)
        else:
            self.blocks = [block(cfg, self.lora) for _ in range(cfg.n_layers)]
        self.ln_f = RMSNorm(cfg.norm_eps, dtype, pdtype)
        if not cfg.tie_embeddings:
            self.ff_out = Projection(cfg.vocab_size, ("embed", "vocab"), dtype=dtype, param_dtype=pdtype,
                                     kernel_init=nn.initializers.normal(cfg.init_std))

    def embed(self, ids: jax.Array) -> jax.Array:
        """Token embeddings ``(B, S, D)`` in the compute dtype."""
        return self.wte(ids)

    def head(self, hidden: jax.Array) -> jax.Array:
        """Logits ``(..., V)`` from final-norm hidden states ``(..., D)`` (any leading shape, so a
        loss can compute logits only at the positions it scores)."""
        if self.config.tie_embeddings:
            logits = self.wte.attend(hidden)
        else:
            logits = self.ff_out(hidden)
        if logits.ndim == 3:
            logits = nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))
        return logits

    def __call__(self, ids: jax.Array | None = None, *, embeds: jax.Array | None = None,
                 positions: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 prefix_kv: KV | None = None, prefix_mask: jax.Array | None = None,
                 prefix_positions: jax.Array | None = None, return_kv: bool = False,
                 return_hidden: bool = False, deterministic: bool = True) -> LLMOutput:
        """Forward over ``ids (B, S)`` or ``embeds (B, S, D)``.

        positions: ``(B, S)`` RoPE positions (default ``P + 0..S-1`` with a prefix of length P).
        attention_mask: ``(B, S)`` True for real tokens (keys that may be attended to).
        prefix_kv / prefix_mask / prefix_positions: a cache of P earlier positions (see module doc).
        """
        cfg = self.config
        if (ids is None) == (embeds is None):
            raise ValueError("LLaDA: give exactly one of ids or embeds")
        x = self.embed(ids) if embeds is None else embeds.astype(dtype_of(cfg.dtype))
        b, s, _ = x.shape
        p = 0 if prefix_kv is None else prefix_kv.k.shape[2]
        if positions is None:
            positions = jnp.broadcast_to(p + jnp.arange(s, dtype=jnp.int32), (b, s))
        key_mask = jnp.ones((b, s), bool) if attention_mask is None else attention_mask.astype(bool)
        if prefix_kv is not None:
            if prefix_mask is None:
                prefix_mask = jnp.ones((b, p), bool)
            if prefix_positions is None:
                prefix_positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
            prefix_mask = prefix_mask.astype(bool)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

        if cfg.scan_layers:
            layer_kv = None if prefix_kv is None else (prefix_kv.k, prefix_kv.v)
            x, kv = self.blocks(x, layer_kv, positions, key_mask, prefix_mask, prefix_positions,
                                deterministic, return_kv)
        else:
            ks, vs = [], []
            for i, block in enumerate(self.blocks):
                layer_kv = None if prefix_kv is None else (prefix_kv.k[i], prefix_kv.v[i])
                x, kv_i = block(x, layer_kv, positions, key_mask, prefix_mask, prefix_positions,
                                deterministic, return_kv)
                if return_kv:
                    ks.append(kv_i[0])
                    vs.append(kv_i[1])
            kv = (jnp.stack(ks), jnp.stack(vs)) if return_kv else None
        out_kv = KV(*kv) if return_kv else None
        hidden = self.ln_f(x)
        if return_hidden:
            return LLMOutput(None, out_kv, hidden)
        return LLMOutput(self.head(hidden), out_kv)


def count_params(tree) -> int:
    """Number of scalars in a (possibly boxed / abstract) parameter tree."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(tree))
    return int(sum(math.prod(leaf.shape) for leaf in leaves))


def abstract_variables(config: LLMConfig, lora: LoRAConfig | None = None) -> dict:
    """``jax.eval_shape`` of ``LLaDA.init``: boxed ShapeDtypeStructs with logical axis names
    (``params`` and, with LoRA, ``lora``). The target for checkpoint import; allocates nothing."""
    model = LLaDA(config, lora)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda rng, x: model.init(rng, x), jax.random.key(0), ids)

"""The LLaDA transformer (SPEC section 4), which with ``causal=True`` and fewer KV heads is
also the LLaMA-3-style decoder of the autoregressive baseline.

Pre-norm blocks: ``x += attn_out(attn(q, k, v of attn_norm(x)))``,
``x += ff_out(silu(ff_proj(h)) * up_proj(h))`` with ``h = ff_norm(x)``; logits
``ff_out(ln_f(x))``. Parameter names follow the HF LLaDA checkpoint so the conversion table is
a plain rename + transpose.

One attention mechanism serves every cache. ``cache`` is a fixed-size K/V buffer of ``T`` slots
(``KV``: one ``(B, kv_heads, T, head_dim)`` array per layer in an unrolled stack, so each layer
updates and reads its own buffer and no layer's entries are ever sliced out of a stacked array;
one stacked ``(layers, B, kv_heads, T, head_dim)`` array in a scanned stack, which ``nn.scan``
slices anyway; either form is accepted and converted); each layer writes the current tokens'
rotated keys and values into it *in place* at ``cache_index`` (a scalar start: ``dynamic_update_slice`` of a
contiguous run, or one slot per token ``(B, S)``: a scatter, out-of-range slots dropped) and the
tokens attend over the whole buffer, ``cache_mask`` marking the slots that may be attended to
after the write, and for ``causal`` models ``cache_positions`` / ``positions`` deciding the rest.
Nothing is concatenated: inside a decode ``while_loop`` the buffer is updated where it lies, and
the forward returns it as ``kv``. Without a cache, ``return_kv`` hands back the current tokens'
keys and values in the stack's own form (per layer ``(B, kv_heads, S, head_dim)``, or stacked).

The buffers are head-major, as HF's caches are: the attention's matrix products batch over
(row, head), and a GPU GEMM needs its batch dimensions physically outermost and adjacent.
A ``(B, T, kv_heads, head_dim)`` buffer has the slots between them, so XLA's GPU layout
assignment copies every layer's keys and values into head-major order in every forward: several
passes over the whole cache per forward, where a later decoding forward should read it once.
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
    """Rotated keys and values: a tuple of per-layer ``(B, kv_heads, S, head_dim)`` arrays each
    (an unrolled stack's form) or one stacked ``(layers, B, kv_heads, S, head_dim)`` array each
    (a scanned stack's)."""

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]

    def length(self) -> int:
        """Slots ``S`` per layer."""
        return jax.tree.leaves(self.k)[0].shape[-2]

    def zeros(self, length: int | None = None) -> KV:
        """A zero buffer of this one's form, shapes and dtypes (also from ``jax.eval_shape``),
        with ``length`` slots instead of ``S`` if given."""
        def zero(a):
            shape = a.shape if length is None else a.shape[:-2] + (length,) + a.shape[-1:]
            return jnp.zeros(shape, a.dtype)
        return jax.tree.map(zero, self)


def stacked(kv: KV) -> KV:
    """``kv`` with each of keys and values as one ``(layers, B, kv_heads, S, head_dim)`` array."""
    return KV(*(jnp.stack(a) if isinstance(a, (tuple, list)) else a for a in kv))


def per_layer(kv: KV, n_layers: int) -> KV:
    """``kv`` with keys and values as tuples of ``n_layers`` per-layer arrays."""
    split = lambda a: tuple(a) if isinstance(a, (tuple, list)) else tuple(a[i] for i in range(n_layers))  # noqa: E731
    return KV(split(kv.k), split(kv.v))


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


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, head_major: bool = False) -> jax.Array:
    """Grouped-query attention with an fp32 softmax, through ``jax.nn.dot_product_attention``.

    ``q (B, S, H, D)``, ``k, v (B, T, KV, D)``, or ``(B, KV, T, D)`` with ``head_major`` (a cache
    buffer: handed over as a transposed view, which XLA folds into the products' dimension
    numbers); query head ``h`` uses KV head ``h // (H/KV)``, as HF's ``repeat_kv``. ``mask``
    broadcastable to ``(B, S, T)`` (True = may attend).
    """
    b, s, h, d = q.shape
    if head_major:
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
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


def write_cache(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """One layer's buffer ``(B, KV, T, D)`` with ``new (B, KV, S, D)`` written in place: at slots
    ``[index, index + S)`` of every row (scalar ``index``) or at ``index[b, s]`` (``(B, S)``;
    out-of-range slots are dropped)."""
    new = new.astype(buf.dtype)
    index = jnp.asarray(index, jnp.int32)
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice_in_dim(buf, new, index, axis=2)
    rows = jnp.arange(new.shape[0])[:, None, None]
    heads = jnp.arange(new.shape[1])[None, :, None]
    return buf.at[rows, heads, index[:, None, :]].set(new, mode="drop")


class Block(nn.Module):
    """One pre-norm LLaDA / LLaMA block. Returns ``(x, kv)`` so it can be scanned: ``kv`` is the
    updated cache buffer (this layer's own) with a cache, the tokens' own ``(k, v)`` with
    ``return_kv``, else None. ``queries_from`` (static): only positions
    ``[queries_from, S)`` are queries, the output is theirs ``(B, S - queries_from, D)``, while
    every position still gives keys and values (the last block of a forward whose reader needs
    the response only: the same numbers for those positions, less work). ``fixed_rows``
    (static): rows ``[0, fixed_rows)`` of ``x`` are the same at every call of a decode loop (the
    first block's ``[prompt | audio]`` embeddings); they are normalised and projected apart from
    the rest, so XLA hoists their queries, keys and values out of the loop (the same numbers)."""

    config: LLMConfig
    lora: LoRAConfig | None = None

    def _proj(self, name: str, features: int, axes: tuple[str, str]) -> Projection:
        cfg = self.config
        lora = self.lora if self.lora is not None and self.lora.enabled and name in self.lora.targets else None
        return Projection(features, axes, lora=lora, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                          kernel_init=nn.initializers.normal(cfg.init_std), name=name)

    @nn.compact
    def __call__(self, x, layer_kv, positions, key_mask, cache_mask, cache_positions, cache_index,
                 deterministic: bool = True, return_kv: bool = False, queries_from: int = 0, fixed_rows: int = 0):
        cfg = self.config
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        b, s, _ = x.shape
        hd = cfg.head_dim

        norm = RMSNorm(cfg.norm_eps, dtype, pdtype, name="attn_norm")
        bounds = (0, fixed_rows, s) if 0 < fixed_rows < s else (0, s)
        parts = [norm(x[:, lo:hi]) for lo, hi in zip(bounds, bounds[1:])]  # row-wise: the same as norm(x)

        def project(name: str, features: int, axes: tuple[str, str], start: int = 0) -> jax.Array:
            """The projection of rows ``[start, S)``, each part of ``parts`` apart."""
            layer = self._proj(name, features, axes)
            outs = [layer(part[:, max(start - lo, 0):], deterministic)
                    for part, lo, hi in zip(parts, bounds, bounds[1:]) if start < hi]
            return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)

        q_pos = positions[:, queries_from:]
        q = project("q_proj", cfg.n_heads * hd, ("embed", "heads"), queries_from)
        k = project("k_proj", cfg.n_kv_heads * hd, ("embed", "kv_heads"))
        v = project("v_proj", cfg.n_kv_heads * hd, ("embed", "kv_heads"))
        q = nn.with_logical_constraint(q, ("act_batch", "act_length", "act_heads"))
        k = nn.with_logical_constraint(k, ("act_batch", "act_length", "act_kv_heads"))
        v = nn.with_logical_constraint(v, ("act_batch", "act_length", "act_kv_heads"))
        q = rope(q.reshape(b, s - queries_from, cfg.n_heads, hd), q_pos, cfg.rope_theta)
        k = rope(k.reshape(b, s, cfg.n_kv_heads, hd), positions, cfg.rope_theta)
        v = v.reshape(b, s, cfg.n_kv_heads, hd)

        # Keys: the current tokens, or the cache buffer with them written in place.
        # Visibility: valid keys, and q_pos >= k_pos when causal.
        to_cache = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731  (B, S, KV, D) -> the cache's (B, KV, S, D)
        if layer_kv is None:  # no cache (training: nothing transposed unless return_kv)
            out_kv = (to_cache(k), to_cache(v)) if return_kv else None
            keys_k, keys_v, kmask, kpos = k, v, key_mask, positions
        else:
            out_kv = keys_k, keys_v = tuple(write_cache(buf, to_cache(new), cache_index)
                                            for buf, new in zip(layer_kv, (k, v)))
            kmask, kpos = cache_mask, cache_positions
        mask = kmask[:, None, :]  # (B, 1, T)
        if cfg.causal:
            mask = mask & (q_pos[:, :, None] >= kpos[:, None, :])
        attn = attention(q, keys_k, keys_v, mask, head_major=layer_kv is not None)
        attn = nn.with_logical_constraint(attn, ("act_batch", "act_length", "act_heads"))
        x = x[:, queries_from:] + self._proj("attn_out", cfg.d_model, ("heads", "embed"))(attn, deterministic)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="ff_norm")(x)
        gate_proj = self._proj("ff_proj", cfg.mlp_hidden, ("embed", "mlp"))
        up_proj = self._proj("up_proj", cfg.mlp_hidden, ("embed", "mlp"))
        out_proj = self._proj("ff_out", cfg.d_model, ("mlp", "embed"))

        def feed_forward(h):
            hidden = nn.silu(gate_proj(h, deterministic)) * up_proj(h, deterministic)
            hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_length", "act_mlp"))
            return out_proj(hidden, deterministic)

        n = min(cfg.ff_row_chunks, h.shape[1])
        if n > 1:  # positions in chunks (LLMConfig.ff_row_chunks)
            bounds = [h.shape[1] * i // n for i in range(n + 1)]
            x = x + jnp.concatenate([feed_forward(h[:, lo:hi]) for lo, hi in zip(bounds, bounds[1:])], axis=1)
        else:
            x = x + feed_forward(h)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        return x, out_kv


def _block_class(cfg: LLMConfig) -> type[nn.Module]:
    """Block, wrapped in remat per ``cfg.remat`` (deterministic / return_kv stay static)."""
    if cfg.remat == "none":
        return Block
    return nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers,
                    static_argnums=(8, 9, 10, 11))


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
                                       nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
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
                 cache: KV | None = None, cache_index: jax.Array | int = 0, cache_mask: jax.Array | None = None,
                 cache_positions: jax.Array | None = None, return_kv: bool = False,
                 return_hidden: bool = False, deterministic: bool = True, outputs_from: int = 0,
                 fixed_prefix: int = 0) -> LLMOutput:
        """Forward over ``ids (B, S)`` or ``embeds (B, S, D)``.

        positions: ``(B, S)`` RoPE positions (default ``0..S-1``; with a cache, the slots written).
        attention_mask: ``(B, S)`` True for real tokens (keys that may be attended to; no cache).
        cache / cache_index / cache_mask / cache_positions: a K/V buffer of T slots written in
        place (see module doc); ``cache_mask (B, T)`` defaults to every slot, ``cache_positions``
        to ``0..T-1``. The output's ``kv`` is then the updated buffer.
        outputs_from: logits / hidden states only for positions ``[outputs_from, S)`` (a decoder
        reads the response, not the prefix); ``kv`` still covers every position. In an unrolled
        stack the last block then runs queries and MLP for those positions only, which is most of
        a layer; a scanned stack computes every position and slices.
        fixed_prefix: the first positions hold the same inputs at every call of a loop (a
        decoder's ``[prompt | audio]``); an unrolled stack's first block projects them apart, so
        inside a ``while_loop`` their queries / keys / values are computed once (hoisted by XLA).
        """
        cfg = self.config
        if (ids is None) == (embeds is None):
            raise ValueError("LLaDA: give exactly one of ids or embeds")
        x = self.embed(ids) if embeds is None else embeds.astype(dtype_of(cfg.dtype))
        b, s, _ = x.shape
        cache_index = jnp.asarray(cache_index, jnp.int32)
        if positions is None:
            start = cache_index if cache is not None else jnp.zeros((), jnp.int32)
            positions = (jnp.broadcast_to(start + jnp.arange(s, dtype=jnp.int32), (b, s)) if start.ndim == 0
                         else start)
        key_mask = jnp.ones((b, s), bool) if attention_mask is None else attention_mask.astype(bool)
        layer_kv = None
        if cache is not None:
            t = cache.length()
            cache_mask = jnp.ones((b, t), bool) if cache_mask is None else cache_mask.astype(bool)
            if cache_positions is None:
                cache_positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            cache = stacked(cache) if cfg.scan_layers else per_layer(cache, cfg.n_layers)
            layer_kv = (cache.k, cache.v)
            return_kv = True
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

        if cfg.scan_layers:
            # (one compiled block for every layer: all of them run every position)
            x, kv = self.blocks(x, layer_kv, positions, key_mask, cache_mask, cache_positions, cache_index,
                                deterministic, return_kv, 0, 0)
            x = x[:, outputs_from:]
        else:  # each layer's own buffer, updated in place (with a cache), or its tokens' K/V
            ks, vs = [], []
            for i, block in enumerate(self.blocks):
                own = None if cache is None else (layer_kv[0][i], layer_kv[1][i])
                x, kv_i = block(x, own, positions, key_mask, cache_mask, cache_positions, cache_index,
                                deterministic, return_kv, outputs_from if i == cfg.n_layers - 1 else 0,
                                fixed_prefix if i == 0 else 0)
                if return_kv:
                    ks.append(kv_i[0])
                    vs.append(kv_i[1])
            kv = (tuple(ks), tuple(vs)) if return_kv else None
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

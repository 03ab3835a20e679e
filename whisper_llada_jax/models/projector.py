"""Audio projectors: the window-level Q-Former of the paper (SPEC section 3) and an MLP ablation.

Both cut the encoder output into windows of ``window`` frames every ``stride`` frames (88
windows of 17 for 1500 frames; trailing frames that do not fill a window are dropped) and turn
each window, independently, into ``num_queries`` vectors of the LLM's width.

Parameter names follow the reference checkpoint (``adapter.bert.*``, ``speech_query_tokens``,
``linear_proj``) so the conversion table in ``checkpoints/reference_pth.py`` stays one line per
tensor. Only the query path of the BERT-shaped Q-Former exists here: the reference checkpoint's
word/position embeddings and text-path ``intermediate`` / ``output`` blocks are never used.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from whisper_llada_jax.config import ProjectorConfig

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def num_windows(frames: int, window: int, stride: int) -> int:
    """Windows of ``window`` frames every ``stride`` frames that fit in ``frames``."""
    return (frames - window) // stride + 1


def split_windows(x: jax.Array, window: int, stride: int) -> jax.Array:
    """(B, T, d) -> (B, W, window, d); static shapes, no copy when stride == window."""
    b, t, d = x.shape
    w = num_windows(t, window, stride)
    if w < 1:
        raise ValueError(f"encoder output has {t} frames, fewer than one projector window ({window})")
    if stride == window:
        return x[:, : w * window].reshape(b, w, window, d)
    idx = jnp.arange(w)[:, None] * stride + jnp.arange(window)[None, :]
    return x[:, idx]


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default ``nn.Linear`` init for weight and bias alike: kaiming-uniform with
    a = sqrt(5) is U(+-1/sqrt(fan_in)), and the bias uses the same bound."""
    bound = fan_in**-0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(features: int, axes: Sequence[str], cfg: ProjectorConfig, name: str,
           init: nn.initializers.Initializer | None = None, bias_init: nn.initializers.Initializer | None = None
           ) -> nn.Dense:
    init = nn.initializers.normal(cfg.init_std) if init is None else init
    bias_init = nn.initializers.zeros_init() if bias_init is None else bias_init
    return nn.Dense(
        features,
        dtype=_DTYPES[cfg.dtype],
        param_dtype=_DTYPES[cfg.param_dtype],
        kernel_init=nn.with_logical_partitioning(init, tuple(axes)),
        bias_init=nn.with_logical_partitioning(bias_init, (axes[1],)),
        name=name,
    )


def _layer_norm(cfg: ProjectorConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.ln_eps,
        dtype=_DTYPES[cfg.dtype],
        param_dtype=_DTYPES[cfg.param_dtype],
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


class _SelfOrCross(nn.Module):
    """BERT ``*.self``: query from ``h``, key/value from ``kv`` (``h`` itself or the window)."""

    cfg: ProjectorConfig

    @nn.compact
    def __call__(self, h, kv, deterministic: bool = True):
        cfg = self.cfg
        head_dim = cfg.hidden // cfg.heads
        q = _dense(cfg.hidden, ("embed", "heads"), cfg, "query")(h)
        k = _dense(cfg.hidden, ("embed", "kv_heads"), cfg, "key")(kv)
        v = _dense(cfg.hidden, ("embed", "kv_heads"), cfg, "value")(kv)
        split = lambda t: t.reshape(*t.shape[:-1], cfg.heads, head_dim)  # noqa: E731
        # No mask (every window frame is real). Softmax in fp32; BERT drops attention probabilities.
        logits = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k), preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits * head_dim**-0.5, axis=-1).astype(v.dtype)
        probs = nn.Dropout(cfg.dropout)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, split(v))
        return ctx.reshape(*ctx.shape[:-2], cfg.hidden)


class _Output(nn.Module):
    """BERT ``*.output``: ``LayerNorm(residual + dense(x))`` (post-LN)."""

    cfg: ProjectorConfig
    in_axis: str = "heads"

    @nn.compact
    def __call__(self, x, residual, deterministic: bool = True):
        y = _dense(self.cfg.hidden, (self.in_axis, "embed"), self.cfg, "dense")(x)
        y = nn.Dropout(self.cfg.dropout)(y, deterministic=deterministic)
        return _layer_norm(self.cfg, "LayerNorm")(residual + y)


class _Attention(nn.Module):
    """BERT ``attention`` / ``crossattention``: ``self`` then ``output``."""

    cfg: ProjectorConfig

    @nn.compact
    def __call__(self, h, kv, deterministic: bool = True):
        ctx = _SelfOrCross(self.cfg, name="self")(h, kv, deterministic)
        return _Output(self.cfg, name="output")(ctx, h, deterministic)


class _Intermediate(nn.Module):
    """BERT ``intermediate_query``: dense to the MLP width, exact (erf) GELU."""

    cfg: ProjectorConfig

    @nn.compact
    def __call__(self, h):
        y = _dense(self.cfg.intermediate, ("embed", "mlp"), self.cfg, "dense")(h)
        return nn.gelu(y, approximate=False)


class _Layer(nn.Module):
    """One Q-Former layer on the query path: self-attn, cross-attn to the window, query MLP."""

    cfg: ProjectorConfig

    @nn.compact
    def __call__(self, h, window, deterministic: bool = True):
        h = _Attention(self.cfg, name="attention")(h, h, deterministic)
        h = _Attention(self.cfg, name="crossattention")(h, window, deterministic)
        y = _Intermediate(self.cfg, name="intermediate_query")(h)
        return _Output(self.cfg, in_axis="mlp", name="output_query")(y, h, deterministic)


class _Embeddings(nn.Module):
    """BERT ``embeddings`` on the query path: only the LayerNorm (no word/position tables)."""

    cfg: ProjectorConfig

    @nn.compact
    def __call__(self, queries, deterministic: bool = True):
        h = _layer_norm(self.cfg, "LayerNorm")(queries)
        return nn.Dropout(self.cfg.dropout)(h, deterministic=deterministic)


class _QFormerBert(nn.Module):
    """The used part of the reference ``adapter.bert`` (20,477,952 parameters at paper size)."""

    cfg: ProjectorConfig

    @nn.compact
    def __call__(self, queries, window, deterministic: bool = True):
        h = _Embeddings(self.cfg, name="embeddings")(queries, deterministic)
        for i in range(self.cfg.layers):
            h = _Layer(self.cfg, name=f"layer_{i}")(h, window, deterministic)
        return h


class WindowQFormer(nn.Module):
    """Window-level Q-Former: (B, T, d_whisper) -> (B, W * num_queries, out_dim)."""

    cfg: ProjectorConfig
    out_dim: int

    @nn.compact
    def __call__(self, encoder_out: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        dtype = _DTYPES[cfg.dtype]
        windows = split_windows(encoder_out, cfg.window, cfg.stride)
        b, w, _, d = windows.shape
        # Every window is an independent sequence: fold windows into the batch axis.
        windows = windows.reshape(b * w, cfg.window, d).astype(dtype)
        windows = nn.with_logical_constraint(windows, ("act_batch", "act_length", "act_embed"))
        queries = self.param(
            "speech_query_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (None, "queries", "norm")),
            (1, cfg.num_queries, cfg.hidden),
            _DTYPES[cfg.param_dtype],
        )
        queries = jnp.broadcast_to(queries.astype(dtype), (b * w, cfg.num_queries, cfg.hidden))
        h = _QFormerBert(cfg, name="bert")(queries, windows, deterministic)
        # linear_proj is a plain torch nn.Linear in the reference (SPEC section 3): its default init.
        torch_init = torch_linear_init(cfg.hidden)
        out = _dense(self.out_dim, ("embed_unsharded", "embed"), cfg, "linear_proj", torch_init, torch_init)(h)
        out = out.reshape(b, w * cfg.num_queries, self.out_dim)
        return nn.with_logical_constraint(out, ("act_batch", "act_length", "act_embed"))


class MLPProjector(nn.Module):
    """Ablation: stack each window's frames, Linear-GELU-Linear to ``num_queries`` vectors."""

    cfg: ProjectorConfig
    out_dim: int

    @nn.compact
    def __call__(self, encoder_out: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        windows = split_windows(encoder_out, cfg.window, cfg.stride)
        b, w, _, d = windows.shape
        stacked = windows.reshape(b, w, cfg.window * d).astype(_DTYPES[cfg.dtype])
        h = nn.gelu(_dense(cfg.hidden, ("embed", "mlp"), cfg, "fc1")(stacked), approximate=False)
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        out = _dense(cfg.num_queries * self.out_dim, ("mlp", "embed"), cfg, "fc2")(h)
        out = out.reshape(b, w * cfg.num_queries, self.out_dim)
        return nn.with_logical_constraint(out, ("act_batch", "act_length", "act_embed"))


def make_projector(cfg: ProjectorConfig, out_dim: int, name: str | None = None) -> nn.Module:
    """The projector named by ``cfg.kind``."""
    if cfg.kind == "qformer":
        return WindowQFormer(cfg, out_dim, name=name)
    if cfg.kind == "mlp":
        return MLPProjector(cfg, out_dim, name=name)
    raise ValueError(f"unknown projector kind {cfg.kind!r}")

"""LoRA as a parameter-level addition to the LLM's projections (SPEC section 5).

Every projection of the LLM is a ``Projection``: a bias-free dense layer whose kernel lives in
``params`` (so the base tree has exactly the layout of the non-LoRA checkpoint). When LoRA
targets it, ``lora_a`` (in, r) and ``lora_b`` (r, out) live in the separate ``lora``
collection at the same path, and ``y = x W + dropout(x) A B * alpha / r``. Freezing the base
model is then just "differentiate with respect to ``lora`` only", and ``merge_lora`` folds the
adapters into the kernels for export or faster inference.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from whisper_llada_jax.config import LoRAConfig

Initializer = Callable[..., jax.Array]

# PEFT initialises A with kaiming_uniform(a=sqrt(5)) on the (r, in) torch weight, i.e.
# U(-1/sqrt(in), 1/sqrt(in)); variance_scaling(1/3, fan_in, uniform) is the same bound.
lora_a_init: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
lora_b_init: Initializer = nn.initializers.zeros_init()


class Projection(nn.Module):
    """Bias-free dense layer ``(..., in) -> (..., features)`` with an optional LoRA branch.

    ``axes`` are the logical names of the kernel (in, out). ``lora`` is set by the parent only
    for targeted projections.
    """

    features: int
    axes: tuple[str, str]
    lora: LoRAConfig | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        d_in = x.shape[-1]
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                            (d_in, self.features), self.param_dtype)
        x = x.astype(self.dtype)
        y = jnp.einsum("...i,io->...o", x, kernel.astype(self.dtype))
        if self.lora is None or not self.lora.enabled:
            return y
        rank = self.lora.rank
        a_init = nn.with_logical_partitioning(lora_a_init, (self.axes[0], "lora_rank"))
        b_init = nn.with_logical_partitioning(lora_b_init, ("lora_rank", self.axes[1]))
        # Adapters are few and trained: kept in fp32 whatever the base param_dtype.
        a = self.variable("lora", "lora_a", lambda: a_init(self.make_rng("params"), (d_in, rank), jnp.float32))
        b = self.variable("lora", "lora_b", lambda: b_init(self.make_rng("params"), (rank, self.features), jnp.float32))
        h = nn.Dropout(self.lora.dropout)(x, deterministic=deterministic)
        h = jnp.einsum("...i,ir->...r", h, a.value.astype(self.dtype))
        h = jnp.einsum("...r,ro->...o", h, b.value.astype(self.dtype))
        return y + h * jnp.asarray(self.lora.scale, self.dtype)


def merge_lora(params: Mapping, lora: Mapping, lora_cfg: LoRAConfig) -> dict:
    """Folds ``lora`` into ``params``: kernel + A @ B * scale (fp32 math, kernel dtype kept).

    Works for unscanned and scanned (leading ``layers`` axis) trees; returns a new tree.
    """
    scale = lora_cfg.scale

    def walk(p: Mapping, l: Mapping | None) -> dict:
        out = {}
        for key, value in p.items():
            sub = None if l is None else l.get(key)
            if isinstance(value, Mapping):
                out[key] = walk(value, sub)
            elif key == "kernel" and l is not None and "lora_a" in l:
                a = jnp.asarray(l["lora_a"], jnp.float32)
                b = jnp.asarray(l["lora_b"], jnp.float32)
                delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST) * scale
                out[key] = (jnp.asarray(value, jnp.float32) + delta).astype(value.dtype)
            else:
                out[key] = value
        return out

    params, lora = nn.unbox(params), nn.unbox(lora)
    _check_targets(params, lora)
    return walk(params, lora)


def _check_targets(params: Mapping, lora: Mapping, path: str = "") -> None:
    """Every LoRA pair must sit beside a kernel of matching shape (else it would be dropped)."""
    for key, value in lora.items():
        where = f"{path}/{key}" if path else key
        node = params.get(key) if isinstance(params, Mapping) else None
        if not isinstance(value, Mapping):
            continue
        if "lora_a" in value:
            kernel = None if node is None else node.get("kernel")
            want = None if kernel is None else kernel.shape
            got = value["lora_a"].shape[:-1] + value["lora_b"].shape[-1:]
            if want != got:
                raise ValueError(f"merge_lora: {where} has no base kernel of shape {got} (found {want})")
        else:
            _check_targets(node if node is not None else {}, value, where)

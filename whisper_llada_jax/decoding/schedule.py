"""Model-independent pieces of masked-diffusion decoding (SPEC section 8).

Everything here works on whole batches with static shapes and is shared by the fused decoders
and by the test reference (which calls ``row_uniforms`` to get the identical injected noise).

Tie-breaking: the reference picks positions with ``torch.topk``, whose order among equal values
is unspecified. We rank by (confidence descending, position ascending), which is what
``lax.top_k`` documents; with fp32 probabilities exact ties practically only occur between
``-inf`` entries, which are never revealed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def num_transfer(masked: jax.Array, steps: jax.Array, i: jax.Array) -> jax.Array:
    """Tokens to reveal at step ``i`` of a segment: ``m // s`` plus one for the first ``m % s``
    steps (``m`` masked at the segment start, ``s`` its steps). All ``(B,)`` or scalars."""
    steps = jnp.maximum(steps, 1)
    return masked // steps + (i < masked % steps).astype(masked.dtype)


def row_keys(rng: jax.Array, row_steps: jax.Array, row_ids: jax.Array) -> jax.Array:
    """One fresh key per (row, step of that row): ``fold_in(fold_in(rng, row_id), step)``.

    Keys depend on the row's id and its own step count, not on its slot in the batch or on
    how long other rows take, so a batch decodes exactly as its rows would one at a time, and
    no key is used twice.
    """
    return jax.vmap(lambda r, n: jax.random.fold_in(jax.random.fold_in(rng, r), n))(row_ids, row_steps)


def gumbel_uniforms(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-row uniforms in (0, 1) for Gumbel sampling, ``(B, *shape)``."""
    tiny = jnp.finfo(jnp.float32).tiny
    return jax.vmap(lambda k: jax.random.uniform(jax.random.split(k)[0], shape, jnp.float32, tiny, 1.0))(keys)


def remask_uniforms(keys: jax.Array, n: int) -> jax.Array:
    """Per-row uniforms in [0, 1) for ``random`` remasking, ``(B, n)``."""
    return jax.vmap(lambda k: jax.random.uniform(jax.random.split(k)[1], (n,), jnp.float32))(keys)


def argmax(logits: jax.Array) -> jax.Array:
    """``jnp.argmax(logits, -1)`` as int32 (the first index of the maximum; NaN-free input).

    On CPU it is computed as one max and one min reduction: XLA's CPU backend runs argmax as a
    variadic (value, index) reduce that it does not vectorise, ~8x slower over a vocabulary
    (a tenth of a small model's decode step). Elsewhere the plain argmax (one pass)."""
    def two_reductions(z):
        top = jnp.max(z, axis=-1, keepdims=True)
        idx = jnp.arange(z.shape[-1], dtype=jnp.int32)
        return jnp.minimum(jnp.min(jnp.where(z == top, idx, z.shape[-1]), axis=-1), z.shape[-1] - 1)

    return jax.lax.platform_dependent(logits, cpu=two_reductions,
                                      default=lambda z: jnp.argmax(z, axis=-1).astype(jnp.int32))


def sample_tokens(logits: jax.Array, temperature: float, gumbel_u: jax.Array | None) -> jax.Array:
    """argmax at temperature 0, else Gumbel-max ``argmax(logits / T - log(-log u))``.

    The reference computes ``argmax(exp(logits) / (-log u) ** T)`` in float64; taking the log
    and dividing by T > 0 gives the same argmax without overflow, so fp32 suffices.
    """
    if temperature == 0.0 or gumbel_u is None:
        return argmax(logits)
    noisy = logits.astype(jnp.float32) / temperature - jnp.log(-jnp.log(gumbel_u))
    return argmax(noisy)


def token_probability(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """softmax(logits)[token] in fp32, ``(B, S)``: ``exp(logit[token] - logsumexp(logits))``, one
    fused max / sum-of-exp reduction over the vocabulary instead of a full log-softmax array."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    return jnp.exp(picked - jax.nn.logsumexp(logits, axis=-1))


def ranks(scores: jax.Array) -> jax.Array:
    """Rank of each entry along the last axis, 0 = largest; ties go to the lower index."""
    n = scores.shape[-1]
    _, order = jax.lax.top_k(scores, n)
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), order.shape)
    rows = jnp.arange(order.shape[0])[:, None]
    return jnp.zeros_like(order).at[rows, order].set(pos)


def select_top(scores: jax.Array, k: jax.Array) -> jax.Array:
    """Boolean mask of the ``k[b]`` largest finite scores per row (ties: lower index first)."""
    return (ranks(scores) < k[:, None]) & jnp.isfinite(scores)


def fill_after_first(x: jax.Array, hit: jax.Array, value: int) -> tuple[jax.Array, jax.Array]:
    """Sets every position from the first ``hit`` on to ``value``; returns (x, any hit)."""
    any_hit = hit.any(-1)
    first = jnp.argmax(hit, axis=-1)
    after = jnp.arange(x.shape[-1])[None, :] >= first[:, None]
    return jnp.where(any_hit[:, None] & after, value, x), any_hit

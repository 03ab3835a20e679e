"""A straightforward reference of SPEC section 8 for the decoding tests.

Batch 1, Python loops, NumPy, one full forward per step through ``logits_fn(ids) -> (n, V)``
(the same model the fused decoders run). It follows the published loop statement by
statement; the only injected pieces are the random numbers, which ``Noise`` draws from the
same (row, step) keys as the fused decoder so random remasking and Gumbel sampling can be
compared token for token. Ties in top-k go to the lower index (see decoding/schedule.py).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from whisper_llada_jax.decoding import schedule


class Noise:
    """The fused decoder's per-(row, step) uniforms for one row, over a window of positions."""

    def __init__(self, rng, row_id: int):
        self.rng, self.row_id = rng, np.array([row_id], np.int32)

    def gumbel(self, step: int, shape) -> np.ndarray:
        return np.asarray(_gumbel(self.rng, np.array([step], np.int32), self.row_id, tuple(shape))[0], np.float64)

    def remask(self, step: int, n: int) -> np.ndarray:
        return np.asarray(_remask(self.rng, np.array([step], np.int32), self.row_id, n)[0], np.float64)


@functools.partial(jax.jit, static_argnums=3)
def _gumbel(rng, step, row, shape):
    return schedule.gumbel_uniforms(schedule.row_keys(rng, step, row), shape)


@functools.partial(jax.jit, static_argnums=3)
def _remask(rng, step, row, n):
    return schedule.remask_uniforms(schedule.row_keys(rng, step, row), n)


def _softmax(z):
    z = z.astype(np.float64) - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _topk(conf, k):
    """Indices of the k largest (stable: lower index first among equals)."""
    return np.argsort(-conf, kind="stable")[:k]


def _schedule(m, s):
    return [m // s + (1 if i < m % s else 0) for i in range(s)]


def _step(logits_fn, x, mask_id, temperature, remasking, noise, step, win):
    """One reference step's (x0, confidence) over the whole canvas; ``win`` = (w0, W) window
    the fused decoder draws its noise for (positions outside get no noise: never selected)."""
    logits = np.asarray(logits_fn(x), np.float64)
    w0, w = win
    if temperature > 0:
        u = np.full_like(logits, np.exp(-1.0))  # outside the window: no noise (never selected)
        u[w0:w0 + w] = noise.gumbel(step, (w, logits.shape[-1]))
        x0 = np.argmax(np.exp(logits) / (-np.log(u)) ** temperature, axis=-1)
    else:
        x0 = np.argmax(logits, axis=-1)
    if remasking == "low_confidence":
        p = np.take_along_axis(_softmax(logits), x0[:, None], -1)[:, 0]
    else:
        p = np.full(len(x), -np.inf)
        p[w0:w0 + w] = noise.remask(step, w)[:len(x) - w0]
    return x0, p


def decode(logits_fn, *, gen_len, steps, block_length, remasking, temperature, mask_id, eos_id, noise=None):
    """Diffusion / semi-AR decoding from an all-masked response; returns (ids, nfe)."""
    x = np.full(gen_len, mask_id, np.int64)
    num_blocks = gen_len // block_length
    spb = steps // num_blocks
    nfe, early = 0, False
    for nb in range(num_blocks):
        sched = _schedule(int((x[nb * block_length:(nb + 1) * block_length] == mask_id).sum()), spb)
        for i in range(spb):
            mask_index = x == mask_id
            if not mask_index.any():
                early = True
                break
            x0, p = _step(logits_fn, x, mask_id, temperature, remasking, noise, nfe, (0, gen_len))
            nfe += 1
            p[(nb + 1) * block_length:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            conf = np.where(mask_index, p, -np.inf)
            transfer = np.zeros(len(x), bool)
            transfer[_topk(conf, sched[i])] = True
            x[transfer] = x0[transfer]
            eos = np.nonzero(transfer & (x0 == eos_id))[0]
            if eos.size:
                x[eos[0]:] = eos_id
                early = True
        if early:
            break
    return x, nfe


def _denoise(logits_fn, x, steps, remasking, temperature, mask_id, noise, step0, window):
    """The deliberation inner loop: ``steps`` steps, no block limit, no eos rule."""
    sched = _schedule(int((x == mask_id).sum()), steps) if steps else []
    step = step0
    for i in range(steps):
        mask_index = x == mask_id
        if not mask_index.any():
            break
        x0, p = _step(logits_fn, x, mask_id, temperature, remasking, noise, step, (0, window))
        step += 1
        x0 = np.where(mask_index, x0, x)
        conf = np.where(mask_index, p, -np.inf)
        if sched[i] > 0:
            transfer = np.zeros(len(x), bool)
            transfer[_topk(conf, sched[i])] = True
            x[transfer] = x0[transfer]
    return x, step


def deliberate(logits_fn, first_pass, *, strategy, steps, mask_ratio=0.3, masking="low_confidence",
               num_chunks=4, remasking="low_confidence", temperature=0.0, mask_id, pad_id,
               random_mask=None, noise=None, window=None):
    """Deliberation over one first pass (token ids); returns (ids, nfe).

    ``random_mask``: the injected random choice of positions for ``masking="random"``.
    ``window``: the fused decoder's padded response length (where its noise is drawn).
    """
    sup = np.array(first_pass, np.int64)
    n = len(sup)
    window = window or n
    if strategy == "diffusion":
        k = int(n * mask_ratio)
        x = sup.copy()
        nfe = 0
        if masking == "low_confidence":
            probs = _softmax(np.asarray(logits_fn(np.full(n, pad_id, np.int64)), np.float64))
            conf = np.take_along_axis(probs, sup[:, None], -1)[:, 0]
            x[np.argsort(conf, kind="stable")[:k]] = mask_id
            nfe += 1
        else:
            x[np.asarray(random_mask, bool)[:n]] = mask_id
        s = min(steps, int((x == mask_id).sum()))
        x, taken = _denoise(logits_fn, x, s, remasking, temperature, mask_id, noise, 0, window)
        return x, nfe + taken
    size = n // num_chunks
    taken = 0
    for c in range(num_chunks):
        start, end = c * size, (n if c == num_chunks - 1 else (c + 1) * size)
        x = sup.copy()
        x[start:end] = mask_id
        x, taken = _denoise(logits_fn, x, steps // num_chunks, remasking, temperature, mask_id, noise,
                            taken, window)
        sup[start:end] = x[start:end]
    return sup, taken


# ----------------------------------------------------------------------------- test models
# Small models the decoding tests share (built once per process).
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from whisper_llada_jax.config import LLMConfig, TokenConfig  # noqa: E402
from whisper_llada_jax.decoding.backbone import Backbone, Prefix  # noqa: E402
from whisper_llada_jax.models.llada import LLaDA  # noqa: E402

TOKENS = TokenConfig(bos=1, eos=2, pad=2, mask=3, start_header=4, end_header=5, eot=6, prompt_ids=(1, 4, 5))
VOCAB, WIDTH, PREFIX, SILENCE = 40, 32, 8, 4


def tiny_llm(causal: bool = False, kv_heads: int = 4, init_std: float = 0.5, layers: int = 1) -> LLaDA:
    return LLaDA(LLMConfig(vocab_size=VOCAB, d_model=WIDTH, n_layers=layers, n_heads=4, n_kv_heads=kv_heads, head_dim=8,
                           mlp_hidden=64, rope_theta=10000.0, max_len=512, causal=causal, init_std=init_std))


def init_vars(model: LLaDA, seed: int = 0):
    return nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)))


def random_prefix(batch: int, seed: int = 1, length: int = PREFIX) -> Prefix:
    emb = jax.random.normal(jax.random.key(seed), (batch, length, WIDTH))
    return Prefix(emb, jnp.ones((batch, length), bool))


def row_logits_fn(model: LLaDA, variables, prefix: Prefix, row: int):
    """``ids (n,) -> logits (n, V)`` for one row: the reference's full forward per step."""
    bb = Backbone(model, composite=False)
    fn = _jit_logits(bb)
    pre = Prefix(prefix.embeds[row:row + 1], prefix.valid[row:row + 1])
    return lambda ids: np.asarray(fn(variables, pre, jnp.asarray(np.asarray(ids)[None], jnp.int32))[0])


@functools.lru_cache(maxsize=None)
def _jit_logits(bb):
    return jax.jit(lambda v, pre, ids: bb.logits(v, pre, ids, jnp.ones(ids.shape, bool)))


def overfit_backbone(model: LLaDA, params, prefix: Prefix, targets, *, optimizer, steps: int, t_min: float,
                     mask_id: int, key):
    """``params`` after ``steps`` updates of ``optimizer`` that memorise ``targets`` (B, R) behind
    ``prefix`` with the masked-diffusion loss (per row t ~ U(t_min, 1), mean cross-entropy over
    the masked positions), all steps scanned in one jitted call. Shared by the decoding tests and
    benchmarks/decode_throughput.py."""
    bb = Backbone(model, composite=False)
    targets = jnp.asarray(targets)

    def loss_fn(p, k):
        kt, km = jax.random.split(k)
        t = jax.random.uniform(kt, (targets.shape[0], 1), minval=t_min, maxval=1.0)
        masked = jax.random.uniform(km, targets.shape) < t
        ids = jnp.where(masked, mask_id, targets)
        logits = bb.logits({"params": p}, prefix, ids, jnp.ones(ids.shape, bool))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return (ce * masked).sum() / jnp.maximum(masked.sum(), 1)

    @jax.jit
    def train(p, k):
        def step(carry, sk):
            p, s = carry
            upd, s = optimizer.update(jax.grad(loss_fn)(p, sk), s, p)
            return (optax.apply_updates(p, upd), s), None
        (p, _), _ = jax.lax.scan(step, (p, optimizer.init(p)), jax.random.split(k, steps))
        return p

    return train(params, key)


# Utterance-like targets: short token strings, right-padded with eos to the canvas length.
SENTENCES = ((7, 8, 9, 10, 11, 12, 13), (14, 15, 16, 8, 17), (18, 19, 20, 21, 22, 23, 24, 25, 26),
             (27, 28, 29, 30), (31, 32, 33, 34, 35, 36), (37, 38, 9, 39, 12, 14, 20, 11, 25, 30))


@functools.lru_cache(maxsize=None)
def overfit_model(gen_len: int = 16, steps: int = 150):
    """A tiny LLaDA that memorises SENTENCES given random 'audio' prefixes (masked-diffusion loss,
    mean over masked positions, Adam). Returns (model, variables, prefix, targets)."""
    model = tiny_llm(init_std=0.02, layers=2)
    variables = init_vars(model, seed=3)
    n = len(SENTENCES)
    prefix = random_prefix(n, seed=4)
    # The last SILENCE prefix vectors are the same for every utterance, like the projector's
    # output over the zero padding after a short clip (what audio_span="trimmed" drops).
    prefix = Prefix(prefix.embeds.at[:, PREFIX - SILENCE:].set(prefix.embeds[0, PREFIX - SILENCE:]), prefix.valid)
    targets = np.full((n, gen_len), TOKENS.eos, np.int32)
    for i, s in enumerate(SENTENCES):
        targets[i, :len(s)] = s
    params = overfit_backbone(model, variables["params"], prefix, targets, optimizer=optax.adam(5e-3), steps=steps,
                              t_min=0.05, mask_id=TOKENS.mask, key=jax.random.key(5))
    return model, {"params": params}, prefix, np.asarray(targets)

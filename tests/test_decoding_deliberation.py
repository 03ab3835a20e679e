"""Fused, batched deliberation against the reference (SPEC section 8), both strategies.

First passes of different lengths share one padded batch; every row must equal what the
batch-1 reference computes for that utterance alone (so batched == per-utterance).
"""

import jax
import numpy as np
import pytest

import reference_decode as ref
from whisper_llada_jax.decoding import api
from whisper_llada_jax.decoding.config import DecodeConfig

GEN = 16
ROWS = (0, 1, 2)  # first passes of 7, 5 and 9 tokens


@pytest.fixture(scope="module")
def setup():
    model, variables, prefix, _ = ref.overfit_model(GEN)
    rand = ref.tiny_llm()
    # First passes: the memorised sentences with a few substitution errors.
    first = [list(s) for s in ref.SENTENCES]
    first[0][2], first[2][5], first[4][0] = 30, 8, 9
    return {"overfit": (model, variables, prefix), "random": (rand, ref.init_vars(rand), prefix)}, first


def _compare(model, variables, prefix, first, cfg, rng, mask=None):
    out = api.deliberate(model, variables, prefix, first, cfg, rng, tokens=ref.TOKENS, mask=mask)
    for b in ROWS:
        want, nfe = ref.deliberate(ref.row_logits_fn(model, variables, prefix, b), first[b], strategy=cfg.strategy,
                                   steps=cfg.steps, mask_ratio=cfg.mask_ratio, masking=cfg.masking,
                                   num_chunks=cfg.num_chunks, remasking=cfg.remasking, mask_id=ref.TOKENS.mask,
                                   pad_id=ref.TOKENS.pad, random_mask=None if mask is None else mask[b],
                                   noise=ref.Noise(rng, b), window=GEN)
        n = len(first[b])
        np.testing.assert_array_equal(out.tokens[b, :n], want, err_msg=f"{cfg} row {b}")
        assert (out.tokens[b, n:] == ref.TOKENS.pad).all()  # padding slots untouched
        assert out.nfe[b] == nfe, (cfg, b, out.nfe[b], nfe)
    return out


def test_diffusion_low_confidence_masking(setup):
    models, first = setup
    for name, (model, variables, prefix) in models.items():
        for ratio, steps in ((0.3, 16), (0.5, 2), (1.0, 4)):
            cfg = DecodeConfig(strategy="diffusion", masking="low_confidence", mask_ratio=ratio, steps=steps, gen_len=GEN)
            _compare(model, variables, prefix, first, cfg, jax.random.key(0))


def test_diffusion_injected_random_mask_and_random_remasking(setup):
    models, first = setup
    rs = np.random.RandomState(0)
    mask = np.zeros((len(first), GEN), bool)
    for b, f in enumerate(first):
        mask[b, rs.permutation(len(f))[:int(len(f) * 0.4)]] = True
    for remasking in ("low_confidence", "random"):
        cfg = DecodeConfig(strategy="diffusion", masking="random", mask_ratio=0.4, steps=3, gen_len=GEN,
                           remasking=remasking)
        for name, (model, variables, prefix) in models.items():
            _compare(model, variables, prefix, first, cfg, jax.random.key(3), mask=mask)


def test_semi_ar_chunks(setup):
    models, first = setup
    for name, (model, variables, prefix) in models.items():
        for chunks, steps in ((4, 8), (2, 8), (3, 4)):
            cfg = DecodeConfig(strategy="semi_ar", num_chunks=chunks, steps=steps, gen_len=GEN)
            out = _compare(model, variables, prefix, first, cfg, jax.random.key(1))


def test_random_masking_draws_from_rng(setup):
    models, first = setup
    model, variables, prefix = models["overfit"]
    cfg = DecodeConfig(strategy="diffusion", masking="random", mask_ratio=0.5, steps=4, gen_len=GEN)
    a = api.deliberate(model, variables, prefix, first, cfg, jax.random.key(0), tokens=ref.TOKENS)
    b = api.deliberate(model, variables, prefix, first, cfg, jax.random.key(0), tokens=ref.TOKENS)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # each row spends min(steps, int(n * ratio)) steps
    np.testing.assert_array_equal(a.nfe, [min(4, int(len(f) * 0.5)) for f in first])

"""Length-prior decoding (fast mode f): the cached query window computes what a full forward
computes when the cache is fresh, the length estimate errs long, and on the model overfit in
the tests the mode decodes what the exact mode does with a fraction of the LLM tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_decode as ref
from whisper_llada_jax.decoding import api, length_prior
from whisper_llada_jax.decoding.backbone import Backbone, full_forward, positions
from whisper_llada_jax.decoding.config import DecodeConfig, validate
from whisper_llada_jax.errors import DecodeConfigError

GEN = 16


def test_window_forward_matches_full_forward_and_refreshes_its_slots():
    model = ref.tiny_llm(layers=2, kv_heads=2)
    variables = ref.init_vars(model)
    bb = Backbone(model, composite=False)
    prefix = ref.random_prefix(3)
    x = jax.random.randint(jax.random.key(2), (3, GEN), 7, ref.VOCAB)
    valid = jnp.ones((3, GEN), bool)
    h_full, kv = full_forward(bb, variables, prefix, x, valid, return_kv=True)
    pos = positions(prefix.valid, valid)
    all_valid = jnp.concatenate([prefix.valid, valid], axis=1)
    idx = jnp.array([[1, 4, 9, 15], [0, 2, 3, 5], [7, 8, 12, 14]])
    sel = jnp.array([[True, True, True, False], [True] * 4, [True, False, True, True]])
    want = jnp.take_along_axis(h_full, idx[:, :, None], axis=1)
    # stale response entries of the selected slots are hidden and then overwritten with fresh ones
    h2, new2 = length_prior.window_forward(bb, variables, x, idx, sel, stale_at(kv, idx, sel), pos, all_valid)
    np.testing.assert_allclose(np.asarray(h2)[np.asarray(sel)], np.asarray(want)[np.asarray(sel)], atol=2e-5)
    np.testing.assert_allclose(np.asarray(new2.k), np.asarray(kv.k), atol=2e-5)
    np.testing.assert_allclose(np.asarray(new2.v), np.asarray(kv.v), atol=2e-5)


def test_window_forward_writes_nothing_for_unselected_slots_of_an_aligned_buffer():
    """8 prefix + 13 response positions get a 24-slot buffer (``cache_slots``): an unselected
    query slot must write nowhere, not into the masked slots past the positions."""
    from whisper_llada_jax.decoding.backbone import cache_buffer

    model = ref.tiny_llm(layers=2, kv_heads=2)
    variables = ref.init_vars(model)
    bb = Backbone(model, composite=False)
    prefix = ref.random_prefix(2)
    x = jax.random.randint(jax.random.key(3), (2, 13), 7, ref.VOCAB)
    valid = jnp.ones((2, 13), bool)
    buf = cache_buffer(bb, variables, prefix, x, valid)
    _, kv = full_forward(bb, variables, prefix, x, valid, return_kv=True, kv=buf)
    assert kv.length() == 24
    pos = positions(prefix.valid, valid)
    all_valid = jnp.concatenate([prefix.valid, valid], axis=1)
    idx = jnp.array([[1, 4, 9, 12], [0, 2, 3, 5]])
    sel = jnp.array([[True, False, True, False], [False] * 4])
    _, new = length_prior.window_forward(bb, variables, x, idx, sel, kv, pos, all_valid)
    np.testing.assert_allclose(np.asarray(new.k), np.asarray(kv.k), atol=2e-5)
    np.testing.assert_allclose(np.asarray(new.v), np.asarray(kv.v), atol=2e-5)
    assert not np.asarray(new.k)[..., ref.PREFIX + 13:, :].any()  # the padded slots stay empty


def stale_at(kv, idx, sel):
    """``kv`` with garbage at the selected response slots (the window must not read them)."""
    b = idx.shape[0]
    cols = jnp.where(sel, ref.PREFIX + idx, 10 ** 6)
    return jax.tree.map(lambda a: a.at[..., jnp.arange(b)[:, None], :, cols, :].set(1e3, mode="drop"), kv)


def test_length_estimate_takes_the_last_non_eos_argmax_plus_margin():
    eos = ref.TOKENS.eos
    x0 = jnp.array([[5, 6, eos, eos, 7, eos, eos, eos], [eos] * 8, [5] * 8])
    np.testing.assert_array_equal(length_prior.estimate_length(x0, eos, 2), [7, 2, 8])


@pytest.fixture(scope="module")
def overfit():
    return ref.overfit_model(GEN)


def test_length_prior_matches_exact_with_an_eighth_of_the_llm_tokens(overfit):
    model, variables, prefix, _ = overfit
    base = dict(gen_len=GEN, steps=GEN, block_length=GEN)
    exact = api.diffusion_decode(model, variables, prefix, DecodeConfig(**base), jax.random.key(0), tokens=ref.TOKENS)
    fast = api.diffusion_decode(model, variables, prefix,
                                DecodeConfig(**base, threshold=0.7, length_prior=True, query_slots=4),
                                jax.random.key(0), tokens=ref.TOKENS)
    same = (fast.tokens == exact.tokens).all(-1)
    print(f"\nidentical {same.mean():.2f}  llm tokens/utt exact {exact.llm_tokens.mean():.1f} "
          f"length prior {fast.llm_tokens.mean():.1f}  nfe {exact.nfe.mean():.1f} -> {fast.nfe.mean():.1f}")
    assert same.all()
    assert (exact.llm_tokens == exact.nfe * (ref.PREFIX + GEN)).all()  # no cache: every forward is full
    assert fast.llm_tokens.mean() * 8 <= exact.llm_tokens.mean()
    assert (fast.nfe >= 1).all() and (fast.llm_tokens >= ref.PREFIX + GEN).all()


def test_padding_rows_spend_nothing(overfit):
    model, variables, prefix, _ = overfit
    cfg = DecodeConfig(gen_len=GEN, steps=GEN, block_length=GEN, threshold=0.7, length_prior=True)
    live = np.array([True, False, True, False, True, True])
    out = api.diffusion_decode(model, variables, prefix, cfg, jax.random.key(0), tokens=ref.TOKENS, live=live)
    assert (out.nfe[~live] == 0).all() and (out.llm_tokens[~live] == 0).all() and (out.nfe[live] >= 1).all()


@pytest.mark.parametrize("fields", [dict(decoder="semi_ar", block_length=8, threshold=0.7), dict(),
                                    dict(threshold=0.7, cache="prefix"), dict(threshold=0.7, query_slots=0)])
def test_length_prior_rejects_what_it_cannot_do(fields):
    with pytest.raises(DecodeConfigError):
        validate(DecodeConfig(**{"gen_len": GEN, "steps": GEN, "block_length": GEN, "length_prior": True, **fields}))

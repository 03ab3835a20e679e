"""Masked-diffusion corruption and losses: fixed RNG, re-computed in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training import objectives

MASK = 3


def _batch():
    ids = np.array([[10, 11, 12, 2, 2, 2], [13, 14, 2, 2, 2, 2], [15, 16, 17, 18, 2, 2]], np.int32)
    length = np.array([3, 2, 4], np.int32)
    valid = np.array([True, True, False])  # last row is batch padding
    return ids, length, valid


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_response_mask_covers_eos_padding_up_to_longest_valid():
    ids, length, valid = _batch()
    m = np.asarray(objectives.response_mask(jnp.asarray(length), jnp.asarray(valid), ids.shape[1]))
    # longest *valid* response is 3: row 1's eos padding at position 2 takes part, padding rows none
    np.testing.assert_array_equal(m, [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_response_mask_canvas_span_covers_every_position_of_valid_rows():
    ids, length, valid = _batch()
    m = np.asarray(objectives.response_mask(jnp.asarray(length), jnp.asarray(valid), ids.shape[1], "canvas"))
    np.testing.assert_array_equal(m, [[1] * 6, [1] * 6, [0] * 6])
    with pytest.raises(ValueError, match="loss span"):
        objectives.response_mask(jnp.asarray(length), jnp.asarray(valid), 6, "everything")


def test_corrupt_masks_only_response_positions_with_rate_t():
    rng = jax.random.PRNGKey(0)
    ids = jnp.full((512, 64), 7, jnp.int32)
    mask = jnp.ones((512, 64), bool).at[:, 40:].set(False)
    c = objectives.corrupt(rng, ids, mask, MASK)
    noisy, masked, t, substituted = map(np.asarray, c)
    assert not substituted.any()  # substitution is off by default
    assert not masked[:, 40:].any()
    np.testing.assert_array_equal(noisy == MASK, masked)
    np.testing.assert_array_equal(noisy[~masked], 7)
    # the per-row masked fraction tracks t (binomial with 40 draws)
    frac = masked[:, :40].mean(1)
    assert np.abs(frac - t).mean() < 0.08
    assert 0.0 <= t.min() and t.max() < 1.0 and t.std() > 0.2  # U(0, 1) per sample
    # same key, same corruption; another key, another one
    np.testing.assert_array_equal(np.asarray(objectives.corrupt(rng, ids, mask, MASK).masked), masked)
    assert (np.asarray(objectives.corrupt(jax.random.PRNGKey(1), ids, mask, MASK).masked) != masked).any()


def test_t_eps_bounds_the_mask_ratio():
    c = objectives.corrupt(jax.random.PRNGKey(2), jnp.zeros((256, 4), jnp.int32), jnp.ones((256, 4), bool), MASK, 0.25)
    assert float(c.t.min()) >= 0.25


@pytest.mark.parametrize("weighting", ["reference", "inv_t"])
def test_diffusion_loss_matches_numpy(weighting):
    ids, length, valid = _batch()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 20)).astype(np.float32)
    mask = objectives.response_mask(jnp.asarray(length), jnp.asarray(valid), 6)
    c = objectives.corrupt(jax.random.PRNGKey(3), jnp.asarray(ids), mask, MASK, t_eps=0.5)
    out = objectives.diffusion_loss(jnp.asarray(logits), jnp.asarray(ids), c, mask, weighting)

    masked, t, m = np.asarray(c.masked), np.asarray(c.t), np.asarray(mask)
    assert masked.sum() > 0
    ce = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), ids[..., None], -1)[..., 0]
    if weighting == "reference":
        want = (ce * masked).sum() / masked.sum()
    else:
        rows = m.sum(1) > 0
        per = (ce * masked).sum(1) / t / np.maximum(m.sum(1), 1)
        want = per[rows].mean()
    np.testing.assert_allclose(float(out.loss), want, rtol=1e-5)
    assert float(out.num_tokens) == masked.sum()
    acc = ((logits.argmax(-1) == ids) * masked).sum()
    assert float(out.correct) == acc


def test_nothing_masked_is_safe_and_has_zero_gradient():
    ids = jnp.asarray(_batch()[0])
    mask = jnp.zeros(ids.shape, bool)
    c = objectives.Corruption(ids, mask, jnp.zeros((3,)))
    logits = jnp.ones((3, 6, 20))
    for weighting in ("reference", "inv_t"):
        loss, grad = jax.value_and_grad(
            lambda x: objectives.diffusion_loss(x, ids, c, mask, weighting).loss)(logits)
        assert float(loss) == 0.0 and np.isfinite(np.asarray(grad)).all() and not np.asarray(grad).any()


def test_next_token_loss_scores_the_first_response_token():
    ids, length, valid = _batch()
    # shifted logits: logits[:, i] (from position P - 1 + i) predicts ids[:, i], the first included
    logits = np.random.default_rng(1).normal(size=(3, 6, 20)).astype(np.float32)
    mask = np.asarray(objectives.response_mask(jnp.asarray(length), jnp.asarray(valid), 6))
    out = objectives.next_token_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    lp = _np_log_softmax(logits.astype(np.float64))
    ce = -np.take_along_axis(lp, ids[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(out.loss), (ce * mask).sum() / mask.sum(), rtol=1e-5)
    assert float(out.num_tokens) == mask.sum() == 6  # rows 0 and 1, 3 slots each, position 0 included


def test_group_longest_span_per_group_of_rows():
    length = jnp.asarray([2, 5, 3, 1, 4, 0], jnp.int32)
    valid = jnp.asarray([True, True, True, True, True, False])
    m = np.asarray(objectives.response_mask(length, valid, 6, "group_longest", group_size=2))
    np.testing.assert_array_equal(m.sum(1), [5, 5, 3, 3, 4, 0])  # each pair's longest; padding row none
    np.testing.assert_array_equal(np.asarray(objectives.response_mask(length, valid, 6, "batch_longest")).sum(1),
                                  [5, 5, 5, 5, 5, 0])
    with pytest.raises(ValueError, match="groups of 4"):
        objectives.response_mask(length, valid, 6, "group_longest", group_size=4)


def _np_weights(scored, valid, norm, g):
    """The reference's normalisations written out: per group (one GPU) a mean over its scored
    tokens, then the mean over groups (DDP); or one mean over every scored token."""
    scored = scored.astype(np.float64)
    if norm == "token_mean":
        return scored / max(scored.sum(), 1)
    w = np.zeros_like(scored)
    groups = [range(i, i + g) for i in range(0, len(valid), g) if valid[i:i + g].any()]
    for rows in groups:
        rows = list(rows)
        w[rows] = scored[rows] / max(scored[rows].sum(), 1) / len(groups)
    return w


@pytest.mark.parametrize("norm", ["group_mean", "token_mean"])
def test_loss_normalisations_match_numpy_and_differ(norm):
    rng = np.random.default_rng(4)
    scored = np.zeros((8, 6), bool)
    scored[0, :5] = scored[1, :1] = True  # group 0: 6 tokens
    scored[2, :1] = True  # group 1: 1 token
    scored[4:6, :2] = True  # group 2: 4 tokens; group 3 is padding rows
    valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    logits = rng.normal(size=(8, 6, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(8, 6)).astype(np.int32)
    w = objectives.token_weights(jnp.asarray(scored), jnp.asarray(valid), norm, group_size=2)
    out = objectives.weighted_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(scored), w)
    ce = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    want = (ce * _np_weights(scored, valid, norm, 2)).sum()
    np.testing.assert_allclose(float(out.loss), want, rtol=1e-5)
    other = "token_mean" if norm == "group_mean" else "group_mean"
    assert abs(want - (ce * _np_weights(scored, valid, other, 2)).sum()) > 1e-2  # the choice matters here
    assert float(out.num_tokens) == scored.sum() and np.isclose(float(out.loss_sum), (ce * scored).sum())


def test_group_mean_with_nothing_scored_is_safe():
    scored = jnp.zeros((4, 3), bool)
    w = objectives.token_weights(scored, jnp.ones((4,), bool), "group_mean", group_size=2)
    loss, grad = jax.value_and_grad(
        lambda x: objectives.weighted_loss(x, jnp.zeros((4, 3), jnp.int32), scored, w).loss)(jnp.ones((4, 3, 5)))
    assert float(loss) == 0.0 and not np.asarray(grad).any()


def test_substitution_replaces_only_unmasked_span_slots_with_real_vocabulary():
    ids = jnp.full((256, 32), 50, jnp.int32)
    span = jnp.ones((256, 32), bool).at[:, 24:].set(False)
    c = objectives.corrupt(jax.random.PRNGKey(5), ids, span, MASK, substitution_rate=0.25,
                           substitution_vocab=(7, 40))
    noisy, masked, sub = np.asarray(c.noisy_ids), np.asarray(c.masked), np.asarray(c.substituted)
    assert not (sub & masked).any() and not sub[:, 24:].any() and not masked[:, 24:].any()
    np.testing.assert_array_equal(noisy[masked], MASK)
    assert ((noisy[sub] >= 7) & (noisy[sub] < 40)).all()
    np.testing.assert_array_equal(noisy[~masked & ~sub], 50)
    share = sub.sum() / (~masked & np.asarray(span)).sum()
    assert abs(share - 0.25) < 0.03
    # masking does not depend on whether substitution is on (its keys are separate)
    plain = objectives.corrupt(jax.random.PRNGKey(5), ids, span, MASK)
    np.testing.assert_array_equal(np.asarray(plain.masked), masked)
    with pytest.raises(ValueError, match="substitution_vocab"):
        objectives.corrupt(jax.random.PRNGKey(5), ids, span, MASK, substitution_rate=0.1)


def test_substitution_vocabulary_excludes_special_ids():
    from whisper_llada_jax.config import TokenConfig, load_model_config

    assert objectives.vocab_range(TokenConfig(), 126464) == (0, 126080)  # LLaDA: specials on top
    tiny = load_model_config("tiny")
    lo, hi = objectives.vocab_range(tiny.tokens, tiny.llm.vocab_size)
    special = {tiny.tokens.bos, tiny.tokens.eos, tiny.tokens.mask, tiny.tokens.start_header, tiny.tokens.eot}
    assert (lo, hi) == (7, 128) and not special & set(range(lo, hi))  # specials first: 1..6
    assert objectives.vocab_range(tiny.tokens, 128, (7, 100)) == (7, 100)
    with pytest.raises(ConfigError, match="substitution_range: .* empty"):  # a user error, not a traceback
        objectives.vocab_range(tiny.tokens, 128, (50, 200))


@pytest.mark.parametrize("norm", ["group_mean", "token_mean"])
def test_inv_t_weighting_averages_rows_per_normalisation(norm):
    rng = np.random.default_rng(6)
    span = np.array([5, 3, 4, 0])
    scored = (rng.random((4, 5)) < 0.5) & (np.arange(5) < span[:, None])  # masked slots lie in the span
    valid = np.array([True, True, True, False])
    t = np.array([0.2, 0.5, 0.9, 0.4], np.float32)
    ce = rng.random((4, 5))
    w = np.asarray(objectives.token_weights(jnp.asarray(scored), jnp.asarray(valid), norm, group_size=2,
                                            span_len=jnp.asarray(span), t=jnp.asarray(t)))
    per_row = (ce * scored).sum(1) / t / np.maximum(span, 1)
    if norm == "token_mean":
        want = per_row[:3].mean()  # rows with a span
    else:
        want = (per_row[:2].mean() + per_row[2]) / 2  # group 1 holds one row with a span
    np.testing.assert_allclose((ce * w).sum(), want, rtol=1e-5)

"""Masked-diffusion corruption and losses: fixed RNG, re-computed in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    noisy, masked, t = map(np.asarray, c)
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


def test_next_token_loss_matches_numpy():
    ids, length, valid = _batch()
    logits = np.random.default_rng(1).normal(size=(3, 6, 20)).astype(np.float32)
    mask = np.asarray(objectives.response_mask(jnp.asarray(length), jnp.asarray(valid), 6))
    out = objectives.next_token_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    lp = _np_log_softmax(logits.astype(np.float64))
    ce = -np.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    w = mask[:, 1:]
    np.testing.assert_allclose(float(out.loss), (ce * w).sum() / w.sum(), rtol=1e-5)
    assert float(out.num_tokens) == w.sum()

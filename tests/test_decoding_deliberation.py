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
            _compare(model, variables, prefix, first, cfg, jax.random.key(1))


def test_random_masking_draws_from_rng(setup):
    models, first = setup
    model, variables, prefix = models["overfit"]
    cfg = DecodeConfig(strategy="diffusion", masking="random", mask_ratio=0.5, steps=4, gen_len=GEN)
    a = api.deliberate(model, variables, prefix, first, cfg, jax.random.key(0), tokens=ref.TOKENS)
    b = api.deliberate(model, variables, prefix, first, cfg, jax.random.key(0), tokens=ref.TOKENS)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # each row spends min(steps, int(n * ratio)) steps
    np.testing.assert_array_equal(a.nfe, [min(4, int(len(f) * 0.5)) for f in first])


# ----------------------------------------------------------------------------- deliberation inputs
# Each option against a NumPy recomputation of its choice of positions (then the reference loop
# with that choice injected), and on a case where it changes the tokens.
def _ref_row(model, variables, prefix, b, first_row, mask_row, steps, window=GEN, chosen_by_forward=True):
    want, nfe = ref.deliberate(ref.row_logits_fn(model, variables, prefix, b), first_row, strategy="diffusion",
                               steps=steps, masking="random", mask_id=ref.TOKENS.mask, pad_id=ref.TOKENS.pad,
                               random_mask=mask_row, noise=ref.Noise(jax.random.key(0), b), window=window)
    return want, nfe + int(chosen_by_forward)


def _confidence(model, variables, prefix, b, first_row, fill, width=None):
    """p(first-pass token) from one forward over ``width`` slots (default: the first pass) of ``fill``."""
    n = len(first_row)
    logits = ref.row_logits_fn(model, variables, prefix, b)(np.full(width or n, fill))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs[np.arange(n), first_row]


def test_confidence_fill_mask_and_threshold_choose_as_numpy(setup):
    models, first = setup
    model, variables, prefix = models["overfit"]
    chosen = {}
    for fill, tau in (("pad", None), ("mask", None), ("pad", 0.5), ("mask", 0.5)):
        cfg = DecodeConfig(strategy="diffusion", mask_ratio=0.3, steps=GEN, gen_len=GEN, confidence_fill=fill,
                           mask_threshold=tau)
        out = api.deliberate(model, variables, prefix, first, cfg, jax.random.key(0), tokens=ref.TOKENS)
        for b in ROWS:
            n = len(first[b])
            conf = _confidence(model, variables, prefix, b, first[b], getattr(ref.TOKENS, fill))
            mask = np.zeros(n, bool)
            if tau is None:
                mask[np.argsort(conf, kind="stable")[:int(n * 0.3)]] = True
            else:
                mask = conf < tau
            chosen[fill, tau, b] = mask
            want, nfe = _ref_row(model, variables, prefix, b, first[b], mask, GEN)
            np.testing.assert_array_equal(out.tokens[b, :n], want, err_msg=f"{fill} {tau} row {b}")
            assert out.nfe[b] == nfe
        chosen[fill, tau] = out.tokens
    # Each option changes the positions chosen, and with them the tokens.
    assert any((chosen["pad", None, b] != chosen["mask", None, b]).any() for b in ROWS)
    assert not np.array_equal(chosen["pad", None], chosen["mask", None])
    assert any(chosen["pad", 0.5, b].sum() != int(len(first[b]) * 0.3) for b in ROWS)
    assert not np.array_equal(chosen["pad", None], chosen["pad", 0.5])


def test_training_canvas_is_the_reference_on_first_pass_plus_eos_tail(setup):
    models, first = setup
    model, variables, prefix = models["overfit"]
    rs = np.random.RandomState(1)
    mask = np.zeros((len(first), GEN), bool)
    for b, f in enumerate(first):
        mask[b, rs.permutation(len(f))[:int(len(f) * 0.5)]] = True
    outs = {}
    for canvas in ("first_pass", "training"):
        cfg = DecodeConfig(strategy="diffusion", masking="random", mask_ratio=0.5, steps=GEN, gen_len=GEN,
                           deliberation_canvas=canvas)
        outs[canvas] = out = api.deliberate(model, variables, prefix, first, cfg, jax.random.key(0),
                                            tokens=ref.TOKENS, mask=mask)
        if canvas == "training":
            assert (out.length == GEN).all()
            for b in ROWS:  # the reference loop over the whole eos-padded canvas, every slot visible
                canvas_row = list(first[b]) + [ref.TOKENS.eos] * (GEN - len(first[b]))
                want, nfe = _ref_row(model, variables, prefix, b, canvas_row, mask[b], GEN, chosen_by_forward=False)
                np.testing.assert_array_equal(out.tokens[b], want, err_msg=f"row {b}")
                assert out.nfe[b] == nfe
    a, t = outs["first_pass"], outs["training"]
    assert any(not np.array_equal(a.tokens[b, :len(first[b])], t.tokens[b, :len(first[b])]) for b in ROWS)
    # With low-confidence masking, the confidence forward sees the whole canvas too.
    cfg = DecodeConfig(strategy="diffusion", mask_ratio=0.3, steps=GEN, gen_len=GEN, deliberation_canvas="training",
                       confidence_fill="mask")
    out = api.deliberate(model, variables, prefix, first, cfg, jax.random.key(0), tokens=ref.TOKENS)
    for b in ROWS:
        n = len(first[b])
        conf = _confidence(model, variables, prefix, b, first[b], ref.TOKENS.mask, width=GEN)
        m = np.zeros(GEN, bool)
        m[np.argsort(conf, kind="stable")[:int(n * 0.3)]] = True
        want, nfe = _ref_row(model, variables, prefix, b, list(first[b]) + [ref.TOKENS.eos] * (GEN - n), m, GEN)
        np.testing.assert_array_equal(out.tokens[b], want, err_msg=f"row {b}")
        assert out.nfe[b] == nfe


def test_unknown_word_slots_are_always_remasked(setup):
    models, first = setup
    model, variables, prefix = models["overfit"]
    # An unknown word arrives as one mask slot (text/first_pass.py); no ratio budget at all.
    holed = [list(f) for f in first]
    holed[0][3] = holed[1][1] = holed[2][6] = ref.TOKENS.mask
    outs = {}
    for rule in ("keep", "mask"):
        cfg = DecodeConfig(strategy="diffusion", mask_ratio=0.0, steps=GEN, gen_len=GEN, unknown_words=rule)
        outs[rule] = api.deliberate(model, variables, prefix, holed, cfg, jax.random.key(0), tokens=ref.TOKENS)
    for b in ROWS:
        n = len(holed[b])
        hole = np.array(holed[b]) == ref.TOKENS.mask
        assert (outs["keep"].tokens[b, :n][hole] == ref.TOKENS.mask).all()  # nothing decoded
        want, nfe = _ref_row(model, variables, prefix, b, holed[b], hole, GEN)
        np.testing.assert_array_equal(outs["mask"].tokens[b, :n], want)
        assert outs["mask"].nfe[b] == nfe
    # On the canvas the model was trained on, the memorised words come back in the holes.
    cfg = DecodeConfig(strategy="diffusion", mask_ratio=0.0, steps=GEN, gen_len=GEN, unknown_words="mask",
                       deliberation_canvas="training")
    out = api.deliberate(model, variables, prefix, holed, cfg, jax.random.key(0), tokens=ref.TOKENS)
    for b in ROWS:
        hole = np.array(holed[b]) == ref.TOKENS.mask
        assert out.tokens[b, :len(hole)][hole].tolist() == np.array(ref.SENTENCES[b])[hole].tolist(), b


def test_deliberation_input_options_are_validated():
    from whisper_llada_jax.decoding.config import validate
    from whisper_llada_jax.errors import DecodeConfigError

    for bad in (dict(strategy="diffusion", masking="random", mask_threshold=0.01),
                dict(strategy="diffusion", mask_threshold=1.5),
                dict(strategy="semi_ar", deliberation_canvas="training"),
                dict(strategy="diffusion", deliberation_canvas="training", edit_length=True)):
        with pytest.raises(DecodeConfigError, match="mask_threshold|deliberation_canvas"):
            validate(DecodeConfig(**bad))
    # A MODEL_DIR's decode.yaml may set them for its deliberations; plain decoding is unaffected.
    validate(DecodeConfig(deliberation_canvas="training", confidence_fill="mask", mask_threshold=0.005,
                          first_pass_normalizer="spoken_en", unknown_words="mask"))

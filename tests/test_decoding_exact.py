"""The fused exact mode against the straightforward reference of SPEC section 8.

Every combination of decoder (diffusion = one block, semi_ar = blocks), block length, steps and
remasking, at temperature 0 (and random remasking / Gumbel sampling with identical injected
randomness), on a small random model and on a small model overfit in the test. Steps per block
are a traced argument, so one compiled program per (block length, remasking) serves all steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_decode as ref
from whisper_llada_jax.decoding import api
from whisper_llada_jax.decoding.config import DecodeConfig

GEN = 16


@pytest.fixture(scope="module")
def models():
    rand = ref.tiny_llm()
    rand_vars = ref.init_vars(rand)
    m, v, prefix, _ = ref.overfit_model(GEN)
    return {"random": (rand, rand_vars, ref.random_prefix(len(ref.SENTENCES))), "overfit": (m, v, prefix)}


def _check(model, variables, prefix, cfg, rng, rows=None):
    out = api.diffusion_decode(model, variables, prefix, cfg, rng, tokens=ref.TOKENS)
    for b in rows or range(prefix.embeds.shape[0]):
        want, nfe = ref.decode(ref.row_logits_fn(model, variables, prefix, b), gen_len=cfg.gen_len, steps=cfg.steps,
                               block_length=cfg.block, remasking=cfg.remasking, temperature=cfg.temperature,
                               mask_id=ref.TOKENS.mask, eos_id=ref.TOKENS.eos, noise=ref.Noise(rng, b))
        np.testing.assert_array_equal(out.tokens[b], want, err_msg=f"{cfg} row {b}")
        assert out.nfe[b] == nfe, (cfg, b, out.nfe[b], nfe)
    return out


@pytest.mark.parametrize("decoder,block", [("diffusion", GEN), ("semi_ar", 8), ("semi_ar", 4)])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_exact_matches_reference(models, decoder, block, remasking):
    blocks = GEN // block
    for name, (model, variables, prefix) in models.items():
        for steps in sorted({GEN, GEN // 2, blocks * 2, blocks}):
            cfg = DecodeConfig(decoder=decoder, gen_len=GEN, block_length=block, steps=steps, remasking=remasking)
            _check(model, variables, prefix, cfg, jax.random.key(steps))


def test_eos_rule_fills_and_stops(models):
    """The overfit model ends every sentence with eos: everything after the first eos is eos,
    and semi-AR decoding stops after the eos block (fewer forward passes than steps)."""
    model, variables, prefix = models["overfit"]
    cfg = DecodeConfig(decoder="semi_ar", gen_len=GEN, block_length=4, steps=8)
    out = _check(model, variables, prefix, cfg, jax.random.key(0))
    for row in out.tokens:
        first = int(np.argmax(row == ref.TOKENS.eos))
        assert (row == ref.TOKENS.eos).any() and (row[first:] == ref.TOKENS.eos).all()
    lens = [len(s) for s in ref.SENTENCES]
    assert all(nfe <= 2 * (length // 4 + 1) for nfe, length in zip(out.nfe, lens)) and out.nfe.max() < cfg.steps


def test_gumbel_sampling_matches_reference(models):
    """temperature > 0: the reference's float64 exp(logits) / (-log u)^T with the same u."""
    model, variables, prefix = models["random"]
    cfg = DecodeConfig(decoder="semi_ar", gen_len=GEN, block_length=8, steps=8, temperature=0.7)
    out = _check(model, variables, prefix, cfg, jax.random.key(11))
    greedy = api.diffusion_decode(model, variables, prefix, cfg.__class__(**{**cfg.__dict__, "temperature": 0.0}),
                                  jax.random.key(11), tokens=ref.TOKENS)
    assert (out.tokens != greedy.tokens).any()  # the noise does change the samples


def test_batched_equals_per_utterance(models):
    model, variables, prefix = models["random"]
    cfg = DecodeConfig(decoder="semi_ar", gen_len=GEN, block_length=8, steps=8, remasking="random")
    rng = jax.random.key(2)
    batch = api.diffusion_decode(model, variables, prefix, cfg, rng, tokens=ref.TOKENS, row_ids=np.arange(6) + 10)
    for b in (0, 3, 5):
        one = api.Prefix(prefix.embeds[b:b + 1], prefix.valid[b:b + 1])
        single = api.diffusion_decode(model, variables, one, cfg, rng, tokens=ref.TOKENS, row_ids=[b + 10])
        np.testing.assert_array_equal(single.tokens[0], batch.tokens[b])
        assert single.nfe[0] == batch.nfe[b]


def test_padding_rows_do_not_change_and_cost_nothing(models):
    model, variables, prefix = models["overfit"]
    cfg = DecodeConfig(gen_len=GEN, steps=8)
    live = np.array([True, False, True, True, False, True])
    out = api.diffusion_decode(model, variables, prefix, cfg, jax.random.key(0), tokens=ref.TOKENS, live=live)
    assert (out.nfe[~live] == 0).all() and (out.tokens[~live] == ref.TOKENS.mask).all()
    full = api.diffusion_decode(model, variables, prefix, cfg, jax.random.key(0), tokens=ref.TOKENS)
    np.testing.assert_array_equal(out.tokens[live], full.tokens[live])


def test_whole_decode_is_one_compiled_call_without_host_callbacks(models):
    """A second decode with other weights and another step count reuses the one executable,
    and the lowered program holds the step loop as a while op with no host callback."""
    model, variables, prefix = models["random"]
    cfg = DecodeConfig(decoder="semi_ar", gen_len=GEN, block_length=8, steps=8)
    api.diffusion_decode(model, variables, prefix, cfg, jax.random.key(0), tokens=ref.TOKENS)
    before = api._diffusion_program._cache_size()
    # The same architecture with other weights and prefixes (another architecture is another
    # program: the "overfit" model has two layers, and whether its program was already compiled
    # depended on which tests ran earlier in this process).
    v2, p2 = ref.init_vars(model, seed=9), ref.random_prefix(prefix.embeds.shape[0], seed=11)
    api.diffusion_decode(model, v2, p2, DecodeConfig(decoder="semi_ar", gen_len=GEN, block_length=8, steps=16),
                         jax.random.key(1), tokens=ref.TOKENS)
    assert api._diffusion_program._cache_size() == before
    plan = api.diffusion.Plan(num_segments=2, segments="blocks", block=8, eos_rule=True,
                              mask_id=ref.TOKENS.mask, eos_id=ref.TOKENS.eos)
    lowered = api._diffusion_program.lower(
        variables, prefix, jnp.int32(4), jax.random.key(0), jnp.arange(6), jnp.ones(6, bool),
        bb=api.backbone_of(model), cond=api.Conditioner(), plan=plan, gen_len=GEN, buckets=())
    text = lowered.as_text()
    assert "stablehlo.while" in text
    for marker in ("callback", "host", "outfeed", "infeed"):
        assert marker not in text.lower(), marker

"""Fast modes on the model overfit in the tests: each mode's share of utterances identical to
the exact mode and its WER change are reported (never hidden), and the documented
equivalences are checked: threshold 1.0 == exact with one token per step, and the prefix /
dual caches == exact when every block has a single step (the cache is refreshed at each block's
first step)."""

import jax
import jiwer
import numpy as np
import pytest

import reference_decode as ref
from whisper_llada_jax.decoding import api
from whisper_llada_jax.decoding.backbone import Prefix
from whisper_llada_jax.decoding.config import DecodeConfig

GEN = 16
BASE = dict(decoder="semi_ar", gen_len=GEN, block_length=8, steps=8)


def _text(row, length=GEN):
    return " ".join(str(t) for t in api.response_tokens(row, length, ref.TOKENS)) or "<empty>"


def _wer(refs, hyps):
    return 100.0 * jiwer.wer(refs, hyps)


@pytest.fixture(scope="module")
def overfit():
    return ref.overfit_model(GEN)


def _edits(a: list, b: list) -> int:
    """Levenshtein distance between two token lists (the WER numerator), written out here so
    the report's jiwer numbers are checked against an independent count."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_fast_mode_report(overfit):
    model, variables, prefix, targets = overfit
    refs = [_text(t) for t in targets]
    rng = jax.random.key(0)
    exact = api.diffusion_decode(model, variables, prefix, DecodeConfig(**BASE), rng, tokens=ref.TOKENS)
    exact_hyp = [_text(t) for t in exact.tokens]
    trimmed = Prefix(prefix.embeds[:, :ref.PREFIX - ref.SILENCE + 1], prefix.valid[:, :ref.PREFIX - ref.SILENCE + 1])
    modes = {
        "threshold 0.9": (DecodeConfig(**BASE, threshold=0.9), prefix),
        "cache prefix": (DecodeConfig(**BASE, cache="prefix"), prefix),
        "cache dual": (DecodeConfig(**BASE, cache="dual"), prefix),
        "length buckets 8": (DecodeConfig(**BASE, length_buckets=(8,)), prefix),
        "trimmed audio (+1 window)": (DecodeConfig(**BASE), trimmed),
        "length prior 0.7 (diffusion)": (DecodeConfig(gen_len=GEN, steps=GEN, block_length=GEN, threshold=0.7,
                                                      length_prior=True, query_slots=4), prefix),
    }
    report = {"exact": (1.0, _wer(refs, exact_hyp), float(exact.nfe.mean()))}
    outs = {"exact": exact}
    for name, (cfg, pre) in modes.items():
        out = outs[name] = api.diffusion_decode(model, variables, pre, cfg, rng, tokens=ref.TOKENS)
        hyp = [_text(t) for t in out.tokens]
        same = float(np.mean([h == e for h, e in zip(hyp, exact_hyp)]))
        report[name] = (same, _wer(refs, hyp) - report["exact"][1], float(out.nfe.mean()))
    lines = [f"{k:28s} identical {v[0]:.2f}  WER {'' if k == 'exact' else 'change '}{v[1]:+.1f}  nfe {v[2]:.1f}"
             for k, v in report.items()]
    print("\n" + "\n".join(lines))

    # Every number recomputed another way: token lists instead of strings, an edit distance
    # written out instead of jiwer, forward passes counted per row.
    words = [api.response_tokens(t, GEN, ref.TOKENS) for t in targets]
    n_words = sum(len(w) for w in words)
    exact_rows = [api.response_tokens(t, GEN, ref.TOKENS) for t in exact.tokens]
    exact_wer = 100.0 * sum(_edits(w, h) for w, h in zip(words, exact_rows)) / n_words
    assert set(report) == {"exact", *modes}
    for name, out in outs.items():
        rows = [api.response_tokens(t, GEN, ref.TOKENS) for t in out.tokens]
        same = np.mean([r == e for r, e in zip(rows, exact_rows)])
        wer = 100.0 * sum(_edits(w, h) for w, h in zip(words, rows)) / n_words
        want = (same, wer - (0.0 if name == "exact" else exact_wer), np.asarray(out.nfe).sum() / len(rows))
        np.testing.assert_allclose(report[name], want, rtol=0, atol=1e-9, err_msg=name)
    # The model has memorised its transcripts: the exact mode decodes every one of them, in at
    # most `steps` forward passes (blocks after the end of the text are skipped).
    assert report["exact"][:2] == (1.0, 0.0)
    assert np.all((1 <= np.asarray(exact.nfe)) & (np.asarray(exact.nfe) <= BASE["steps"]))


def test_threshold_one_is_one_token_per_step():
    """threshold=1.0 (on a random model no token reaches p = 1): exactly the top-1 per step,
    i.e. the exact mode with steps == gen_len."""
    model = ref.tiny_llm()
    variables = ref.init_vars(model)
    prefix = ref.random_prefix(4)
    rng = jax.random.key(0)
    exact = api.diffusion_decode(model, variables, prefix, DecodeConfig(**{**BASE, "steps": GEN}), rng, tokens=ref.TOKENS)
    thr = api.diffusion_decode(model, variables, prefix, DecodeConfig(**BASE, threshold=1.0), rng, tokens=ref.TOKENS)
    np.testing.assert_array_equal(thr.tokens, exact.tokens)
    np.testing.assert_array_equal(thr.nfe, exact.nfe)


def test_caches_are_exact_with_one_step_per_block(overfit):
    model, variables, prefix, _ = overfit
    cfg = dict(decoder="semi_ar", gen_len=GEN, block_length=4, steps=4)
    rng = jax.random.key(0)
    exact = api.diffusion_decode(model, variables, prefix, DecodeConfig(**cfg), rng, tokens=ref.TOKENS)
    for cache in ("prefix", "dual"):
        out = api.diffusion_decode(model, variables, prefix, DecodeConfig(**cfg, cache=cache), rng, tokens=ref.TOKENS)
        np.testing.assert_array_equal(out.tokens, exact.tokens, err_msg=cache)


def test_length_buckets_and_edit_length(overfit):
    model, variables, prefix, targets = overfit
    rng = jax.random.key(0)
    out = api.diffusion_decode(model, variables, prefix, DecodeConfig(**BASE, length_buckets=(8,)), rng,
                               tokens=ref.TOKENS)
    exact = api.diffusion_decode(model, variables, prefix, DecodeConfig(**BASE), rng, tokens=ref.TOKENS)
    # one extra forward (the length estimate); the batch's longest sentence needs the full canvas
    assert out.nfe.min() >= 1 and out.tokens.shape == exact.tokens.shape
    pick = np.array([1, 3])
    short = Prefix(prefix.embeds[pick], prefix.valid[pick])  # 5 and 4 tokens: the 8-slot bucket
    out = api.diffusion_decode(model, variables, short, DecodeConfig(**BASE, length_buckets=(8,)), rng,
                               tokens=ref.TOKENS)
    assert (out.tokens[:, 8:] == ref.TOKENS.eos).all() and out.nfe.max() <= 1 + 4

    # edit_length: a first pass with a deleted and an inserted token can be repaired in length
    first = [list(s) for s in ref.SENTENCES]
    first[0] = first[0][:3] + first[0][4:]  # deletion
    first[1] = first[1][:2] + [30] + first[1][2:]  # insertion
    cfg = DecodeConfig(strategy="diffusion", masking="low_confidence", mask_ratio=0.5, steps=GEN, gen_len=GEN,
                       edit_length=True)
    out = api.deliberate(model, variables, prefix, first, cfg, rng, tokens=ref.TOKENS)
    lens = {len(api.response_tokens(t, int(n), ref.TOKENS)) for t, n in zip(out.tokens, out.length)}
    assert out.tokens.shape[1] == GEN + int(GEN * 0.5) + 4 and len(lens) > 1

"""Corpus WER: Whisper's English normaliser on both sides, jiwer alignment, S/D/I counts."""

import jiwer
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from whisper_llada_jax.evaluation.wer import corpus_wer, normalize

CASES = [
    # (reference as LibriSpeech writes it, hypothesis)
    ("I WILL PAY TWENTY FIVE DOLLARS", "i'll pay $25"),                      # numbers, currency, contraction
    ("HE WON'T GO TO THE THEATRE", "He will not go to the theater."),        # contraction + British spelling
    ("THE COLOUR OF THE HARBOUR", "the color of the harbor"),                # British spellings
    ("MISTER SMITH HAD SEVENTEEN APPLES", "Mr. Smith had 17 apples"),        # title, number
    ("SHE SAID HELLO", "<|endoftext|>she said<|eot_id|> yellow"),            # special tokens stripped
    ("ONE TWO THREE FOUR", "one three four five six"),                       # D + I
]


def test_matches_jiwer_on_normalised_text():
    refs, hyps = [r for r, _ in CASES], [h for _, h in CASES]
    got = corpus_wer(refs, hyps)
    norm = EnglishTextNormalizer()
    strip = lambda t: t.replace("<|endoftext|>", " ").replace("<|eot_id|>", " ")  # noqa: E731
    want = jiwer.process_words([norm(strip(r)) for r in refs], [norm(strip(h)) for h in hyps])
    assert (got.substitutions, got.deletions, got.insertions, got.hits) == (
        want.substitutions, want.deletions, want.insertions, want.hits)
    assert got.wer == pytest.approx(want.wer)
    assert got.ref_words == want.substitutions + want.deletions + want.hits
    assert got.errors == got.substitutions + got.deletions + got.insertions
    assert got.wer == pytest.approx(got.errors / got.ref_words)


def test_normaliser_makes_spelling_variants_equal():
    for ref, hyp in CASES[1:4]:
        assert normalize(ref) == normalize(hyp), (ref, hyp)
        assert corpus_wer([ref], [hyp]).wer == 0.0
    assert normalize("<|startoftext|>Hello,   WORLD!<|endoftext|>") == "hello world"


def test_hand_counted_errors():
    # the normaliser joins spoken digits ("one two" -> "12"), so letters' names here
    w = corpus_wer(["ALPHA BRAVO CHARLIE DELTA"], ["alpha charlie delta echo foxtrot"])
    assert (w.substitutions, w.deletions, w.insertions, w.hits) == (0, 1, 2, 3)
    assert w.wer == pytest.approx(3 / 4)
    w = corpus_wer(["A B C", "D E"], ["a x c", ""])  # corpus totals, not a mean of utterance WERs
    assert (w.substitutions, w.deletions, w.insertions, w.ref_words) == (1, 2, 0, 5)
    assert w.wer == pytest.approx(3 / 5)
    # an empty reference: its hypothesis words are insertions
    w = corpus_wer(["", "A"], ["extra words", "a"])
    assert (w.insertions, w.ref_words, w.utterances) == (2, 1, 2)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_wer(["a", "b"], ["a"])

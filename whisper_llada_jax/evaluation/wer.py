"""Corpus word error rate as the paper scores it (SPEC section 9).

Both sides: special tokens (``<|...|>``) stripped, then Whisper's English text normaliser
(the maintained ``whisper-normalizer`` package: numbers, contractions, British spellings,
punctuation, case). ``jiwer`` aligns the words; WER = (S + D + I) / N over the corpus.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import jiwer

_SPECIAL = re.compile(r"<\|[^|>]*\|>")


@functools.lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Special tokens removed, then Whisper's English normaliser; words single-spaced."""
    return " ".join(_normalizer()(_SPECIAL.sub(" ", text or "")).split())


@dataclasses.dataclass(frozen=True)
class WER:
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    utterances: int

    @property
    def ref_words(self) -> int:
        """N: reference words = S + D + hits."""
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else float(self.errors > 0)

    def to_dict(self) -> dict:
        return {"wer": self.wer, "substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions, "hits": self.hits, "ref_words": self.ref_words,
                "utterances": self.utterances}


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str], *, normalise: bool = True) -> WER:
    """Corpus WER with S/D/I counts summed over utterances (not a mean of per-utterance WERs)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    prep = normalize if normalise else (lambda t: " ".join((t or "").split()))
    refs = [prep(r) for r in references]
    hyps = [prep(h) for h in hypotheses]
    # jiwer rejects empty references: their hypothesis words are all insertions.
    extra_ins = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        return WER(0, 0, extra_ins, 0, len(refs))
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    return WER(out.substitutions, out.deletions, out.insertions + extra_ins, out.hits, len(refs))

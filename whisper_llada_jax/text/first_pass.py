"""First-pass text in the written form of the model that deliberates over it.

Whisper writes "13-15", "$254", "7:30", "3rd"; a model trained on transcripts that spell numbers
out (the demo's corpus, LibriSpeech) has never seen those forms, and a small tokenizer without
digits turns them into ``<unk>``. ``first_pass_normalizer`` picks a normaliser per model:

- ``none``: the text as given (the reference);
- ``spoken_en``: numbers, money, percentages, ordinals and clock times spelled as spoken English
  (``num2words``: "two hundred and fifty four dollars", "seven thirty", "seven oh five",
  "seven o'clock"), hyphens between words or numbers split ("13-15" -> "thirteen fifteen").

``unknown_words: mask`` turns every word the vocabulary cannot represent (a word with an unknown
piece) into one mask slot, which deliberation always re-masks: the word is re-decoded from the
audio instead of being read as ``<unk>``. ``vocabulary_filter`` is the model-free baseline that
simply deletes those words.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from num2words import num2words

from whisper_llada_jax.errors import DecodeConfigError


def _cardinal(digits: str) -> str:
    return num2words(int(digits.replace(",", "")), lang="en").replace(",", "")


def _decimal(number: str) -> str:
    whole, _, frac = number.replace(",", "").partition(".")
    words = _cardinal(whole or "0")
    return words if not frac else f"{words} point {' '.join(_cardinal(d) for d in frac)}"


def _clock(m: re.Match) -> str:
    hour, minute = int(m["h"]), int(m["m"])
    spoken = _cardinal(str(hour))
    if minute == 0:
        spoken += " o'clock"
    elif minute < 10:
        spoken += f" oh {_cardinal(str(minute))}"
    else:
        spoken += f" {_cardinal(str(minute))}"
    return f" {spoken}{' ' + m['ampm'].replace('.', '').lower() if m['ampm'] else ''} "


_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}


def _money(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m["cur"]]
    whole = m["whole"].replace(",", "")
    out = f"{_cardinal(whole)} {one if int(whole) == 1 else many}"
    if m["cents"] and int(m["cents"]):
        c = int(m["cents"].ljust(2, "0")[:2])
        out += f" and {_cardinal(str(c))} {sub_one if c == 1 else sub_many}"
    return f" {out} "


_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_RULES: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    (re.compile(r"(?P<cur>[$£€])\s?(?P<whole>\d[\d,]*)(?:\.(?P<cents>\d+))?"), _money),
    (re.compile(r"\b(?P<h>\d{1,2}):(?P<m>\d{2})(?:\s?(?P<ampm>[ap]m\b|[ap]\.m\.))?", re.I), _clock),
    (re.compile(rf"({_NUMBER})\s?%"), lambda m: f" {_decimal(m[1])} percent "),
    (re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.I), lambda m: f" {num2words(int(m[1]), lang='en', to='ordinal')} "),
    (re.compile(_NUMBER), lambda m: f" {_decimal(m[0])} "),
)


def spoken_en(text: str) -> str:
    """English numbers, money, percentages, ordinals and times spelled out; hyphens split.
    Idempotent: text with no digits, symbols or hyphens comes back with single spaces only."""
    for pattern, spell in _RULES:
        text = pattern.sub(spell, text)
    text = text.replace("&", " and ")
    text = re.sub(r"(?<=\w)\s*-\s*(?=\w)", " ", text)  # "13-15", "forty-five", "well-known"
    text = re.sub(r"\s+([.,?!;:])", r"\1", text)  # punctuation back onto the word before it
    return " ".join(text.split())


NORMALIZERS: dict[str, Callable[[str], str]] = {"none": lambda t: t, "spoken_en": spoken_en}


def normalize_first_pass(text: str, normalizer: str) -> str:
    try:
        return NORMALIZERS[normalizer](text)
    except KeyError:
        raise DecodeConfigError(f"decode config field first_pass_normalizer: unknown {normalizer!r}",
                                hint=f"one of {sorted(NORMALIZERS)}") from None


def first_pass_ids(tokenizer: Any, text: str, *, normalizer: str = "none", unknown_words: str = "keep",
                   mask_id: int | None = None) -> list[int]:
    """The ids deliberation starts from: ``text`` normalised, encoded, and with
    ``unknown_words="mask"`` each word holding an unknown piece replaced by one ``mask_id``."""
    text = normalize_first_pass(text, normalizer)
    unk = getattr(tokenizer, "unk", None)
    if unknown_words == "keep" or unk is None:
        return tokenizer.encode(text)
    ids, words = tokenizer.encode_words(text)
    bad = {w for i, w in zip(ids, words) if i == unk}
    out: list[int] = []
    for k, (i, w) in enumerate(zip(ids, words)):
        if w is None or w not in bad:
            out.append(i)
        elif k == 0 or words[k - 1] != w:  # one slot per unknown word
            out.append(mask_id)
    return out


def fit_canvas(ids: list[int], width: int) -> list[int]:
    """First-pass ids cut to the deliberation canvas's ``width`` slots. Deliberation keeps the
    token count, so a longer first pass (a repetition loop, say) cannot be deliberated whole:
    its head is, and the cut words count as errors against the reference. Decoding drivers cut
    and report every cut clip (``inference.driver.report_cut_first_passes``)."""
    return list(ids[:width])


def vocabulary_filter(tokenizer: Any, text: str, normalizer: str = "none") -> str:
    """The model-free baseline: ``text`` normalised, with every word the vocabulary cannot
    represent (one that encodes to an unknown piece) deleted."""
    text = normalize_first_pass(text, normalizer)
    unk = getattr(tokenizer, "unk", None)
    if unk is None:
        return text
    return " ".join(w for w in text.split() if unk not in tokenizer.encode(w))

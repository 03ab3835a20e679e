"""The Whisper tokenizer over a Hugging Face ``tokenizer.json`` (``tokenizers`` only).

Gives the special-token ids by name, the decoder start prompts and a decode that drops
special and timestamp tokens the way transformers' ``WhisperTokenizer.decode(...,
skip_special_tokens=True)`` does. Timestamp tokens (``<|0.00|>`` ...) follow
``<|notimestamps|>``; older ``tokenizer.json`` files (CTranslate2 / faster-whisper
directories) do not list them at all, so anything from that id upwards counts as one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import tokenizers

from whisper_llada_jax.errors import CheckpointError

SOT = "<|startoftranscript|>"
EOT = "<|endoftext|>"
TRANSCRIBE = "<|transcribe|>"
TRANSLATE = "<|translate|>"
NO_TIMESTAMPS = "<|notimestamps|>"
START_OF_PREV = "<|startofprev|>"
START_OF_LM = "<|startoflm|>"
NO_SPEECH = "<|nocaptions|>"
_NON_LANGUAGE = {SOT, EOT, TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS, START_OF_PREV, START_OF_LM, NO_SPEECH,
                 "<|nospeech|>"}


class WhisperTokenizer:
    """Whisper text <-> ids.

    ``multilingual`` decides the default start prompt: English-only checkpoints start with
    ``<|startoftranscript|><|notimestamps|>``, multilingual ones add a language and a task token
    (HF and CTranslate2 call a checkpoint multilingual when its vocabulary has >= 51865 entries).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, multilingual: bool = False, name: str = "<tokenizer>"):
        self._tok = tokenizer
        self.name = name
        self.multilingual = multilingual
        self._special = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        for required in (SOT, EOT, NO_TIMESTAMPS):
            if required not in self._special:
                raise CheckpointError(f"{name}: not a Whisper tokenizer ({required} is missing)",
                                      hint="use the tokenizer.json of a Whisper checkpoint")
        self.sot = self._special[SOT]
        self.eot = self._special[EOT]
        self.no_timestamps = self._special[NO_TIMESTAMPS]
        self.timestamp_begin = self.no_timestamps + 1
        self.language_ids = {c[2:-2]: i for c, i in self._special.items()
                             if c not in _NON_LANGUAGE and c.startswith("<|") and c.endswith("|>")
                             and not c[2:-2].replace(".", "").isdigit()}
        self._special_ids = frozenset(self._special.values())

    @classmethod
    def from_file(cls, path: str | Path, *, multilingual: bool = False) -> "WhisperTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise CheckpointError(f"{path}: does not exist", hint="a Whisper directory needs its tokenizer.json")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({e})") from None
        return cls(tok, multilingual=multilingual, name=str(path))

    # ------------------------------------------------------------------ special tokens
    def token_id(self, token: str) -> int:
        """Id of a special token by its text, e.g. ``"<|transcribe|>"`` or ``"<|en|>"``."""
        try:
            return self._special[token]
        except KeyError:
            raise CheckpointError(f"{self.name}: no special token {token!r}") from None

    def language_id(self, language: str) -> int:
        if language not in self.language_ids:
            raise CheckpointError(f"{self.name}: unknown language {language!r}",
                                  hint=f"choose one of {sorted(self.language_ids)[:20]} ...")
        return self.language_ids[language]

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    def start_prompt(self, language: str | None = None, task: str = "transcribe",
                     timestamps: bool = False) -> list[int]:
        """Decoder start ids. English-only: ``[sot, notimestamps]``; multilingual:
        ``[sot, <|lang|>, <|task|>, notimestamps]`` (language defaults to English)."""
        ids = [self.sot]
        if self.multilingual or language is not None:
            ids.append(self.language_id(language or "en"))
            ids.append(self.token_id(TRANSCRIBE if task == "transcribe" else TRANSLATE))
        if not timestamps:
            ids.append(self.no_timestamps)
        return ids

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        """Text -> ids without any special tokens (the post-processor would add some)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if not skip_special_tokens:
            return self._tok.decode(ids, skip_special_tokens=False)
        # A previous-text prompt (<|startofprev|> ... <|startoftranscript|>) is not output.
        prev = self._special.get(START_OF_PREV)
        if prev is not None and prev in ids and self.sot in ids[ids.index(prev):]:
            ids = ids[ids.index(self.sot, ids.index(prev)):]
        kept = [i for i in ids if i not in self._special_ids and i < self.timestamp_begin]
        return self._tok.decode(kept, skip_special_tokens=False)

    def batch_decode(self, rows: Sequence[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

"""The LLaDA tokenizer over a Hugging Face ``tokenizer.json`` (``tokenizers`` only, no transformers).

Knows the special tokens by their strings (so a small test tokenizer with other ids works the
same way as LLaDA-8B-Instruct's) and builds the chat prompt of SPEC section 4:

    bos <|start_header_id|>user<|end_header_id|>\\n\\n CONTENT <|eot_id|>
        <|start_header_id|>assistant<|end_header_id|>\\n\\n

The prompt is rendered as one string and encoded without added special tokens, which is what
transformers' ``apply_chat_template(..., add_generation_prompt=True)`` does: encoding the
pieces separately would split ``"\\n\\n" + content`` differently under a byte-level BPE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import tokenizers

from whisper_llada_jax.config import TokenConfig
from whisper_llada_jax.errors import CheckpointError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MASK = "<|mdm_mask|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIALS = (BOS, EOS, MASK, START_HEADER, END_HEADER, EOT)


def chat_prompt_text(content: str, bos: str = BOS) -> str:
    """The chat template for one user turn plus the assistant header (content is trimmed)."""
    return (f"{bos}{START_HEADER}user{END_HEADER}\n\n{content.strip()}{EOT}"
            f"{START_HEADER}assistant{END_HEADER}\n\n")


class LLaDATokenizer:
    """LLaDA text <-> ids from a ``tokenizer.json`` file (or a directory holding one)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer file does not exist",
                                  hint="give the tokenizer.json of the LLaDA checkpoint")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON / layout
            raise CheckpointError(f"{path}: not a Hugging Face tokenizer.json ({str(e)[:120]})") from None
        self.path = path
        self.json = path.read_text()
        vocab = self._tok.get_vocab(with_added_tokens=True)
        missing = [t for t in SPECIALS if t not in vocab]
        if missing:
            raise CheckpointError(f"{path}: not a LLaDA tokenizer (special tokens {missing} are missing)",
                                  hint="use the tokenizer.json of LLaDA-8B-Instruct (or one with the same specials)")
        self.bos, self.eos, self.mask, self.start_header, self.end_header, self.eot = (vocab[t] for t in SPECIALS)
        self.pad = self.eos  # LLaDA pads with eos (SPEC section 4)
        self._special_ids = frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)
        self._special_ids |= {self.bos, self.eos, self.mask, self.start_header, self.end_header, self.eot}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids, no special tokens added (the training targets of SPEC section 7)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    @property
    def unk(self) -> int | None:
        """Id of the unknown-piece token, or None when every string is representable (byte-level BPE)."""
        name = getattr(self._tok.model, "unk_token", None)
        return None if name is None else self._tok.token_to_id(name)

    def encode_words(self, text: str) -> tuple[list[int], list[int | None]]:
        """``encode`` plus, per id, the index of the pre-tokenizer word it came from."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, list(enc.word_ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, special tokens (mask, eos padding, headers) dropped."""
        return self._tok.decode([int(i) for i in ids if int(i) not in self._special_ids], skip_special_tokens=True)

    def decode_batch(self, rows: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(r) for r in rows]

    def chat_prompt_ids(self, prompt_text: str) -> list[int]:
        """The ids of SPEC section 4's chat prompt; audio vectors go right after them."""
        ids = self._tok.encode(chat_prompt_text(prompt_text), add_special_tokens=False).ids
        # Each chat token must come out as one id (it must be an added token of the tokenizer).
        if ids[:2] != [self.bos, self.start_header] or ids.count(self.start_header) != 2 \
                or ids.count(self.end_header) != 2 or ids.count(self.eot) != 1:
            raise CheckpointError(f"{self.path}: special tokens are split by the tokenizer",
                                  hint="the chat tokens must be added tokens of tokenizer.json")
        return ids

    def token_config(self, prompt_text: str = TokenConfig.prompt_text) -> TokenConfig:
        """A TokenConfig with this tokenizer's special ids and chat prompt ids."""
        return TokenConfig(bos=self.bos, eos=self.eos, pad=self.pad, mask=self.mask,
                           start_header=self.start_header, end_header=self.end_header, eot=self.eot,
                           prompt_text=prompt_text, prompt_ids=tuple(self.chat_prompt_ids(prompt_text)))


def build_tokenizer_json(texts: Iterable[str], path: str | Path, vocab_size: int = 120) -> Path:
    """Trains a small BPE tokenizer with LLaDA's special tokens and writes ``tokenizer.json``.

    For tests and the laptop demo, where an 8B model's 126k vocabulary is far too large. The
    specials get ids 1..6 in the order bos, eos, mask, start_header, end_header, eot (``<unk>``
    is 0), which is what ``configs/model/tiny.yaml`` expects.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", *SPECIALS],
                                  show_progress=False)
    # The chat template's words must be in the vocabulary, whatever the corpus, and at their
    # real frequency (once per example), so BPE merges them into a few tokens instead of leaving
    # a constant prompt of dozens of pieces in front of every response.
    # Trained on the pieces between the special tokens, as encoding splits them.
    texts = list(texts)
    template = chat_prompt_text(TokenConfig.prompt_text)
    for special in SPECIALS:
        template = template.replace(special, "\0")
    pieces = [p for p in template.split("\0") if p]
    tok.train_from_iterator([*texts, *pieces * max(1, len(texts))], trainer)
    from whisper_llada_jax.outputs import write_text

    # atomically: the demo reuses an existing tokenizer.json, which a kill must not leave cut short
    return write_text(Path(path), tok.to_str(pretty=True))


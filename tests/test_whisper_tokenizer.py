"""Whisper tokenizer over tokenizer.json vs transformers' WhisperTokenizer (real tiny.en files)."""

import json

import numpy as np
import pytest
import tokenizers

from whisper_llada_jax.assets import bundled_whisper_dir
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.text.whisper_tokenizer import WhisperTokenizer

TEXTS = [
    " Hello world, it's 3 o'clock.",
    " Don't   stop!  The 42nd street (near Café Müller) costs $19.99.",
    " naïve résumé — “quoted” text… and emoji 🙂",
    "",
    " A",
]


@pytest.fixture(scope="module")
def hf():
    from transformers import WhisperTokenizer as HFWhisperTokenizer

    return HFWhisperTokenizer.from_pretrained(str(bundled_whisper_dir()))


@pytest.fixture(scope="module")
def tok():
    return WhisperTokenizer.from_file(bundled_whisper_dir())


def test_special_ids_by_name(tok, hf):
    for name in ["<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>", "<|transcribe|>",
                 "<|translate|>", "<|startofprev|>", "<|en|>", "<|de|>"]:
        assert tok.token_id(name) == hf.convert_tokens_to_ids(name)
    assert tok.sot == 50257 and tok.eot == 50256 and tok.no_timestamps == 50362
    assert tok.language_id("fr") == hf.convert_tokens_to_ids("<|fr|>")
    assert len(tok.language_ids) == 99
    with pytest.raises(CheckpointError, match="no special token"):
        tok.token_id("<|nope|>")
    with pytest.raises(CheckpointError, match="unknown language"):
        tok.language_id("klingon")


def test_start_prompts_match_transformers(tok, hf):
    # English-only (tiny.en): what HF forces and faster-whisper sends without timestamps.
    assert tok.start_prompt() == hf.prefix_tokens == [50257, 50362]
    multi = WhisperTokenizer.from_file(bundled_whisper_dir(), multilingual=True)
    for language, task in [("en", "transcribe"), ("de", "transcribe"), ("fr", "translate")]:
        hf.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
        assert multi.start_prompt(language, task) == hf.prefix_tokens
    hf.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=True)
    assert multi.start_prompt("en", timestamps=True) == hf.prefix_tokens
    hf.set_prefix_tokens(language=None, task=None, predict_timestamps=False)
    assert multi.start_prompt() == [50257, 50258, 50358, 50362]


def test_encode_and_decode_match_transformers(tok, hf):
    rng = np.random.default_rng(0)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        timestamps = [int(x) for x in rng.integers(tok.timestamp_begin, 51864, size=2)]
        rows = [
            ids,
            tok.start_prompt() + ids + [tok.eot],
            [tok.sot, tok.language_id("en"), tok.token_id("<|transcribe|>")] + ids + [tok.eot, tok.eot],
            [timestamps[0]] + ids + [timestamps[1], tok.eot],
            [tok.token_id("<|startofprev|>")] + tok.encode(" earlier text") + tok.start_prompt() + ids,
        ]
        for row in rows:
            assert tok.decode(row) == hf.decode(row, skip_special_tokens=True), row
        assert tok.decode(rows[1], skip_special_tokens=False) == hf.decode(rows[1])
    assert tok.decode(np.array(tok.encode(TEXTS[0]), np.int32)) == TEXTS[0]
    assert tok.batch_decode([tok.encode(t) for t in TEXTS]) == TEXTS


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        WhisperTokenizer.from_file(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizer.json"):
        WhisperTokenizer.from_file(tmp_path)
    # A valid tokenizer that is not Whisper's.
    other = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    other.add_special_tokens(["<|endoftext|>"])
    (tmp_path / "tokenizer.json").write_text(json.dumps(json.loads(other.to_str())))
    with pytest.raises(CheckpointError, match="not a Whisper tokenizer"):
        WhisperTokenizer.from_file(tmp_path / "tokenizer.json")

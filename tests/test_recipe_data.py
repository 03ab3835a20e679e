"""The reference's data handling: long clips cut to the window and kept, targets never cut."""

import json

import numpy as np
import pytest

from tests._data_helpers import WordTokenizer, write_clip
from whisper_llada_jax.audio.features import samples_for_frames
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.data.config import DataConfig
from whisper_llada_jax.data.pipeline import build_eval_iterator
from whisper_llada_jax.errors import DataError

MODEL = load_model_config("tiny")
TOK = WordTokenizer()


def _manifest(tmp_path, entries):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": i, "audio": a, "text": t}) + "\n" for i, a, t in entries))
    return f"manifest:{path}"


def test_clips_over_max_seconds_are_cut_and_kept_with_their_transcript_when_unlimited(tmp_path):
    write_clip(tmp_path / "long.flac", 40.0, 3)
    write_clip(tmp_path / "short.wav", 0.5, 1)
    source = _manifest(tmp_path, [("long", "long.flac", "FORTY SECONDS OF SPEECH"), ("short", "short.wav", "ONE")])
    skipped = build_eval_iterator(DataConfig(batch_size=2), MODEL, TOK, source=source)
    assert list(skipped)[0]["valid"].tolist() == [True, False] and skipped.counts["too_long"] == 1
    kept = build_eval_iterator(DataConfig(batch_size=2, max_seconds=None), MODEL, TOK, source=source)
    (batch,) = list(kept)
    assert batch["valid"].tolist() == [True, True] and kept.counts["truncated"] == 1
    assert batch["audio_len"][0] == samples_for_frames(MODEL.whisper.input_frames)
    assert batch["response_len"][0] == 4 and batch["text"][0] == "FORTY SECONDS OF SPEECH"


def test_long_transcripts_are_cut_or_skipped_and_counted(tmp_path):
    write_clip(tmp_path / "a.wav", 0.5, 1)
    words = " ".join(f"W{i}" for i in range(9))
    source = _manifest(tmp_path, [("long", "a.wav", words), ("ok", "a.wav", "ONE TWO")])
    cut = build_eval_iterator(DataConfig(batch_size=2, max_response_len=6), MODEL, TOK, source=source)
    (batch,) = list(cut)
    assert batch["response_len"].tolist() == [6, 2] and cut.counts["cut_transcripts"] == 1
    np.testing.assert_array_equal(batch["response_ids"][0], TOK.encode(words)[:6])
    cfg = DataConfig(batch_size=2, max_response_len=6, long_transcripts="skip")
    skip = build_eval_iterator(cfg, MODEL, TOK, source=source)
    (batch,) = list(skip)
    assert batch["ids"][0] == "ok" and not batch["valid"][1]
    assert skip.counts["too_many_tokens"] == 1 and skip.counts["cut_transcripts"] == 0
    assert skip.skipped[0]["message"].endswith("a.wav: transcript is 9 tokens, more than max_response_len 6")
    strict = DataConfig(batch_size=2, max_response_len=6, long_transcripts="skip", strict=True)
    with pytest.raises(DataError, match=r"a\.wav: transcript is 9 tokens, more than max_response_len 6"):
        list(build_eval_iterator(strict, MODEL, TOK, source=source))

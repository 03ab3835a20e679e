"""The Grain pipeline: fixed shapes, padding, skipping bad audio, eval order, resuming."""

import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile as sf

from tests._data_helpers import WordTokenizer, write_clip
from whisper_llada_jax.audio.features import log_mel_numpy, samples_for_frames
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.data.config import DataConfig, load_data_config
from whisper_llada_jax.data.pipeline import build_eval_iterator, build_iterator
from whisper_llada_jax.data.sources import SyntheticSource
from whisper_llada_jax.errors import ConfigError, DataError

MODEL = load_model_config("tiny")
TOK = WordTokenizer()


def _valid_ids(batches):
    return [i for b in batches for i, v in zip(b["ids"], b["valid"]) if v]


def test_batches_have_fixed_shapes_and_reference_padding():
    cfg = DataConfig(eval_source="synthetic:n=7,seed=2", batch_size=3, max_response_len=10)
    batches = list(build_eval_iterator(cfg, MODEL, TOK))
    src = SyntheticSource(n=7, seed=2)
    assert len(batches) == 3
    frames, n_samples = MODEL.whisper.input_frames, samples_for_frames(MODEL.whisper.input_frames)
    for b in batches:
        assert b["features"].shape == (3, MODEL.whisper.n_mels, frames) and b["features"].dtype == np.float32
        assert b["response_ids"].shape == b["response_mask"].shape == (3, 10) and b["response_ids"].dtype == np.int32
        assert b["audio_len"].shape == b["response_len"].shape == b["valid"].shape == (3,)
    assert batches[-1]["valid"].tolist() == [True, False, False]
    assert _valid_ids(batches) == [src[i]["id"] for i in range(7)]
    last = batches[-1]
    assert (last["features"][1:] == 0).all() and (last["response_ids"][1:] == MODEL.tokens.eos).all()
    b = batches[0]
    for row in range(3):
        rec = src[row]
        tokens = TOK.encode(rec["text"])[:10]
        assert b["response_ids"][row, :len(tokens)].tolist() == tokens
        assert (b["response_ids"][row, len(tokens):] == MODEL.tokens.eos).all()
        assert b["response_len"][row] == len(tokens) and b["text"][row] == rec["text"]
        assert b["audio_len"][row] == min(len(rec["audio"]), n_samples)
        np.testing.assert_allclose(b["features"][row], log_mel_numpy(rec["audio"], MODEL.whisper.n_mels, n_samples)[0], atol=1e-6)
    # the loss mask covers the batch's longest response, as the reference's per-batch padding
    longest = int(b["response_len"].max())
    assert b["response_mask"].sum(axis=1).tolist() == [longest] * 3


def test_train_split_shuffles_each_epoch_and_covers_it():
    cfg = DataConfig(train_source="synthetic:n=12,seed=0", batch_size=4, num_epochs=2)
    batches = list(build_iterator(cfg, MODEL, TOK, split="train", seed=5))
    ids = _valid_ids(batches)
    assert len(batches) == 6 and all(b["valid"].all() for b in batches)
    first, second = ids[:12], ids[12:]
    assert sorted(first) == sorted(second) == sorted(SyntheticSource(n=12, seed=0)[i]["id"] for i in range(12))
    assert first != second and first != sorted(first)
    again = _valid_ids(build_iterator(cfg, MODEL, TOK, split="train", seed=5))
    other = _valid_ids(build_iterator(cfg, MODEL, TOK, split="train", seed=6))
    assert again == ids and other != ids


def _bad_manifest(tmp_path):
    write_clip(tmp_path / "good1.wav", 0.5, 1)
    write_clip(tmp_path / "good2.flac", 0.7, 2)
    write_clip(tmp_path / "long.flac", 40.0, 3)
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC\x00\x00\x00\x22" + bytes(range(256)) * 4)
    entries = [("good1", "good1.wav", "ONE"), ("missing", "missing.flac", "GONE"),
               ("corrupt", "corrupt.flac", "BROKEN"), ("empty", "good1.wav", "   "),
               ("long", "long.flac", "FORTY SECONDS"), ("good2", "good2.flac", "TWO")]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": i, "audio": a, "text": t}) + "\n" for i, a, t in entries))
    return path


def test_bad_utterances_are_counted_and_skipped(tmp_path):
    cfg = DataConfig(eval_source=f"manifest:{_bad_manifest(tmp_path)}", batch_size=4)
    it = build_eval_iterator(cfg, MODEL, TOK)
    batches = list(it)
    # the batch count is fixed from the share size (6 -> 2), so every host steps alike
    assert len(batches) == 2 and not batches[1]["valid"].any()
    assert _valid_ids(batches) == ["good1", "good2"]
    assert it.counts == {"seen": 6, "kept": 2, "truncated": 0, "cut_transcripts": 0, "too_long": 1,
                         "empty_transcript": 1, "unreadable": 2, "too_many_tokens": 0}
    assert {s["id"]: s["skip"] for s in it.skipped} == {"missing": "unreadable", "corrupt": "unreadable",
                                                          "empty": "empty_transcript", "long": "too_long"}


def test_clip_longer_than_the_model_window_is_cut_and_counted(tmp_path):
    window_s = samples_for_frames(MODEL.whisper.input_frames) / 16000  # 4 s for the tiny config
    write_clip(tmp_path / "five.wav", window_s + 1.0, 7)
    audio, _ = sf.read(tmp_path / "five.wav", dtype="float32")  # as stored (16-bit PCM)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "five", "audio": "five.wav", "text": "FIVE"}) + "\n")
    it = build_eval_iterator(DataConfig(batch_size=1), MODEL, TOK, source=f"manifest:{tmp_path / 'm.jsonl'}")
    (batch,) = list(it)
    n = samples_for_frames(MODEL.whisper.input_frames)
    assert batch["audio_len"][0] == n and it.counts["truncated"] == 1 and it.counts["kept"] == 1
    np.testing.assert_allclose(batch["features"][0], log_mel_numpy(audio[:n], MODEL.whisper.n_mels, n)[0], atol=1e-6)


def test_strict_mode_names_the_file(tmp_path):
    cfg = DataConfig(eval_source=f"manifest:{_bad_manifest(tmp_path)}", batch_size=4, strict=True)
    with pytest.raises(DataError, match=r"missing\.flac: audio file does not exist"):
        list(build_eval_iterator(cfg, MODEL, TOK))
    only_long = tmp_path / "long.jsonl"
    only_long.write_text(json.dumps({"id": "long", "audio": "long.flac", "text": "X"}) + "\n")
    with pytest.raises(DataError, match=r"long\.flac: audio is 40\.0 s, longer than 30 s"):
        list(build_eval_iterator(cfg, MODEL, TOK, source=f"manifest:{only_long}"))


def test_restored_iterator_continues_exactly(tmp_path):
    cfg = DataConfig(train_source="synthetic:n=10,seed=1", batch_size=3, num_epochs=3)
    full = list(build_iterator(cfg, MODEL, TOK, split="train", seed=9))
    it = build_iterator(cfg, MODEL, TOK, split="train", seed=9)
    for _ in range(4):  # stop mid-epoch 2
        next(it)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    fresh = build_iterator(cfg, MODEL, TOK, split="train", seed=9)
    mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    rest = list(fresh)
    assert len(rest) == len(full) - 4
    for a, b in zip(rest, full[4:]):
        assert a["ids"] == b["ids"]
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["response_ids"], b["response_ids"])
    assert fresh.counts == {"seen": 30, "kept": 30, "truncated": 0, "cut_transcripts": 0, "too_long": 0,
                            "empty_transcript": 0, "unreadable": 0, "too_many_tokens": 0}


def test_data_config_yaml_is_strict(tmp_path):
    assert load_data_config("synthetic").batch_size == 8
    assert load_data_config("librispeech").eval_source.startswith("tfds:librispeech/lazy_decode")
    with pytest.raises(ConfigError, match="batchsize"):
        load_data_config(None, ["batchsize=3"])
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_data_config(None, ["batch_size=0"])

"""tfds' real ``librispeech`` builder prepared offline from a fake tree, then read by the pipeline."""

import tempfile

import numpy as np
import pytest
import soundfile as sf

from tests._data_helpers import WordTokenizer, fake_librispeech
from whisper_llada_jax.audio.features import log_mel_numpy, samples_for_frames
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.data.config import DataConfig
from whisper_llada_jax.data.librispeech_tfds import prepare_librispeech
from whisper_llada_jax.data.pipeline import build_eval_iterator
from whisper_llada_jax.data.sources import parse_source
from whisper_llada_jax.errors import DataError


def test_builder_prepares_offline_and_pipeline_reads_it(tmp_path, monkeypatch):
    # tfds' stock builder leaves an empty mkdtemp folder behind for each unprepared dataset
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    texts = fake_librispeech(tmp_path / "raw", {"dev-clean": (84, 174), "test-other": (7,)})
    data_dir = tmp_path / "tfds"
    builder = prepare_librispeech(tmp_path / "raw", data_dir)
    assert builder.info.full_name == "librispeech/lazy_decode/2.1.2"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"dev_clean": 6, "test_other": 3}
    assert any(p.name.endswith(".array_record-00000-of-00001") for p in (data_dir / "librispeech").rglob("*"))

    spec = f"tfds:librispeech/lazy_decode?split=dev_clean&data_dir={data_dir}"
    src = parse_source(spec)
    assert len(src) == 6
    assert {src[i]["id"]: src[i]["text"] for i in range(6)} == {k: v for k, v in texts.items() if k.startswith(("84-", "174-"))}
    # split arithmetic and explicit feature names
    both = parse_source(f"tfds:librispeech/lazy_decode?split=dev_clean+test_other&data_dir={data_dir}&audio=speech&text=text")
    assert len(both) == 9
    with pytest.raises(DataError, match="no feature 'waveform'"):
        parse_source(f"tfds:librispeech/lazy_decode?split=dev_clean&data_dir={data_dir}&audio=waveform")
    with pytest.raises(DataError, match="not prepared"):
        parse_source(f"tfds:librispeech/lazy_decode?split=dev_clean&data_dir={tmp_path / 'empty'}")

    model = load_model_config("tiny")
    cfg = DataConfig(eval_source=spec, batch_size=4, max_response_len=12)
    batches = list(build_eval_iterator(cfg, model, WordTokenizer()))
    assert len(batches) == 2 and batches[1]["valid"].tolist() == [True, True, False, False]
    ids = [i for b in batches for i, v in zip(b["ids"], b["valid"]) if v]
    assert ids == [src[i]["id"] for i in range(6)]  # eval: source order, each once
    b0 = batches[0]
    key = b0["ids"][0]
    spk, ch, _ = key.split("-")
    audio, _ = sf.read(tmp_path / "raw" / "LibriSpeech" / "dev-clean" / spk / ch / f"{key}.flac", dtype="float32")
    n = samples_for_frames(model.whisper.input_frames)
    np.testing.assert_allclose(b0["features"][0], log_mel_numpy(audio, model.whisper.n_mels, n)[0], atol=1e-6)
    assert b0["audio_len"][0] == len(audio)
    assert b0["text"][0] == texts[key]
    tokens = WordTokenizer().encode(texts[key])
    assert b0["response_ids"][0, :len(tokens)].tolist() == tokens
    assert (b0["response_ids"][0, len(tokens):] == model.tokens.eos).all()
    assert not list(system_tmp.iterdir())

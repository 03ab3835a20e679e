"""CTranslate2 model.bin reader: synthetic round trips through ctranslate2's own converter,
the real tiny.en file, and clear errors for broken files."""

import shutil
import struct

import numpy as np
import pytest

from whisper_llada_jax.assets import bundled_whisper_dir
from whisper_llada_jax.checkpoints.ctranslate2 import CTranslate2File, CTranslate2WhisperSource, whisper_config_from_ct2
from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.errors import CheckpointError

SMALL = dict(vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=96,
             max_source_positions=1500, max_target_positions=448,
             suppress_tokens=[1, 2, 7], begin_suppress_tokens=[220, 50256])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A small random transformers Whisper, saved, then converted by ctranslate2 (3 storage types)."""
    import ctranslate2.converters
    import torch
    from transformers import WhisperConfig as HFConfig
    from transformers import WhisperForConditionalGeneration
    from transformers import WhisperTokenizer as HFTokenizer

    root = tmp_path_factory.mktemp("ct2")
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(HFConfig(**SMALL)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a swapped tensor cannot pass
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.normal_(0.0, 0.2)
    model.save_pretrained(root / "hf")
    HFTokenizer.from_pretrained(str(bundled_whisper_dir())).save_pretrained(root / "hf")
    dirs = {}
    for quant in ("float32", "float16", "int8"):
        dirs[quant] = root / quant
        converter = ctranslate2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
        converter.convert(str(dirs[quant]), quantization=quant)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, state, dirs, root


def test_round_trip_tensors_float32_float16_int8(converted):
    model, state, dirs, _ = converted
    expected = set(state) - {"proj_out.weight"}  # tied to the token embedding (an alias in the file)
    for quant, d in dirs.items():
        src = CTranslate2WhisperSource(d)
        assert set(src.keys()) == expected, quant
        for key in expected:
            got, want = src.get(key), state[key]
            assert src.shape(key) == got.shape == want.shape, key
            if quant == "float32":
                np.testing.assert_array_equal(got, want, err_msg=key)
            elif quant == "float16":
                assert got.dtype == np.float16
                np.testing.assert_array_equal(got, want.astype(np.float16), err_msg=key)
            else:  # int8 rows: error at most half a quantisation step (amax / 127 / 2)
                rows = want.reshape(want.shape[0], -1)
                step = np.abs(rows).max(axis=1, keepdims=True) / 127.0
                err = np.abs(got.reshape(rows.shape).astype(np.float32) - rows)
                assert np.all(err <= 0.5 * step + 1e-6), key
    assert CTranslate2File(dirs["int8"] / "model.bin").quantization == "float32+int8"


def test_config_from_ct2_directory(converted):
    _, _, dirs, _ = converted
    cfg, gen = whisper_config_from_ct2(dirs["float16"], input_frames=400)
    assert cfg == WhisperConfig(n_mels=80, d_model=64, encoder_layers=2, encoder_heads=4, encoder_ffn=128,
                                decoder_layers=2, decoder_heads=4, decoder_ffn=96, vocab_size=51864,
                                max_source_positions=1500, max_target_positions=448, input_frames=400)
    assert gen.suppress_tokens == (1, 2, 7)
    assert gen.begin_suppress_tokens == (220, 50256)
    assert gen.is_multilingual is False and gen.eos_token_id == 50256
    assert gen.task_to_id == {"translate": 50357, "transcribe": 50358} and gen.no_timestamps_token_id == 50362


def test_real_tiny_en_imports():
    from transformers import WhisperConfig as HFConfig

    d = bundled_whisper_dir()
    cfg, gen = whisper_config_from_ct2(d)
    assert cfg == WhisperConfig()  # the defaults are tiny.en
    assert gen.begin_suppress_tokens == (220, 50256) and 50257 in gen.suppress_tokens
    assert gen.lang_to_id["<|fr|>"] == 50264 and not gen.is_multilingual
    src = CTranslate2WhisperSource(d)
    assert src.file.quantization == "float16"
    hf = HFConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                  encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                  decoder_ffn_dim=1536)
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WhisperForConditionalGeneration(hf).state_dict().items()}
    shapes.pop("proj_out.weight")
    assert {k: src.shape(k) for k in src.keys()} == shapes
    assert np.all(np.isfinite(src.get("model.decoder.layers.3.encoder_attn.v_proj.weight")))


# ----------------------------------------------------------------------------- bad files
def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _tiny_bin(spec: str = "WhisperSpec", version: int = 6, dtype_id: int = 0) -> bytes:
    data = np.arange(6, dtype=np.float32).tobytes()
    return (struct.pack("<I", version) + _string(spec) + struct.pack("<II", 1, 1) + _string("encoder/x")
            + struct.pack("<BII", 2, 2, 3) + struct.pack("<BI", dtype_id, len(data)) + data
            + struct.pack("<I", 0))


def test_hand_written_file_parses(tmp_path):
    (tmp_path / "model.bin").write_bytes(_tiny_bin())
    f = CTranslate2File(tmp_path / "model.bin")
    assert (f.version, f.spec, f.revision) == (6, "WhisperSpec", 1)
    np.testing.assert_array_equal(f.float_array("encoder/x"), np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("content, match", [
    (b"", "not a CTranslate2 model.bin"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a CTranslate2 model.bin"),
    (_tiny_bin(version=5), "binary version 5 is not supported"),
    (_tiny_bin(dtype_id=9), "unknown dtype id 9"),
    (_tiny_bin()[:-10], "truncated file"),
    (_tiny_bin()[:12], "truncated file"),
    (_tiny_bin(spec="TransformerSpec"), "a CTranslate2 TransformerSpec, not a Whisper model"),
    (_tiny_bin(), "missing variable 'encoder/conv1/weight'"),
])
def test_bad_files_give_clear_errors(tmp_path, content, match):
    (tmp_path / "model.bin").write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        CTranslate2WhisperSource(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_truncated_real_file_and_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="cannot open"):
        CTranslate2WhisperSource(tmp_path / "nowhere")
    real = bundled_whisper_dir() / "model.bin"
    with open(real, "rb") as f:
        (tmp_path / "model.bin").write_bytes(f.read(5_000_000))
    with pytest.raises(CheckpointError, match="truncated file"):
        CTranslate2WhisperSource(tmp_path)


def test_quantised_without_scale_is_rejected(tmp_path):
    data = np.ones(6, np.int8).tobytes()
    blob = (struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 1, 1) + _string("w")
            + struct.pack("<BII", 2, 2, 3) + struct.pack("<BI", 1, len(data)) + data + struct.pack("<I", 0))
    (tmp_path / "model.bin").write_bytes(blob)
    with pytest.raises(CheckpointError, match="int8 variable 'w' has no 'w_scale'"):
        CTranslate2File(tmp_path / "model.bin").float_array("w")


def test_config_json_errors(tmp_path, converted):
    _, _, dirs, _ = converted
    d = tmp_path / "m"
    shutil.copytree(dirs["float16"], d)
    (d / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        whisper_config_from_ct2(d)


def test_round_trip_logits_match_transformers(converted):
    """ctranslate2's file of a random model, read back and run in Flax, gives transformers' logits."""
    import jax
    import torch

    from whisper_llada_jax.checkpoints.whisper_hf import import_whisper_tensors
    from whisper_llada_jax.models.whisper import Whisper

    model, _, dirs, _ = converted
    src = CTranslate2WhisperSource(dirs["float32"])
    cfg, _ = whisper_config_from_ct2(dirs["float32"], source=src)
    params = import_whisper_tensors(src, cfg)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 80, 3000)).astype(np.float32)
    ids = rng.integers(0, 51864, size=(2, 7)).astype(np.int32)
    ours = np.asarray(jax.jit(Whisper(cfg).apply)({"params": params}, features, ids))
    with torch.no_grad():
        want = model(input_features=torch.from_numpy(features), decoder_input_ids=torch.from_numpy(ids).long()).logits
    np.testing.assert_allclose(ours, want.numpy(), atol=1e-4, rtol=1e-4)


def test_recognizer_reads_both_layouts_alike(converted):
    """The same random model as an HF directory and as a CTranslate2 one: identical transcripts
    in the same padding mode; the default padding follows the layout; batching is invisible."""
    from whisper_llada_jax.inference.recognizer import WhisperRecognizer

    _, _, dirs, root = converted
    rng = np.random.default_rng(3)
    audios = [rng.normal(scale=0.1, size=n).astype(np.float32) for n in (16000, 40000, 8000)]
    hf = WhisperRecognizer.from_dir(root / "hf", max_new_tokens=12)
    ct2 = WhisperRecognizer.from_dir(dirs["float32"], max_new_tokens=12)
    assert (hf.feature_padding, ct2.feature_padding) == ("audio", "features")
    assert hf.facts == ct2.facts and hf.facts.prompt == (50257, 50362)
    ct2.feature_padding = "audio"
    texts = hf.transcribe(audios, batch_size=2)
    assert texts == ct2.transcribe(audios, batch_size=2)
    assert hf.transcribe(audios[::-1], batch_size=3) == texts[::-1]
    assert any(texts)
    with pytest.raises(CheckpointError, match="English-only checkpoint"):
        WhisperRecognizer.from_dir(root / "hf", language="de")

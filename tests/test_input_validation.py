"""One clear error naming the field or file, never a traceback or a silent fallback: impossible
model sizes, data settings, decode canvases too long for the model, wrongly typed fields in a
checkpoint's config.json, an empty MODEL_DIR config, integer tensors where floats belong."""

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import soundfile as sf

from whisper_llada_jax import cli
from whisper_llada_jax.checkpoints.llada_hf import llada_config_from_hf, llada_config_to_hf
from whisper_llada_jax.checkpoints.llama_hf import llama_config_from_hf, llama_config_to_hf
from whisper_llada_jax.checkpoints.model_dir import load_model_dir
from whisper_llada_jax.checkpoints.peft import adapter_config, lora_config_from_adapter
from whisper_llada_jax.checkpoints.tensors import DictSource, Rule, import_params
from whisper_llada_jax.checkpoints.whisper_hf import WhisperGenerationConfig, whisper_config_from_hf, whisper_config_to_hf
from whisper_llada_jax.config import LLMConfig, LoRAConfig, WhisperConfig, load_model_config
from whisper_llada_jax.data.config import DataConfig, load_data_config
from whisper_llada_jax.decoding.config import DecodeConfig, check_fits_model, validate
from whisper_llada_jax.errors import CheckpointError, ConfigError, DecodeConfigError, UserError
from tests.test_output_safety import _fails, model_dir  # noqa: F401  (the tiny MODEL_DIR fixture)


@pytest.mark.parametrize("override, field", [
    ("llm.n_kv_heads=3", "n_kv_heads"),             # 4 query heads cannot share 3 K/V heads
    ("llm.vocab_size=-5", "vocab_size"),
    ("llm.d_model=0", "d_model"),
    ("llm.head_dim=15", "head_dim"),                # RoPE rotates pairs
    ("whisper.encoder_heads=5", "encoder_heads"),   # 5 does not divide d_model 64
    ("whisper.input_frames=5000", "input_frames"),  # more positions than max_source_positions
    ("projector.heads=3", "heads"),                 # 3 does not divide hidden 32
    ("projector.window=0", "window"),
    ("projector.dropout=1.5", "dropout"),
    ("lora.rank=0", "rank"),
    ("lora.targets=[q_prj]", "targets"),            # a typo would silently train no adapter
    ("tokens.mask=-1", "mask"),
    ("tokens.mask=500", "mask"),                    # past the 128-entry embedding table
    ("llm.norm_eps=.inf", "norm_eps"),
    ("projector.init_std=.nan", "init_std"),
])
def test_impossible_model_sizes_name_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"tiny\.yaml\.[a-z]+\.{field}: "):
        load_model_config("tiny", [override])


def test_data_and_decode_settings_are_checked_against_each_other_and_the_model(model_dir, tmp_path, capsys):  # noqa: F811
    for override, field in (("num_workers=-1", "num_workers"), ("worker_buffer_size=0", "worker_buffer_size"),
                            ("read_threads=0", "read_threads")):
        with pytest.raises(ConfigError, match=field):
            load_data_config(None, [override])
    with pytest.raises(ConfigError, match="num_workers"):  # built from a flag, not YAML: still a UserError
        DataConfig(num_workers=-2)
    _fails(capsys, ["evaluate", "--model", str(model_dir), "--data", "synthetic:n=2", "--workers", "-1",
                    "--out", str(tmp_path / "e")], "--workers")
    for temperature in (float("nan"), float("inf"), -1.0):
        with pytest.raises(DecodeConfigError, match="temperature"):
            validate(DecodeConfig(temperature=temperature))
    cfg = load_model_dir(model_dir).config  # llm.max_len 1024; prompt + 92 audio tokens before the canvas
    check_fits_model(DecodeConfig(gen_len=512, steps=512), cfg)
    with pytest.raises(DecodeConfigError, match="gen_len.*llm.max_len 1024"):
        check_fits_model(DecodeConfig(gen_len=1 << 20, steps=64, block_length=1 << 20), cfg)
    with pytest.raises(DecodeConfigError, match="max_new_tokens"):
        check_fits_model(DecodeConfig(decoder="autoregressive", max_new_tokens=4096), cfg)
    # the commands refuse it before reading audio or compiling anything
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    _fails(capsys, ["transcribe", "--model", str(model_dir), str(audio), "--gen-len", "1000000", "--steps", "64"],
           "gen_len", "llm.max_len")
    manifest, first = tmp_path / "m.jsonl", tmp_path / "fp.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav", "text": "x"}) + "\n")
    first.write_text(json.dumps({"id": "a", "hypothesis": "x"}) + "\n")
    _fails(capsys, ["deliberate", "--model", str(model_dir), "--manifest", str(manifest), "--first-pass", str(first),
                    "--gen-len", "1000000"], "gen_len", "llm.max_len")
    _fails(capsys, ["deliberate", "--model", str(model_dir), "--manifest", str(manifest), "--first-pass", str(first),
                    "--gen-len", "0"], "gen_len: 0 must be positive")  # not silently the default
    _fails(capsys, ["evaluate", "--model", str(model_dir), "--data", "synthetic:n=2",
                    "--decode", "gen_len=1000000,steps=64,block_length=1000000", "--out", str(tmp_path / "e")],
           "gen_len", "llm.max_len")


def test_empty_model_dir_config_is_named_not_replaced_by_paper_sizes(model_dir, tmp_path):  # noqa: F811
    empty = tmp_path / "empty"
    shutil.copytree(model_dir, empty)
    (empty / "config.yaml").write_text("")
    with pytest.raises(CheckpointError, match="config.yaml: the config is empty"):
        load_model_dir(empty)


def _mutate(d: dict, **changes) -> dict:
    return {**d, **changes}


def test_wrong_types_in_checkpoint_configs_name_the_file_and_key(tmp_path):
    llm = load_model_config("tiny").llm
    llada = llada_config_to_hf(llm)
    for bad, key in ((_mutate(llada, n_layers="two"), "n_layers"), (_mutate(llada, d_model=64.5), "d_model"),
                     (_mutate(llada, rope_theta="big"), "rope_theta"), (_mutate(llada, weight_tying="no"), "weight_tying"),
                     (_mutate(llada, n_heads=3), "n_heads"), (_mutate(llada, vocab_size=-1, embedding_size=None),
                                                             "vocab_size")):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=rf"config.json: .*{key}"):
            llada_config_from_hf(path)
    llama = llama_config_to_hf(LLMConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                         head_dim=16, mlp_hidden=128, causal=True))
    for bad, key in ((_mutate(llama, num_hidden_layers="two"), "num_hidden_layers"),
                     (_mutate(llama, num_key_value_heads=3), "n_kv_heads"),
                     (_mutate(llama, rms_norm_eps=[1e-6]), "rms_norm_eps")):
        with pytest.raises(CheckpointError, match=key):
            llama_config_from_hf(bad)
    whisper = whisper_config_to_hf(WhisperConfig())
    with pytest.raises(CheckpointError, match="d_model"):
        whisper_config_from_hf(_mutate(whisper, d_model="384"))
    with pytest.raises(CheckpointError, match="token id"):
        WhisperGenerationConfig.from_dicts(whisper, {"eos_token_id": "end"})
    adapter = tmp_path / "adapter_config.json"
    for bad, key in (({"r": "eight"}, "r"), ({"lora_alpha": None}, "lora_alpha"), ({"lora_dropout": 2.0}, "dropout")):
        adapter.write_text(json.dumps({**adapter_config(LoRAConfig(), base_model=None, task_type=None), **bad}))
        with pytest.raises(CheckpointError, match=rf"adapter_config.json: .*{key}"):
            lora_config_from_adapter(adapter)


def test_integer_tensor_for_a_float_parameter_is_an_error_not_a_cast():
    import jax

    target = {"w": jax.ShapeDtypeStruct((2, 3), np.float32)}
    ok = import_params(DictSource({"w": np.ones((2, 3), np.float16)}), [Rule("w", "w")], target)
    assert ok["w"].dtype == np.float32
    for bad, match in ((np.ones((2, 3), np.int32), "dtype int32"), (np.ones((2, 3), bool), "dtype bool"),
                       (np.full((2, 3), np.nan, np.float32), "6 NaN / inf"),
                       (np.array([[1, np.inf, 2], [3, 4, np.nan]], ml_dtypes.bfloat16), "2 NaN / inf"),
                       (np.array([[1, 2, 3], [4, 5, -np.inf]], np.float16), "1 NaN / inf")):
        with pytest.raises(CheckpointError, match=f"<memory>: tensor 'w' .*{match}"):
            import_params(DictSource({"w": bad}), [Rule("w", "w")], target)


def test_output_paths_of_the_wrong_kind(model_dir, tmp_path, capsys):  # noqa: F811
    a_file = tmp_path / "results"
    a_file.write_text("x")
    _fails(capsys, ["evaluate", "--model", str(model_dir), "--data", "synthetic:n=2", "--out", str(a_file)],
           "existing file")
    (tmp_path / "folder").mkdir()
    _fails(capsys, ["transcribe", "--model", str(model_dir), str(a_file), "--output", str(tmp_path / "folder")],
           "is a folder")
    # (/dev/stdout at a terminal or into a pipe is the same case; under pytest it is a file)
    _fails(capsys, ["transcribe", "--model", str(model_dir), str(a_file), "--output", "/dev/null"],
           "/dev/null: --output is not a regular file or folder (a device, pipe or socket)")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    _fails(capsys, ["evaluate", "--model", str(model_dir), "--data", "synthetic:n=2", "--out", str(pipe)],
           "--out is not a regular file or folder")
    assert isinstance(ConfigError("x"), UserError)


def test_hostile_flags_and_binary_files_given_as_text(model_dir, tmp_path, capsys):  # noqa: F811
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF\x80\xff\xfe" * 20)  # not UTF-8
    _fails(capsys, ["deliberate", "--model", str(model_dir), "--manifest", str(audio), "--first-pass", str(audio)],
           "a.wav: cannot read the manifest")
    _fails(capsys, ["evaluate", "--model", str(model_dir), "--data", "synthetic:n=2", "--first-pass", str(audio),
                    "--out", str(tmp_path / "e")], "a.wav: cannot read the first-pass file")
    _fails(capsys, ["evaluate", "--model", str(model_dir), "--data", "synthetic:n=2", "--decode", " ",
                    "--out", str(tmp_path / "e")], "empty --decode config")
    with pytest.raises(SystemExit) as e:  # argparse usage error, not an OverflowError from jax.random.key
        cli.main(["evaluate", "--model", str(model_dir), "--data", "synthetic:n=2", "--out", str(tmp_path / "e"),
                  "--seed", str(2 ** 70)])
    assert e.value.code == 2 and "does not fit a 64-bit seed" in capsys.readouterr().err



def test_a_huge_batch_size_is_not_padded_past_the_inputs(model_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    from whisper_llada_jax.inference import driver

    seen = {}

    def fake(model_dir, items, cfg, batch_size=None, **kw):
        seen.update(batch_size=batch_size, cfg_batch=cfg.batch_size)
        return iter([{"id": it["id"], "hypothesis": ""} for it in items])

    monkeypatch.setattr(driver, "transcribe_files", fake)
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(1600, np.float32), 16000)
    assert cli.main(["transcribe", "--model", str(model_dir), str(audio), "--batch-size", str(10 ** 9)]) == 0
    assert seen == {"batch_size": 1, "cfg_batch": 1}  # not a (10**9, n_mels, frames) feature array

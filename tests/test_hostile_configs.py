"""Hostile configs and model files, each refused with one error naming the file / field / tensor
(never a traceback, never a silently different model): duplicate YAML keys, empty config files,
out-of-range optimiser settings and mesh rules, tensors of the right size in the wrong layout,
files a MODEL_DIR would ignore, a tokenizer that disagrees with the model, broken shard indexes,
and a resume whose model differs from its checkpoints'."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from whisper_llada_jax.checkpoints.model_dir import load_model_dir
from whisper_llada_jax.checkpoints.tensors import IDENTITY, TRANSPOSE, DictSource, Rule, SafetensorsSource, import_params
from whisper_llada_jax.config import load_model_config, parse_overrides, parse_yaml, read_yaml, with_defaults
from whisper_llada_jax.decoding.config import load_decode_config
from whisper_llada_jax.errors import CheckpointError, ConfigError
from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json
from whisper_llada_jax.training.config import load_train_config
from tests.test_output_safety import _fails, model_dir  # noqa: F401  (the tiny MODEL_DIR fixture)


# --------------------------------------------------------------------------- YAML
@pytest.mark.parametrize("text, key", [
    ("steps: 5\nsteps: 7\n", "steps"),
    ("optim:\n  peak_lr: 1.0e-4\n  peak_lr: 3.0e-3\n", "peak_lr"),
    ("optim:\n  peak_lr: 1.0e-4\nsteps: 3\noptim:\n  end_lr: 1.0e-5\n", "optim"),  # the first section dropped
])
def test_a_key_given_twice_is_an_error_naming_it_not_last_one_wins(tmp_path, text, key):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"train\.yaml: not valid YAML \(duplicate key '{key}' \(first on line"):
        load_train_config(path)


def test_merge_keys_may_be_overridden_and_overrides_parse_strictly():
    # `<<: *anchor` then an explicit key is YAML's way to override, not a duplicate
    assert parse_yaml("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 5\n")["d"] == {"b": 5, "c": 2}
    with pytest.raises(ConfigError, match=r"override 'optim.peak_lr=\[1': the value is not valid YAML"):
        parse_overrides(["optim.peak_lr=[1"])
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_overrides(["mesh.rules={a: 1, a: 2}"])
    with pytest.raises(ConfigError, match="empty field name"):
        parse_overrides(["optim..peak_lr=1"])
    with pytest.raises(ConfigError, match=r"override 'optim.peak_lr=2': optim.peak_lr is set twice"):
        load_train_config("tiny", ["optim.peak_lr=1", "steps=3", "optim.peak_lr=2"])
    # a caller's defaults composed under the user's list: the user's value wins, once
    cfg = load_train_config("tiny", with_defaults(["steps=3", "mesh.data=-1"], ["steps=5"]))
    assert cfg.steps == 5 and cfg.mesh.data == -1
    with pytest.raises(ConfigError, match="steps is set twice"):
        load_train_config("tiny", with_defaults(["mesh.data=-1"], ["steps=5", "steps=6"]))


def test_an_empty_config_file_is_an_error_not_every_default(tmp_path):
    for name, load in (("train", load_train_config), ("model", load_model_config), ("decode", load_decode_config)):
        path = tmp_path / f"{name}.yaml"
        path.write_text("# all commented out\n")
        with pytest.raises(ConfigError, match=rf"{name}\.yaml: the config file is empty") as e:
            load(path)
        assert "{}" in e.value.hint
        path.write_text("{}\n")  # the explicit way to ask for every default
        load(path)
    assert read_yaml(path) == {}
    path.write_text("a: " + "[" * 5000 + "]" * 5000)  # the parser's recursion limit: not a traceback
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_yaml(path)


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("override, field", [
    ("optim.peak_lr=.nan", "peak_lr"),
    ("optim.peak_lr=-1.0", "peak_lr"),
    ("optim.peak_lr=0", "peak_lr"),               # trains nothing
    ("optim.init_lr=.inf", "init_lr"),
    ("optim.end_lr=-1.0e-5", "end_lr"),
    ("optim.b1=1.5", "b1"),
    ("optim.b2=1.0", "b2"),
    ("optim.eps=0", "eps"),
    ("optim.weight_decay=-0.5", "weight_decay"),
    ("optim.clip_norm=0", "clip_norm"),
    ("optim.warmup_steps=-5", "warmup_steps"),
    ("optim.decay_steps=0", "decay_steps"),
    ("optim.grad_accum=0", "grad_accum"),
    ("optim.trainable=['(']", "trainable"),
    ("t_eps=1.5", "t_eps"),
    ("t_eps=-0.1", "t_eps"),
    ("substitution_range=[50, 20]", "substitution_range"),
    ("mesh.rules=[[1, 2, 3]]", "rules"),
    ("mesh.rules=[[embed, bogus]]", "rules"),
])
def test_impossible_training_numbers_name_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"tiny\.yaml\b.*{field}"):
        load_train_config("tiny", [override])


def test_valid_edge_values_still_load():
    cfg = load_train_config("tiny", ["optim.warmup_steps=0", "optim.weight_decay=0", "optim.clip_norm=1.0",
                                     "optim.init_lr=0", "t_eps=0.0", "substitution_range=[7, 100]",
                                     "mesh.rules=[[embed, fsdp], [vocab, null], [mlp, [fsdp, tensor]]]"])
    assert cfg.optim.clip_norm == 1.0 and len(cfg.mesh.rules) == 3


# --------------------------------------------------------------------------- tensor layouts
def test_a_tensor_of_the_right_size_in_the_wrong_layout_is_refused():
    import jax

    abstract = {"dense": {"kernel": jax.ShapeDtypeStruct((4, 6), np.float32)},
                "norm": {"scale": jax.ShapeDtypeStruct((6,), np.float32)}}
    rules = [Rule("dense.weight", "dense/kernel", TRANSPOSE), Rule("norm.weight", "norm/scale", IDENTITY)]
    good = {"dense.weight": np.ones((6, 4), np.float32), "norm.weight": np.ones(6, np.float32)}
    import_params(DictSource(good), rules, abstract)
    # PyTorch (out, in) stored as (in, out): 24 numbers either way, but scrambled by a reshape
    with pytest.raises(CheckpointError, match=r"dense.weight: checkpoint \(4, 6\) vs model \(4, 6\) \(transpose layout: needs \(6, 4\)\)"):
        import_params(DictSource({**good, "dense.weight": np.ones((4, 6), np.float32)}), rules, abstract)
    for shape in ((6, 1), (2, 3), ()):
        with pytest.raises(CheckpointError, match="mis-shaped tensor"):
            import_params(DictSource({**good, "norm.weight": np.ones(shape, np.float32)}), rules, abstract)


def _copy(model_dir, tmp_path, name="m"):  # noqa: F811
    out = tmp_path / name
    shutil.copytree(model_dir, out)
    return out


def test_a_transposed_model_dir_tensor_is_refused(model_dir, tmp_path):  # noqa: F811
    bad = _copy(model_dir, tmp_path)
    tensors = load_file(str(bad / "params.safetensors"))
    key = "llm/blocks_0/ff_proj/kernel"
    assert tensors[key].shape[0] != tensors[key].shape[1]
    tensors[key] = np.ascontiguousarray(tensors[key].T)
    save_file(tensors, str(bad / "params.safetensors"))
    with pytest.raises(CheckpointError, match=rf"mis-shaped tensor\(s\): {key}: checkpoint \(128, 64\) vs model \(64, 128\)"):
        load_model_dir(bad)


# --------------------------------------------------------------------------- MODEL_DIR entries
def test_files_a_model_dir_would_ignore_are_refused(model_dir, tmp_path, capsys):  # noqa: F811
    m = _copy(model_dir, tmp_path)
    (m / "README.md").write_text("notes")  # not a model file: left alone
    load_model_dir(m)
    for name in ("decode.yml", "params-00002-of-00002.safetensors", "adapter_config.json"):
        (m / name).write_text("x")
        _fails(capsys, ["export", "--model", str(m), "--format", "peft", "--out", str(tmp_path / "out")],
               f"{m / name}: a MODEL_DIR reads no such file", "rename")
        (m / name).unlink()
    (m / "decode.yaml").mkdir()
    with pytest.raises(CheckpointError, match=r"decode.yaml: is a folder, not the MODEL_DIR's decode.yaml file"):
        load_model_dir(m)
    (m / "decode.yaml").rmdir()
    _fails(capsys, ["export", "--model", str(m / "params.safetensors"), "--format", "peft", "--out",
                    str(tmp_path / "out")], "params.safetensors: is a file, not a MODEL_DIR folder", str(m))
    assert not (tmp_path / "out").exists()


def _set_tokens(folder, **tokens):
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["tokens"].update(tokens)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_a_tokenizer_that_disagrees_with_the_model_is_refused(model_dir, tmp_path):  # noqa: F811
    m = _copy(model_dir, tmp_path)
    mask = load_model_dir(m).config.tokens.mask
    _set_tokens(m, mask=mask + 40)  # a valid id, but not the tokenizer's <|mdm_mask|>
    with pytest.raises(CheckpointError, match=rf"special ids differ .*mask: config {mask + 40} vs tokenizer {mask}"):
        load_model_dir(m)
    m2 = _copy(model_dir, tmp_path, "m2")
    # more tokens than embedding rows: ids past the table would be clamped on device, silently
    build_tokenizer_json([" ".join(f"w{i}" for i in range(400))] * 2, m2 / "tokenizer.json", vocab_size=300)
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens, more than the LLM's llm.vocab_size 128"):
        load_model_dir(m2)


def test_first_pass_and_decode_files_are_checked(model_dir, tmp_path):  # noqa: F811
    m = _copy(model_dir, tmp_path)
    (m / "first_pass.json").write_text('{"whisper": 5}')
    with pytest.raises(CheckpointError, match=r"first_pass.json: expected \{\"whisper\": DIR\}"):
        load_model_dir(m)
    (m / "first_pass.json").unlink()
    (m / "decode.yaml").write_text("gen_len: 4096\nsteps: 64\n")  # longer than llm.max_len 1024
    with pytest.raises(CheckpointError, match=r"decode.yaml: decode config field gen_len: .* exceeds the model's llm.max_len 1024"):
        load_model_dir(m)
    (m / "decode.yaml").write_text("gen_len: 8\nsteps: 8\nsteps: 4\n")
    with pytest.raises(CheckpointError, match=r"decode.yaml: not valid YAML \(duplicate key 'steps'"):
        load_model_dir(m)


# --------------------------------------------------------------------------- shard indexes
def _sharded(tmp_path, index=None):
    d = tmp_path / "hf"
    d.mkdir(parents=True)
    save_file({"a": np.ones(2, np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"b": np.ones(3, np.float32)}, str(d / "model-00002-of-00002.safetensors"))
    wm = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm} if index is None else index))
    return d


@pytest.mark.parametrize("index, match", [
    ([["a", "model-00001-of-00002.safetensors"]], "top level must be a JSON object"),
    ({"weight_map": [["a", "x"]]}, "weight_map must map tensor names to shard files"),
    ({"weight_map": {}}, "weight_map must map tensor names to shard files"),
    ({"weight_map": {"a": "../model-00001-of-00002.safetensors"}}, "must name a shard file in the same folder"),
    ({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                     "c": "model-00002-of-00002.safetensors"}}, r"1 tensor\(s\) are not in the shard the index names: c"),
    ({"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}},
     r"not in the shard the index names: a"),
])
def test_a_broken_shard_index_is_one_clear_error(tmp_path, index, match):
    assert sorted(SafetensorsSource(_sharded(tmp_path / "ok")).keys()) == ["a", "b"]
    with pytest.raises(CheckpointError, match=match):
        SafetensorsSource(_sharded(tmp_path, index))


def test_unindexed_folder_reads_model_safetensors_and_refuses_ambiguous_shards(tmp_path):
    # whisper-large-v3 ships model.safetensors (fp16) and fp32 shards of the same tensors beside it
    save_file({"a": np.ones(2, np.float16)}, str(tmp_path / "model.safetensors"))
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "model.fp32-00001-of-00001.safetensors"))
    src = SafetensorsSource(tmp_path)
    assert src.keys() == ["a"] and src.get("a").dtype == np.float16
    (tmp_path / "model.safetensors").rename(tmp_path / "part1.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'a' is in both"):
        SafetensorsSource(tmp_path)


# --------------------------------------------------------------------------- training
def _run_dir(tmp_path, tok):
    """A workdir as a tiny run leaves it: run/ metadata and one checkpoint step."""
    from whisper_llada_jax.config import to_dict
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer
    from whisper_llada_jax.training.trainer import model_config

    work = tmp_path / "run"
    (work / "checkpoints" / "3").mkdir(parents=True)
    (work / "run").mkdir()
    mcfg = model_config(load_train_config("tiny"))
    mcfg = dataclasses.replace(mcfg, tokens=LLaDATokenizer(tok).token_config())
    (work / "run" / "config.yaml").write_text(yaml.safe_dump(to_dict(mcfg), sort_keys=False))
    (work / "run" / "tokenizer.json").write_text(tok.read_text())
    return work, mcfg


def test_resuming_with_a_same_shaped_but_different_model_is_refused(tmp_path, capsys):
    from whisper_llada_jax.training.checkpointing import checkpoint_path
    from whisper_llada_jax.training.export import check_resume

    tok = build_tokenizer_json(["the cat sat on the mat"] * 4, tmp_path / "tok" / "tokenizer.json")
    work, mcfg = _run_dir(tmp_path, tok)
    ck = checkpoint_path(work / "checkpoints")
    check_resume(work, ck, mcfg, tok.read_text())  # the same model
    # compute settings and dropout may change on resume
    check_resume(work, ck, dataclasses.replace(mcfg, llm=dataclasses.replace(mcfg.llm, remat="full", dtype="bfloat16"),
                                               lora=dataclasses.replace(mcfg.lora, dropout=0.2)), tok.read_text())
    with pytest.raises(ConfigError, match=r"resuming a run of another model \(lora.alpha: checkpoints 16.0 vs now 8.0\)"):
        check_resume(work, ck, dataclasses.replace(mcfg, lora=dataclasses.replace(mcfg.lora, alpha=8.0)), tok.read_text())
    other = build_tokenizer_json(["an unrelated corpus of other words"] * 4, tmp_path / "other" / "tokenizer.json")
    with pytest.raises(ConfigError, match="tokenizer: not the .* the checkpoints were trained with"):
        check_resume(work, ck, mcfg, other.read_text())
    check_resume(work, checkpoint_path(tmp_path / "fresh"), mcfg, other.read_text())  # nothing to resume: a new run
    # the trainer checks before it replaces run/ (the check runs before anything compiles)
    before = (work / "run" / "config.yaml").read_text()
    _fails(capsys, ["train", "--config", "tiny", f"tokenizer={tok}", f"workdir={work}", "steps=1",
                    "model_overrides=[whisper.input_frames=80, lora.alpha=8.0]"],
           "resuming a run of another model (lora.alpha", "checkpoint.restore=false")
    assert (work / "run" / "config.yaml").read_text() == before


def test_a_run_recorded_before_a_model_field_existed_resumes_as_added_model_fields_says(tmp_path, monkeypatch):
    from whisper_llada_jax import config as config_lib
    from whisper_llada_jax.training.checkpointing import checkpoint_path
    from whisper_llada_jax.training.export import check_resume

    tok = build_tokenizer_json(["the cat sat on the mat"] * 4, tmp_path / "tok" / "tokenizer.json")
    work, mcfg = _run_dir(tmp_path, tok)
    recorded = yaml.safe_load((work / "run" / "config.yaml").read_text())
    del recorded["llm"]["rope_theta"]  # as if rope_theta were new since this run started
    (work / "run" / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    ck = checkpoint_path(work / "checkpoints")
    monkeypatch.setattr(config_lib, "ADDED_MODEL_FIELDS", {"llm.rope_theta": mcfg.llm.rope_theta})
    check_resume(work, ck, mcfg, tok.read_text())  # the older record computes what this model does
    monkeypatch.setattr(config_lib, "ADDED_MODEL_FIELDS", {"llm.rope_theta": 1.0})
    with pytest.raises(ConfigError, match=r"resuming a run of another model \(llm.rope_theta: checkpoints 1.0 vs"):
        check_resume(work, ck, mcfg, tok.read_text())


def test_init_from_with_a_tokenizer_of_another_model_is_refused(model_dir, tmp_path):  # noqa: F811
    from whisper_llada_jax.training.trainer import load_tokenizer, model_config

    cfg = load_train_config("tiny", [f"init_from={model_dir}"])
    load_tokenizer(cfg, model_config(cfg))
    from tokenizers import Tokenizer, models

    from whisper_llada_jax.text.llada_tokenizer import SPECIALS

    # every LLaDA special token, at other ids than the model's (mask 12, not 3)
    other = tmp_path / "other.json"
    tk = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, **{t: 10 + i for i, t in enumerate(SPECIALS)}},
                                    unk_token="<unk>"))
    tk.add_special_tokens(list(SPECIALS))
    tk.save(str(other))
    cfg = load_train_config("tiny", [f"init_from={model_dir}", f"tokenizer={other}"])
    with pytest.raises(CheckpointError, match=r"for init_from .* special ids differ .*mask: config 3 vs tokenizer 12"):
        load_tokenizer(cfg, model_config(cfg))


@pytest.mark.parametrize("extra", [{"alpha_pattern": {"q_proj": 64}}, {"rank_pattern": {"k_proj": 16}},
                                   {"layers_to_transform": [0]}, {"modules_to_save": ["ff_out"]}, {"bias": "all"}])
def test_peft_settings_one_lora_config_cannot_hold_are_refused(tmp_path, extra):
    from whisper_llada_jax.checkpoints.peft import adapter_config, lora_config_from_adapter
    from whisper_llada_jax.config import LoRAConfig

    path = tmp_path / "adapter_config.json"
    plain = adapter_config(LoRAConfig(), base_model=None, task_type="CAUSAL_LM")
    path.write_text(json.dumps(plain))
    assert lora_config_from_adapter(path).rank == 8
    path.write_text(json.dumps({**plain, **extra}))
    # alpha_pattern would silently give q_proj another scale; the others drop or misplace tensors
    with pytest.raises(CheckpointError, match=rf"adapter_config.json: {next(iter(extra))}: .* is not supported"):
        lora_config_from_adapter(path)


def test_llada_config_options_this_model_lacks_are_refused():
    from whisper_llada_jax.checkpoints.llada_hf import llada_config_from_hf, llada_config_to_hf

    hf = llada_config_to_hf(load_model_config("tiny").llm)
    assert llada_config_from_hf({**hf, "clip_qkv": None, "multi_query_attention": None}).n_layers == 2
    for key, value in (("clip_qkv", 8.0), ("multi_query_attention", True)):
        with pytest.raises(CheckpointError, match=rf"config.json: {key}={value!r} is not supported"):
            llada_config_from_hf({**hf, key: value})


def test_a_folder_of_pytorch_weights_only_says_to_convert(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="no \\*.safetensors files found") as e:
        SafetensorsSource(tmp_path)
    assert "pytorch_model.bin" in e.value.hint and "safe_serialization=True" in e.value.hint


def test_a_run_or_hf_folder_given_as_model_dir_says_what_it_is(tmp_path):
    (tmp_path / "run" / "run").mkdir(parents=True)
    (tmp_path / "run" / "run" / "train.yaml").write_text("steps: 1\n")
    with pytest.raises(CheckpointError, match="not a MODEL_DIR") as e:
        load_model_dir(tmp_path / "run")
    assert "export --checkpoint" in e.value.hint
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a MODEL_DIR") as e:
        load_model_dir(tmp_path / "hf")
    assert "whisper-llada import" in e.value.hint


def test_a_model_dir_config_missing_a_field_no_shape_shows_is_refused(model_dir, tmp_path):  # noqa: F811
    m = _copy(model_dir, tmp_path)
    cfg = yaml.safe_load((m / "config.yaml").read_text())
    for section, field in (("llm", "dtype"), ("llm", "remat"), ("lora", "dropout"), (None, "precision")):
        (cfg[section] if section else cfg).pop(field)  # compute settings: their defaults are fine
    (m / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    load_model_dir(m)
    # the default rope_theta (500000) and lora.alpha would load without a shape error, as another model
    del cfg["llm"]["rope_theta"], cfg["lora"]["alpha"]
    (m / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(CheckpointError, match=r"config.yaml: missing field\(s\) \['llm.rope_theta', 'lora.alpha'\]"):
        load_model_dir(m)

"""MODEL_DIR and the import / export CLI on tiny models: bit-identical round trips for MODEL_DIR
and the reference .pth, HF / PEFT export, CTranslate2 Whisper import, and clear errors."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from tests.reference_torch.composite import build_reference, write_checkpoints
from whisper_llada_jax import cli
from whisper_llada_jax.checkpoints.llada_hf import import_llada_hf
from whisper_llada_jax.checkpoints.model_dir import load_model_dir, save_model_dir
from whisper_llada_jax.checkpoints.peft import import_peft
from whisper_llada_jax.checkpoints.reference_pth import read_pth
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json

CFG = load_model_config("tiny", ["whisper.max_source_positions=200"])
CORPUS = ["the cat sat on the mat", "speech goes in text comes out", "hello world"] * 3
FILES = ("config.yaml", "tokenizer.json", "params.safetensors", "lora.safetensors")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    ref = build_reference(CFG, seed=5)
    tok = build_tokenizer_json(CORPUS, root / "tok" / "tokenizer.json")
    whisper, llada, pth = write_checkpoints(ref, CFG, root / "ckpt", tok)
    model = root / "model"
    assert cli.main(["import", "--whisper", str(whisper), "--llada", str(llada), "--projector-checkpoint", str(pth),
                     "--config", "tiny", "--first-pass", "bundled:tiny.en", "--out", str(model)]) == 0
    return ref, root, whisper, llada, pth, model


def _same_files(a, b, names=FILES):
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_import_builds_a_model_dir_from_the_checkpoints(setup):
    ref, _, _, _, _, model = setup
    loaded = load_model_dir(model)
    tok = LLaDATokenizer(model / "tokenizer.json")
    assert loaded.config.tokens.prompt_ids == tuple(tok.chat_prompt_ids("Transcribe the audio:"))
    assert loaded.config.whisper.max_source_positions == 200  # sizes come from the checkpoint
    assert loaded.first_pass == "bundled:tiny.en"
    p = loaded.variables["params"]
    np.testing.assert_array_equal(p["encoder"]["layers_1"]["fc1"]["kernel"],
                                  ref.whisper_state["model.encoder.layers.1.fc1.weight"].numpy().T)
    np.testing.assert_array_equal(p["llm"]["blocks_0"]["ff_proj"]["kernel"],
                                  ref.llada_state["model.transformer.blocks.0.ff_proj.weight"].numpy().T)
    np.testing.assert_array_equal(p["projector"]["linear_proj"]["bias"], ref.pth_state["linear_proj.bias"].numpy())
    np.testing.assert_array_equal(
        loaded.variables["lora"]["llm"]["blocks_1"]["k_proj"]["lora_a"],
        ref.pth_state["llada.base_model.model.model.transformer.blocks.1.k_proj.lora_A.default.weight"].numpy().T)


def test_model_dir_and_pth_round_trips_are_bit_identical(setup, tmp_path):
    ref, _, whisper, llada, pth, model = setup
    loaded = load_model_dir(model)
    save_model_dir(tmp_path / "again", loaded.config, loaded.variables, loaded.tokenizer.json,
                   first_pass=loaded.first_pass)
    _same_files(model, tmp_path / "again", FILES + ("first_pass.json",))
    # MODEL_DIR -> .pth -> MODEL_DIR
    assert cli.main(["export", "--model", str(model), "--format", "reference-pth", "--out", str(tmp_path / "pth")]) == 0
    exported = read_pth(tmp_path / "pth" / "checkpoint.pth")["model"]
    for k, t in exported.items():
        assert torch.equal(t, ref.pth_state[k]), k
    assert cli.main(["import", "--whisper", str(whisper), "--llada", str(llada), "--projector-checkpoint",
                     str(tmp_path / "pth" / "checkpoint.pth"), "--config", "tiny", "--out", str(tmp_path / "m2")]) == 0
    _same_files(model, tmp_path / "m2")


def test_export_hf_and_peft(setup, tmp_path):
    _, _, _, _, _, model = setup
    loaded = load_model_dir(model)
    llm, lora = loaded.variables["params"]["llm"], loaded.variables["lora"]["llm"]
    assert cli.main(["export", "--model", str(model), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    _, back = import_llada_hf(tmp_path / "hf", loaded.config.llm)
    _, lora_hf = import_peft(tmp_path / "hf" / "adapter", loaded.config.llm, lora_cfg=loaded.config.lora)
    jax.tree.map(np.testing.assert_array_equal, lora_hf, lora)
    np.testing.assert_array_equal(back["wte"]["embedding"], llm["wte"]["embedding"])
    np.testing.assert_array_equal(back["blocks_1"]["q_proj"]["kernel"], llm["blocks_1"]["q_proj"]["kernel"])
    assert cli.main(["export", "--model", str(model), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    _, lora_back = import_peft(tmp_path / "peft", loaded.config.llm, lora_cfg=loaded.config.lora)
    np.testing.assert_array_equal(lora_back["blocks_0"]["v_proj"]["lora_b"], lora["blocks_0"]["v_proj"]["lora_b"])
    assert cli.main(["export", "--model", str(model), "--format", "hf", "--merge-lora", "--out",
                     str(tmp_path / "merged")]) == 0
    _, merged = import_llada_hf(tmp_path / "merged", loaded.config.llm)
    q = llm["blocks_0"]["q_proj"]["kernel"] + lora["blocks_0"]["q_proj"]["lora_a"] @ lora["blocks_0"]["q_proj"]["lora_b"] \
        * loaded.config.lora.scale
    np.testing.assert_allclose(merged["blocks_0"]["q_proj"]["kernel"], q, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "merged" / "adapter").exists()


def test_ctranslate2_whisper_and_fresh_projector(setup, tmp_path, capsys):
    _, _, _, llada, _, _ = setup
    tiny_en = ["--set", "whisper.d_model=384", "--set", "whisper.encoder_layers=4", "--set", "whisper.encoder_heads=6",
               "--set", "whisper.encoder_ffn=1536"]
    assert cli.main(["import", "--whisper", "bundled:tiny.en", "--llada", str(llada), "--config", "tiny", *tiny_en,
                     "--seed", "3", "--out", str(tmp_path / "ct2")]) == 0
    assert "freshly initialised (seed 3)" in capsys.readouterr().out
    loaded = load_model_dir(tmp_path / "ct2")
    assert loaded.config.whisper.max_source_positions == 1500
    assert loaded.variables["params"]["encoder"]["conv1"]["kernel"].shape == (3, 80, 384)
    assert loaded.variables["params"]["projector"]["bert"]["layer_0"]["crossattention"]["self"]["key"]["kernel"].shape == (384, 32)
    lora = loaded.variables["lora"]["llm"]["blocks_0"]["q_proj"]
    assert float(np.abs(lora["lora_b"]).max()) == 0.0 and float(np.abs(lora["lora_a"]).max()) > 0  # PEFT init
    # the same Whisper with the tiny config's sizes is refused with the fields named
    assert cli.main(["import", "--whisper", "bundled:tiny.en", "--llada", str(llada), "--config", "tiny",
                     "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "whisper.d_model: checkpoint 384 vs config 64" in err and not (tmp_path / "bad").exists()


def test_bad_model_dirs_give_clear_errors(setup, tmp_path, capsys):
    _, root, whisper, _, _, model = setup
    with pytest.raises(CheckpointError, match="not a MODEL_DIR"):
        load_model_dir(root)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_dir(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    data = (broken / "params.safetensors").read_bytes()
    (broken / "params.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model_dir(broken)
    (broken / "params.safetensors").unlink()
    with pytest.raises(CheckpointError, match="params.safetensors is missing"):
        load_model_dir(broken)
    shape = tmp_path / "shape"
    shutil.copytree(model, shape)
    text = (shape / "config.yaml").read_text().replace("mlp_hidden: 128", "mlp_hidden: 96")
    (shape / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_model_dir(shape)
    # a Whisper directory given as the LLaDA checkpoint
    assert cli.main(["import", "--whisper", str(whisper), "--llada", str(whisper), "--config", "tiny",
                     "--out", str(tmp_path / "wrong")]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(root), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert "not a MODEL_DIR" in capsys.readouterr().err


def test_import_refuses_mismatched_inputs_before_writing(setup, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    _, _, whisper, llada, pth, _ = setup

    def fails(*match, **paths):
        argv = {"whisper": whisper, "llada": llada, "pth": pth, **paths}
        assert cli.main(["import", "--whisper", str(argv["whisper"]), "--llada", str(argv["llada"]),
                         "--projector-checkpoint", str(argv["pth"]), "--config", "tiny",
                         "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and all(m in err for m in match), err
        assert not (tmp_path / "out").exists()

    fails("is a file; a Whisper checkpoint is the folder holding it", whisper=whisper / "model.safetensors")
    fails("is a file; the LLaDA checkpoint is the folder holding it", llada=llada / "config.json")
    fails("is a folder, not a .pth checkpoint file", pth=llada)
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "config.json").write_text("{}")
    (ct2 / "model.bin").mkdir()
    fails("model.bin: is a folder, not the checkpoint's model.bin file", whisper=ct2)
    # a tokenizer with more tokens than the LLM has embedding rows
    big = tmp_path / "big_llada"
    shutil.copytree(llada, big)
    build_tokenizer_json([" ".join(f"w{i}" for i in range(400))] * 2, big / "tokenizer.json", vocab_size=300)
    fails("tokenizer.json: the tokenizer has", "more than the LLM's llm.vocab_size 128", llada=big)
    # an encoder weight stored (in, out): the same element count as (out, in)
    flipped = tmp_path / "flipped_whisper"
    shutil.copytree(whisper, flipped)
    tensors = load_file(str(flipped / "model.safetensors"))
    key = "model.encoder.layers.0.fc1.weight"
    tensors[key] = np.ascontiguousarray(tensors[key].T)
    save_file(tensors, str(flipped / "model.safetensors"))
    fails(f"{key}: checkpoint (64, 128) vs model (64, 128) (transpose layout: needs (128, 64))", whisper=flipped)


def test_scanned_bf16_model_dir_round_trip(tmp_path):
    # The paper layout: scanned LLM layers, bf16 parameters; random values straight from NumPy.
    from flax import linen as nn

    from whisper_llada_jax.models.composite import abstract_variables

    cfg = load_model_config("tiny", ["llm.scan_layers=true", "llm.param_dtype=bfloat16", "llm.dtype=bfloat16"])
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: np.asarray(rng.normal(size=s.shape), s.dtype), nn.unbox(abstract_variables(cfg)))
    assert variables["params"]["llm"]["blocks"]["q_proj"]["kernel"].shape[0] == cfg.llm.n_layers
    tok = build_tokenizer_json(CORPUS, tmp_path / "tokenizer.json")
    save_model_dir(tmp_path / "m", cfg, variables, tok)
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.config == cfg
    assert loaded.variables["params"]["llm"]["blocks"]["ff_out"]["kernel"].dtype == jax.numpy.bfloat16
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded.variables, variables)
    save_model_dir(tmp_path / "m2", loaded.config, loaded.variables, loaded.tokenizer.json)
    _same_files(tmp_path / "m", tmp_path / "m2")


def test_decode_defaults_round_trip_and_are_what_the_commands_start_from(setup, tmp_path):
    from whisper_llada_jax.checkpoints.model_dir import read_decode_defaults
    from whisper_llada_jax.commands import deliberate, transcribe
    from whisper_llada_jax.decoding.config import DecodeConfig

    _, _, _, _, _, model = setup
    loaded = load_model_dir(model)
    assert loaded.decode is None and read_decode_defaults(model) == DecodeConfig()
    fields = {"gen_len": 8, "steps": 8, "block_length": 8}
    save_model_dir(tmp_path / "d", loaded.config, loaded.variables, loaded.tokenizer.json, decode=fields)
    again = load_model_dir(tmp_path / "d")
    assert again.decode == fields
    save_model_dir(tmp_path / "e", again.config, again.variables, again.tokenizer.json, decode=again.decode)
    _same_files(tmp_path / "d", tmp_path / "e", FILES + ("decode.yaml",))

    parser = cli.build_parser()
    args = parser.parse_args(["transcribe", "--model", str(tmp_path / "d"), "x.flac"])
    cfg = transcribe.decode_config(args)
    assert (cfg.gen_len, cfg.steps, cfg.block_length, cfg.batch_size) == (8, 8, 8, 16)
    args = parser.parse_args(["transcribe", "--model", str(tmp_path / "d"), "x.flac", "--decoder", "semi_ar",
                              "--block-length", "4"])
    assert (transcribe.decode_config(args).gen_len, transcribe.decode_config(args).block) == (8, 4)
    args = parser.parse_args(["deliberate", "--model", str(tmp_path / "d"), "--manifest", "m.jsonl",
                              "--first-pass", "f.jsonl", "--steps", "4"])
    cfg = deliberate.decode_config(args)
    assert (cfg.gen_len, cfg.steps, cfg.strategy) == (8, 4, "diffusion")
    args = parser.parse_args(["deliberate", "--model", str(model), "--manifest", "m.jsonl", "--first-pass", "f.jsonl"])
    assert (deliberate.decode_config(args).gen_len, deliberate.decode_config(args).steps) == (128, 64)

    # Bad fields are refused before anything is written; a bad file names itself.
    with pytest.raises(CheckpointError, match="steps: 9 exceeds gen_len 8"):
        save_model_dir(tmp_path / "bad", loaded.config, loaded.variables, loaded.tokenizer.json,
                       decode={"gen_len": 8, "steps": 9})
    assert not (tmp_path / "bad").exists()
    (tmp_path / "d" / "decode.yaml").write_text("gen_len: 8\nstep: 8\n")
    with pytest.raises(CheckpointError, match=r"decode.yaml: unknown field\(s\) \['step'\]"):
        load_model_dir(tmp_path / "d")


FIRST_FORMAT = Path(__file__).parent / "data" / "model_dir_fields.txt"


def test_model_fields_added_since_the_first_format_say_how_older_files_read():
    """Every ModelConfig field a MODEL_DIR must hold is one of the first format's or has its
    value for older files in ADDED_MODEL_FIELDS; none of the first format's was removed (an
    older config.yaml holding it would then be refused as an unknown field)."""
    from whisper_llada_jax import config as config_lib

    first = {line.strip() for line in FIRST_FORMAT.read_text().splitlines() if line.strip() and line[0] != "#"}
    now = {k for k in config_lib.dotted_fields(config_lib.to_dict(config_lib.ModelConfig()))
           if k not in config_lib.COMPUTE_FIELDS}
    assert not first - now, f"{sorted(first - now)}: fields of existing MODEL_DIRs removed from ModelConfig"
    unreadable = now - first - set(config_lib.ADDED_MODEL_FIELDS)
    assert not unreadable, (f"{sorted(unreadable)}: new ModelConfig fields without their value for MODEL_DIRs "
                            "written before them (config.ADDED_MODEL_FIELDS); every existing MODEL_DIR would be "
                            "refused for a missing field")


def test_a_model_dir_written_before_a_field_existed_reads_it_as_added_model_fields_says(tmp_path, monkeypatch):
    import yaml

    from tests._data_helpers import tiny_model_dir
    from whisper_llada_jax import config as config_lib

    model = tiny_model_dir(tmp_path)
    written = yaml.safe_load((model / "config.yaml").read_text())
    assert written["llm"]["rope_theta"] != 123.0
    del written["llm"]["rope_theta"]  # as if rope_theta were new since this MODEL_DIR was written
    (model / "config.yaml").write_text(yaml.safe_dump(written))
    with pytest.raises(CheckpointError, match=r"missing field\(s\) \['llm.rope_theta'\]"):
        load_model_dir(model)
    monkeypatch.setattr(config_lib, "ADDED_MODEL_FIELDS", {"llm.rope_theta": 123.0})
    assert load_model_dir(model).config.llm.rope_theta == 123.0
    written["llm"]["rope_theta"] = 77.0  # a file that holds the field keeps its value
    (model / "config.yaml").write_text(yaml.safe_dump(written))
    assert load_model_dir(model).config.llm.rope_theta == 77.0

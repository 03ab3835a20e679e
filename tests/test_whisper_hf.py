"""HF Whisper directories: import (single file, sharded index, into shardings), export that
transformers loads back bit-exactly, config round trips, and clear errors for bad checkpoints."""

import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from transformers import WhisperConfig as HFWhisperConfig
from transformers import WhisperForConditionalGeneration

from whisper_llada_jax.checkpoints.tensors import DictSource
from whisper_llada_jax.checkpoints.whisper_hf import (
    WhisperGenerationConfig,
    export_whisper_hf,
    import_whisper_hf,
    import_whisper_tensors,
    read_whisper_hf_config,
    whisper_config_from_hf,
    whisper_config_to_hf,
)
from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.models.whisper import abstract_params
from whisper_llada_jax.sharding import DEFAULT_RULES, MESH_AXES

HF_KW = dict(num_mel_bins=80, vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
             max_source_positions=50, max_target_positions=32, pad_token_id=99, bos_token_id=98, eos_token_id=99,
             decoder_start_token_id=97)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(HFWhisperConfig(**HF_KW)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return model, path


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_export_is_loaded_by_transformers_bit_exactly(hf, tmp_path):
    torch_model, path = hf
    cfg, params = import_whisper_hf(path)
    out = export_whisper_hf(params, cfg, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    back = WhisperForConditionalGeneration.from_pretrained(out)
    ref, got = torch_model.state_dict(), back.state_dict()
    assert set(ref) == set(got)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    # and re-import gives the same Flax tree
    cfg2, params2 = import_whisper_hf(out)
    assert cfg2 == cfg
    a, b = _flat(params), _flat(params2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # scanned (stacked) layers export to the same per-layer tensors
    cfg_s, params_s = import_whisper_hf(path, scan_layers=True)
    assert params_s["decoder"]["layers"]["fc1"]["kernel"].shape == (2, 64, 128)
    back_s = WhisperForConditionalGeneration.from_pretrained(export_whisper_hf(params_s, cfg_s, tmp_path / "scan"))
    got_s = back_s.state_dict()
    assert set(got_s) == set(ref) and all(torch.equal(ref[k], got_s[k]) for k in ref)


def test_sharded_index_imports_into_mesh_shardings(hf, tmp_path):
    torch_model, path = hf
    torch_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    cfg, _ = read_whisper_hf_config(tmp_path)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(1, 2, 4), MESH_AXES)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_params(cfg)), mesh, DEFAULT_RULES)
    _, sharded = import_whisper_hf(tmp_path, shardings=shardings)
    _, single = import_whisper_hf(path)
    a, b = _flat(sharded), _flat(single)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    fc1 = sharded["decoder"]["layers_1"]["fc1"]["kernel"]  # ('embed', 'mlp') -> ('fsdp', 'tensor')
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert len(fc1.addressable_shards) == 8 and fc1.addressable_shards[0].data.shape == (32, 32)


def test_encoder_only_and_bare_whisper_model_names(hf):
    torch_model, path = hf
    cfg, full = import_whisper_hf(path)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    bare = DictSource({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, "bare")
    enc = import_whisper_tensors(bare, cfg, encoder_only=True)
    assert set(enc) == {"encoder"}
    a, b = _flat(enc["encoder"]), _flat(full["encoder"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # a stored (tied) proj_out is accepted when equal to the embedding, refused otherwise
    emb = state["model.decoder.embed_tokens.weight"]
    tied = import_whisper_tensors(DictSource({**state, "proj_out.weight": emb.copy()}, "tied"), cfg)
    assert np.array_equal(tied["decoder"]["embed_tokens"]["embedding"], emb)
    with pytest.raises(CheckpointError, match="proj_out.weight differs from model.decoder.embed_tokens.weight"):
        import_whisper_tensors(DictSource({**state, "proj_out.weight": emb + 1}, "untied"), cfg)
    bf16 = import_whisper_tensors(DictSource(state), WhisperConfig(**{**cfg.__dict__, "param_dtype": "bfloat16"}))
    assert bf16["decoder"]["embed_tokens"]["embedding"].dtype == jax.numpy.bfloat16


def test_config_round_trip_and_generation_facts(hf, tmp_path):
    _, path = hf
    cfg, gen = read_whisper_hf_config(path)
    assert (cfg.d_model, cfg.n_mels, cfg.input_frames, cfg.max_target_positions) == (64, 80, 100, 32)
    assert gen.decoder_start_token_id == 97 and gen.eos_token_id == 99
    assert whisper_config_from_hf(whisper_config_to_hf(cfg, gen)) == cfg
    # a multilingual generation_config.json (HF names) wins over config.json
    shutil.copytree(path, tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({
        "decoder_start_token_id": 50258, "eos_token_id": 50257, "suppress_tokens": [1, 2, 7],
        "begin_suppress_tokens": [220, 50257], "lang_to_id": {"<|en|>": 50259, "<|de|>": 50261},
        "task_to_id": {"transcribe": 50360, "translate": 50359}, "no_timestamps_token_id": 50364,
        "is_multilingual": True, "forced_decoder_ids": [[1, None], [2, 50360]]}))
    _, gen = read_whisper_hf_config(tmp_path / "m")
    assert gen.is_multilingual and gen.language_id("de") == 50261 and gen.language_id("<|en|>") == 50259
    assert gen.suppress_tokens == (1, 2, 7) and gen.begin_suppress_tokens == (220, 50257)
    assert gen.forced_decoder_ids == ((2, 50360),) and gen.no_timestamps_token_id == 50364
    assert WhisperGenerationConfig.from_dicts(gen.to_dict()) == gen
    with pytest.raises(CheckpointError, match="no language 'xx'"):
        gen.language_id("xx")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_checkpoints_give_clear_errors(hf, tmp_path):
    _, path = hf
    # truncated weights
    d = _copy(path, tmp_path / "trunc")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        import_whisper_hf(d)
    # another model family
    d = _copy(path, tmp_path / "llama")
    conf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**conf, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type is 'llama', not 'whisper'"):
        import_whisper_hf(d)
    # config does not match the weights
    d = _copy(path, tmp_path / "shape")
    (d / "config.json").write_text(json.dumps({**conf, "encoder_ffn_dim": 96, "decoder_ffn_dim": 96}))
    with pytest.raises(CheckpointError, match=r"mis-shaped tensor.*fc1.weight: checkpoint \(128, 64\) vs model \(64, 96\)"):
        import_whisper_hf(d)
    d = _copy(path, tmp_path / "layers")
    (d / "config.json").write_text(json.dumps({**conf, "decoder_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensor.*decoder/layers_2/"):
        import_whisper_hf(d)
    (d / "config.json").write_text(json.dumps({**conf, "decoder_layers": 1}))
    with pytest.raises(CheckpointError, match=r"no place in the model.*model.decoder.layers.1"):
        import_whisper_hf(d)
    # missing / unknown tensors, missing config, not a directory
    cfg = whisper_config_from_hf(conf)
    state = {k: np.zeros(s, np.float32) for k, s in
             [("model.encoder.conv1.weight", (64, 80, 3)), ("model.encoder.extra.weight", (3,))]}
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*model.encoder.extra.weight"):
        import_whisper_tensors(DictSource(state, "mem"), cfg)
    with pytest.raises(CheckpointError, match=r"missing tensor.*encoder/conv2/kernel"):
        import_whisper_tensors(DictSource({"model.encoder.conv1.weight": state["model.encoder.conv1.weight"]},
                                          "mem"), cfg, encoder_only=True)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: does not exist"):
        import_whisper_hf(d)
    with pytest.raises(CheckpointError, match="not a directory"):
        import_whisper_hf(tmp_path / "nothing")

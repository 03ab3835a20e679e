"""HF LLaDA (sharded) / PEFT import-export: bit-identical round trips, merged-LoRA export,
reference .pth LoRA names, sharded import on a mesh, and clear errors for bad checkpoints."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from whisper_llada_jax.checkpoints import peft
from whisper_llada_jax.checkpoints.llada_hf import abstract_params, export_llada_hf, import_llada_hf
from whisper_llada_jax.checkpoints.llama_hf import export_llama_hf, import_llama_hf
from whisper_llada_jax.checkpoints.tensors import SafetensorsSource, export_params, flatten
from whisper_llada_jax.config import LLMConfig, LoRAConfig
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.models.llada import LLaDA, abstract_variables

CFG = LLMConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, mlp_hidden=48)
LORA = LoRAConfig(rank=4, alpha=16.0, dropout=0.1)


def _random_tree(abstract, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (rng.standard_normal(s.shape) * 0.2).astype(s.dtype), abstract)


@pytest.fixture(scope="module")
def params():
    return _random_tree(abstract_params(CFG), 0)


@pytest.fixture(scope="module")
def lora():
    return _random_tree(nn.unbox(abstract_variables(CFG, LORA)["lora"]), 1)


def _assert_same(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_llada_hf_sharded_round_trip(params, tmp_path):
    out = export_llada_hf(params, CFG, tmp_path / "hf", shard_size_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert "model.transformer.blocks.1.ff_proj.weight" in index["weight_map"]
    assert SafetensorsSource(out).shape("model.transformer.blocks.0.ff_out.weight") == (32, 48)  # torch (out, in)
    cfg, back = import_llada_hf(out)
    assert cfg == CFG
    _assert_same(params, back)
    # bf16 export -> bf16 import -> export gives byte-identical tensors
    out16 = export_llada_hf(params, CFG, tmp_path / "bf16", dtype="bfloat16")
    cfg16, p16 = import_llada_hf(out16, dataclasses.replace(CFG, param_dtype="bfloat16"))
    assert flatten(p16)["wte/embedding"].dtype == jnp.bfloat16
    again = export_llada_hf(p16, cfg16, tmp_path / "bf16_again")
    a, b = SafetensorsSource(out16), SafetensorsSource(again)
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert a.get(k).dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(a.get(k).view(np.uint16), b.get(k).view(np.uint16), err_msg=k)


def test_scanned_tree_exports_the_same_tensors(params, tmp_path):
    scan_cfg = dataclasses.replace(CFG, scan_layers=True)
    _, stacked = import_llada_hf(export_llada_hf(params, CFG, tmp_path / "a"), scan_cfg)
    assert stacked["blocks"]["attn_norm"]["weight"].shape == (2, 32)
    _, back = import_llada_hf(export_llada_hf(stacked, scan_cfg, tmp_path / "b"))
    _assert_same(params, back)


def test_peft_round_trip_and_reference_names(lora, tmp_path):
    out = peft.export_peft(lora, LORA, tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["lora_dropout"]) == ("LORA", 4, 16.0, 0.1)
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj"] and config["task_type"] == "CAUSAL_LM"
    src = SafetensorsSource(out / "adapter_model.safetensors")
    assert len(src.keys()) == 2 * 3 * 2
    assert src.shape("base_model.model.model.transformer.blocks.1.v_proj.lora_A.weight") == (4, 32)
    assert src.shape("base_model.model.model.transformer.blocks.1.v_proj.lora_B.weight") == (32, 4)
    found, back = peft.import_peft(out, CFG)
    assert found == LORA
    _assert_same(lora, back)
    # the published .pth names (SPEC section 5) through the same table
    names = dict(export_params(lora, peft.lora_rules("llada.base_model.model.")))
    assert len(names) == 12
    a = names["llada.base_model.model.model.transformer.blocks.0.q_proj.lora_A.default.weight"]
    np.testing.assert_array_equal(a, np.asarray(lora["blocks_0"]["q_proj"]["lora_a"]).T)
    with pytest.raises(CheckpointError, match="rank 4"):
        peft.import_peft(out, CFG, lora_cfg=dataclasses.replace(LORA, rank=8))


def _logits(cfg, lora_cfg, variables, ids):
    return jax.jit(lambda v, x: LLaDA(cfg, lora_cfg).apply(v, x).logits)(variables, ids)


def test_lora_export_merged_and_unmerged_reproduce_logits(params, lora, tmp_path):
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 7)), jnp.int32)
    want = _logits(CFG, LORA, {"params": params, "lora": lora}, ids)
    merged_dir = export_llada_hf(params, CFG, tmp_path / "merged", lora=lora, lora_cfg=LORA, merge=True)
    assert not (merged_dir / "adapter_model.safetensors").exists()
    _, merged = import_llada_hf(merged_dir)
    got = _logits(CFG, None, {"params": merged}, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert np.abs(np.asarray(_logits(CFG, None, {"params": params}, ids) - want)).max() > 1e-3
    # unmerged: base weights + a PEFT adapter in the same directory
    plain_dir = export_llada_hf(params, CFG, tmp_path / "plain", lora=lora, lora_cfg=LORA)
    _, base = import_llada_hf(plain_dir)
    found, lora_back = peft.import_peft(plain_dir, CFG)
    _assert_same(params, base)
    _assert_same(lora, lora_back)
    assert found == LORA


def test_import_straight_into_mesh_shardings(params, tmp_path):
    out = export_llada_hf(params, CFG, tmp_path / "hf")
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    from whisper_llada_jax.sharding import DEFAULT_RULES

    specs = nn.get_partition_spec(abstract_variables(CFG))["params"]
    shardings = nn.logical_to_mesh_sharding(specs, mesh, DEFAULT_RULES)
    _, sharded = import_llada_hf(out, shardings=shardings)
    q = sharded["blocks_0"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (16, 16)
    assert sharded["wte"]["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    _assert_same(params, sharded)


def test_truncated_safetensors_is_a_clear_error(params, tmp_path):
    out = export_llada_hf(params, CFG, tmp_path / "hf", shard_size_bytes=40_000)
    shard = sorted(out.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        import_llada_hf(out)


def test_wrong_model_is_a_clear_error(params, tmp_path):
    llama_cfg = dataclasses.replace(CFG, causal=True, n_kv_heads=2)
    llama_params = _random_tree(abstract_params(llama_cfg), 3)
    llama_dir = export_llama_hf(llama_params, llama_cfg, tmp_path / "llama")
    with pytest.raises(CheckpointError, match="model_type 'llama' is not a LLaDA config.*Llama importer"):
        import_llada_hf(llama_dir)
    llada_dir = export_llada_hf(params, CFG, tmp_path / "llada")
    with pytest.raises(CheckpointError, match="not a Llama config"):
        import_llama_hf(llada_dir)
    # LLaDA config.json over Llama tensors: unknown names are reported
    (llama_dir / "config.json").write_text((llada_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="unexpected tensor.*model.layers"):
        import_llada_hf(llama_dir)


def test_config_shape_mismatch_is_a_clear_error(params, tmp_path):
    out = export_llada_hf(params, CFG, tmp_path / "hf")
    with pytest.raises(CheckpointError, match="n_layers: config 3 vs checkpoint 2"):
        import_llada_hf(out, dataclasses.replace(CFG, n_layers=3))
    config = json.loads((out / "config.json").read_text())
    config["mlp_hidden_size"] = 64
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mis-shaped.*ff_proj"):
        import_llada_hf(out)

"""The causal / GQA variant against transformers' LlamaForCausalLM, through save_pretrained ->
import_llama_hf, and export back to a directory transformers loads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from whisper_llada_jax.checkpoints.llama_hf import export_llama_hf, import_llama_hf
from whisper_llada_jax.checkpoints.tensors import SafetensorsSource, flatten
from whisper_llada_jax.models.llada import LLaDA


# GQA with its own LM head; and multi-query with tied embeddings and head_dim != hidden / heads.
VARIANTS = {"gqa": dict(num_key_value_heads=2, tie_word_embeddings=False),
            "mqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True, head_dim=16)}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_llama(tmp_path_factory, request):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64, rope_theta=10000.0,
                                      rms_norm_eps=1e-5, **VARIANTS[request.param])
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("llama_hf")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def _logits(cfg, params, ids):
    return jax.jit(lambda p, x: LLaDA(cfg).apply({"params": p}, x).logits)(params, ids)


def test_causal_gqa_logits_match_transformers(hf_llama):
    model, path = hf_llama
    cfg, params = import_llama_hf(path)
    hf = model.config
    assert cfg.causal and (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (4, hf.num_key_value_heads, hf.head_dim)
    assert cfg.tie_embeddings == hf.tie_word_embeddings and ("ff_out" in params) != cfg.tie_embeddings
    ids = np.random.default_rng(0).integers(0, 96, (2, 11))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.numpy()
    got = _logits(cfg, params, jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_export_round_trip_and_transformers_loads_it(hf_llama, tmp_path):
    model, path = hf_llama
    cfg, params = import_llama_hf(path)
    out = export_llama_hf(params, cfg, tmp_path / "exported")
    cfg2, params2 = import_llama_hf(out)
    assert cfg2 == cfg
    a, b = flatten(params), flatten(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    # same tensor names and bytes as transformers wrote
    src, dst = SafetensorsSource(path), SafetensorsSource(out)
    assert sorted(src.keys()) == sorted(dst.keys())
    for k in src.keys():
        np.testing.assert_array_equal(src.get(k), dst.get(k), err_msg=k)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 96, (1, 9))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(ids).logits.numpy(), model(ids).logits.numpy())

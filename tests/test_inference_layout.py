"""A scanned, LoRA-trained model switched at load to unrolled layers with LoRA merged computes
the same logits (fp32 tolerance), through load_model_dir(for_decoding=True) too."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from whisper_llada_jax.checkpoints.model_dir import load_model_dir, save_model_dir
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.data.sources import _WORDS
from whisper_llada_jax.models.composite import WhisperLLaDA, init_variables
from whisper_llada_jax.models.inference_layout import for_decoding
from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json


def _logits(cfg, variables, emb, ids):
    model = WhisperLLaDA(cfg)
    x = jnp.concatenate([emb, model.apply(variables, ids, method="embed")], axis=1)
    h = model.apply(variables, method="llm_forward", embeds=x, return_hidden=True).hidden
    return np.asarray(model.apply(variables, h, method="llm_head"), np.float32)


def test_scanned_lora_model_unrolled_and_merged_at_load(tmp_path):
    cfg = load_model_config("tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, scan_layers=True, n_layers=2),
                              lora=dataclasses.replace(cfg.lora, enabled=True))
    tok_json = build_tokenizer_json([" ".join(_WORDS)] * 4, tmp_path / "tokenizer.json", vocab_size=120)
    cfg = dataclasses.replace(cfg, tokens=LLaDATokenizer(tok_json).token_config())
    variables = jax.tree.map(lambda a: a, init_variables(cfg, jax.random.key(0)))
    # trained-looking adapters: B is zero at init, which would make merging trivially right
    variables["lora"] = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape, a.dtype),
                                     variables["lora"])
    emb = jax.random.normal(jax.random.key(2), (2, 5, cfg.llm.d_model))
    ids = jnp.array([[7, 8, 9], [10, 11, 12]])
    want = _logits(cfg, variables, emb, ids)
    dcfg, dvars = for_decoding(cfg, variables)
    assert not dcfg.llm.scan_layers and not dcfg.lora.enabled and "lora" not in dvars
    assert dcfg.llm.ff_row_chunks == 2  # on CPU (these tests run there): the chunked feed-forward is in the logits
    assert {"blocks_0", "blocks_1"} <= set(dvars["params"]["llm"]) and "blocks" not in dvars["params"]["llm"]
    np.testing.assert_allclose(_logits(dcfg, dvars, emb, ids), want, atol=2e-4, rtol=2e-4)
    assert np.abs(_logits(cfg, {"params": variables["params"], "lora": jax.tree.map(jnp.zeros_like, variables["lora"])},
                          emb, ids) - want).max() > 1e-3  # the adapters matter: merging them is tested
    md = save_model_dir(tmp_path / "model", cfg, variables, tok_json)
    loaded = load_model_dir(md, for_decoding=True)
    assert not loaded.config.llm.scan_layers and not loaded.config.lora.enabled
    np.testing.assert_allclose(_logits(loaded.config, loaded.variables, emb, ids), want, atol=2e-4, rtol=2e-4)


def test_feed_forward_in_row_chunks_gives_the_same_states():
    """``ff_row_chunks`` splits positions unevenly (7 in 3: 2 + 2 + 3) and puts them back in order:
    the hidden states equal the one-chunk forward's, with and without a cache prefix split."""
    from whisper_llada_jax.config import LLMConfig
    from whisper_llada_jax.models.llada import LLaDA

    llm = LLMConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=48,
                    rope_theta=10000.0, max_len=64)
    ids = jax.random.randint(jax.random.key(0), (2, 7), 0, 64)
    variables = LLaDA(llm).init(jax.random.key(1), ids)
    for kw in ({}, {"fixed_prefix": 3, "outputs_from": 3}):
        one = LLaDA(llm).apply(variables, ids, return_hidden=True, **kw).hidden
        three = LLaDA(dataclasses.replace(llm, ff_row_chunks=3)).apply(variables, ids, return_hidden=True, **kw).hidden
        np.testing.assert_allclose(np.asarray(three), np.asarray(one), atol=1e-5, rtol=1e-5)

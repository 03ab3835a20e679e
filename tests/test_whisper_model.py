"""Flax Whisper vs transformers' PyTorch Whisper (fp32, highest precision), loaded through the
real HF importer from ``save_pretrained`` directories."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from transformers import WhisperConfig as HFWhisperConfig
from transformers import WhisperForConditionalGeneration

from whisper_llada_jax.checkpoints.whisper_hf import import_whisper_hf
from whisper_llada_jax.config import WhisperConfig, load_model_config
from whisper_llada_jax.models.whisper import Whisper, WhisperEncoder, abstract_params, init_cache
from whisper_llada_jax.sharding import DEFAULT_RULES

# Two small random shapes: tiny.en-like (80 mels, English vocabulary size) and large-v3-like
# (128 mels, multilingual vocabulary, odd head count).
SHAPES = {
    "en": dict(num_mel_bins=80, vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=2,
               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
               max_source_positions=50, max_target_positions=32),
    "v3": dict(num_mel_bins=128, vocab_size=51866, d_model=48, encoder_layers=1, decoder_layers=3,
               encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=96, decoder_ffn_dim=96,
               max_source_positions=40, max_target_positions=24),
}


def _hf_dir(tmp_path_factory, shape: str, seed: int):
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(HFWhisperConfig(**SHAPES[shape])).eval()
    with torch.no_grad():  # HF zero-initialises biases; randomise so bias mapping is tested too
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp(f"hf_{shape}")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module", params=["en", "v3"])
def hf_model(request, tmp_path_factory):
    return (request.param, *_hf_dir(tmp_path_factory, request.param, seed=1))


def _inputs(n_mels, frames, vocab, batch=2, length=7, seed=0):
    rng = np.random.RandomState(seed)
    feats = rng.randn(batch, n_mels, frames).astype(np.float32)
    ids = rng.randint(0, vocab, size=(batch, length))
    return feats, ids


def test_encoder_and_decoder_match_transformers(hf_model):
    shape, torch_model, path = hf_model
    cfg, params = import_whisper_hf(path)
    feats, ids = _inputs(cfg.n_mels, cfg.input_frames, cfg.vocab_size)
    with torch.no_grad():
        ref_enc = torch_model.model.encoder(torch.tensor(feats)).last_hidden_state.numpy()
        ref_logits = torch_model(input_features=torch.tensor(feats), decoder_input_ids=torch.tensor(ids)).logits.numpy()
    apply = jax.jit(Whisper(cfg).apply, static_argnames="method")
    enc = apply({"params": params}, feats, method="encode")
    logits = apply({"params": params}, feats, ids)
    assert enc.shape == (2, SHAPES[shape]["max_source_positions"], cfg.d_model)
    np.testing.assert_allclose(enc, ref_enc, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)

    if shape == "en":
        # Scanned layers + remat: same parameters (stacked by the importer), same outputs.
        cfg_s, params_s = import_whisper_hf(path, scan_layers=True)
        cfg_s = dataclasses.replace(cfg_s, remat="dots")
        assert params_s["encoder"]["layers"]["fc1"]["kernel"].shape == (2, 64, 128)
        logits_s = jax.jit(Whisper(cfg_s).apply)({"params": params_s}, feats, ids)
        np.testing.assert_allclose(logits_s, ref_logits, atol=1e-4, rtol=0)


def test_shorter_input_uses_leading_positions(tmp_path_factory):
    torch_model, path = _hf_dir(tmp_path_factory, "en", seed=2)
    cfg, params = import_whisper_hf(path, encoder_only=True, input_frames=60)
    assert set(params) == {"encoder"}
    feats, _ = _inputs(cfg.n_mels, 60, 10, batch=1)
    # HF insists on the full length; run its layers by hand on the first 30 positions.
    enc = torch_model.model.encoder
    with torch.no_grad():
        x = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(torch.tensor(feats)))))
        x = x.permute(0, 2, 1) + enc.embed_positions.weight[:30]
        for layer in enc.layers:
            x = layer(x, attention_mask=None)
            x = x[0] if isinstance(x, tuple) else x
        ref = enc.layer_norm(x).numpy()
    out = jax.jit(WhisperEncoder(cfg).apply)({"params": params["encoder"]}, feats)
    assert out.shape == (1, 30, cfg.d_model)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_kv_cache_decoding_equals_full_forward():
    # Scanned layers here; the unscanned cache path is checked against transformers' generate
    # in test_whisper_greedy.py.
    cfg = WhisperConfig(n_mels=8, d_model=32, encoder_layers=1, encoder_heads=2, encoder_ffn=64, decoder_layers=2,
                        decoder_heads=2, decoder_ffn=64, vocab_size=50, max_source_positions=10,
                        max_target_positions=16, input_frames=20, scan_layers=True)
    model = Whisper(cfg)
    apply = jax.jit(model.apply, static_argnames="method")
    feats, ids = _inputs(8, 20, 50, batch=3, length=9, seed=3)
    # Random parameters from the abstract tree: no compiled init needed.
    rng = np.random.RandomState(4)
    variables = {"params": jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                                        nn.unbox(abstract_params(cfg)))}
    enc = apply(variables, feats, method="encode")
    full, _ = apply(variables, ids, enc, method="decode")
    cache = init_cache(cfg, 3, 12)
    pieces = []
    for start, stop in ((0, 4), (4, 5), (5, 6), (6, 9)):  # prefill, single steps, a chunk
        logits, cache = apply(variables, ids[:, start:stop], enc if start == 0 else None, cache, start,
                              method="decode")
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)
    assert cache.cross_k.shape == (2, 3, 10, 2, 16)


def test_every_parameter_has_logical_axes():
    valid = {name for name, _ in DEFAULT_RULES}
    for scan in (False, True):
        cfg = WhisperConfig(d_model=32, encoder_heads=2, decoder_heads=2, encoder_ffn=64, decoder_ffn=64,
                            encoder_layers=2, decoder_layers=2, vocab_size=40, input_frames=20,
                            max_source_positions=10, max_target_positions=8, scan_layers=scan)
        boxed = abstract_params(cfg)
        leaves, _ = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert len(leaves) > 20
        for path, leaf in leaves:
            where = jax.tree_util.keystr(path)
            assert isinstance(leaf, nn.Partitioned), where
            assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= valid, (where, leaf.names)
            assert (leaf.names[0] == "layers") == (scan and "'layers'" in where), (where, leaf.names)


def test_large_v3_parameter_count_equals_transformers():
    cfg = load_model_config("paper").whisper
    flax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(abstract_params(cfg))))
    hf_cfg = HFWhisperConfig(num_mel_bins=128, vocab_size=51866, d_model=1280, encoder_layers=32, decoder_layers=32,
                             encoder_attention_heads=20, decoder_attention_heads=20, encoder_ffn_dim=5120,
                             decoder_ffn_dim=5120)
    with torch.device("meta"):
        torch_model = WhisperForConditionalGeneration(hf_cfg)
    torch_count = sum(p.numel() for p in torch_model.parameters())  # tied proj_out counted once
    assert flax_count == torch_count == 1_543_490_560

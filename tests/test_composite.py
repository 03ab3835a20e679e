"""Composite Whisper-LLaDA: logits vs a PyTorch composite (transformers WhisperEncoder + reference
Q-Former + small LLaDA), weights loaded through the real importers; audio entry points; frozen
encoder; paper-size abstract shapes."""

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference_torch.composite import build_reference, random_inputs
from whisper_llada_jax.checkpoints.llada_hf import llada_rules
from whisper_llada_jax.checkpoints.reference_pth import import_reference_pth
from whisper_llada_jax.checkpoints.tensors import DictSource, import_params
from whisper_llada_jax.checkpoints.whisper_hf import import_whisper_tensors
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.models.composite import WhisperLLaDA, abstract_variables, logical_specs
from whisper_llada_jax.models.llada import count_params

# transformers' WhisperEncoder wants exactly 2 * max_source_positions mel frames.
CFG = load_model_config("tiny", ["whisper.max_source_positions=200"])


def _np(state):
    return DictSource({k: v.numpy() for k, v in state.items()})


def import_reference(ref, cfg, tmp_path):
    """JAX variables from the PyTorch composite through the real importers."""
    abstract = nn.unbox(abstract_variables(cfg))
    encoder = import_whisper_tensors(_np(ref.whisper_state), cfg.whisper, encoder_only=True)["encoder"]
    llm = import_params(_np(ref.llada_state), llada_rules(), abstract["params"]["llm"])
    pth = tmp_path / "ref.pth"
    torch.save({"model": ref.pth_state, "optimizer": None, "scheduler": None, "config": {}, "scaler": None,
                "epoch": 1}, pth)
    projector, lora = import_reference_pth(pth, cfg, abstract)
    return {"params": {"encoder": encoder, "projector": projector, "llm": llm}, "lora": {"llm": lora}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = build_reference(CFG, seed=0)
    return ref, import_reference(ref, CFG, tmp_path_factory.mktemp("ref"))


def test_composite_logits_match_pytorch(reference):
    ref, variables = reference
    model = WhisperLLaDA(CFG)
    features, ids = random_inputs(CFG)

    @jax.jit
    def run(v, features, ids):
        audio = model.apply(v, features, method="encode_audio")
        enc = model.apply(v, features, method="encode")
        # What decoders do: build [prefix | response] embeddings, call the LLM directly.
        embeds = jnp.concatenate([model.apply(v, audio, ids.shape[0], method="prefix_embeds"),
                                  model.apply(v, ids, method="embed")], axis=1)
        via_llm = model.apply(v, embeds=embeds, method="llm_forward").logits[:, -ids.shape[1]:]
        return (model.apply(v, ids, features=features), model.apply(v, ids, encoder_out=enc),
                model.apply(v, ids, audio_embeds=audio), model.apply(v, ids, text_only=True), audio, via_llm)

    by_features, by_encoder_out, by_audio, text_only, audio, via_llm = run(variables, features, ids)
    with torch.no_grad():
        want = ref.model(torch.from_numpy(features), torch.from_numpy(ids).long()).numpy()
        want_text = ref.model(None, torch.from_numpy(ids).long()).numpy()
        want_audio = ref.model.audio(torch.from_numpy(features)).numpy()
    assert audio.shape == (2, CFG.audio_tokens, CFG.llm.d_model) == want_audio.shape
    np.testing.assert_allclose(audio, want_audio, atol=1e-4, rtol=1e-4)
    assert by_features.shape == (2, ids.shape[1], CFG.llm.vocab_size)
    np.testing.assert_allclose(by_features, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(text_only, want_text, atol=1e-4, rtol=1e-4)
    # Cached audio paths give the same logits; the audio span matters.
    np.testing.assert_allclose(by_encoder_out, by_features, atol=1e-5)
    np.testing.assert_allclose(by_audio, by_features, atol=1e-5)
    np.testing.assert_allclose(via_llm, by_features, atol=1e-5)
    assert np.abs(np.asarray(text_only) - np.asarray(by_features)).max() > 1e-2


def test_encoder_is_frozen(reference):
    _, variables = reference
    model = WhisperLLaDA(CFG)
    features, _ = random_inputs(CFG, batch=1, seed=1)
    loss = lambda params: jnp.sum(model.apply({"params": params}, features, method="encode_audio") ** 2)  # noqa: E731
    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["encoder"]))
    assert float(jnp.abs(grads["projector"]["linear_proj"]["kernel"]).max()) > 0


def test_paper_composite_abstract_shapes_and_axes():
    cfg = load_model_config("paper")
    abstract = abstract_variables(cfg)  # no memory: jax.eval_shape
    params = nn.unbox(abstract)["params"]
    assert set(params) == {"encoder", "projector", "llm"} and set(nn.unbox(abstract)["lora"]) == {"llm"}
    assert count_params(params["llm"]) == 8_015_581_184
    assert count_params(params["projector"]["bert"]) == 20_477_952
    assert count_params(nn.unbox(abstract)["lora"]) == 32 * 3 * 2 * 8 * 4096
    assert cfg.audio_tokens == 352
    specs = logical_specs(cfg)
    assert tuple(specs["params"]["llm"]["wte"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["params"]["projector"]["linear_proj"]["kernel"]) == ("embed_unsharded", "embed")
    cfg = dataclasses.replace(cfg, tokens=dataclasses.replace(cfg.tokens, prompt_ids=(1, 2, 3)))
    enc = jax.ShapeDtypeStruct((1, 1500, 1280), jnp.bfloat16)
    audio = jax.eval_shape(partial(WhisperLLaDA(cfg).apply, method="encode_audio"), nn.unbox(abstract), encoder_out=enc)
    assert audio.shape == (1, 352, 4096)


def test_empty_prompt_ids_is_a_clear_error():
    cfg = load_model_config("tiny", ["tokens.prompt_ids=[]"])
    v = nn.unbox(abstract_variables(cfg))  # parameters do not depend on the prompt
    with pytest.raises(ConfigError, match="tokens.prompt_ids"):
        jax.eval_shape(lambda v: WhisperLLaDA(cfg).apply(v, jnp.zeros((1, 2), jnp.int32), text_only=True), v)

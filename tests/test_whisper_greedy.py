"""Greedy Whisper decoding (KV cache, one jitted while_loop) vs transformers' greedy generate."""

import jax
import numpy as np
import pytest
import torch
from jax._src import dispatch
from transformers import GenerationMixin
from transformers import WhisperConfig as HFWhisperConfig
from transformers import WhisperForConditionalGeneration

from whisper_llada_jax.checkpoints.whisper_hf import WhisperGenerationConfig, import_whisper_hf
from whisper_llada_jax.decoding.whisper_greedy import greedy_decode, start_prompt, start_prompt_for
from whisper_llada_jax.errors import DecodeConfigError
from whisper_llada_jax.models.whisper import Whisper

EOS = 52
PROMPT = [97, 95, 96]
SUPPRESS = [1, 2, 3, 50, 89]
BEGIN_SUPPRESS = [EOS, 66]
MAX_NEW = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    hf_cfg = HFWhisperConfig(num_mel_bins=80, vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                             decoder_ffn_dim=128, max_source_positions=50, max_target_positions=32,
                             pad_token_id=EOS, bos_token_id=98, eos_token_id=EOS, decoder_start_token_id=97)
    torch_model = WhisperForConditionalGeneration(hf_cfg).eval()
    # HF's init (std 0.02) makes every row repeat one token; wider weights give varied, audio-
    # dependent sequences that end (eos) at different steps.
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            if p.ndim == 2 and "positions" not in name:
                p.normal_(0, p.shape[-1] ** -0.5)
            elif p.ndim == 3:
                p.normal_(0, 0.1)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
        torch_model.model.decoder.embed_tokens.weight.normal_(0, 0.2)
        torch_model.model.decoder.embed_positions.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("hf_greedy")
    torch_model.save_pretrained(path)
    cfg, params = import_whisper_hf(path)
    feats = np.random.RandomState(0).randn(6, 80, 100).astype(np.float32)
    model = Whisper(cfg)
    enc = jax.jit(lambda p, f: model.apply({"params": p}, f, method="encode"))(params, feats)
    return torch_model, model, params, feats, enc


def _decode(model, params, enc):
    return greedy_decode(model, params, enc, PROMPT, max_new_tokens=MAX_NEW, eos_id=EOS,
                         suppress_tokens=SUPPRESS, begin_suppress_tokens=BEGIN_SUPPRESS)


def test_greedy_equals_transformers_generate(setup):
    torch_model, model, params, feats, enc = setup
    with torch.no_grad():  # the plain greedy search of transformers, with Whisper's suppression processors
        ref = GenerationMixin.generate(
            torch_model, input_features=torch.tensor(feats), decoder_input_ids=torch.tensor([PROMPT] * 6),
            max_new_tokens=MAX_NEW, num_beams=1, do_sample=False, suppress_tokens=SUPPRESS,
            begin_suppress_tokens=BEGIN_SUPPRESS, eos_token_id=EOS, pad_token_id=EOS).numpy()[:, len(PROMPT):]
    tokens, lengths = _decode(model, params, enc)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    n = ref.shape[1]
    np.testing.assert_array_equal(tokens[:, :n], ref)
    assert (tokens[:, n:] == EOS).all()
    ref_len = [list(r).index(EOS) if EOS in r else MAX_NEW for r in ref]
    np.testing.assert_array_equal(lengths, ref_len)
    # the model is non-degenerate: rows differ, some end early, none ends at once
    assert len({tuple(r) for r in tokens}) >= 4 and 0 < lengths.min() < MAX_NEW
    assert not np.isin(tokens, SUPPRESS).any() and not np.isin(tokens[:, 0], BEGIN_SUPPRESS).any()


def test_batched_equals_per_row_and_compiles_once(setup):
    _, model, params, _, enc = setup
    tokens, lengths = _decode(model, params, enc)
    compiles = []

    def listen(event, duration, **_):
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        again = _decode(model, params, enc)  # same shapes: no retrace, no recompile
        assert compiles == []
        row0 = _decode(model, params, enc[:1])
        n_after_first_row = len(compiles)
        assert n_after_first_row >= 1  # a new batch size compiles ...
        rows = [row0] + [_decode(model, params, enc[i:i + 1]) for i in range(1, enc.shape[0])]
        assert len(compiles) == n_after_first_row  # ... once
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    np.testing.assert_array_equal(again[0], tokens)
    np.testing.assert_array_equal(np.concatenate([r[0] for r in rows]), tokens)
    np.testing.assert_array_equal(np.concatenate([r[1] for r in rows]), lengths)


def test_start_prompts_and_limits(setup):
    _, model, params, _, enc = setup
    en = WhisperGenerationConfig(decoder_start_token_id=50257, no_timestamps_token_id=50362)
    np.testing.assert_array_equal(start_prompt_for(en), [50257, 50362])
    multi = WhisperGenerationConfig(decoder_start_token_id=50258, no_timestamps_token_id=50364, is_multilingual=True,
                                    lang_to_id={"<|en|>": 50259, "<|fr|>": 50265}, task_to_id={"transcribe": 50360})
    np.testing.assert_array_equal(start_prompt_for(multi, "fr"), [50258, 50265, 50360, 50364])
    with pytest.raises(DecodeConfigError, match="both language_id and transcribe_id"):
        start_prompt(1, no_timestamps_id=2, language_id=3)
    with pytest.raises(DecodeConfigError, match=r"max_new_tokens: prompt \(3\) \+ max_new_tokens \(30\) exceeds"):
        greedy_decode(model, params, enc, PROMPT, max_new_tokens=30, eos_id=EOS)
    with pytest.raises(DecodeConfigError, match=r"suppress_tokens: token ids \[100\] outside the vocabulary"):
        greedy_decode(model, params, enc, PROMPT, max_new_tokens=5, eos_id=EOS, suppress_tokens=[100])

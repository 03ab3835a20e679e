"""The training recipe's options against the reference, recomputed in PyTorch on a tiny model.

The reference feeds each GPU's batch of 4 a response only up to that batch's longest transcript
and averages per-GPU masked-token means; the JAX step keeps a static canvas and hides what lies
beyond with the attention mask. Here the PyTorch composite (its own attention, RoPE and
Q-Former) runs the *truncated* sequences, group by group, on the masks the JAX step drew, and the
two losses must agree.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference_torch.composite import build_reference
from tests.test_composite import CFG, import_reference
from whisper_llada_jax.inference.driver import trimmed_audio_tokens
from whisper_llada_jax.models.composite import WhisperLLaDA
from whisper_llada_jax.training import optim
from whisper_llada_jax.training import step as step_lib
from whisper_llada_jax.training.config import TrainConfig

R = 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = build_reference(CFG, seed=0)
    return ref, import_reference(ref, CFG, tmp_path_factory.mktemp("ref"))


def _batch(lengths, valid=None, audio_len=None, seed=0):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    lengths = np.asarray(lengths, np.int32)
    ids = rng.integers(12, CFG.llm.vocab_size, size=(b, R)).astype(np.int32)
    ids = np.where(np.arange(R) < lengths[:, None], ids, CFG.tokens.eos).astype(np.int32)
    w = CFG.whisper
    return {"features": rng.normal(size=(b, w.n_mels, w.input_frames)).astype(np.float32),
            "audio_len": np.asarray(audio_len if audio_len is not None else [16000] * b, np.int32),
            "response_ids": ids, "response_len": lengths,
            "valid": np.ones((b,), bool) if valid is None else np.asarray(valid, bool)}


def _jax_loss(variables, tcfg, batch, seed=3):
    """The train step's loss on ``batch`` (deterministic forward) and its prepared batch."""
    model = WhisperLLaDA(CFG)
    trainable, frozen = optim.partition(variables, tcfg.optim)

    @jax.jit
    def run(trainable, frozen, batch, rng):
        prepared = step_lib.prepare(batch, rng, tcfg, CFG)
        loss, out = step_lib.make_loss_fn(model, tcfg, CFG)(trainable, frozen, prepared, rng, False)
        return loss, out, prepared

    loss, out, prepared = run(trainable, frozen, jax.tree.map(jnp.asarray, batch), jax.random.PRNGKey(seed))
    return float(loss), out, jax.tree.map(np.asarray, prepared)


def _torch_ce(ref, features, inputs, targets, keep_audio):
    """Per-token CE (rows, L) of the PyTorch composite on ``[prompt | audio[:k] | inputs]``."""
    m = ref.model
    with torch.no_grad():
        wte = m.llada.model.transformer.wte
        audio = m.audio(torch.from_numpy(features))
        out = []
        for i in range(inputs.shape[0]):
            parts = [wte(m.prompt_ids)[None], audio[i:i + 1, :keep_audio[i]],
                     wte(torch.from_numpy(inputs[i:i + 1]).long())]
            logits = m.llada(inputs_embeds=torch.cat(parts, 1))[:, -inputs.shape[1]:].double()
            lp = torch.log_softmax(logits, -1)
            out.append(-lp.gather(-1, torch.from_numpy(targets[i:i + 1, :, None]).long())[..., 0])
        return torch.cat(out).numpy()


def _torch_reference_loss(ref, batch, prepared, groups, norm, keep_audio=None, truncate=True):
    """The reference's loss: each group (GPU) runs its rows truncated to the group's longest
    response; per-group masked-token means averaged over groups, or one token mean."""
    keep_audio = np.full(len(batch["valid"]), CFG.audio_tokens) if keep_audio is None else keep_audio
    num, den, group_means = 0.0, 0.0, []
    for rows in groups:
        rows = [r for r in rows if batch["valid"][r]]
        if not rows:
            continue
        longest = int(batch["response_len"][rows].max()) if truncate else R
        ce = _torch_ce(ref, batch["features"][rows], prepared["inputs"][rows, :longest],
                       batch["response_ids"][rows, :longest], keep_audio[rows])
        s = prepared["scored"][rows, :longest]
        assert not prepared["scored"][rows, longest:].any()  # nothing beyond the span is scored
        num, den = num + (ce * s).sum(), den + s.sum()
        group_means.append((ce * s).sum() / max(s.sum(), 1))
    return float(np.mean(group_means)) if norm == "group_mean" else num / max(den, 1)


LENGTHS = [2, 6, 3, 1, 5, 2, 4, 1]


@pytest.mark.parametrize("span,norm,extra", [
    ("group_longest", "group_mean", {}),  # the reference (paper config)
    ("batch_longest", "token_mean", {}),
    ("group_longest", "token_mean", {"loss_positions": "all", "substitution_rate": 0.3}),
])
def test_loss_equals_the_reference_truncated_forward(reference, span, norm, extra):
    ref, variables = reference
    tcfg = TrainConfig(loss_span=span, group_size=2, loss_norm=norm, t_eps=0.3, **extra)
    batch = _batch(LENGTHS, valid=[1, 1, 1, 1, 1, 1, 0, 0])
    loss, out, prepared = _jax_loss(variables, tcfg, batch)
    groups = [range(i, i + 2) for i in range(0, 8, 2)] if span == "group_longest" else [range(8)]
    want = _torch_reference_loss(ref, batch, prepared, groups, norm)
    np.testing.assert_allclose(loss, want, rtol=2e-5)
    if extra:
        assert (prepared["inputs"] != batch["response_ids"]).sum() > (prepared["inputs"] == CFG.tokens.mask).sum()
        assert prepared["scored"].sum() == sum(min(R, m) for m in [6, 6, 3, 3, 5, 5])
    # the truncation matters: the same masks on the untruncated canvas give another loss
    untruncated = _torch_reference_loss(ref, batch, prepared, groups, norm, truncate=False)
    assert abs(untruncated - want) > 1e-3


def test_audio_span_and_audio_drop_equal_the_shorter_audio(reference):
    ref, variables = reference
    hop = step_lib.SAMPLES_PER_ENCODER_FRAME * CFG.projector.stride  # samples per window
    audio_len = [hop, 3 * hop + 1, 20 * hop, 2 * hop, 5 * hop, hop // 2, 4 * hop, 7 * hop]
    batch = _batch(LENGTHS, audio_len=audio_len, seed=1)
    tcfg = TrainConfig(loss_span="group_longest", group_size=2, audio_span="true_length", audio_drop_rate=0.5,
                       audio_margin_windows=1)
    loss, _, prepared = _jax_loss(variables, tcfg, batch, seed=7)
    p = len(CFG.tokens.prompt_ids)
    keep = prepared["attention_mask"][:, p:p + CFG.audio_tokens].sum(1)
    need = np.minimum([2, 5, CFG.num_windows, 3, 6, 2, 5, 8], CFG.num_windows) * CFG.projector.num_queries
    dropped = keep == 0
    assert 0 < dropped.sum() < 8, "the seed should drop some rows and keep others"
    np.testing.assert_array_equal(keep[~dropped], need[~dropped])
    # the span is decoding's trimmed span of a one-clip batch (no rounding with <= 4 windows)
    four = dataclasses.replace(CFG, whisper=dataclasses.replace(CFG.whisper, input_frames=136))  # 4 windows
    for n in (hop // 3, hop, 2 * hop, 3 * hop - 1):
        one = np.asarray([n], np.int32)
        assert int(step_lib.audio_windows_needed(jnp.asarray(one), four, 1)[0]) * 4 == trimmed_audio_tokens(one, four, 1)
    want = _torch_reference_loss(ref, batch, prepared, [range(i, i + 2) for i in range(0, 8, 2)], "group_mean",
                                 keep_audio=keep)
    np.testing.assert_allclose(loss, want, rtol=2e-5)
    full = _torch_reference_loss(ref, batch, prepared, [range(i, i + 2) for i in range(0, 8, 2)], "group_mean")
    assert abs(full - want) > 1e-3
    # evaluation neither drops audio nor draws spans
    _, _, evaluated = jax.jit(lambda b, r: (0, 0, step_lib.prepare(b, r, tcfg, CFG, train=False)))(
        jax.tree.map(jnp.asarray, batch), jax.random.PRNGKey(7))
    np.testing.assert_array_equal(np.asarray(evaluated["attention_mask"])[:, p:p + CFG.audio_tokens].sum(1), need)


def test_audio_drop_rate_and_random_spans_are_drawn_per_row():
    b = 512
    batch = jax.tree.map(jnp.asarray, _batch([3] * b, audio_len=[2 * 320 * 17] * b))
    tcfg = TrainConfig(loss_span="canvas", audio_drop_rate=0.25, audio_span="random", audio_margin_windows=0)
    prepared = jax.jit(lambda x, r: step_lib.prepare(x, r, tcfg, CFG))(batch, jax.random.PRNGKey(0))
    p = len(CFG.tokens.prompt_ids)
    keep = np.asarray(prepared["attention_mask"])[:, p:p + CFG.audio_tokens].sum(1) // 4
    assert abs((keep == 0).mean() - 0.25) < 0.06
    kept = keep[keep > 0]
    assert kept.min() == 2 and kept.max() == CFG.num_windows and len(set(kept.tolist())) == CFG.num_windows - 1
    # the response follows the visible audio directly, as in the shorter sequence
    pos = np.asarray(prepared["positions"])
    np.testing.assert_array_equal(pos[:, p + CFG.audio_tokens], p + keep * 4)


def test_audio_span_without_audio_len_is_a_clear_error():
    from whisper_llada_jax.errors import ConfigError

    batch = {k: v for k, v in _batch([2] * 4).items() if k != "audio_len"}
    with pytest.raises(ConfigError, match="audio_len"):
        step_lib.prepare(jax.tree.map(jnp.asarray, batch), jax.random.PRNGKey(0),
                         TrainConfig(audio_span="random"), CFG)
    with pytest.raises(ConfigError, match="group_size=4 does not divide the global batch of 6"):
        step_lib.prepare(jax.tree.map(jnp.asarray, _batch([2] * 6)), jax.random.PRNGKey(0), TrainConfig(), CFG)


def test_dropout_only_in_training_and_keys_are_never_reused(reference):
    """Projector dropout (paper: 0.1) acts only in training; every key of a step is split off
    (JAX's key-reuse checker raises on a key consumed twice)."""
    _, variables = reference
    tcfg = TrainConfig(group_size=2)
    trainable, frozen = optim.partition(variables, tcfg.optim)
    batch = jax.tree.map(jnp.asarray, _batch(LENGTHS))

    @functools.partial(jax.jit, static_argnames=("dropout", "train"))
    def _loss(noise_key, dropout_key, dropout, train):
        cfg = dataclasses.replace(CFG, projector=dataclasses.replace(CFG.projector, dropout=dropout))
        fn = step_lib.make_loss_fn(WhisperLLaDA(cfg), tcfg, cfg)
        return fn(trainable, frozen, step_lib.prepare(batch, noise_key, tcfg, cfg), dropout_key, train)[0]

    def loss(dropout, noise_key, dropout_key, train):
        return float(_loss(noise_key, dropout_key, dropout=dropout, train=train))

    masks = jax.random.key_data(jax.random.key(0))  # the same masks each time, from fresh key arrays
    noise = lambda: jax.random.wrap_key_data(masks)  # noqa: E731
    with jax.debug_key_reuse(True):
        evaluation = loss(0.1, noise(), jax.random.key(1), False)
        no_dropout = loss(0.0, noise(), jax.random.key(2), True)
        train_a, train_b = loss(0.1, noise(), jax.random.key(3), True), loss(0.1, noise(), jax.random.key(4), True)
    np.testing.assert_allclose(evaluation, no_dropout, rtol=1e-6)  # deterministic: dropout is off
    assert abs(train_a - evaluation) > 1e-4 and abs(train_a - train_b) > 1e-4  # on, and keyed by the rng
    # the checker is really on: a key consumed twice is an error
    with jax.debug_key_reuse(True), pytest.raises(Exception, match="reuse|consumed"):
        k = jax.random.key(1)
        loss(0.1, k, jax.random.key(2), True), loss(0.1, k, jax.random.key(3), True)


def test_autoregressive_logits_predict_the_first_response_token():
    cfg = dataclasses.replace(CFG, llm=dataclasses.replace(CFG.llm, causal=True))
    model = WhisperLLaDA(cfg)
    batch = _batch([3, 4])
    v = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(batch["response_ids"]),
                            features=jnp.asarray(batch["features"]))

    @jax.jit
    def run(v, ids, features):
        audio = model.apply(v, features, method="encode_audio")
        prefix = model.apply(v, audio, ids.shape[0], method="prefix_embeds")
        embeds = jnp.concatenate([prefix, model.apply(v, ids, method="embed")], axis=1)
        full = model.apply(v, embeds=embeds, method="llm_forward").logits
        return model.apply(v, ids, features=features, shift=True), full, prefix.shape[1]

    shifted, full, p = run(v, jnp.asarray(batch["response_ids"]), jnp.asarray(batch["features"]))
    np.testing.assert_allclose(shifted, full[:, p - 1:p - 1 + R], atol=1e-5)  # from the last prefix position on


def test_paper_configs_use_the_reference_recipe():
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.data.config import DataConfig
    from whisper_llada_jax.training.config import load_train_config
    from whisper_llada_jax import config as config_lib

    cfg = load_train_config("paper")
    assert (cfg.loss_span, cfg.group_size, cfg.loss_norm, cfg.objective) == ("group_longest", 4, "group_mean",
                                                                               "diffusion")
    assert (cfg.substitution_rate, cfg.loss_positions, cfg.audio_drop_rate, cfg.audio_span) == (0.0, "masked", 0.0,
                                                                                                  "full")
    assert cfg.first_pass_rate == 0.0
    assert cfg.t_eps == 0.0 and cfg.optim.clip_norm is None and cfg.optim.decay_steps == cfg.steps == 360000
    data = config_lib.from_dict(DataConfig, cfg.data, "data")
    assert data.max_seconds is None and data.long_transcripts == "skip"
    model = load_model_config(cfg.model)
    assert model.projector.dropout == 0.1 and model.precision == "configured"


def test_reference_precision_sets_the_published_inference_dtypes():
    from whisper_llada_jax.config import load_model_config

    paper = load_model_config("paper", ["precision=reference"])
    assert (paper.whisper.dtype, paper.projector.dtype, paper.llm.dtype) == ("float32", "float32", "float16")
    assert paper.llm.param_dtype == "bfloat16"  # storage unchanged: weights are cast at use
    cfg = dataclasses.replace(CFG, precision="reference")
    batch = _batch([2, 3])
    model = WhisperLLaDA(cfg)
    ids, feats = jnp.asarray(batch["response_ids"][:, :4]), jnp.asarray(batch["features"])
    v = jax.jit(model.init)(jax.random.PRNGKey(0), ids, features=feats)
    audio = jax.jit(lambda v, f: model.apply(v, f, method="encode_audio"))(v, feats)
    logits = jax.jit(lambda v, i, f: model.apply(v, i, features=f))(v, ids, feats)
    assert audio.dtype == jnp.float32 and logits.dtype == jnp.float16

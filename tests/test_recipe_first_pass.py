"""``first_pass_rate``: deliberation training on noisy first passes (not in the reference).

A share of the rows reads its own first pass in place of its transcript before masking; the
target stays the transcript. Here the prepared batch is recomputed in NumPy from the step's own
random draws: which rows read the first pass, what every slot reads, the span, what is scored,
and the loss against the transcript.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.models.composite import WhisperLLaDA
from whisper_llada_jax.training import objectives, optim
from whisper_llada_jax.training import step as step_lib
from whisper_llada_jax.training.config import TrainConfig, load_train_config

CFG = load_model_config("tiny", ["whisper.max_source_positions=200"])
R = 8
MASK, EOS = CFG.tokens.mask, CFG.tokens.eos


def _batch(ref_len, fp_len, seed=0):
    """Transcripts and first passes of other lengths; every first pass has one unknown word (a
    mask slot) and differs from its transcript elsewhere too."""
    rng = np.random.default_rng(seed)
    b = len(ref_len)
    ref_len, fp_len = np.asarray(ref_len, np.int32), np.asarray(fp_len, np.int32)
    ids = rng.integers(12, CFG.llm.vocab_size, size=(b, R)).astype(np.int32)
    ids = np.where(np.arange(R) < ref_len[:, None], ids, EOS).astype(np.int32)
    fp = rng.integers(12, CFG.llm.vocab_size, size=(b, R)).astype(np.int32)
    fp[:, 0] = MASK
    # the padding past a first pass is garbage here: the step must read eos there, as deliberation does
    w = CFG.whisper
    return {"features": rng.normal(size=(b, w.n_mels, w.input_frames)).astype(np.float32),
            "audio_len": np.full((b,), 16000, np.int32),
            "response_ids": ids, "response_len": ref_len, "first_pass_ids": fp, "first_pass_len": fp_len,
            "valid": np.arange(b) < b - 1}  # the last row is padding


def _prepare(batch, tcfg, key, train=True):
    fn = jax.jit(lambda x, k: step_lib.prepare(x, k, tcfg, CFG, train=train))
    return jax.tree.map(np.asarray, fn(jax.tree.map(jnp.asarray, batch), key))


def _numpy_prepare(batch, tcfg, key):
    """The option's semantics in NumPy, from the step's random draws (row choice: the
    FIRST_PASS_STREAM fold of the key; masking: ``corrupt``'s t and u of the first split)."""
    b = len(batch["valid"])
    valid = batch["valid"]
    use = np.asarray(jax.random.uniform(jax.random.fold_in(key, step_lib.FIRST_PASS_STREAM), (b,))) < tcfg.first_pass_rate
    use &= valid
    fp = np.where(np.arange(R) < batch["first_pass_len"][:, None], batch["first_pass_ids"], EOS)
    source = np.where(use[:, None], fp, batch["response_ids"])
    lens = np.where(use, np.maximum(batch["response_len"], batch["first_pass_len"]), batch["response_len"])
    lens = np.where(valid, lens, 0)
    g = tcfg.group_size
    longest = np.repeat(lens.reshape(-1, g).max(1), g)
    span = (np.arange(R)[None, :] < longest[:, None]) & valid[:, None]
    noise_key = jax.random.split(key, 3)[0]
    t_key, u_key, _, _ = jax.random.split(noise_key, 4)
    t = np.asarray(jax.random.uniform(t_key, (b,)))
    t = tcfg.t_eps + (1 - tcfg.t_eps) * t
    u = np.asarray(jax.random.uniform(u_key, (b, R)))
    masked = ((u < t[:, None]) | (source == MASK)) & span
    inputs = np.where(masked, MASK, source)
    return use, span, masked, inputs


def test_first_pass_rows_read_their_first_pass_and_are_scored_against_the_transcript():
    ref_len, fp_len = [2, 6, 3, 1, 5, 7, 4, 3], [4, 2, 3, 8, 5, 3, 6, 2]
    batch = _batch(ref_len, fp_len)
    tcfg = TrainConfig(first_pass_rate=0.5, loss_span="group_longest", group_size=2, loss_norm="group_mean",
                       t_eps=0.2)
    key = jax.random.PRNGKey(5)
    got = _prepare(batch, tcfg, key)
    use, span, masked, inputs = _numpy_prepare(batch, tcfg, key)
    assert 0 < use.sum() < batch["valid"].sum(), "the key should choose some rows and leave others"
    np.testing.assert_array_equal(got["inputs"], inputs)
    np.testing.assert_array_equal(got["scored"], masked)
    p = len(CFG.tokens.prompt_ids) + CFG.audio_tokens
    np.testing.assert_array_equal(got["attention_mask"][:, p:], span)
    np.testing.assert_array_equal(got["response_ids"], batch["response_ids"])  # the target: the transcript
    assert "first_pass_ids" not in got and "first_pass_len" not in got
    # the first pass's unknown word is always masked and scored in a chosen row
    assert got["scored"][use, 0].all()
    # a chosen row whose first pass is longer than its group's transcripts widens the span to it
    group_ref = np.repeat(np.asarray(ref_len).reshape(-1, 2).max(1), 2)
    assert (use & (np.asarray(fp_len) > group_ref)).any(), "the key should choose a row with a longer first pass"

    # the loss: cross-entropy of the model's logits at those inputs against the transcript
    model = WhisperLLaDA(CFG)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(batch["response_ids"]),
                                    features=jnp.asarray(batch["features"]))
    trainable, frozen = optim.partition(variables, tcfg.optim)
    loss_fn = step_lib.make_loss_fn(model, tcfg, CFG)
    prepared = jax.tree.map(jnp.asarray, got)
    loss = float(jax.jit(lambda a, b, x: loss_fn(a, b, x, jax.random.PRNGKey(1), False)[0])(trainable, frozen,
                                                                                              prepared))
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x["inputs"], features=x["features"],
                                                         attention_mask=x["attention_mask"],
                                                         positions=x["positions"]))(variables, prepared), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, batch["response_ids"][..., None], -1)[..., 0]
    means = [(ce[g:g + 2] * masked[g:g + 2]).sum() / masked[g:g + 2].sum()
             for g in range(0, 8, 2) if batch["valid"][g:g + 2].any() and masked[g:g + 2].any()]
    np.testing.assert_allclose(loss, np.mean(means), rtol=1e-5)


def test_a_first_pass_equal_to_the_transcript_changes_nothing():
    """With first passes equal to the transcripts, every row reading them gives the batch that
    the option switched off gives: the option draws from its own stream, the others are kept."""
    batch = _batch([2, 6, 3, 1, 5, 7, 4, 3], [2, 6, 3, 1, 5, 7, 4, 3], seed=1)
    batch["first_pass_ids"] = batch["response_ids"].copy()
    key = jax.random.PRNGKey(2)
    base = dict(loss_span="canvas", loss_positions="all", substitution_rate=0.3, audio_drop_rate=0.5,
                loss_norm="token_mean")
    on = _prepare(batch, TrainConfig(first_pass_rate=1.0, **base), key)
    off = _prepare(batch, TrainConfig(**base), key)
    assert on.keys() == off.keys()
    for k in on:
        np.testing.assert_array_equal(on[k], off[k], err_msg=k)


def test_rows_are_drawn_at_the_rate_and_evaluation_reads_transcripts():
    b = 512
    batch = _batch([3] * b, [5] * b, seed=2)
    batch["valid"] = np.ones(b, bool)
    tcfg = TrainConfig(first_pass_rate=0.25, loss_span="canvas", loss_norm="token_mean")
    got = _prepare(batch, tcfg, jax.random.PRNGKey(0))
    visible = got["inputs"] != MASK
    reads_fp = (visible & (got["inputs"] == batch["first_pass_ids"]) & (np.arange(R) < 5)).any(1)
    assert abs(reads_fp.mean() - 0.25) < 0.06
    evaluated = _prepare(batch, tcfg, jax.random.PRNGKey(0), train=False)
    np.testing.assert_array_equal(np.where(evaluated["inputs"] == MASK, batch["response_ids"], evaluated["inputs"]),
                                  batch["response_ids"])
    # evaluation batches need no first pass
    no_fp = {k: v for k, v in batch.items() if not k.startswith("first_pass")}
    _prepare(no_fp, tcfg, jax.random.PRNGKey(0), train=False)


def test_training_batches_without_first_passes_are_a_clear_error():
    batch = {k: v for k, v in _batch([2] * 4, [2] * 4).items() if not k.startswith("first_pass")}
    with pytest.raises(ConfigError, match="first_pass_rate=0.5 needs each row's first pass.*first_pass_ids"):
        step_lib.prepare(jax.tree.map(jnp.asarray, batch), jax.random.PRNGKey(0),
                         TrainConfig(first_pass_rate=0.5, loss_span="canvas"), CFG)


def test_config_checks_name_the_field():
    with pytest.raises(ConfigError, match="first_pass_rate must be in \\[0, 1\\], got 1.5"):
        load_train_config(None, ["first_pass_rate=1.5"])
    with pytest.raises(ConfigError, match="first_pass_rate"):
        load_train_config(None, ["objective=autoregressive", "first_pass_rate=0.2"])
    assert load_train_config("paper").first_pass_rate == 0.0


def test_train_step_runs_with_first_passes_and_evaluates_without():
    """The jitted steps of the demo's layout: training batches carry first passes, validation
    batches do not (``demo.run.use_cached_encoder`` compiles each for its own fields)."""
    from whisper_llada_jax import mesh as mesh_lib
    from whisper_llada_jax.training.config import MeshConfig
    from whisper_llada_jax.training.state import setup_state
    from whisper_llada_jax.training.trainer import model_init_fn

    tcfg = TrainConfig(first_pass_rate=0.5, loss_span="canvas", loss_norm="token_mean", group_size=1,
                       mesh=MeshConfig(data=1), optim=dataclasses.replace(TrainConfig().optim, warmup_steps=1))
    model = WhisperLLaDA(CFG)
    mesh = mesh_lib.make_mesh(tcfg.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        setup = setup_state(model_init_fn(model, CFG, R), mesh, mesh_lib.rules(tcfg.mesh), tcfg.optim, 0, None)
        train = step_lib.device_batch(_batch([2, 6, 3, 1], [4, 2, 3, 8]))
        train["valid"] = np.ones(4, bool)
        val = {k: v for k, v in train.items() if not k.startswith("first_pass")}
        step = step_lib.jit_train_step(step_lib.make_train_step(model, tcfg, CFG, setup.tx), setup, mesh, train)
        evaluate = step_lib.jit_eval_step(step_lib.make_eval_step(model, tcfg, CFG), setup, mesh, val)
        state, metrics = step(setup.state, train)
        m = evaluate(state, val, jax.random.PRNGKey(1))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"])) and float(m["tokens"]) > 0


def test_objectives_first_pass_inputs_pads_with_eos():
    ids = jnp.asarray([[5, 6, 7, EOS]], jnp.int32)
    fp = jnp.asarray([[8, 9, 10, 11]], jnp.int32)  # garbage past its length 2
    source, lens = objectives.first_pass_inputs(jax.random.PRNGKey(0), ids, jnp.asarray([3]), fp, jnp.asarray([2]),
                                                jnp.asarray([True]), 1.0, EOS)
    assert np.asarray(source).tolist() == [[8, 9, EOS, EOS]] and np.asarray(lens).tolist() == [3]

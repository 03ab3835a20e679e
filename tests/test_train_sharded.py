"""The sharded train step equals the single-device step, and gradient accumulation the full
batch (8 fake CPU devices, fp32, plain SGD so the update is the gradient)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax import mesh as mesh_lib
from whisper_llada_jax.training import step as step_lib
from whisper_llada_jax.training.config import MeshConfig, OptimConfig, TrainConfig
from whisper_llada_jax.training.state import setup_state
from whisper_llada_jax.training.trainer import build_model, model_init_fn, synthetic_batch

TCFG = TrainConfig(model="tiny", model_overrides=("whisper.input_frames=80",),
                   optim=OptimConfig(warmup_steps=0, peak_lr=1e-3, end_lr=1e-3,
                                     trainable=("params/projector/.*", "lora/.*", "params/llm/.*")))


_CACHE: dict = {}


def _sgd_step(mesh_shape, norm="group_mean", grad_accum=1):
    """One plain-SGD step (lr 1: the update is minus the gradient) of the sharded train step on
    a (data, fsdp, tensor) mesh: (update tree, loss, tokens, whether parameters are split)."""
    key = (mesh_shape, norm, grad_accum)
    if key in _CACHE:
        return _CACHE[key]
    tcfg = dataclasses.replace(TCFG, loss_norm=norm, optim=dataclasses.replace(TCFG.optim, grad_accum=grad_accum))
    model, mcfg = build_model(tcfg)
    mesh_cfg = MeshConfig(data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])
    mesh = mesh_lib.make_mesh(mesh_cfg, jax.devices()[:int(np.prod(mesh_shape))])
    rules = mesh_lib.rules(mesh_cfg)
    sgd = optax.sgd(1.0)
    with jax.set_mesh(mesh):
        setup = setup_state(model_init_fn(model, mcfg, 8), mesh, rules, tcfg.optim, seed=0)
        state = setup.state.replace(opt_state=sgd.init(setup.state.trainable))
        split = any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.trainable))
        batch = step_lib.device_batch(synthetic_batch(mcfg, batch_size=8, response_len=8, seed=2))
        fn = jax.jit(step_lib.with_rules(step_lib.make_train_step(model, tcfg, mcfg, sgd), rules))
        before = jax.device_get(state.trainable)
        new, metrics = fn(state, mesh_lib.global_batch(mesh, batch))
        delta = jax.tree.map(lambda a, b: a - b, jax.device_get(new.trainable), before)
    _CACHE[key] = out = (delta, float(metrics["loss"]), float(metrics["tokens"]), split)
    return out


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_step_equals_single_device(shape):
    """The paper's group normalisation (groups of 4 rows of the global batch) does not depend on
    how the batch is sharded. Gradients are compared through one plain-SGD step: Adam would turn
    reduction-order noise in a near-zero gradient into a step of ~lr."""
    single = _sgd_step((1, 1, 1))
    delta, loss, tokens, split = _sgd_step(shape)
    assert split == (shape[1] * shape[2] > 1)  # fsdp / tensor really split parameters
    assert tokens == single[2]
    np.testing.assert_allclose(loss, single[1], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), delta, single[0])


@pytest.mark.parametrize("norm", ["group_mean", "token_mean"])
def test_grad_accumulation_matches_full_batch(norm):
    """Under plain SGD the update is the gradient itself: accumulating micro-batches must give
    the full batch's gradient (a mean of micro-batch means is not)."""
    # the case can fail: the two micro-batches (rows 0::2, 1::2) score different token counts
    model, mcfg = build_model(TCFG)
    batch = jax.tree.map(jnp.asarray, step_lib.device_batch(synthetic_batch(mcfg, batch_size=8, response_len=8, seed=2)))
    noise = jax.random.split(jax.random.split(jax.random.PRNGKey(0))[1], 3)[1]  # setup_state's, then the step's
    scored = np.asarray(jax.jit(lambda b, r: step_lib.prepare(b, r, TCFG, mcfg)["scored"])(batch, noise))
    assert scored[0::2].sum() != scored[1::2].sum()
    full, loss, tokens, _ = _sgd_step((2, 2, 2), norm)
    micro, loss_k, tokens_k, _ = _sgd_step((2, 2, 2), norm, grad_accum=2)
    assert tokens_k == tokens and abs(loss_k - loss) < 1e-6 * max(1.0, abs(loss))
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(full)) > 1e-3  # a real gradient
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), micro, full)


@pytest.mark.parametrize("cfg,msg", [(MeshConfig(data=3), "need 3 devices"),
                                     (MeshConfig(data=-1, fsdp=3), "do not divide 8"),
                                     (MeshConfig(data=-1, fsdp=-1), "at most one")])
def test_impossible_mesh_is_a_clear_error(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        mesh_lib.make_mesh(cfg, jax.devices())

"""The sharded train step equals the single-device step (8 fake CPU devices, fp32)."""

import jax
import numpy as np
import pytest

from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training import mesh as mesh_lib
from whisper_llada_jax.training import step as step_lib
from whisper_llada_jax.training.config import MeshConfig, OptimConfig, TrainConfig
from whisper_llada_jax.training.state import setup_state
from whisper_llada_jax.training.trainer import build_model, model_init_fn, synthetic_batch

TCFG = TrainConfig(model="tiny", model_overrides=("whisper.input_frames=80",),
                   optim=OptimConfig(warmup_steps=0, peak_lr=1e-3, end_lr=1e-3,
                                     trainable=("params/projector/.*", "lora/.*", "params/llm/.*")))


def _run(mesh_cfg: MeshConfig, devices, tcfg=TCFG, steps=2):
    model, mcfg = build_model(tcfg)
    mesh = mesh_lib.make_mesh(mesh_cfg, devices)
    rules = mesh_lib.rules(mesh_cfg)
    with jax.set_mesh(mesh):
        setup = setup_state(model_init_fn(model, mcfg, 8), mesh, rules, tcfg.optim, seed=0)
        batch = step_lib.device_batch(synthetic_batch(mcfg, batch_size=8, response_len=8, seed=1))
        fn = step_lib.jit_train_step(step_lib.make_train_step(model, tcfg, mcfg, setup.tx), setup, mesh, batch, rules)
        state = setup.state
        losses = []
        for _ in range(steps):
            state, metrics = fn(state, mesh_lib.global_batch(mesh, batch))
            losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.trainable), state


@pytest.fixture(scope="module")
def single():
    return _run(MeshConfig(data=1), jax.devices()[:1])


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_step_equals_single_device(single, shape):
    losses, params, state = _run(MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2]), jax.devices())
    np.testing.assert_allclose(losses, single[0], rtol=1e-5)
    # Adam normalises each update to ~lr (1e-3), so reduction-order noise shows at ~1e-5 absolute
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, single[1])
    split = [x for x in jax.tree.leaves(state.trainable) if not x.sharding.is_fully_replicated]
    assert bool(split) == (shape[1] * shape[2] > 1)  # fsdp / tensor really split parameters


def test_grad_accumulation_matches_full_batch(single):
    tcfg = TrainConfig(**{**TCFG.__dict__, "optim": OptimConfig(**{**TCFG.optim.__dict__, "grad_accum": 2})})
    losses, params, _ = _run(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices(), tcfg)
    # mean of the micro-batch losses differs slightly from the full-batch mean; parameters move alike
    np.testing.assert_allclose(losses, single[0], rtol=0.1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-3), params, single[1])


@pytest.mark.parametrize("cfg,msg", [(MeshConfig(data=3), "need 3 devices"),
                                     (MeshConfig(data=-1, fsdp=3), "do not divide 8"),
                                     (MeshConfig(data=-1, fsdp=-1), "at most one")])
def test_impossible_mesh_is_a_clear_error(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        mesh_lib.make_mesh(cfg, jax.devices())

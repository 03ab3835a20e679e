"""Optimiser: reference schedule, decay mask, freezing without optimiser state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training import optim
from whisper_llada_jax.training.config import OptimConfig

VARS = {
    "params": {
        "encoder": {"layers_0": {"fc1": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones((8,))}}},
        "projector": {"query_tokens": jnp.ones((1, 4, 8)), "linear_proj": {"kernel": jnp.ones((8, 6)), "bias": jnp.ones((6,))},
                      "ln": {"scale": jnp.ones((8,))}},
        "llm": {"blocks": {"attn_norm": {"weight": jnp.ones((2, 6))}, "q_proj": {"kernel": jnp.ones((2, 6, 6), jnp.bfloat16)}}},
    },
    "lora": {"llm": {"blocks": {"q_proj": {"lora_a": jnp.ones((2, 6, 2)), "lora_b": jnp.zeros((2, 2, 6))}}}},
}
NAMES = {"params": {"llm": {"blocks": {"attn_norm": {"weight": ("layers", "norm")},
                                       "q_proj": {"kernel": ("layers", "embed", "heads")}}}},
         "lora": {"llm": {"blocks": {"q_proj": {"lora_a": ("layers", "embed", "lora_rank"),
                                                "lora_b": ("layers", "lora_rank", "heads")}}}}}


def test_reference_schedule():
    lr = optim.schedule(OptimConfig())
    np.testing.assert_allclose(float(lr(0)), 1e-6, rtol=1e-5)
    np.testing.assert_allclose(float(lr(1500)), (1e-6 + 3e-5) / 2, rtol=1e-5)
    # the cosine phase counts from step 0 (the reference's scheduler): it ends at 360000, and at
    # the end of warmup it is already at cos(pi * 3000 / 360000), not at the peak
    cosine = lambda s: 1e-5 + (3e-5 - 1e-5) * 0.5 * (1 + np.cos(np.pi * s / 360000))  # noqa: E731
    for step in (3000, 3001, 180000, 359999):
        np.testing.assert_allclose(float(lr(step)), cosine(step), rtol=1e-5)
    assert float(lr(3000)) < 3e-5 * (1 - 5e-5)
    np.testing.assert_allclose(float(lr(2999)), 1e-6 + (3e-5 - 1e-6) * 2999 / 3000, rtol=1e-5)
    np.testing.assert_allclose(float(lr(360000)), 1e-5, rtol=1e-5)
    np.testing.assert_allclose(float(lr(10**7)), 1e-5, rtol=1e-5)


def test_default_partition_trains_projector_and_lora_only():
    train, frozen = optim.partition(VARS, OptimConfig())
    assert set(train) == {"params", "lora"} and set(train["params"]) == {"projector"}
    assert set(frozen["params"]) == {"encoder", "llm"}
    merged = optim.merge(train, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(VARS)
    full = optim.partition(VARS, OptimConfig(trainable=("params/projector/.*", "lora/.*", "params/llm/.*")))[0]
    assert "llm" in full["params"]
    enc = optim.partition(VARS, OptimConfig(trainable=("params/.*",), frozen=("params/llm/.*",)))[0]
    assert set(enc["params"]) == {"encoder", "projector"}


def test_bad_trainable_regexes_fail_at_start():
    with pytest.raises(ConfigError, match="no parameter matches"):
        optim.check_partition(VARS, OptimConfig(trainable=("params/nothing/.*",)))
    with pytest.raises(ConfigError, match="bad regex"):
        optim.check_partition(VARS, OptimConfig(trainable=("params/(",)))


def test_decay_mask_skips_vectors_biases_norms_even_when_scanned():
    cfg = OptimConfig(trainable=(".*",))
    train, _ = optim.partition(VARS, cfg)
    names, _ = optim.partition(NAMES, cfg)
    m = optim.decay_mask(train, names)
    assert m["params"]["projector"]["linear_proj"] == {"kernel": True, "bias": False}
    assert m["params"]["projector"]["ln"]["scale"] is False
    assert m["params"]["projector"]["query_tokens"] is True
    assert m["params"]["llm"]["blocks"]["attn_norm"]["weight"] is False  # (layers, d) is a vector
    assert m["params"]["llm"]["blocks"]["q_proj"]["kernel"] is True
    assert m["lora"]["llm"]["blocks"]["q_proj"]["lora_a"] is True


def test_frozen_parameters_have_no_optimizer_state_and_master_is_fp32():
    cfg = OptimConfig(warmup_steps=0, peak_lr=1e-2, end_lr=1e-2, weight_decay=0.5)
    train, frozen = optim.partition(VARS, cfg)
    train = optim.cast_master(train, cfg)
    tx = optim.make_optimizer(cfg, train)
    state = tx.init(train)
    n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    n_train = sum(x.size for x in jax.tree.leaves(train))
    assert n_state == 2 * n_train  # mu and nu for trainable leaves only
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(train))
    # decoupled weight decay is applied to the kernel, not to the bias (zero gradients)
    grads = jax.tree.map(jnp.zeros_like, train)
    upd, _ = tx.update(grads, state, train)
    lp = upd["params"]["projector"]["linear_proj"]
    np.testing.assert_allclose(np.asarray(lp["kernel"]), -1e-2 * 0.5, rtol=1e-5)
    assert not np.asarray(lp["bias"]).any()


def test_clipping_bounds_the_update():
    # b1 = b2 = 0 and eps = 1: adam's update is g / (|g| + 1), ~g for tiny (clipped) gradients
    kw = dict(trainable=("lora/.*",), weight_decay=0.0, warmup_steps=0, peak_lr=1.0, end_lr=1.0,
              b1=0.0, b2=0.0, eps=1.0)
    train, _ = optim.partition(VARS, OptimConfig(**kw))
    grads = jax.tree.map(lambda x: jnp.full_like(x, 100.0), train)
    norms = {}
    for clip in (None, 1e-3):
        tx = optim.make_optimizer(OptimConfig(**kw, clip_norm=clip), train)
        upd, _ = tx.update(grads, tx.init(train), train)
        norms[clip] = float(optax.tree.norm(upd))
    assert norms[None] > 1.0
    np.testing.assert_allclose(norms[1e-3], 1e-3, rtol=1e-2)

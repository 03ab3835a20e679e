"""LoRA: separate collection with the base layout untouched, PEFT init, zero-B == base,
merged == unmerged, dropout only in training, scanned trees."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_llada_jax.config import LLMConfig, LoRAConfig
from whisper_llada_jax.models.llada import LLaDA, abstract_variables
from whisper_llada_jax.models.lora import Projection, merge_lora

CFG = LLMConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=48)
LORA = LoRAConfig(rank=4, alpha=16.0, dropout=0.25, targets=("q_proj", "v_proj", "ff_out"))
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)


def _init(cfg, lora, zero_b=False):
    """Random variables built in NumPy (compiling a jitted init costs far more on CPU)."""
    rng = np.random.default_rng(0)
    tree = nn.unbox(abstract_variables(cfg, lora))
    return jax.tree_util.tree_map_with_path(
        lambda p, s: np.zeros(s.shape, s.dtype) if zero_b and p[-1].key == "lora_b"
        else (rng.standard_normal(s.shape) * 0.3).astype(s.dtype), tree)


@functools.lru_cache(maxsize=None)
def _jitted(cfg, lora, deterministic):
    return jax.jit(lambda v, r: LLaDA(cfg, lora).apply(v, IDS, deterministic=deterministic,
                                                       rngs=None if r is None else {"dropout": r}).logits)


def _fwd(cfg, lora, variables, deterministic=True, rng=None):
    return _jitted(cfg, lora, deterministic)(variables, rng)


@pytest.mark.parametrize("scan", [False, True])
def test_lora_collection_layout(scan):
    cfg = dataclasses.replace(CFG, scan_layers=scan)
    base = nn.unbox(abstract_variables(cfg))
    variables = abstract_variables(cfg, LORA)
    # params are exactly the non-LoRA layout
    assert jax.tree_util.tree_structure(nn.unbox(variables["params"])) == jax.tree_util.tree_structure(base["params"])
    lora = nn.unbox(variables["lora"])
    blocks = lora["blocks"] if scan else lora["blocks_0"]
    assert sorted(blocks) == ["ff_out", "q_proj", "v_proj"]
    lead = (cfg.n_layers,) if scan else ()
    assert blocks["q_proj"]["lora_a"].shape == lead + (32, 4)
    assert blocks["v_proj"]["lora_b"].shape == lead + (4, 16)  # kv_heads x head_dim
    assert blocks["ff_out"]["lora_a"].shape == lead + (48, 4)
    assert blocks["q_proj"]["lora_a"].dtype == jnp.float32
    specs = nn.get_partition_spec(variables["lora"])
    spec = (specs["blocks"] if scan else specs["blocks_0"])["v_proj"]
    layers = ("layers",) if scan else ()
    assert tuple(spec["lora_a"]) == layers + ("embed", "lora_rank")
    assert tuple(spec["lora_b"]) == layers + ("lora_rank", "kv_heads")


def test_peft_init():
    proj = Projection(16, ("embed", "heads"), lora=LORA)
    variables = nn.unbox(jax.jit(proj.init)(jax.random.key(0), jnp.ones((1, 64))))
    # A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform(a=sqrt 5) on torch's (r, in)), B = 0
    a = np.asarray(variables["lora"]["lora_a"])
    assert a.shape == (64, 4) and np.abs(a).max() <= 1 / 8 and np.abs(a).max() > 0.9 / 8
    assert abs(a.std() - 1 / 8 / np.sqrt(3)) < 0.01
    assert variables["lora"]["lora_b"].shape == (4, 16) and not np.asarray(variables["lora"]["lora_b"]).any()


def test_zero_b_equals_base():
    cfg = CFG
    variables = _init(cfg, LORA, zero_b=True)
    np.testing.assert_array_equal(np.asarray(_fwd(cfg, LORA, variables)),
                                  np.asarray(_fwd(cfg, None, {"params": variables["params"]})))


@pytest.mark.parametrize("scan", [False, True])
def test_merged_equals_unmerged(scan):
    cfg = dataclasses.replace(CFG, scan_layers=scan)
    variables = _init(cfg, LORA)
    lora = variables["lora"]
    unmerged = _fwd(cfg, LORA, {"params": variables["params"], "lora": lora})
    merged_params = jax.jit(merge_lora, static_argnums=2)(variables["params"], lora, LORA)
    merged = _fwd(cfg, None, {"params": merged_params})
    np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), atol=1e-5)
    # exactly the targeted block kernels change
    flat0 = jax.tree_util.tree_leaves_with_path(variables["params"])
    flat1 = dict(jax.tree_util.tree_leaves_with_path(merged_params))
    for path, leaf in flat0:
        changed = not np.array_equal(np.asarray(leaf), np.asarray(flat1[path]))
        assert changed == (path[0].key.startswith("blocks") and path[-2].key in LORA.targets), path


def test_dropout_only_when_training():
    variables = _init(CFG, LORA)
    eval_out = _fwd(CFG, LORA, variables)
    t1 = _fwd(CFG, LORA, variables, deterministic=False, rng=jax.random.key(1))
    t1b = _fwd(CFG, LORA, variables, deterministic=False, rng=jax.random.key(1))
    t2 = _fwd(CFG, LORA, variables, deterministic=False, rng=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(t1), np.asarray(t1b))
    assert np.abs(np.asarray(t1 - eval_out)).max() > 1e-3
    assert np.abs(np.asarray(t1 - t2)).max() > 1e-3
    # dropout acts on the LoRA input only: with zero B, training == eval exactly
    zero = {"params": variables["params"],
            "lora": jax.tree_util.tree_map_with_path(
                lambda p, x: np.zeros_like(x) if p[-1].key == "lora_b" else x, variables["lora"])}
    np.testing.assert_array_equal(np.asarray(_fwd(CFG, LORA, zero, deterministic=False, rng=jax.random.key(1))),
                                  np.asarray(_fwd(CFG, LORA, zero)))


def test_gradient_reaches_lora_b_only_path():
    variables = _init(CFG, LORA, zero_b=True)
    model = LLaDA(CFG, LORA)

    def loss(lora):
        return model.apply({"params": variables["params"], "lora": lora}, IDS).logits.sum()

    grad = jax.jit(jax.grad(loss))(variables["lora"])
    # with B = 0 the gradient flows into B (not A), as in PEFT
    assert np.abs(np.asarray(grad["blocks_0"]["q_proj"]["lora_b"])).max() > 0
    assert not np.asarray(grad["blocks_0"]["q_proj"]["lora_a"]).any()

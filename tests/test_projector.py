"""Window Q-Former and MLP projector: PyTorch parity (reference names), shapes, param count."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tests.reference_torch.qformer import WindowQFormerRef, randomize_

from whisper_llada_jax.checkpoints.reference_pth import projector_rules
from whisper_llada_jax.checkpoints.tensors import DictSource, import_params
from whisper_llada_jax.config import ProjectorConfig, load_model_config
from whisper_llada_jax.models.projector import MLPProjector, WindowQFormer, make_projector, num_windows

SMALL = ProjectorConfig(hidden=32, heads=4, intermediate=64, layers=2, window=5, stride=5, num_queries=3)


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_paper_qformer_counts_without_memory():
    cfg = load_model_config("paper")
    model = make_projector(cfg.projector, cfg.llm.d_model)
    enc = jax.ShapeDtypeStruct((1, cfg.whisper.encoder_frames, cfg.whisper.d_model), jnp.bfloat16)
    abstract = jax.eval_shape(model.init, jax.random.key(0), enc)
    params = nn.unbox(abstract)["params"]
    # The used BERT part (embeddings LayerNorm + 2 layers on the query path), as published.
    assert _count(params["bert"]) == 20_477_952
    assert params["speech_query_tokens"].shape == (1, 4, 768)
    assert params["linear_proj"]["kernel"].shape == (768, 4096)
    assert params["bert"]["layer_1"]["crossattention"]["self"]["key"]["kernel"].shape == (1280, 768)
    out = jax.eval_shape(model.apply, abstract, enc)
    assert out.shape == (1, 352, 4096) and cfg.audio_tokens == 352


@pytest.mark.parametrize("stride", [5, 3])
def test_qformer_matches_pytorch_reference(stride):
    cfg = dataclasses.replace(SMALL, stride=stride)
    d_whisper, out_dim, frames = 24, 40, 23
    ref = randomize_(WindowQFormerRef(kv_dim=d_whisper, out_dim=out_dim, hidden=cfg.hidden, heads=cfg.heads,
                                      inter=cfg.intermediate, n_layers=cfg.layers, num_queries=cfg.num_queries,
                                      window=cfg.window, stride=cfg.stride, with_unused=True), seed=stride)
    x = np.random.default_rng(0).normal(size=(2, frames, d_whisper)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()

    model = WindowQFormer(cfg, out_dim)
    abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, frames, d_whisper))))
    source = DictSource({k: v.numpy() for k, v in ref.state_dict().items()})
    params = import_params(source, projector_rules(), abstract["params"],
                           ignore=[r"^adapter\.(cls\.|bert\.embeddings\.(word|position)|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)"])
    got = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x)))
    w = num_windows(frames, cfg.window, stride)
    assert got.shape == want.shape == (2, w * cfg.num_queries, out_dim)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_windows_are_independent_and_tail_dropped():
    cfg = SMALL
    model = WindowQFormer(cfg, 16)
    x = np.random.default_rng(1).normal(size=(1, 17, 8)).astype(np.float32)  # 3 windows of 5 + 2 frames
    # Random parameters straight from NumPy: compiling 30 threefry initialisers costs seconds.
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, a.dtype),
                     nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x)))
    # Changing window 1 changes only its 3 output vectors; the dropped tail changes nothing.
    x2 = x.copy()
    x2[:, 5:10] += 1.0
    x2[:, 15:] += 5.0
    out = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(v, np.stack([x, x2]))
    assert out.shape == (2, 1, 9, 16)
    diff = np.abs(np.asarray(out[1] - out[0])).max(axis=-1)[0]
    assert (diff[3:6] > 1e-3).all() and (diff[:3] == 0).all() and (diff[6:] == 0).all()


def test_mlp_projector_shapes_and_axes():
    cfg = dataclasses.replace(SMALL, kind="mlp")
    model = make_projector(cfg, 16)
    assert isinstance(model, MLPProjector)
    x = jnp.ones((2, 23, 8))
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, v, x).shape == (2, 4 * 3, 16)
    specs = nn.get_partition_spec(v)["params"]
    assert tuple(specs["fc1"]["kernel"]) == ("embed", "mlp")
    assert tuple(specs["fc2"]["kernel"]) == ("mlp", "embed")
    assert nn.unbox(v)["params"]["fc1"]["kernel"].shape == (5 * 8, 32)
    assert nn.unbox(v)["params"]["fc2"]["kernel"].shape == (32, 3 * 16)


def test_qformer_parameters_carry_logical_axes():
    v = jax.eval_shape(WindowQFormer(SMALL, 16).init, jax.random.key(0), jnp.ones((1, 10, 8)))
    specs = nn.get_partition_spec(v)["params"]
    layer = specs["bert"]["layer_0"]
    assert tuple(layer["attention"]["self"]["query"]["kernel"]) == ("embed", "heads")
    assert tuple(layer["crossattention"]["self"]["value"]["kernel"]) == ("embed", "kv_heads")
    assert tuple(layer["output_query"]["dense"]["kernel"]) == ("mlp", "embed")
    assert tuple(specs["linear_proj"]["kernel"]) == ("embed_unsharded", "embed")
    # every parameter has one logical name per axis
    shapes = jax.tree.leaves(nn.unbox(v)["params"])
    specs_flat = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    assert len(shapes) == len(specs_flat)
    assert all(len(s) == x.ndim for s, x in zip(specs_flat, shapes))


def test_dropout_only_in_training():
    cfg = dataclasses.replace(SMALL, dropout=0.5)
    model = WindowQFormer(cfg, 16)
    x = np.random.default_rng(2).normal(size=(1, 10, 8)).astype(np.float32)
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, a.dtype),
                     nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x)))

    @jax.jit
    def run(v, x, key):
        plain = WindowQFormer(SMALL, 16).apply(v, x)
        return (plain, model.apply(v, x), model.apply(v, x, False, rngs={"dropout": key}),
                model.apply(v, x, False, rngs={"dropout": jax.random.fold_in(key, 1)}))

    plain, evaluation, train_a, train_b = run(v, x, jax.random.key(0))
    np.testing.assert_array_equal(evaluation, plain)  # deterministic: dropout is off
    assert np.abs(np.asarray(train_a - plain)).max() > 1e-2 and np.abs(np.asarray(train_a - train_b)).max() > 1e-2


def test_linear_proj_takes_pytorch_default_linear_init():
    """The reference's ``linear_proj`` is a plain ``nn.Linear(768, d)``: weight and bias
    U(+-1/sqrt(768)); the BERT part stays normal(0, 0.02) with zero biases."""
    cfg = dataclasses.replace(SMALL, hidden=768, heads=12, intermediate=64, layers=1)
    x = jnp.zeros((1, 10, 8), jnp.float32)
    v = nn.unbox(jax.jit(WindowQFormer(cfg, 512).init)(jax.random.key(0), x))["params"]
    bound = 768**-0.5
    for leaf in (v["linear_proj"]["kernel"], v["linear_proj"]["bias"]):
        leaf = np.asarray(leaf)
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.98 * bound
        np.testing.assert_allclose(leaf.std(), bound / np.sqrt(3), rtol=0.05)  # uniform, not normal
    query = np.asarray(v["bert"]["layer_0"]["attention"]["self"]["query"]["kernel"])
    np.testing.assert_allclose(query.std(), 0.02, rtol=0.05)
    assert not np.asarray(v["bert"]["layer_0"]["attention"]["self"]["query"]["bias"]).any()

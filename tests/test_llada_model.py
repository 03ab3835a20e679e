"""LLaDA transformer: parity with a PyTorch reference from SPEC section 4 (through the real HF
importer), padding mask, prefix / AR KV caches, scan and remat switches, paper-size count."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference_torch.llada import LLaDAReference
from whisper_llada_jax.checkpoints.llada_hf import import_llada_hf, llada_config_to_hf
from whisper_llada_jax.checkpoints.tensors import save_safetensors
from whisper_llada_jax.config import LLMConfig, load_model_config
from whisper_llada_jax.models.llada import KV, LLaDA, abstract_variables, count_params, per_layer, stacked

CFG = LLMConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, mlp_hidden=48,
                rope_theta=500000.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random PyTorch LLaDA saved as an HF directory, and its params imported into JAX."""
    torch.manual_seed(0)
    ref = LLaDAReference(vocab=CFG.vocab_size, d=CFG.d_model, layers=CFG.n_layers, heads=CFG.n_heads,
                         hidden=CFG.mlp_hidden, theta=CFG.rope_theta).eval()
    with torch.no_grad():  # norms away from 1 so their weights matter
        for name, p in ref.named_parameters():
            if "norm" in name or "ln_f" in name:
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("llada_hf")
    save_safetensors({k: v.numpy() for k, v in ref.state_dict().items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(llada_config_to_hf(CFG)))
    cfg, params = import_llada_hf(path)
    return ref, cfg, params, path


@functools.lru_cache(maxsize=None)
def _jitted(cfg, method, static):
    model = LLaDA(cfg)
    return jax.jit(lambda p, a, kw: model.apply({"params": p}, *a, **kw, **dict(static), method=method))


def run(cfg, params, *args, method="__call__", **kw):
    """Jitted, cached ``LLaDA(cfg).apply`` (eager dispatch compiles every op on CPU: slow)."""
    static = tuple(sorted((k, v) for k, v in kw.items() if isinstance(v, bool)))
    dyn = {k: v for k, v in kw.items() if not isinstance(v, bool)}
    return _jitted(cfg, method, static)(params, args, dyn)


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (rng.standard_normal(s.shape) * 0.2).astype(s.dtype),
                                  nn.unbox(abstract_variables(cfg))["params"])


def _ids(b=2, s=12, seed=1):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (b, s)).astype(np.int32)


def test_config_from_checkpoint(reference):
    _, cfg, _, _ = reference
    assert dataclasses.replace(cfg) == CFG


def test_logits_match_pytorch_reference(reference):
    ref, cfg, params, _ = reference
    ids = _ids()
    mask = np.ones_like(ids, bool)
    mask[1, 8:] = False  # padded tail of row 1
    with torch.no_grad():
        want = ref(torch.from_numpy(ids).long()).numpy()
        want_masked = ref(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)).numpy()
    got = run(cfg, params, jnp.asarray(ids)).logits
    got_masked = run(cfg, params, jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(got_masked), want_masked, atol=1e-4, rtol=1e-4)
    # the mask matters, and real tokens do not see the padding
    assert np.abs(np.asarray(got_masked)[1] - np.asarray(got)[1]).max() > 1e-3
    solo = run(cfg, params, jnp.asarray(ids[1:, :8])).logits
    np.testing.assert_allclose(np.asarray(got_masked)[1, :8], np.asarray(solo)[0], atol=1e-5)


def test_embeds_and_hidden_paths(reference):
    _, cfg, params, _ = reference
    ids = jnp.asarray(_ids())
    full = run(cfg, params, ids).logits
    emb = run(cfg, params, ids, method="embed")
    out = run(cfg, params, embeds=emb, return_hidden=True)
    assert out.logits is None and out.hidden.shape == (2, 12, cfg.d_model)
    logits = run(cfg, params, out.hidden, method="head")
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full), atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_bidirectional_cache_written_in_place_is_exact(reference, scan):
    _, cfg, params, path = reference
    if scan:  # the scanned stack takes per-layer buffers through nn.scan
        cfg, params = import_llada_hf(path, dataclasses.replace(cfg, scan_layers=True))
    ids = jnp.asarray(_ids())
    full = run(cfg, params, ids, return_kv=True)
    # the stack's own form: one buffer per layer unrolled (nothing sliced per layer), stacked scanned
    assert isinstance(full.kv.k, jax.Array) == scan and len(full.kv.k) == cfg.n_layers
    kv = stacked(full.kv)
    assert kv.k.shape == (cfg.n_layers, 2, cfg.n_kv_heads, 12, cfg.head_dim)  # head-major, as HF's
    rng = np.random.default_rng(0)
    junk = lambda n: jnp.asarray(rng.standard_normal(kv.k[:, :, :, :n].shape), jnp.float32)
    # the prefix's keys/values in a 12-slot buffer, garbage where the rest goes: the rest
    # overwrites its slots in place (scalar start) and reproduces the full forward (a stacked
    # buffer handed to an unrolled stack is split into per-layer buffers, and back)
    buf = KV(*(jnp.concatenate([a[:, :, :, :7], junk(5)], 3) for a in kv))
    rest = run(cfg, params, ids[:, 7:], cache=buf, cache_index=7)
    np.testing.assert_allclose(np.asarray(rest.logits), np.asarray(full.logits[:, 7:]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(rest.kv.k), np.asarray(full.kv.k), atol=1e-5)
    np.testing.assert_allclose(np.asarray(rest.kv.v), np.asarray(full.kv.v), atol=1e-5)
    # invalid slots (cache_mask False) are ignored whatever they hold; the rest lands at 10..14
    buf = per_layer(KV(*(jnp.concatenate([a[:, :, :, :7], junk(3), junk(5)], 3) for a in kv)), cfg.n_layers)
    cmask = jnp.broadcast_to((jnp.arange(15) < 7) | (jnp.arange(15) >= 10), (2, 15))
    rest2 = run(cfg, params, ids[:, 7:], cache=buf, cache_index=10, cache_mask=cmask,
                positions=jnp.broadcast_to(7 + jnp.arange(5), (2, 5)))
    np.testing.assert_allclose(np.asarray(rest2.logits), np.asarray(full.logits[:, 7:]), atol=1e-5)
    # one slot per token (a scatter, per row): a few slots rerun out of order, one dropped
    # (out of range: its query is computed but writes nothing, its stored entry stays)
    idx = jnp.array([[9, 2, 11, 30], [0, 5, 6, 30]])
    pos = jnp.array([[9, 2, 11, 0], [0, 5, 6, 0]])
    take = jnp.take_along_axis(ids, jnp.minimum(idx, 11), axis=1)
    stale = KV(*(a.at[:, jnp.arange(2)[:, None, None], :, idx[:, None, :]].set(1e3, mode="drop") for a in kv))
    out = run(cfg, params, take, cache=stale, cache_index=idx, positions=pos)
    want = jnp.take_along_axis(full.logits, jnp.minimum(idx, 11)[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(out.logits[:, :3]), np.asarray(want[:, :3]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.kv.k), np.asarray(full.kv.k), atol=1e-5)


def test_causal_gqa_prefix_and_autoregressive_buffer():
    cfg = dataclasses.replace(CFG, causal=True, n_kv_heads=2)
    ids = jnp.asarray(_ids(s=10))
    params = _random_params(cfg)
    full = run(cfg, params, ids)
    shape = (cfg.n_layers, 2, cfg.n_kv_heads, 10, cfg.head_dim)
    # [prefix] then [rest written after the prefix's own K/V in a 10-slot buffer] == full causal forward
    pre = run(cfg, params, ids[:, :6], return_kv=True)
    buf = KV(*(jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape), a, 0, axis=3) for a in stacked(pre.kv)))
    rest = run(cfg, params, ids[:, 6:], cache=buf, cache_index=6)
    np.testing.assert_allclose(np.asarray(rest.logits), np.asarray(full.logits[:, 6:]), atol=1e-5)
    # token-by-token decoding: each step writes its own slot in place and sees slots <= t
    buf = KV(jnp.zeros(shape), jnp.zeros(shape))
    slot_pos = jnp.broadcast_to(jnp.arange(10), (2, 10))

    @jax.jit
    def step(buf, t):
        tok = jax.lax.dynamic_slice_in_dim(ids, t, 1, axis=1)
        out = run(cfg, params, tok, positions=jnp.full((2, 1), t), cache=buf, cache_index=t,
                  cache_mask=slot_pos <= t, cache_positions=slot_pos)
        return out.kv, out.logits

    outs = []
    for t in range(10):
        buf, logits = step(buf, jnp.int32(t))
        outs.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full.logits), atol=1e-5)


def test_causal_masks_the_future():
    cfg = dataclasses.replace(CFG, causal=True)
    ids = jnp.asarray(_ids(s=8))
    params = _random_params(cfg)
    a = run(cfg, params, ids).logits
    b = run(cfg, params, jnp.asarray(np.asarray(ids) * (np.arange(8) < 5))).logits
    np.testing.assert_allclose(np.asarray(a[:, :5]), np.asarray(b[:, :5]), atol=1e-6)
    assert np.abs(np.asarray(a[:, 5:] - b[:, 5:])).max() > 1e-3


@functools.lru_cache(maxsize=None)
def _loss_and_grad(cfg):
    loss = lambda p, ids: LLaDA(cfg).apply({"params": p}, ids).logits.astype(jnp.float32).sum()  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("scan,remat", [(True, "none"), (True, "dots"), (False, "full")])
def test_scan_layers_and_remat_match_plain(reference, scan, remat):
    _, cfg, params, path = reference
    ids = jnp.asarray(_ids())
    want, want_grad = _loss_and_grad(cfg)(params, ids)
    new_cfg = dataclasses.replace(cfg, scan_layers=scan, remat=remat)
    _, new = import_llada_hf(path, new_cfg)  # the importer stacks blocks_N into blocks when scanned
    got, grad = _loss_and_grad(new_cfg)(new, ids)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    if scan:
        assert new["blocks"]["q_proj"]["kernel"].shape == (cfg.n_layers, cfg.d_model, cfg.n_heads * cfg.head_dim)
        grad = {"blocks_1": jax.tree_util.tree_map(lambda g: g[1], grad["blocks"])}
    np.testing.assert_allclose(np.asarray(grad["blocks_1"]["q_proj"]["kernel"]),
                               np.asarray(want_grad["blocks_1"]["q_proj"]["kernel"]), atol=1e-4, rtol=1e-4)


def test_every_param_has_logical_axes():
    cfg = dataclasses.replace(CFG, scan_layers=True)
    abstract = abstract_variables(cfg)
    specs = jax.tree_util.tree_leaves(nn.get_partition_spec(abstract), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    shapes = jax.tree_util.tree_leaves(nn.unbox(abstract))
    assert len(specs) == len(shapes) == 12  # wte, 2 norms + 7 projections (scanned), ln_f, head
    for spec, shape in zip(specs, shapes):
        assert len(spec) == len(shape.shape) and all(isinstance(name, str) for name in spec)
    assert sum(spec[0] == "layers" for spec in specs) == 9


def test_paper_llm_has_published_parameter_count():
    cfg = load_model_config("paper")
    variables = abstract_variables(cfg.llm)
    assert count_params(variables["params"]) == 8_015_581_184
    assert jax.tree_util.tree_leaves(nn.unbox(variables))[0].dtype == jnp.bfloat16


def test_bf16_compute_is_close_to_fp32(reference):
    _, cfg, params, _ = reference
    ids = jnp.asarray(_ids())
    want = run(cfg, params, ids).logits
    bf = dataclasses.replace(cfg, dtype="bfloat16")
    got = run(bf, params, ids).logits
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("index", ["start", "scatter"])
def test_cached_forward_does_not_concatenate_the_cache(reference, index):
    """The compiled cached forward holds no concatenate shaped like the cache buffer: every layer
    writes into the buffer in place (the old code joined ``[cache ; new]`` in every layer)."""
    _, cfg, params, _ = reference
    t = 37  # a slot count no other dimension of this model has
    buf = KV(*(jnp.zeros((cfg.n_layers, 2, cfg.n_kv_heads, t, cfg.head_dim)),) * 2)
    ids = jnp.asarray(_ids(s=5))
    where = jnp.int32(30) if index == "start" else jnp.broadcast_to(jnp.arange(5) * 7, (2, 5))
    lowered = _jitted(cfg, "__call__", ()).lower(params, (ids,), {"cache": buf, "cache_index": where})
    hlo = lowered.compile().as_text()
    assert "dynamic-update-slice" in hlo or "scatter" in hlo
    for line in hlo.splitlines():
        if " concatenate(" in line:
            assert f",{t}," not in line.split("concatenate(")[0], line


@pytest.mark.parametrize("scan,causal,cache", [(False, False, False), (False, True, False), (False, False, True),
                                               (True, False, False)])
def test_outputs_from_runs_the_last_layer_for_those_positions_only(reference, scan, causal, cache):
    """``outputs_from=p`` gives the full forward's positions ``p..`` and the same K/V of every
    position; unrolled, the last block's queries and MLP run on those positions only (fewer
    flops), scanned it slices the full result. ``fixed_prefix`` changes no number either."""
    _, cfg, params, path = reference
    cfg = dataclasses.replace(cfg, causal=causal)
    if scan:
        cfg, params = import_llada_hf(path, dataclasses.replace(cfg, scan_layers=True))
    ids, p = jnp.asarray(_ids()), 7
    model = LLaDA(cfg)
    kw = {}
    if cache:  # the whole sequence written in place into a 12-slot buffer, as a cache refresh
        kw = {"cache": KV(*(jnp.zeros((cfg.n_layers, 2, cfg.n_kv_heads, 12, cfg.head_dim)),) * 2), "cache_index": 0}

    def fwd(params, outputs_from, fixed_prefix=0):
        return jax.jit(lambda prm: model.apply({"params": prm}, ids, return_kv=True, outputs_from=outputs_from,
                                               fixed_prefix=fixed_prefix, **kw))

    full = fwd(params, 0)(params)
    for fixed in (0, p, 3):  # the first block's prefix rows projected apart: the same numbers
        part = fwd(params, p, fixed)(params)
        assert part.logits.shape == (2, 12 - p, cfg.vocab_size)
        np.testing.assert_allclose(np.asarray(part.logits), np.asarray(full.logits[:, p:]), atol=1e-5)
        for a, b in zip(part.kv, full.kv):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    if not scan:
        flops = lambda f: f.lower(params).compile().cost_analysis()["flops"]  # noqa: E731
        saved = 1 - flops(fwd(params, p)) / flops(fwd(params, 0))
        # the last block's q / out projections and MLP skip 7 of 12 positions: ~5/12 of a layer
        assert saved > 0.15, saved

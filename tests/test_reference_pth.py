"""The published .pth: import of a torch-written file, exact reference keys on export, bit-identical
round trips, and refusal of hostile, truncated and wrong-model files."""

import argparse
import logging
import os

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest
import torch

from tests.reference_torch.composite import LORA_PREFIX, build_reference
from tests.reference_torch.qformer import WindowQFormerRef
from whisper_llada_jax.checkpoints.reference_pth import (export_reference_pth, import_reference_pth, read_pth,
                                                         reference_state)
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.models.composite import abstract_variables

CFG = load_model_config("tiny", ["whisper.max_source_positions=200"])


@pytest.fixture(scope="module")
def ref():
    return build_reference(CFG, seed=3)


def _save(path, state, **extra):
    torch.save({"model": state, "optimizer": None, "scheduler": None, "config": {"lr": 3e-5}, "scaler": None,
                "epoch": 5, **extra}, path)
    return path


def _import(path, cfg=CFG):
    abstract = nn.unbox(abstract_variables(cfg))
    projector, lora = import_reference_pth(path, cfg, abstract)
    return {"params": {"projector": projector}, "lora": {"llm": lora}}


def _used(state):
    """The reference keys an export must hold: the query path of the Q-Former (a module built
    without the unused BERT parts) plus every LoRA tensor."""
    p = CFG.projector
    query_path = WindowQFormerRef(kv_dim=CFG.whisper.d_model, out_dim=CFG.llm.d_model, hidden=p.hidden, heads=p.heads,
                                  inter=p.intermediate, n_layers=p.layers, num_queries=p.num_queries).state_dict()
    return {k: v for k, v in state.items() if k in query_path or k.startswith("llada.")}


def test_torch_written_pth_imports_with_reference_layout(ref, tmp_path, caplog):
    path = _save(tmp_path / "ckpt.pth", ref.pth_state)
    with caplog.at_level(logging.INFO):
        v = _import(path)
    assert "ignoring" in caplog.text and "unused" in caplog.text
    p, s = v["params"]["projector"], ref.pth_state
    np.testing.assert_array_equal(p["speech_query_tokens"], s["speech_query_tokens"].numpy())
    np.testing.assert_array_equal(p["linear_proj"]["kernel"], s["linear_proj.weight"].numpy().T)
    np.testing.assert_array_equal(p["bert"]["layer_1"]["crossattention"]["self"]["key"]["kernel"],
                                  s["adapter.bert.encoder.layer.1.crossattention.self.key.weight"].numpy().T)
    np.testing.assert_array_equal(p["bert"]["layer_0"]["output_query"]["LayerNorm"]["scale"],
                                  s["adapter.bert.encoder.layer.0.output_query.LayerNorm.weight"].numpy())
    np.testing.assert_array_equal(v["lora"]["llm"]["blocks_1"]["v_proj"]["lora_b"],
                                  s[f"{LORA_PREFIX}.1.v_proj.lora_B.default.weight"].numpy().T)
    # bf16 checkpoints (PyTorch bf16 has no NumPy twin) import bit-exactly too.
    bf16 = _save(tmp_path / "bf16.pth", {k: t.to(torch.bfloat16) for k, t in ref.pth_state.items()})
    got = _import(bf16)["params"]["projector"]["linear_proj"]["bias"]
    want = ref.pth_state["linear_proj.bias"].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_namespace_config_is_allowed(ref, tmp_path):
    path = _save(tmp_path / "ns.pth", ref.pth_state, config=argparse.Namespace(lr=3e-5, window=17))
    assert read_pth(path)["config"].window == 17
    assert _import(path)["params"]["projector"]["speech_query_tokens"].shape == (1, 4, CFG.projector.hidden)


def test_export_has_exactly_the_reference_keys_and_round_trips(ref, tmp_path):
    path = _save(tmp_path / "ckpt.pth", ref.pth_state)
    first = _import(path)
    out = export_reference_pth(tmp_path / "out" / "export.pth", CFG, first, epoch=7)
    ckpt = read_pth(out)
    assert set(ckpt) == {"model", "optimizer", "scheduler", "config", "scaler", "epoch"} and ckpt["epoch"] == 7
    want = _used(ref.pth_state)
    assert set(ckpt["model"]) == set(want)
    for k, t in ckpt["model"].items():
        assert t.shape == want[k].shape and t.dtype == torch.float32
        assert torch.equal(t, want[k])  # torch -> JAX -> torch is the identity
    # import -> export -> import is bit-identical
    second = _import(out)
    jax.tree.map(np.testing.assert_array_equal, first, second)
    # a PyTorch user can load it into the reference module (strictly, for the used part)
    module = WindowQFormerRef(kv_dim=CFG.whisper.d_model, out_dim=CFG.llm.d_model, hidden=CFG.projector.hidden,
                              heads=CFG.projector.heads, inter=CFG.projector.intermediate, window=17, stride=17)
    module.load_state_dict({k: v for k, v in ckpt["model"].items() if not k.startswith("llada.")}, strict=True)


def test_paper_size_export_keys_and_shapes(tmp_path):
    cfg = load_model_config("paper")
    abstract = nn.unbox(abstract_variables(cfg))
    zeros = lambda s: np.zeros(s.shape, s.dtype)  # noqa: E731  (pages are only touched when written)
    variables = {"params": {"projector": jax.tree.map(zeros, abstract["params"]["projector"])},
                 "lora": {"llm": jax.tree.map(zeros, abstract["lora"]["llm"])}}
    state = reference_state(variables)
    module = WindowQFormerRef(kv_dim=1280, out_dim=4096)  # 768 wide, 12 heads, 2 layers, 4 queries
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for i in range(32):
        for proj in ("q_proj", "k_proj", "v_proj"):
            want[f"{LORA_PREFIX}.{i}.{proj}.lora_A.default.weight"] = (8, 4096)
            want[f"{LORA_PREFIX}.{i}.{proj}.lora_B.default.weight"] = (4096, 8)
    assert {k: v.shape for k, v in state.items()} == want
    assert sum(k.startswith("llada.") for k in state) == 192
    assert state["speech_query_tokens"].shape == (1, 4, 768)
    assert state["adapter.bert.encoder.layer.0.crossattention.self.key.weight"].shape == (768, 1280)


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"speech_query_tokens": torch.zeros(1, 4, 32)}, "config": _Hostile(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        _import(path)
    assert not marker.exists()


def test_bad_files_give_clear_errors(ref, tmp_path):
    good = _save(tmp_path / "good.pth", ref.pth_state)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        _import(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        _import(tmp_path / "missing.pth")
    wrong = _save(tmp_path / "wrong.pth", {"encoder.conv1.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="no Whisper-LLaDA projector"):
        _import(wrong)
    mis = load_model_config("tiny", ["projector.hidden=48"])
    with pytest.raises(CheckpointError, match="mis-shaped"):
        _import(good, mis)
    no_lora = load_model_config("tiny", ["lora.enabled=false"])
    with pytest.raises(CheckpointError, match="lora.enabled: false"):
        _import(good, no_lora)
    projector_only = _save(tmp_path / "proj.pth", {k: v for k, v in ref.pth_state.items() if not k.startswith("llada.")})
    with pytest.raises(CheckpointError, match="holds no LoRA"):
        _import(projector_only)
    assert _import(projector_only, no_lora)["lora"]["llm"] is None


def test_a_ddp_wrapped_state_dict_imports_like_the_plain_one_and_layouts_are_checked(ref, tmp_path):
    # torch.save(ddp_model.state_dict()) names every tensor "module.<name>"
    plain = _import(_save(tmp_path / "plain.pth", ref.pth_state))
    ddp = _import(_save(tmp_path / "ddp.pth", {f"module.{k}": v for k, v in ref.pth_state.items()}))
    jax.tree.map(np.testing.assert_array_equal, ddp, plain)
    # linear_proj stored (in, out) instead of PyTorch's (out, in): the same numbers, scrambled
    w = ref.pth_state["linear_proj.weight"]
    assert w.shape[0] != w.shape[1]
    flipped = _save(tmp_path / "flipped.pth", {**ref.pth_state, "linear_proj.weight": w.T.contiguous()})
    with pytest.raises(CheckpointError, match=rf"linear_proj.weight: checkpoint \({w.shape[1]}, {w.shape[0]}\) vs model "
                                              rf"\({w.shape[1]}, {w.shape[0]}\) \(transpose layout: needs "
                                              rf"\({w.shape[0]}, {w.shape[1]}\)\)"):
        _import(flipped)
    with pytest.raises(CheckpointError, match="is a folder, not a .pth checkpoint file"):
        _import(tmp_path)


def test_scanned_llm_takes_the_lora_stacked(ref, tmp_path):
    # The paper config scans the LLM's layers: per-layer .pth tensors land in one stacked leaf.
    cfg = load_model_config("tiny", ["llm.scan_layers=true"])
    path = _save(tmp_path / "ckpt.pth", ref.pth_state)
    v = _import(path, cfg)
    a = v["lora"]["llm"]["blocks"]["q_proj"]["lora_a"]
    assert a.shape == (2, cfg.llm.d_model, cfg.lora.rank)
    for i in range(2):
        np.testing.assert_array_equal(a[i], ref.pth_state[f"{LORA_PREFIX}.{i}.q_proj.lora_A.default.weight"].numpy().T)
    out = export_reference_pth(tmp_path / "scanned.pth", cfg, v)
    exported = read_pth(out)["model"]
    assert set(exported) == set(_used(ref.pth_state))
    assert all(torch.equal(t, ref.pth_state[k]) for k, t in exported.items())

"""PEFT LoRA adapters of the LLaDA LLM: name table, adapter directory import and export.

PEFT names a LoRA tensor ``<prefix>model.transformer.blocks.N.<proj>.lora_{A,B}[.<adapter>].weight``
with torch shapes A ``(r, in)`` and B ``(out, r)``; our ``lora`` collection holds
``blocks_N/<proj>/lora_a (in, r)`` and ``lora_b (r, out)``. The prefix is ``base_model.model.``
in an adapter directory (no adapter name in the keys) and ``llada.base_model.model.`` in the
published ``.pth`` (adapter name ``default``), which ``reference_pth.py`` reads with the same
table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np

from whisper_llada_jax.checkpoints.tensors import (TRANSPOSE, JsonFields, Rule, SafetensorsSource, export_params,
                                                   import_params, read_json_object, save_safetensors)
from whisper_llada_jax.config import LLMConfig, LoRAConfig
from whisper_llada_jax.errors import CheckpointError, ConfigError
from whisper_llada_jax.outputs import atomic_dir

# Every block projection LoRA may target (LLaDA names).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
ADAPTER_PREFIX = "base_model.model."
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def lora_rules(prefix: str = ADAPTER_PREFIX, *, adapter_name: str | None = "default",
               targets: tuple[str, ...] = PROJECTIONS, dst_prefix: str = "") -> list[Rule]:
    """PEFT LoRA names -> paths in the LLM's ``lora`` collection.

    ``prefix`` is everything before ``model.transformer.`` (``llada.base_model.model.`` for the
    reference ``.pth``); ``adapter_name`` the ``.default`` segment (None in adapter files);
    ``dst_prefix`` is prepended to destinations (e.g. ``"llm/"`` for the composite tree).
    """
    tag = f".{adapter_name}" if adapter_name else ""
    rules = []
    for proj in targets:
        src = f"{prefix}model.transformer.blocks.{{i}}.{proj}"
        dst = f"{dst_prefix}blocks_{{i}}/{proj}"
        rules.append(Rule(f"{src}.lora_A{tag}.weight", f"{dst}/lora_a", TRANSPOSE))
        rules.append(Rule(f"{src}.lora_B{tag}.weight", f"{dst}/lora_b", TRANSPOSE))
    return rules


def adapter_config(lora_cfg: LoRAConfig, *, base_model: str | None = None,
                   task_type: str | None = "CAUSAL_LM") -> dict:
    """The ``adapter_config.json`` PEFT writes for a plain LoRA adapter."""
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": lora_cfg.rank,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "target_modules": list(lora_cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "use_rslora": False,
        "use_dora": False,
    }


def lora_config_from_adapter(path: str | Path) -> LoRAConfig:
    """LoRAConfig from an ``adapter_config.json`` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_CONFIG
    data = read_json_object(path, hint="a PEFT adapter directory holds adapter_config.json")
    if data.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {data.get('peft_type')!r}, only LORA adapters are supported")
    for unsupported in ("use_dora", "use_rslora"):
        if data.get(unsupported):
            raise CheckpointError(f"{path}: {unsupported}: true is not supported", hint="export a plain LoRA adapter")
    # Settings that make some module's rank / scale / layers differ from r, lora_alpha and every
    # block, or train more than the LoRA matrices: one LoRAConfig cannot hold them, and reading
    # past them would give another scale (alpha_pattern) or drop trained tensors.
    for key in ("rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "modules_to_save"):
        if data.get(key):
            raise CheckpointError(f"{path}: {key}: {data[key]!r} is not supported (every targeted projection of "
                                  "every block must share r and lora_alpha, and only LoRA matrices be saved)",
                                  hint="export a plain LoRA adapter")
    if data.get("bias") not in (None, "none"):
        raise CheckpointError(f"{path}: bias: {data['bias']!r} is not supported (LLaDA has no biases to train)",
                              hint="export the adapter with bias='none'")
    targets = data.get("target_modules")
    if isinstance(targets, str) or not targets:
        raise CheckpointError(f"{path}: target_modules must be a list of projection names, got {targets!r}")
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown:
        raise CheckpointError(f"{path}: unknown target_modules {unknown}", hint=f"LLaDA projections are {list(PROJECTIONS)}")
    f = JsonFields(data, str(path))
    try:
        return LoRAConfig(enabled=True, rank=f.int("r"), alpha=f.float("lora_alpha"),
                          dropout=f.float("lora_dropout", 0.0),
                          targets=tuple(t for t in PROJECTIONS if t in targets))
    except ConfigError as e:  # an impossible rank / dropout (LoRAConfig's validation)
        raise CheckpointError(f"{path}: {e.message}", hint=e.hint) from None


def abstract_lora(llm_cfg: LLMConfig, lora_cfg: LoRAConfig) -> dict:
    """ShapeDtypeStructs of the LLM's ``lora`` collection (nothing allocated)."""
    from whisper_llada_jax.models.llada import abstract_variables

    return nn.unbox(abstract_variables(llm_cfg, lora_cfg)["lora"])


def export_peft(lora: Mapping, lora_cfg: LoRAConfig, out_dir: str | Path, *, base_model: str | None = None,
                task_type: str | None = "CAUSAL_LM", dtype=None) -> Path:
    """Writes ``adapter_model.safetensors`` + ``adapter_config.json`` (atomic directory write)."""
    tensors = list(export_params(nn.unbox(lora), lora_rules(adapter_name=None, targets=lora_cfg.targets), dtype=dtype))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_peft_files(tmp, tensors, lora_cfg, base_model=base_model, task_type=task_type)
    return out_dir


def write_peft_files(directory: Path, tensors, lora_cfg: LoRAConfig, *, base_model: str | None,
                     task_type: str | None) -> None:
    """The two adapter files into an existing directory (used by the HF exporters too)."""
    save_safetensors(tensors, directory / ADAPTER_FILE, metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(
        json.dumps(adapter_config(lora_cfg, base_model=base_model, task_type=task_type), indent=2) + "\n")


def import_peft(path: str | Path, llm_cfg: LLMConfig, *, lora_cfg: LoRAConfig | None = None, dtype=None,
                shardings: Mapping | None = None) -> tuple[LoRAConfig, dict]:
    """Reads a PEFT adapter directory -> ``(LoRAConfig, lora tree)`` for the LLM.

    The LoRA config comes from ``adapter_config.json``; a given ``lora_cfg`` must agree with it
    on rank and targets. Keys with or without an adapter name (``.default``) are accepted.
    """
    path = Path(path)
    found = lora_config_from_adapter(path)
    if lora_cfg is not None and (lora_cfg.rank, tuple(sorted(lora_cfg.targets))) != (found.rank, tuple(sorted(found.targets))):
        raise CheckpointError(f"{path}: adapter has rank {found.rank} on {list(found.targets)}, the config asks for "
                              f"rank {lora_cfg.rank} on {list(lora_cfg.targets)}", hint="make the lora section match the adapter")
    source = SafetensorsSource(path / ADAPTER_FILE if path.is_dir() else path)
    abstract = abstract_lora(llm_cfg, found)
    if dtype is not None:
        abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, np.dtype(dtype)), abstract)
    rules = lora_rules(ADAPTER_PREFIX, adapter_name=None) + lora_rules(ADAPTER_PREFIX, adapter_name="default")
    return found, import_params(source, rules, abstract, shardings=shardings)

"""Hugging Face Llama checkpoints (the autoregressive Whisper-LLaMA baseline's decoder).

A Llama is the same ``LLaDA`` module with ``causal=True`` and grouped-query attention. HF
Llama already stores q/k in the half-rotation RoPE layout, so the table is a plain rename +
transpose. Llama-3.1-style ``rope_scaling`` is not supported (rejected on import).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from whisper_llada_jax.checkpoints.llada_hf import (DEFAULT_SHARD_BYTES, check_config_matches, export_hf, import_hf,
                                                    read_config_json)
from whisper_llada_jax.checkpoints.tensors import IDENTITY, TRANSPOSE, JsonFields, Rule
from whisper_llada_jax.config import LLMConfig, LoRAConfig, TokenConfig
from whisper_llada_jax.errors import CheckpointError, ConfigError

_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "attn_out"}
_MLP = {"gate_proj": "ff_proj", "up_proj": "up_proj", "down_proj": "ff_out"}


def llama_rules() -> list[Rule]:
    """HF Llama names -> LLaDA-module ``params`` paths."""
    rules = [Rule("model.embed_tokens.weight", "wte/embedding", IDENTITY)]
    layer = "model.layers.{i}"
    rules.append(Rule(f"{layer}.input_layernorm.weight", "blocks_{i}/attn_norm/weight", IDENTITY))
    rules.append(Rule(f"{layer}.post_attention_layernorm.weight", "blocks_{i}/ff_norm/weight", IDENTITY))
    for hf, ours in _ATTN.items():
        rules.append(Rule(f"{layer}.self_attn.{hf}.weight", f"blocks_{{i}}/{ours}/kernel", TRANSPOSE))
    for hf, ours in _MLP.items():
        rules.append(Rule(f"{layer}.mlp.{hf}.weight", f"blocks_{{i}}/{ours}/kernel", TRANSPOSE))
    rules.append(Rule("model.norm.weight", "ln_f/weight", IDENTITY))
    rules.append(Rule("lm_head.weight", "ff_out/kernel", TRANSPOSE))
    return rules


def _rope_theta(data: dict, where: str) -> float:
    params = data.get("rope_parameters")
    scaling = data.get("rope_scaling")
    if isinstance(params, dict):
        if params.get("rope_type", "default") != "default":
            raise CheckpointError(f"{where}: rope_type {params.get('rope_type')!r} is not supported (only default RoPE)")
        if "rope_theta" in params:
            return JsonFields(params, f"{where}: rope_parameters").float("rope_theta")
    if scaling:
        raise CheckpointError(f"{where}: rope_scaling {scaling!r} is not supported (only default RoPE)")
    return JsonFields(data, where).float("rope_theta", 10000.0)


def llama_config_from_hf(data: dict | str | Path, base: LLMConfig | None = None) -> LLMConfig:
    """LLMConfig (causal, GQA) from an HF Llama ``config.json``."""
    where = "config.json"
    if not isinstance(data, dict):
        where = str(data)
        data = read_config_json(data)
    if data.get("model_type") != "llama":
        hint = "this looks like a LLaDA checkpoint: import it with the LLaDA importer" \
            if data.get("model_type") == "llada" else "give a Llama checkpoint directory (model_type llama)"
        raise CheckpointError(f"{where}: model_type {data.get('model_type')!r} is not a Llama config", hint=hint)
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if key in data and data[key] != want:
            raise CheckpointError(f"{where}: {key}={data[key]!r} is not supported (need {want!r})")
    f = JsonFields(data, where)
    d, heads = f.int("hidden_size"), f.int("num_attention_heads")
    if heads <= 0:
        raise CheckpointError(f"{where}: num_attention_heads must be > 0, got {heads}")
    try:
        return dataclasses.replace(
            base or LLMConfig(),
            vocab_size=f.int("vocab_size"),
            d_model=d,
            n_layers=f.int("num_hidden_layers"),
            n_heads=heads,
            n_kv_heads=f.int("num_key_value_heads", heads),
            head_dim=f.int("head_dim", None) or d // heads,
            mlp_hidden=f.int("intermediate_size"),
            rope_theta=_rope_theta(data, where),
            norm_eps=f.float("rms_norm_eps", 1e-6),
            max_len=f.int("max_position_embeddings", 2048),
            causal=True,
            tie_embeddings=f.bool("tie_word_embeddings", False),
        )
    except ConfigError as e:  # an impossible size (LLMConfig's validation)
        raise CheckpointError(f"{where}: {e.message}", hint=e.hint) from None


def llama_config_to_hf(cfg: LLMConfig, tokens: TokenConfig | None = None, torch_dtype: str | None = None) -> dict:
    """HF Llama ``config.json`` for ``cfg`` (loadable by ``LlamaForCausalLM``)."""
    if not cfg.causal:
        raise CheckpointError("export: a bidirectional LLM cannot be written as Llama", hint="use the LLaDA exporter")
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "hidden_size": cfg.d_model,
        "initializer_range": cfg.init_std,
        "intermediate_size": cfg.mlp_hidden,
        "max_position_embeddings": cfg.max_len,
        "mlp_bias": False,
        "num_attention_heads": cfg.n_heads,
        "num_hidden_layers": cfg.n_layers,
        "num_key_value_heads": cfg.n_kv_heads,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": torch_dtype or cfg.param_dtype,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }
    if tokens is not None:
        out.update(bos_token_id=tokens.bos, eos_token_id=tokens.eos, pad_token_id=tokens.pad)
    return out


def import_llama_hf(path: str | Path, cfg: LLMConfig | None = None, *, dtype=None,
                    shardings: Mapping | None = None) -> tuple[LLMConfig, dict]:
    """HF Llama directory -> ``(LLMConfig, params)`` for the causal ``LLaDA`` module.

    Same contract as ``import_llada_hf``. With tied embeddings a stored ``lm_head.weight``
    (a copy of the embedding) is skipped.
    """
    found = llama_config_from_hf(path, base=cfg)
    if cfg is not None:
        check_config_matches(found, cfg, str(path))
    ignore = (r"^lm_head\.weight$",) if found.tie_embeddings else ()
    ignore += (r"\.rotary_emb\.inv_freq$",)  # buffers some old exports carry
    return found, import_hf(path, found, llama_rules(), dtype=dtype, shardings=shardings, ignore=ignore)


def export_llama_hf(params: Mapping, cfg: LLMConfig, out_dir: str | Path, *, lora: Mapping | None = None,
                    lora_cfg: LoRAConfig | None = None, merge: bool = True, tokens: TokenConfig | None = None,
                    shard_size_bytes: int = DEFAULT_SHARD_BYTES, dtype=None) -> Path:
    """Causal ``params`` -> HF Llama directory. LoRA (if any) is merged: the PEFT adapter
    names of this project are LLaDA's, so an unmerged adapter would not fit a Llama."""
    if lora is not None and not merge:
        raise CheckpointError("export: an unmerged LoRA adapter cannot be written for a Llama",
                              hint="export with merge=True")
    np_dtype = None if dtype is None else np.dtype(jax.numpy.dtype(dtype))
    config_json = llama_config_to_hf(cfg, tokens, torch_dtype=None if dtype is None else str(np_dtype))
    return export_hf(params, llama_rules(), config_json, out_dir, lora=lora, lora_cfg=lora_cfg, merge=True,
                     shard_size_bytes=shard_size_bytes, dtype=np_dtype)

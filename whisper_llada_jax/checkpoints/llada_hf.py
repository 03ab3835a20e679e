"""Hugging Face LLaDA checkpoints (``GSAI-ML/LLaDA-8B-Instruct`` layout, SPEC section 4).

Tensors live under ``model.transformer.`` in (possibly sharded) safetensors; ``config.json``
uses LLaDA's own field names (``d_model``, ``n_heads``, ``mlp_hidden_size``, ...). One rule
table drives import and export; import reads lazily, straight into the target shardings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np

from whisper_llada_jax.checkpoints import peft
from whisper_llada_jax.checkpoints.tensors import (IDENTITY, TRANSPOSE, JsonFields, Rule, SafetensorsSource,
                                                   export_params, import_params, read_json_object, save_safetensors)
from whisper_llada_jax.config import LLMConfig, LoRAConfig, TokenConfig
from whisper_llada_jax.errors import CheckpointError, ConfigError
from whisper_llada_jax.outputs import atomic_dir

PREFIX = "model.transformer."
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3
_BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def llada_rules() -> list[Rule]:
    """HF LLaDA names -> LLaDA ``params`` paths (Linear weights are transposed)."""
    rules = [Rule(f"{PREFIX}wte.weight", "wte/embedding", IDENTITY)]
    block = f"{PREFIX}blocks.{{i}}"
    for norm in ("attn_norm", "ff_norm"):
        rules.append(Rule(f"{block}.{norm}.weight", f"blocks_{{i}}/{norm}/weight", IDENTITY))
    for proj in _BLOCK_LINEARS:
        rules.append(Rule(f"{block}.{proj}.weight", f"blocks_{{i}}/{proj}/kernel", TRANSPOSE))
    rules.append(Rule(f"{PREFIX}ln_f.weight", "ln_f/weight", IDENTITY))
    rules.append(Rule(f"{PREFIX}ff_out.weight", "ff_out/kernel", TRANSPOSE))
    return rules


# ----------------------------------------------------------------------------- config.json
def read_config_json(path: str | Path) -> dict:
    """``config.json`` of a Hugging Face model directory (or the file itself) as a dict."""
    path = Path(path)
    return read_json_object(path / "config.json" if path.is_dir() else path,
                            hint="give the Hugging Face model directory")


def _require(data: dict, where: str, checks: Mapping[str, object]) -> None:
    for key, want in checks.items():
        if key in data and data[key] != want:
            raise CheckpointError(f"{where}: {key}={data[key]!r} is not supported (need {want!r})")


def llada_config_from_hf(data: dict | str | Path, base: LLMConfig | None = None) -> LLMConfig:
    """LLMConfig from LLaDA's ``config.json`` (dict or path); compute settings from ``base``."""
    where = "config.json"
    if not isinstance(data, dict):
        where = str(data)
        data = read_config_json(data)
    model_type = data.get("model_type")
    if model_type != "llada" or "d_model" not in data:
        hint = "this looks like a Llama checkpoint: import it with the Llama importer" if model_type == "llama" else \
            "give a LLaDA checkpoint directory (model_type llada)"
        raise CheckpointError(f"{where}: model_type {model_type!r} is not a LLaDA config", hint=hint)
    _require(data, where, {"include_bias": False, "include_qkv_bias": False, "alibi": False, "rope": True,
                           "layer_norm_type": "rms", "activation_type": "silu", "block_type": "llama",
                           "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False})
    # Options of LLaDA's model code this implementation does not have: read past, they would
    # change the forward silently (clipped q/k/v, one K/V head).
    for key in ("clip_qkv", "multi_query_attention"):
        if data.get(key):
            raise CheckpointError(f"{where}: {key}={data[key]!r} is not supported (need null)")
    f = JsonFields(data, where)
    d, heads = f.int("d_model"), f.int("n_heads")
    if heads <= 0 or d % heads:
        raise CheckpointError(f"{where}: n_heads {heads} does not divide d_model {d}")
    try:
        return dataclasses.replace(
            base or LLMConfig(),
            vocab_size=f.int("embedding_size", None) or f.int("vocab_size"),
            d_model=d,
            n_layers=f.int("n_layers"),
            n_heads=heads,
            n_kv_heads=f.int("n_kv_heads", heads),
            head_dim=d // heads,
            mlp_hidden=f.int("mlp_hidden_size"),
            rope_theta=f.float("rope_theta", 10000.0),
            norm_eps=f.float("rms_norm_eps", 1e-5),
            max_len=f.int("max_sequence_length", 4096),
            causal=False,
            tie_embeddings=f.bool("weight_tying", False),
        )
    except ConfigError as e:  # an impossible size (LLMConfig's validation)
        raise CheckpointError(f"{where}: {e.message}", hint=e.hint) from None


def llada_config_to_hf(cfg: LLMConfig, tokens: TokenConfig | None = None, torch_dtype: str | None = None) -> dict:
    """LLaDA ``config.json`` for ``cfg`` (loadable by LLaDA's ``trust_remote_code`` model)."""
    if cfg.causal:
        raise CheckpointError("export: a causal LLM cannot be written as LLaDA", hint="use the Llama exporter")
    if cfg.n_heads * cfg.head_dim != cfg.d_model:
        raise CheckpointError(f"export: LLaDA needs n_heads * head_dim == d_model ({cfg.n_heads} x {cfg.head_dim} "
                              f"!= {cfg.d_model})")
    tokens = tokens or TokenConfig()
    return {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "model_type": "llada",
        "activation_type": "silu",
        "alibi": False,
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": cfg.d_model,
        "embedding_dropout": 0.0,
        "embedding_size": cfg.vocab_size,
        "eos_token_id": tokens.eos,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_std": cfg.init_std,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "mask_token_id": tokens.mask,
        "max_sequence_length": cfg.max_len,
        "mlp_hidden_size": cfg.mlp_hidden,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "n_layers": cfg.n_layers,
        "pad_token_id": tokens.pad,
        "residual_dropout": 0.0,
        "rms_norm_eps": cfg.norm_eps,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": cfg.rope_theta,
        "scale_logits": False,
        "torch_dtype": torch_dtype or _DTYPE_NAMES[cfg.param_dtype],
        "use_cache": False,
        "vocab_size": cfg.vocab_size,
        "weight_tying": cfg.tie_embeddings,
    }


def check_config_matches(found: LLMConfig, cfg: LLMConfig, where: str) -> None:
    """Raises when ``cfg`` (the user's) disagrees with the checkpoint's shape fields."""
    fields = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden", "causal",
              "tie_embeddings")
    diff = [f"{f}: config {getattr(cfg, f)} vs checkpoint {getattr(found, f)}" for f in fields
            if getattr(cfg, f) != getattr(found, f)]
    if diff:
        raise CheckpointError(f"{where}: the model config does not match the checkpoint ({'; '.join(diff)})",
                              hint="use the checkpoint's sizes in the llm section, or omit the config")


# ----------------------------------------------------------------------------- import
def abstract_params(cfg: LLMConfig, dtype=None) -> dict:
    """ShapeDtypeStructs of the LLM ``params`` (``dtype`` overrides ``cfg.param_dtype``)."""
    from whisper_llada_jax.models.llada import abstract_variables

    abstract = nn.unbox(abstract_variables(cfg)["params"])
    if dtype is not None:
        abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, np.dtype(dtype)), abstract)
    return abstract


def import_hf(path: str | Path, cfg: LLMConfig, rules: Iterable[Rule], *, dtype=None,
              shardings: Mapping | None = None, ignore: Iterable[str] = ()) -> dict:
    """Reads the safetensors of an HF directory into the ``params`` tree of ``cfg``."""
    path = Path(path)
    if path.is_dir() and not (path / INDEX_NAME).exists() and (path / "model.safetensors").exists():
        path = path / "model.safetensors"  # not other *.safetensors beside it (a PEFT adapter)
    source = SafetensorsSource(path, index_name=INDEX_NAME)
    return import_params(source, rules, abstract_params(cfg, dtype), shardings=shardings, ignore=ignore)


def import_llada_hf(path: str | Path, cfg: LLMConfig | None = None, *, dtype=None,
                    shardings: Mapping | None = None) -> tuple[LLMConfig, dict]:
    """HF LLaDA directory -> ``(LLMConfig, params)``.

    The config comes from ``config.json``; a given ``cfg`` supplies the compute settings
    (dtype, scan, remat) and must agree with the checkpoint's sizes. Tensors are read lazily
    and placed straight into ``shardings`` (a tree like the params, or None for one device).
    """
    found = llada_config_from_hf(path, base=cfg)
    if cfg is not None:
        check_config_matches(found, cfg, str(path))
    return found, import_hf(path, found, llada_rules(), dtype=dtype, shardings=shardings)


# ----------------------------------------------------------------------------- export
def write_sharded(tensors: Iterable[tuple[str, np.ndarray]], out_dir: Path,
                  shard_size_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Safetensors shards of at most ``shard_size_bytes`` (one oversized tensor gets its own)
    plus ``model.safetensors.index.json``; a single shard is written as ``model.safetensors``.
    Holds one shard in host memory at a time."""
    parts: list[tuple[Path, list[str]]] = []
    total = 0
    batch: list[tuple[str, np.ndarray]] = []
    size = 0

    def flush():
        nonlocal batch, size
        if batch:
            tmp = out_dir / f".part-{len(parts):05d}.safetensors"
            save_safetensors(batch, tmp, metadata={"format": "pt"})
            parts.append((tmp, [k for k, _ in batch]))
        batch, size = [], 0

    for name, arr in tensors:
        if batch and size + arr.nbytes > shard_size_bytes:
            flush()
        batch.append((name, arr))
        size += arr.nbytes
        total += arr.nbytes
    flush()
    if len(parts) == 1:
        final = out_dir / "model.safetensors"
        parts[0][0].rename(final)
        return [final]
    n = len(parts)
    weight_map, files = {}, []
    for i, (tmp, keys) in enumerate(parts):
        final = out_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        tmp.rename(final)
        files.append(final)
        weight_map.update((k, final.name) for k in keys)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return files


def prepare_export(params: Mapping, lora: Mapping | None, lora_cfg: LoRAConfig | None, merge: bool) -> Mapping:
    """Base params to write: LoRA folded in when ``merge``."""
    params = nn.unbox(params)
    if lora is not None and merge:
        if lora_cfg is None:
            raise CheckpointError("export: merging LoRA needs its LoRAConfig (for alpha / rank)")
        from whisper_llada_jax.models.lora import merge_lora

        params = merge_lora(params, lora, lora_cfg)
    return params


def export_hf(params: Mapping, rules: list[Rule], config_json: dict, out_dir: str | Path, *,
              lora: Mapping | None = None, lora_cfg: LoRAConfig | None = None, merge: bool = False,
              shard_size_bytes: int = DEFAULT_SHARD_BYTES, dtype=None) -> Path:
    """Writes sharded safetensors + index + ``config.json`` (atomically). Unmerged LoRA goes
    beside it as a PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    base = prepare_export(params, lora, lora_cfg, merge)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_sharded(export_params(base, rules, dtype=dtype), tmp, shard_size_bytes)
        (tmp / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
        if lora is not None and not merge:
            if lora_cfg is None:
                raise CheckpointError("export: writing a LoRA adapter needs its LoRAConfig")
            adapter = export_params(nn.unbox(lora), peft.lora_rules(adapter_name=None, targets=lora_cfg.targets))
            peft.write_peft_files(tmp, adapter, lora_cfg, base_model=None, task_type="CAUSAL_LM")
    return out_dir


def export_llada_hf(params: Mapping, cfg: LLMConfig, out_dir: str | Path, *, lora: Mapping | None = None,
                    lora_cfg: LoRAConfig | None = None, merge: bool = False, tokens: TokenConfig | None = None,
                    shard_size_bytes: int = DEFAULT_SHARD_BYTES, dtype=None) -> Path:
    """LLaDA ``params`` -> HF LLaDA directory (``dtype`` casts tensors, e.g. ``"bfloat16"``)."""
    np_dtype = None if dtype is None else np.dtype(jax.numpy.dtype(dtype))
    config_json = llada_config_to_hf(cfg, tokens, torch_dtype=None if dtype is None else str(np.dtype(np_dtype)))
    return export_hf(params, llada_rules(), config_json, out_dir, lora=lora, lora_cfg=lora_cfg, merge=merge,
                     shard_size_bytes=shard_size_bytes, dtype=np_dtype)

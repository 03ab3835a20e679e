"""Hugging Face Whisper checkpoints <-> the Flax ``Whisper`` parameter tree.

One table (``WHISPER_RULES``) drives import and export. Import reads ``config.json`` (and
``generation_config.json`` for decoding facts), builds the abstract parameter tree with
``jax.eval_shape`` and fills it tensor by tensor from memory-mapped safetensors, straight into
each leaf's sharding. ``import_whisper_tensors`` takes any ``TensorSource`` yielding HF names
(the CTranslate2 reader uses it). Export writes ``model.safetensors`` + ``config.json`` +
``generation_config.json`` that ``WhisperForConditionalGeneration.from_pretrained`` loads.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from whisper_llada_jax.checkpoints.tensors import (IDENTITY, TRANSPOSE, Rule, SafetensorsSource, TensorSource,
                                                   conv1d_transform, export_params, import_params, read_json_object,
                                                   save_safetensors)
from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.errors import CheckpointError, ConfigError
from whisper_llada_jax.models.whisper import abstract_params
from whisper_llada_jax.outputs import atomic_dir

# ----------------------------------------------------------------------------- the table
_CONV = conv1d_transform()


def _attn_rules(src: str, dst: str) -> list[Rule]:
    rules = [Rule(f"{src}.k_proj.weight", f"{dst}/k_proj/kernel", TRANSPOSE)]  # k_proj has no bias
    for p in ("q_proj", "v_proj", "out_proj"):
        rules += [Rule(f"{src}.{p}.weight", f"{dst}/{p}/kernel", TRANSPOSE),
                  Rule(f"{src}.{p}.bias", f"{dst}/{p}/bias")]
    return rules


def _ln_rules(src: str, dst: str) -> list[Rule]:
    return [Rule(f"{src}.weight", f"{dst}/scale"), Rule(f"{src}.bias", f"{dst}/bias")]


def _layer_rules(src: str, dst: str, cross: bool) -> list[Rule]:
    rules = _attn_rules(f"{src}.self_attn", f"{dst}/self_attn")
    rules += _ln_rules(f"{src}.self_attn_layer_norm", f"{dst}/self_attn_layer_norm")
    if cross:
        rules += _attn_rules(f"{src}.encoder_attn", f"{dst}/encoder_attn")
        rules += _ln_rules(f"{src}.encoder_attn_layer_norm", f"{dst}/encoder_attn_layer_norm")
    for p in ("fc1", "fc2"):
        rules += [Rule(f"{src}.{p}.weight", f"{dst}/{p}/kernel", TRANSPOSE), Rule(f"{src}.{p}.bias", f"{dst}/{p}/bias")]
    rules += _ln_rules(f"{src}.final_layer_norm", f"{dst}/final_layer_norm")
    return rules


def whisper_rules(prefix: str = "model.") -> list[Rule]:
    """HF names (``{prefix}encoder.*`` / ``{prefix}decoder.*``) -> ``encoder/...`` / ``decoder/...``."""
    e, d = f"{prefix}encoder", f"{prefix}decoder"
    rules = [
        Rule(f"{e}.conv1.weight", "encoder/conv1/kernel", _CONV),
        Rule(f"{e}.conv1.bias", "encoder/conv1/bias"),
        Rule(f"{e}.conv2.weight", "encoder/conv2/kernel", _CONV),
        Rule(f"{e}.conv2.bias", "encoder/conv2/bias"),
        Rule(f"{e}.embed_positions.weight", "encoder/embed_positions", IDENTITY),
        *_layer_rules(f"{e}.layers.{{i}}", "encoder/layers_{i}", cross=False),
        *_ln_rules(f"{e}.layer_norm", "encoder/layer_norm"),
        Rule(f"{d}.embed_tokens.weight", "decoder/embed_tokens/embedding"),
        Rule(f"{d}.embed_positions.weight", "decoder/embed_positions"),
        *_layer_rules(f"{d}.layers.{{i}}", "decoder/layers_{i}", cross=True),
        *_ln_rules(f"{d}.layer_norm", "decoder/layer_norm"),
    ]
    return rules


WHISPER_RULES = whisper_rules()
# Tied to decoder.embed_tokens (some checkpoints store it anyway; checked equal on import).
_TIED = r"^proj_out\.weight$"


# ----------------------------------------------------------------------------- configs
_HF_FIELDS = {  # WhisperConfig field -> HF config.json key
    "n_mels": "num_mel_bins",
    "d_model": "d_model",
    "encoder_layers": "encoder_layers",
    "encoder_heads": "encoder_attention_heads",
    "encoder_ffn": "encoder_ffn_dim",
    "decoder_layers": "decoder_layers",
    "decoder_heads": "decoder_attention_heads",
    "decoder_ffn": "decoder_ffn_dim",
    "vocab_size": "vocab_size",
    "max_source_positions": "max_source_positions",
    "max_target_positions": "max_target_positions",
}


def whisper_config_from_hf(hf: Mapping[str, Any], where: str = "config.json", **overrides) -> WhisperConfig:
    """HF ``config.json`` dict -> ``WhisperConfig`` (input_frames = 2 x max_source_positions)."""
    if hf.get("model_type") != "whisper":
        raise CheckpointError(f"{where}: model_type is {hf.get('model_type')!r}, not 'whisper'",
                              hint="give a Whisper checkpoint directory")
    act = hf.get("activation_function", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{where}: activation_function {act!r} is not supported (only 'gelu')")
    if hf.get("scale_embedding", False):
        raise CheckpointError(f"{where}: scale_embedding=true is not supported by this Whisper implementation")
    missing = [k for k in _HF_FIELDS.values() if k not in hf]
    if missing:
        raise CheckpointError(f"{where}: missing field(s) {missing}", hint="is this a Whisper config.json?")
    kw = {f: hf[k] for f, k in _HF_FIELDS.items()}
    bad = [k for f, k in _HF_FIELDS.items() if not isinstance(kw[f], int) or isinstance(kw[f], bool) or kw[f] <= 0]
    if bad:
        raise CheckpointError(f"{where}: field(s) {bad} must be positive integers")
    for f, k in (("encoder_heads", "encoder_attention_heads"), ("decoder_heads", "decoder_attention_heads")):
        if kw["d_model"] % kw[f]:
            raise CheckpointError(f"{where}: d_model {kw['d_model']} is not divisible by {k} {kw[f]}")
    kw["input_frames"] = 2 * kw["max_source_positions"]
    kw.update(overrides)
    try:
        return WhisperConfig(**kw)
    except ConfigError as e:  # an impossible size or setting (WhisperConfig's validation)
        raise CheckpointError(f"{where}: {e.message}", hint=e.hint) from None


def whisper_config_to_hf(cfg: WhisperConfig, gen: "WhisperGenerationConfig | None" = None) -> dict:
    """``WhisperConfig`` (+ generation facts) -> a ``config.json`` transformers accepts."""
    gen = gen or WhisperGenerationConfig.default_for(cfg)
    out = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        **{k: getattr(cfg, f) for f, k in _HF_FIELDS.items()},
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "is_encoder_decoder": True,
        "num_hidden_layers": cfg.encoder_layers,
        "dtype": cfg.param_dtype,
        "bos_token_id": gen.bos_token_id,
        "eos_token_id": gen.eos_token_id,
        "pad_token_id": gen.pad_token_id,
        "decoder_start_token_id": gen.decoder_start_token_id,
        "suppress_tokens": list(gen.suppress_tokens),
        "begin_suppress_tokens": list(gen.begin_suppress_tokens),
    }
    return out


@dataclasses.dataclass(frozen=True)
class WhisperGenerationConfig:
    """Decoding facts of a checkpoint (HF names), from config.json / generation_config.json."""

    decoder_start_token_id: int = 50257  # <|startoftranscript|>
    eos_token_id: int = 50256  # <|endoftext|>
    pad_token_id: int = 50256
    bos_token_id: int = 50256
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    forced_decoder_ids: tuple[tuple[int, int], ...] = ()  # (position, token id) pairs
    lang_to_id: Mapping[str, int] = dataclasses.field(default_factory=dict)  # "<|en|>" -> id
    task_to_id: Mapping[str, int] = dataclasses.field(default_factory=dict)  # "transcribe" -> id
    no_timestamps_token_id: int | None = None
    is_multilingual: bool = False
    max_length: int = 448

    @classmethod
    def default_for(cls, cfg: WhisperConfig) -> "WhisperGenerationConfig":
        """OpenAI's ids when the vocabulary is Whisper's; otherwise ids at the vocabulary's end."""
        if cfg.vocab_size >= 51864:
            multilingual = cfg.vocab_size >= 51865
            return cls(decoder_start_token_id=50258 if multilingual else 50257,
                       eos_token_id=50257 if multilingual else 50256,
                       pad_token_id=50257 if multilingual else 50256,
                       bos_token_id=50257 if multilingual else 50256,
                       is_multilingual=multilingual, max_length=cfg.max_target_positions)
        v = cfg.vocab_size
        return cls(decoder_start_token_id=v - 3, eos_token_id=v - 1, pad_token_id=v - 1, bos_token_id=v - 2,
                   max_length=cfg.max_target_positions)

    def language_id(self, language: str) -> int:
        """``"en"`` / ``"<|en|>"`` -> its token id (multilingual checkpoints)."""
        key = language if language.startswith("<|") else f"<|{language}|>"
        if key not in self.lang_to_id:
            raise CheckpointError(f"generation_config.json: no language {language!r} in lang_to_id",
                                  hint=f"choose one of {sorted(self.lang_to_id)[:10]}...")
        return self.lang_to_id[key]

    @classmethod
    def from_dicts(cls, config: Mapping[str, Any], generation: Mapping[str, Any] | None = None,
                   cfg: WhisperConfig | None = None) -> "WhisperGenerationConfig":
        """Merges config.json and generation_config.json (the latter wins), over defaults."""
        try:
            return cls._from_dicts(config, generation, cfg)
        except (ValueError, TypeError, AttributeError) as e:  # "eos_token_id": "x", a list of non-ints ...
            raise CheckpointError(f"config.json / generation_config.json: a token id field has the wrong type ({e})",
                                  hint="the files are damaged or belong to another model") from None

    @classmethod
    def _from_dicts(cls, config: Mapping[str, Any], generation: Mapping[str, Any] | None,
                    cfg: WhisperConfig | None) -> "WhisperGenerationConfig":
        base = cls.default_for(cfg) if cfg is not None else cls()
        merged = {**{k: v for k, v in config.items() if v is not None},
                  **{k: v for k, v in (generation or {}).items() if v is not None}}
        kw: dict[str, Any] = {}
        for f in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "no_timestamps_token_id",
                  "max_length"):
            if f in merged:
                v = merged[f]
                kw[f] = v[0] if isinstance(v, list) else int(v)
        for f in ("suppress_tokens", "begin_suppress_tokens"):
            if f in merged:
                kw[f] = tuple(int(t) for t in merged[f])
        if "forced_decoder_ids" in merged:
            kw["forced_decoder_ids"] = tuple((int(p), int(t)) for p, t in merged["forced_decoder_ids"] if t is not None)
        for f in ("lang_to_id", "task_to_id"):
            if f in merged:
                kw[f] = {str(k): int(v) for k, v in merged[f].items()}
        if "is_multilingual" in merged:
            kw["is_multilingual"] = bool(merged["is_multilingual"])
        elif "lang_to_id" in kw:
            kw["is_multilingual"] = len(kw["lang_to_id"]) > 1
        return dataclasses.replace(base, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["forced_decoder_ids"] = [list(p) for p in self.forced_decoder_ids] or None
        d["suppress_tokens"] = list(self.suppress_tokens)
        d["begin_suppress_tokens"] = list(self.begin_suppress_tokens)
        d["lang_to_id"] = dict(self.lang_to_id) or None
        d["task_to_id"] = dict(self.task_to_id) or None
        return {k: v for k, v in d.items() if v is not None}


def read_whisper_hf_config(path: str | Path, **overrides) -> tuple[WhisperConfig, WhisperGenerationConfig]:
    """Reads ``config.json`` (+ optional ``generation_config.json``) of an HF Whisper directory."""
    path = Path(path)
    hf = read_json_object(path / "config.json", hint="a Hugging Face Whisper directory has config.json")
    cfg = whisper_config_from_hf(hf, str(path / "config.json"), **overrides)
    gen_path = path / "generation_config.json"
    gen = read_json_object(gen_path) if gen_path.exists() else None
    return cfg, WhisperGenerationConfig.from_dicts(hf, gen, cfg)


# ----------------------------------------------------------------------------- import / export
def _prefix_of(keys: list[str]) -> str:
    """``model.`` for WhisperForConditionalGeneration / WhisperModel-in-a-wrapper, ``""`` for a
    bare WhisperModel save."""
    if any(k.startswith("model.encoder.") or k.startswith("model.decoder.") for k in keys):
        return "model."
    return ""


def import_whisper_tensors(source: TensorSource, cfg: WhisperConfig, *, encoder_only: bool = False,
                           shardings: Mapping | None = None) -> dict:
    """Fills the ``params`` tree (``{"encoder"[, "decoder"]}``) from HF-named tensors.

    ``cfg.param_dtype`` sets the parameter dtype; ``shardings`` (same tree, NamedShardings)
    places each leaf as it is read. Unknown, missing and mis-shaped tensors raise CheckpointError.
    """
    prefix = _prefix_of(source.keys())
    abstract = nn.unbox(abstract_params(cfg, encoder_only=encoder_only))
    ignore = [_TIED]
    if encoder_only:
        ignore.append("^" + re.escape(f"{prefix}decoder."))
    if not any(k.startswith(f"{prefix}encoder.") for k in source.keys()):
        raise CheckpointError(f"{source.name}: no '{prefix}encoder.*' tensors",
                              hint="this does not look like a Whisper checkpoint")
    embed = f"{prefix}decoder.embed_tokens.weight"
    keys = set(source.keys())
    if not encoder_only and "proj_out.weight" in keys and embed in keys:
        if not np.array_equal(source.get("proj_out.weight"), source.get(embed)):
            raise CheckpointError(f"{source.name}: proj_out.weight differs from {embed}",
                                  hint="only Whisper checkpoints with the output tied to the embedding are supported")
    return import_params(source, whisper_rules(prefix), abstract, shardings=shardings, ignore=ignore)


def import_whisper_hf(path: str | Path, *, dtype: str | None = None, shardings: Mapping | None = None,
                      encoder_only: bool = False, input_frames: int | None = None,
                      scan_layers: bool = False) -> tuple[WhisperConfig, dict]:
    """An HF Whisper directory (config.json + model.safetensors or a sharded index) ->
    ``(WhisperConfig, params)``. ``dtype`` sets both compute and parameter dtype."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory", hint="give a Hugging Face Whisper directory")
    overrides: dict[str, Any] = {"scan_layers": scan_layers}
    if dtype is not None:
        overrides.update(dtype=dtype, param_dtype=dtype)
    if input_frames is not None:
        overrides["input_frames"] = input_frames
    cfg, _ = read_whisper_hf_config(path, **overrides)
    source = SafetensorsSource(path)
    return cfg, import_whisper_tensors(source, cfg, encoder_only=encoder_only, shardings=shardings)


def export_whisper_hf(params: Mapping, cfg: WhisperConfig, out_dir: str | Path, *,
                      generation: WhisperGenerationConfig | None = None, dtype: Any = None) -> Path:
    """Writes ``out_dir`` (atomically) with model.safetensors, config.json, generation_config.json."""
    if "decoder" not in params:
        raise CheckpointError(f"{out_dir}: export needs the full Whisper (encoder and decoder) parameters",
                              hint="import without encoder_only to export")
    np_dtype = np.dtype(dtype) if dtype is not None else None
    tensors = list(export_params(nn.unbox(params), WHISPER_RULES, dtype=np_dtype))
    gen = generation or WhisperGenerationConfig.default_for(cfg)
    hf_cfg = whisper_config_to_hf(cfg, gen)
    if np_dtype is not None:
        hf_cfg["dtype"] = str(np_dtype)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_safetensors(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(gen.to_dict(), indent=2) + "\n")
    return out_dir

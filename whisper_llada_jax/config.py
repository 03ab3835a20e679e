"""Typed configuration for every part of the system, loaded strictly from YAML.

All configs are frozen dataclasses. ``load(cls, source, overrides)`` builds one from a YAML
file (or a named file under ``configs/``) plus ``key.sub=value`` overrides, and rejects
unknown fields and wrongly typed values with an error that names the file and the field.
Model configs live here; the trainer, decoder and data configs reuse the same loader.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from whisper_llada_jax.errors import ConfigError


def _config_dir() -> Path:
    """The named configs: inside the package in an installed wheel (setup.py maps the top-level
    ``configs/`` folder to ``whisper_llada_jax/configs``), next to the package in a checkout."""
    here = Path(__file__).resolve().parent
    installed, checkout = here / "configs", here.parent / "configs"
    return installed if (installed / "model").is_dir() else checkout


CONFIG_DIR = _config_dir()

DType = Literal["float32", "bfloat16", "float16"]
Remat = Literal["none", "full", "dots", "dots_with_no_batch_dims"]


# --------------------------------------------------------------------------- validation
# Impossible sizes fail where the config is built (YAML, overrides, a checkpoint's config.json),
# naming the field, instead of as a reshape error or a huge allocation deep inside a trace.
def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ConfigError(f"{name}: must be > 0 and finite, got {value!r}")


def _divides(cfg: Any, heads: str, width: str) -> None:
    if getattr(cfg, width) % getattr(cfg, heads):
        raise ConfigError(f"{heads}: {getattr(cfg, heads)} does not divide {width} {getattr(cfg, width)}",
                          hint=f"choose {heads} so that {width} / {heads} is a whole head size")


def _probability(cfg: Any, name: str) -> None:
    value = getattr(cfg, name)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}: must be in [0, 1), got {value!r}")


# LLaDA projections LoRA can target (HF names; models/llada.py).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


# --------------------------------------------------------------------------- model parts
@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Whisper encoder/decoder sizes (HF names in comments). Defaults: tiny.en."""

    n_mels: int = 80  # num_mel_bins
    d_model: int = 384
    encoder_layers: int = 4
    encoder_heads: int = 6  # encoder_attention_heads
    encoder_ffn: int = 1536  # encoder_ffn_dim
    decoder_layers: int = 4
    decoder_heads: int = 6
    decoder_ffn: int = 1536
    vocab_size: int = 51864
    max_source_positions: int = 1500
    max_target_positions: int = 448
    # Mel frames fed to the encoder. 3000 (30 s) is Whisper's; fewer is a documented
    # departure used by the laptop demo to save compute on short clips.
    input_frames: int = 3000
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    scan_layers: bool = False
    remat: Remat = "none"

    @property
    def encoder_frames(self) -> int:
        """Encoder output frames (conv2 has stride 2)."""
        return (self.input_frames + 1) // 2

    def __post_init__(self):
        _positive(self, "n_mels", "d_model", "encoder_layers", "encoder_heads", "encoder_ffn", "decoder_layers",
                  "decoder_heads", "decoder_ffn", "vocab_size", "max_source_positions", "max_target_positions",
                  "input_frames")
        _divides(self, "encoder_heads", "d_model")
        _divides(self, "decoder_heads", "d_model")
        if self.encoder_frames > self.max_source_positions:
            raise ConfigError(f"input_frames: {self.input_frames} frames give {self.encoder_frames} encoder "
                              f"positions, more than max_source_positions {self.max_source_positions}",
                              hint=f"use input_frames <= {2 * self.max_source_positions}")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Window-level Q-Former (SPEC section 3) or the frame-stacking MLP ablation."""

    kind: Literal["qformer", "mlp"] = "qformer"
    window: int = 17  # frames per window
    stride: int = 17
    num_queries: int = 4
    layers: int = 2
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    ln_eps: float = 1e-12
    init_std: float = 0.02
    # BERT-style dropout (embeddings, attention probabilities, each output dense) in training.
    # SPEC is silent; a bert-base BertConfig (as Q-Former code usually starts from) has 0.1.
    dropout: float = 0.0
    # mlp ablation: stack `window` frames, then Linear-GELU-Linear; `num_queries` vectors out.
    dtype: DType = "float32"
    param_dtype: DType = "float32"

    def __post_init__(self):
        _positive(self, "window", "stride", "num_queries", "hidden", "heads", "intermediate", "ln_eps")
        if self.kind == "qformer":
            _positive(self, "layers")
            _divides(self, "heads", "hidden")
        if not 0 <= self.init_std < math.inf:
            raise ConfigError(f"init_std: must be >= 0 and finite, got {self.init_std!r}")
        _probability(self, "dropout")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """LLaDA (bidirectional) or LLaMA-style (causal, GQA) transformer. Defaults: LLaDA-8B."""

    vocab_size: int = 126464
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 128
    mlp_hidden: int = 12288
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    max_len: int = 4096
    causal: bool = False
    tie_embeddings: bool = False
    init_std: float = 0.02
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    scan_layers: bool = False
    remat: Remat = "none"
    # The feed-forward runs its positions in this many chunks, one after another (row-wise: the
    # same numbers). A CPU decoding knob: XLA's CPU matmuls spread over cores once large enough,
    # and at batch-1 decode sizes the hand-off between cores costs more than it saves, while a
    # chunk stays on one core. ``for_decoding`` sets 2 on CPU.
    ff_row_chunks: int = 1

    def __post_init__(self):
        _positive(self, "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                  "rope_theta", "norm_eps", "max_len", "ff_row_chunks")
        _divides(self, "n_kv_heads", "n_heads")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: {self.head_dim} must be even (RoPE rotates pairs of dimensions)")
        if not 0 <= self.init_std < math.inf:
            raise ConfigError(f"init_std: must be >= 0 and finite, got {self.init_std!r}")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """LoRA on the LLM's projections (SPEC section 5)."""

    enabled: bool = True
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

    def __post_init__(self):
        _probability(self, "dropout")
        if not self.enabled:
            return
        _positive(self, "rank", "alpha")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"targets: {list(self.targets)} must be a non-empty list of {list(LORA_TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    """Special token ids and the chat prompt (SPEC section 4; LLaDA-8B-Instruct ids)."""

    bos: int = 126080
    eos: int = 126081
    pad: int = 126081
    mask: int = 126336
    start_header: int = 126346
    end_header: int = 126347
    eot: int = 126348
    prompt_text: str = "Transcribe the audio:"
    # The chat prompt as ids (bos, user header, prompt_text, eot, assistant header). Filled from
    # the tokenizer when a MODEL_DIR is built, so the model itself never needs a tokenizer.
    prompt_ids: tuple[int, ...] = ()

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ids = value if f.name == "prompt_ids" else (value,) if isinstance(value, int) else ()
            if any(i < 0 for i in ids):
                raise ConfigError(f"{f.name}: token ids must be >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The composite Whisper-LLaDA model."""

    name: str = "custom"
    whisper: WhisperConfig = WhisperConfig()
    projector: ProjectorConfig = ProjectorConfig()
    llm: LLMConfig = LLMConfig()
    lora: LoRAConfig = LoRAConfig()
    tokens: TokenConfig = TokenConfig()
    # "reference": the published inference's dtypes (SPEC section 8), Whisper and the projector
    # computing in fp32 and LLaDA in fp16, replacing the three compute dtypes above; token-for-token
    # agreement with a published run needs them. "configured": the dtype fields as given.
    precision: Literal["configured", "reference"] = "configured"

    def __post_init__(self):
        if self.precision == "reference":
            object.__setattr__(self, "whisper", dataclasses.replace(self.whisper, dtype="float32"))
            object.__setattr__(self, "projector", dataclasses.replace(self.projector, dtype="float32"))
            object.__setattr__(self, "llm", dataclasses.replace(self.llm, dtype="float16"))
        if self.whisper.encoder_frames < self.projector.window:
            raise ConfigError(f"projector.window: {self.projector.window} frames exceed the "
                              f"{self.whisper.encoder_frames} encoder frames (whisper.input_frames "
                              f"{self.whisper.input_frames})", hint="raise whisper.input_frames or lower the window")
        # An id past the embedding table is not an error on device (gathers clamp): catch it here.
        for f in dataclasses.fields(self.tokens):
            value = getattr(self.tokens, f.name)
            ids = value if f.name == "prompt_ids" else (value,) if isinstance(value, int) else ()
            if any(i >= self.llm.vocab_size for i in ids):
                raise ConfigError(f"tokens.{f.name}: id {max(ids)} is outside llm.vocab_size {self.llm.vocab_size}",
                                  hint="the token ids belong to another tokenizer / LLM")

    @property
    def num_windows(self) -> int:
        """Projector windows over the encoder output (88 for 1500 frames, 17/17)."""
        frames = self.whisper.encoder_frames
        return (frames - self.projector.window) // self.projector.stride + 1

    @property
    def audio_tokens(self) -> int:
        """LLM positions taken by audio (352 for the paper system)."""
        return self.num_windows * self.projector.num_queries


# ModelConfig fields that say how the same weights compute, are stored or are trained, not
# which function they compute: a resumed run may change them, a MODEL_DIR may omit them.
COMPUTE_FIELDS = ("name", "precision", "whisper.dtype", "whisper.param_dtype", "whisper.scan_layers",
                  "whisper.remat", "projector.dtype", "projector.param_dtype", "projector.dropout",
                  "projector.init_std", "llm.dtype", "llm.param_dtype", "llm.scan_layers", "llm.remat",
                  "llm.ff_row_chunks", "llm.init_std", "lora.dropout")


def dotted_fields(tree: dict, prefix: str = "") -> dict:
    """``{"llm": {"n_layers": 2}}`` -> ``{"llm.n_layers": 2}`` (lists are leaves)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(dotted_fields(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


# ModelConfig fields added after MODEL_DIRs (and training runs' records of their model) were first
# written, each with the value that reproduces what a file written before it computes (which need
# not be the new field's default). A file without such a field reads as if it held that value.
# A new field that changes what the weights compute belongs here, or every existing MODEL_DIR
# stops loading ("missing field"): tests/test_model_dir.py compares ModelConfig with the fields
# of the first format (tests/data/model_dir_fields.txt) and fails until it is added.
ADDED_MODEL_FIELDS: dict[str, Any] = {}


def with_added_fields(data: dict) -> dict:
    """``data`` (a ModelConfig mapping read from a file) with each ``ADDED_MODEL_FIELDS`` entry
    it lacks set to its value for files written before that field existed."""
    given = dotted_fields(data)
    for name, value in ADDED_MODEL_FIELDS.items():
        if name not in given:
            *parents, leaf = name.split(".")
            data = merge(data, functools.reduce(lambda inner, key: {key: inner}, reversed(parents), {leaf: value}))
    return data


def missing_model_fields(data: dict) -> list[str]:
    """The ModelConfig fields (outside COMPUTE_FIELDS) that ``data`` does not give."""
    given = dotted_fields(with_added_fields(data))
    return [k for k in dotted_fields(to_dict(ModelConfig())) if k not in given and k not in COMPUTE_FIELDS]


# --------------------------------------------------------------------------- strict loader
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks/converts one YAML value to the annotated type, or raises ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not fit {_type_name(tp)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {unknown} for {cls.__name__}",
            hint=f"valid fields are {sorted(fields)}",
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names the field; add where it came from
        raise ConfigError(f"{where}.{e.message}" if where else e.message, hint=e.hint) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Builds dataclass ``cls`` from a nested dict, rejecting unknown fields."""
    return _build(cls, data or {}, where)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""

    def conv(x):
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x) if f.init}
        if isinstance(x, (tuple, list)):
            return [conv(v) for v in x]
        return x

    return conv(cfg)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["llm.n_layers=2", "lora.enabled=false"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    seen: set[str] = set()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except (yaml.YAMLError, RecursionError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({first})",
                              hint="quote it, e.g. key='[a' (lists as [a, b], strings with : in quotes)") from None
        node = out
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty field name in {key.strip()!r}", hint="e.g. optim.peak_lr=1e-4")
        if ".".join(parts) in seen:  # which one was meant is unknowable: never drop one silently
            raise ConfigError(f"override {item!r}: {'.'.join(parts)} is set twice", hint="give each field once")
        seen.add(".".join(parts))
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def with_defaults(defaults: list[str] | tuple[str, ...], overrides: list[str] | tuple[str, ...]) -> list[str]:
    """``overrides`` after those of a caller's ``defaults`` whose field they do not set: the
    user's list wins over the defaults it is composed with, while a field given twice within
    the user's own list stays an error (``parse_overrides``)."""
    given = {o.split("=", 1)[0].strip() for o in overrides}
    return [d for d in defaults if d.split("=", 1)[0].strip() not in given] + list(overrides)


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config_path(source: str | Path, kind: str = "model") -> Path:
    """A path to a YAML file, or a bare name looked up as ``configs/<kind>/<name>.yaml``."""
    if not str(source).strip():
        raise ConfigError(f"empty {kind} config name", hint="give a name under configs/{kind}/ or a YAML path")
    p = Path(source)
    if p.suffix in (".yaml", ".yml", ".json") or p.exists():
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        if not p.is_file():
            raise ConfigError(f"{p}: is a folder, not a config file", hint="give a YAML file")
        return p
    named = CONFIG_DIR / kind / f"{source}.yaml"
    if not named.exists():
        names = sorted(x.stem for x in (CONFIG_DIR / kind).glob("*.yaml"))
        raise ConfigError(f"no {kind} config named {source!r}", hint=f"choose one of {names} or give a YAML path")
    return named


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: PyYAML keeps the last
    silently, so ``peak_lr`` set twice (or two ``optim:`` sections) would drop one setting."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            # Only the keys written in this mapping: one may override a merged one (<<: *anchor).
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key (a list): construct_mapping reports it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first.start_mark.line + 1}); "
                        "only one of them would be used", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str):
    """YAML text -> Python values (safe types only), refusing duplicate keys."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def read_yaml(path: Path, *, allow_empty: bool = True) -> dict:
    """A YAML file's top-level mapping. ``allow_empty=False``: an empty file (or comments only)
    is an error, not a silent "every default" (a truncated copy, the wrong file)."""
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config (nested too deeply to read)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    if data is None:
        if not allow_empty:
            raise ConfigError(f"{path}: the config file is empty",
                              hint="write the fields to set, or `{}` on one line to take every default")
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of fields")
    return data


def load(cls: type, source: str | Path | dict | None = None, overrides=(), kind: str = "model", *,
         fill=None) -> Any:
    """Loads ``cls`` from a YAML file, a named config, a dict or defaults, plus overrides
    (``fill``: applied to the mapping read, before the overrides)."""
    where = "config"
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data = source
    else:
        path = resolve_config_path(source, kind)
        data, where = read_yaml(path, allow_empty=False), str(path)
    if fill is not None:
        data = fill(data)
    data = merge(data, parse_overrides(list(overrides)))
    return from_dict(cls, data, where)


def load_model_config(source: str | Path | dict | None = None, overrides=(), *, written: bool = False) -> ModelConfig:
    """``load_model_config("paper")`` or a YAML path. ``written``: the file was written with a
    model (a MODEL_DIR's): fields added to ModelConfig since read as ``ADDED_MODEL_FIELDS`` says."""
    return load(ModelConfig, source, overrides, kind="model", fill=with_added_fields if written else None)

"""CTranslate2 / faster-whisper Whisper directories as Hugging Face-named tensors.

``model.bin`` layout (CTranslate2 binary version 6, little endian; strings are a uint16
length counting a trailing NUL, then the bytes and the NUL):

    uint32 version | string spec name | uint32 spec revision | uint32 n_variables
    n_variables x (string name | uint8 rank | rank x uint32 dims | uint8 dtype id
                   | uint32 n_bytes | raw data)
    uint32 n_aliases | n_aliases x (string alias | string target)

dtype ids follow CTranslate2's ``DataType``: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
5 bfloat16. Quantised weights (int8 / int16) come with a ``<name>_scale`` variable (per output
row for int8, one scalar for int16) and are dequantised here as ``value / scale``.

The file is memory-mapped and only parsed up front; tensor data is read when asked for. The
reader never imports ``ctranslate2`` (a test-only dependency). ``CTranslate2WhisperSource``
splits the fused self-attention q/k/v and cross-attention k/v projections and renames
everything to the HF Whisper layout, so the HF conversion table imports it unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from whisper_llada_jax.checkpoints.tensors import read_json_object
from whisper_llada_jax.checkpoints.whisper_hf import WhisperGenerationConfig
from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.errors import CheckpointError, ConfigError

SUPPORTED_VERSION = 6
_DTYPES = {
    0: np.dtype(np.float32),
    1: np.dtype(np.int8),
    2: np.dtype(np.int16),
    3: np.dtype(np.int32),
    4: np.dtype(np.float16),
    5: np.dtype(ml_dtypes.bfloat16),
}
_FLOATS = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}
_HINT_RECONVERT = "convert the model again with a current ct2-transformers-converter"


@dataclasses.dataclass(frozen=True)
class _Variable:
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class CTranslate2File:
    """A parsed, memory-mapped ``model.bin``: variable table, aliases, lazy reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        with f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size < 4:
                raise CheckpointError(f"{self.path}: not a CTranslate2 model.bin ({self.size} bytes)")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        self.version = self._u("I")
        if self.version != SUPPORTED_VERSION:
            if 1 <= self.version < 100:
                raise CheckpointError(
                    f"{self.path}: CTranslate2 binary version {self.version} is not supported "
                    f"(this reader reads version {SUPPORTED_VERSION})", hint=_HINT_RECONVERT)
            raise CheckpointError(f"{self.path}: not a CTranslate2 model.bin (bad header)",
                                  hint="give the model.bin of a faster-whisper / CTranslate2 directory")
        self.spec = self._string("spec name")
        self.revision = self._u("I")
        self.variables: dict[str, _Variable] = {}
        for _ in range(self._u("I")):
            name = self._string("variable name")
            rank = self._u("B")
            shape = tuple(self._u("I") for _ in range(rank))
            type_id = self._u("B")
            nbytes = self._u("I")
            if type_id not in _DTYPES:
                raise CheckpointError(f"{self.path}: variable {name!r} has unknown dtype id {type_id}",
                                      hint="written by a newer CTranslate2? " + _HINT_RECONVERT)
            dtype = _DTYPES[type_id]
            if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise CheckpointError(f"{self.path}: variable {name!r} has {nbytes} bytes for shape {shape} "
                                      f"of {dtype}: corrupt file")
            self._need(nbytes, f"data of {name!r}")
            self.variables[name] = _Variable(dtype, shape, self._pos, nbytes)
            self._pos += nbytes
        self.aliases: dict[str, str] = {}
        for _ in range(self._u("I")):
            alias = self._string("alias")
            self.aliases[alias] = self._string("alias target")
        for alias, target in self.aliases.items():
            if target not in self.variables:
                raise CheckpointError(f"{self.path}: alias {alias!r} points at missing variable {target!r}")

    # ------------------------------------------------------------------ parsing helpers
    def _need(self, n: int, what: str) -> None:
        if self._pos + n > self.size:
            raise CheckpointError(f"{self.path}: truncated file ({what} ends at byte {self._pos + n}, "
                                  f"file has {self.size})", hint="re-download or re-convert the model")

    def _u(self, fmt: str) -> int:
        n = struct.calcsize("<" + fmt)
        self._need(n, "header")
        (value,) = struct.unpack_from("<" + fmt, self._mm, self._pos)
        self._pos += n
        return value

    def _string(self, what: str) -> str:
        n = self._u("H")
        self._need(n, what)
        raw = self._mm[self._pos:self._pos + n]
        self._pos += n
        if n == 0 or raw[-1] != 0:
            raise CheckpointError(f"{self.path}: not a CTranslate2 model.bin (bad {what})")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: not a CTranslate2 model.bin (bad {what})") from None

    # ------------------------------------------------------------------ access
    def resolve(self, name: str) -> str:
        return self.aliases.get(name, name)

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def shape(self, name: str) -> tuple[int, ...]:
        return self.variables[self.resolve(name)].shape

    def raw(self, name: str) -> np.ndarray:
        """The stored array (a read-only view of the mapped file)."""
        v = self.variables[self.resolve(name)]
        return np.frombuffer(self._mm, dtype=v.dtype, count=v.nbytes // v.dtype.itemsize,
                             offset=v.offset).reshape(v.shape)

    def scalar(self, name: str) -> int | float:
        return self.raw(name).reshape(-1)[0].item()

    def float_array(self, name: str) -> np.ndarray:
        """A float tensor; int8 / int16 weights are dequantised with their ``_scale``."""
        name = self.resolve(name)
        value = self.raw(name)
        if value.dtype in _FLOATS:
            return value
        scale_name = f"{name}_scale"
        if scale_name not in self.variables:
            raise CheckpointError(f"{self.path}: {value.dtype} variable {name!r} has no {scale_name!r}",
                                  hint="only float16 / bfloat16 / float32 / int8 / int16 weights are supported")
        scale = self.raw(scale_name).astype(np.float32)
        rows = value.reshape(value.shape[0], -1).astype(np.float32)
        scale = scale.reshape(-1, 1) if scale.size == value.shape[0] else scale.reshape(1, 1)
        return (rows / scale).reshape(value.shape)

    @property
    def quantization(self) -> str:
        kinds = sorted({str(v.dtype) for n, v in self.variables.items()
                        if len(v.shape) >= 2 and not n.endswith("_scale")})
        return "+".join(kinds)


# ---------------------------------------------------------------------------- HF renaming
# A getter reads one HF tensor from the file; fused tensors are sliced by row blocks.
Getter = Callable[[CTranslate2File], np.ndarray]


def _rows(name: str, part: int, parts: int) -> Getter:
    def get(f: CTranslate2File) -> np.ndarray:
        x = f.float_array(name)
        n = x.shape[0] // parts
        return x[part * n:(part + 1) * n]
    return get


def _whole(name: str) -> Getter:
    return lambda f: f.float_array(name)


def _layer_count(f: CTranslate2File, prefix: str) -> int:
    pat = re.compile(rf"^{prefix}/layer_(\d+)/")
    found = {int(m.group(1)) for n in f.variables if (m := pat.match(n))}
    if found != set(range(len(found))):
        raise CheckpointError(f"{f.path}: {prefix} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _hf_table(f: CTranslate2File) -> dict[str, tuple[Getter, tuple[int, ...]]]:
    """HF name -> (getter, shape). Fused projections are split; the k bias that CTranslate2
    stores as zeros inside the fused bias is dropped: HF's k_proj has no bias (and a key bias
    shifts every score of a query equally, so softmax would ignore it anyway)."""
    table: dict[str, tuple[Getter, tuple[int, ...]]] = {}

    def add(hf: str, ct2: str) -> None:
        if ct2 not in f:
            raise CheckpointError(f"{f.path}: missing variable {ct2!r}", hint="is this a Whisper model?")
        table[hf] = (_whole(ct2), f.shape(ct2))

    def add_split(hf_names: list[str | None], ct2: str) -> None:
        if ct2 not in f:
            raise CheckpointError(f"{f.path}: missing variable {ct2!r}", hint="is this a Whisper model?")
        shape = f.shape(ct2)
        if shape[0] % len(hf_names):
            raise CheckpointError(f"{f.path}: fused variable {ct2!r} of shape {shape} does not split "
                                  f"into {len(hf_names)} parts")
        part_shape = (shape[0] // len(hf_names),) + shape[1:]
        for i, hf in enumerate(hf_names):
            if hf is not None:
                table[hf] = (_rows(ct2, i, len(hf_names)), part_shape)

    def norm(hf: str, ct2: str) -> None:
        add(f"{hf}.weight", f"{ct2}/gamma")
        add(f"{hf}.bias", f"{ct2}/beta")

    def linear(hf: str, ct2: str) -> None:
        add(f"{hf}.weight", f"{ct2}/weight")
        add(f"{hf}.bias", f"{ct2}/bias")

    def self_attention(hf: str, ct2: str) -> None:
        add_split([f"{hf}.q_proj.weight", f"{hf}.k_proj.weight", f"{hf}.v_proj.weight"], f"{ct2}/linear_0/weight")
        add_split([f"{hf}.q_proj.bias", None, f"{hf}.v_proj.bias"], f"{ct2}/linear_0/bias")
        linear(f"{hf}.out_proj", f"{ct2}/linear_1")

    def ffn(hf: str, ct2: str) -> None:
        norm(f"{hf}.final_layer_norm", f"{ct2}/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/linear_1")

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    add(f"{enc}.embed_positions.weight", "encoder/position_encodings/encodings")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(_layer_count(f, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        self_attention(f"{dst}.self_attn", f"{src}/self_attention")
        ffn(dst, f"{src}/ffn")

    add(f"{dec}.embed_tokens.weight", "decoder/embeddings/weight")
    add(f"{dec}.embed_positions.weight", "decoder/position_encodings/encodings")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(_layer_count(f, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        self_attention(f"{dst}.self_attn", f"{src}/self_attention")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        add_split([f"{dst}.encoder_attn.k_proj.weight", f"{dst}.encoder_attn.v_proj.weight"],
                  f"{src}/attention/linear_1/weight")
        add_split([None, f"{dst}.encoder_attn.v_proj.bias"], f"{src}/attention/linear_1/bias")
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        ffn(dst, f"{src}/ffn")

    # Whisper ties the output projection to the token embedding (an alias in the file). A
    # separately stored copy is accepted only if it is equal: the Flax model has no proj_out.
    proj, embed = "decoder/projection/weight", "decoder/embeddings/weight"
    if proj in f and f.resolve(proj) != f.resolve(embed):
        if f.shape(proj) != f.shape(embed) or not np.array_equal(f.float_array(proj), f.float_array(embed)):
            raise CheckpointError(f"{f.path}: the output projection differs from the token embedding",
                                  hint="untied Whisper output projections are not supported")
    return table


class CTranslate2WhisperSource:
    """A TensorSource over a CTranslate2 Whisper ``model.bin`` with HF Whisper tensor names.

    Float tensors come back in their stored dtype (float16 in faster-whisper's files);
    quantised ones are dequantised to float32. The importer casts to the model's dtype.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.file = CTranslate2File(path / "model.bin" if path.is_dir() else path)
        self.name = str(self.file.path)
        if self.file.spec != "WhisperSpec":
            raise CheckpointError(f"{self.name}: a CTranslate2 {self.file.spec}, not a Whisper model",
                                  hint="give a faster-whisper / CTranslate2 Whisper directory")
        self._table = _hf_table(self.file)

    def keys(self) -> list[str]:
        return list(self._table)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._table[key][1]

    def get(self, key: str) -> np.ndarray:
        return self._table[key][0](self.file)


# ---------------------------------------------------------------------------- config
def _read_config_json(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        return {}  # CTranslate2 writes it, but the weights alone still describe the model
    return read_json_object(path)


def _added_tokens(directory: Path) -> dict[str, int]:
    """Special-token text -> id from the directory's tokenizer.json ({} when absent)."""
    path = directory / "tokenizer.json"
    if not path.exists():
        return {}
    try:
        added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens") or []
        return {str(t["content"]): int(t["id"]) for t in added}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: not a valid tokenizer.json") from None


def whisper_config_from_ct2(directory: str | Path, *, source: CTranslate2WhisperSource | None = None,
                            **overrides) -> tuple[WhisperConfig, WhisperGenerationConfig]:
    """(WhisperConfig from the tensor shapes, decoding facts from config.json + tokenizer.json).

    CTranslate2's ``suppress_ids`` / ``suppress_ids_begin`` become HF's ``suppress_tokens`` /
    ``begin_suppress_tokens``; ``lang_ids`` are named through tokenizer.json; multilingual
    means a vocabulary of >= 51865 (the rule CTranslate2 and HF share). ``overrides`` are
    WhisperConfig fields (dtype, input_frames, scan_layers ...); ``source`` reuses a parsed file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        directory = directory.parent
    src = source or CTranslate2WhisperSource(directory)
    f = src.file
    conv1 = f.shape("encoder/conv1/weight")
    try:
        cfg = _ct2_whisper_config(f, conv1, overrides)
    except ConfigError as e:  # impossible sizes in the file (WhisperConfig's validation)
        raise CheckpointError(f"{f.path}: {e.message}", hint=e.hint) from None
    raw = _read_config_json(directory)
    names = {i: t for t, i in _added_tokens(directory).items()}
    try:
        facts: dict = {
            "suppress_tokens": [int(i) for i in raw.get("suppress_ids") or ()],
            "begin_suppress_tokens": [int(i) for i in raw.get("suppress_ids_begin") or ()],
            "is_multilingual": cfg.vocab_size >= 51865,
        }
        langs = {names[i]: i for i in raw.get("lang_ids") or () if i in names}
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: suppress_ids / lang_ids must be lists of token ids ({e})")
    if langs:
        facts["lang_to_id"] = langs
    tasks = {task: i for i, t in names.items() for task in ("transcribe", "translate") if t == f"<|{task}|>"}
    if tasks:
        facts["task_to_id"] = tasks
    for i, t in names.items():
        if t == "<|notimestamps|>":
            facts["no_timestamps_token_id"] = i
    return cfg, WhisperGenerationConfig.from_dicts(facts, None, cfg)


def _ct2_whisper_config(f: "CTranslate2File", conv1: tuple[int, ...], overrides: dict) -> WhisperConfig:
    positions = f.shape("encoder/position_encodings/encodings")[0]
    kw = dict(
        n_mels=conv1[1],
        d_model=conv1[0],
        encoder_layers=_layer_count(f, "encoder"),
        encoder_heads=int(f.scalar("encoder/num_heads")),
        encoder_ffn=f.shape("encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_layers=_layer_count(f, "decoder"),
        decoder_heads=int(f.scalar("decoder/num_heads")),
        decoder_ffn=f.shape("decoder/layer_0/ffn/linear_0/weight")[0],
        vocab_size=f.shape("decoder/embeddings/weight")[0],
        max_source_positions=positions,
        max_target_positions=f.shape("decoder/position_encodings/encodings")[0],
        input_frames=2 * positions,
    )
    return WhisperConfig(**{**kw, **overrides})

"""Lazy tensor files and table-driven checkpoint conversion.

One conversion table per checkpoint family (``Rule`` lists in ``whisper_hf.py``, ``llada_hf.py``,
...) drives both import and export. Each rule maps an external tensor name to a path in the
Flax parameter tree, with an invertible per-tensor transform, so a round trip is the identity.

Reading is lazy: safetensors files are memory-mapped (bf16 through ``ml_dtypes``) and each
tensor is copied only when its target array is built, straight into its sharding, so an 8B
checkpoint never exists twice in RAM.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Protocol

import jax
import ml_dtypes
import numpy as np

from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.outputs import atomic_dir, atomic_file  # noqa: F401  (atomic_dir: kept importable from here)

# ----------------------------------------------------------------------------- tensor sources
_ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def read_json_object(file: str | Path, hint: str | None = None) -> dict:
    """A checkpoint's JSON file (``config.json``, ``adapter_config.json``, ...) as a dict; one
    clear error naming the file when it is missing, not JSON, or not an object."""
    file = Path(file)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: does not exist", hint=hint) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: top level must be a JSON object")
    return data


_MISSING = object()


class JsonFields:
    """Typed reads from a checkpoint's JSON config (``config.json``, ``adapter_config.json``):
    a missing or wrongly typed field (``"n_layers": "two"``) is one CheckpointError naming the
    file and the key, never a ValueError from ``int()``. null counts as absent."""

    def __init__(self, data: Mapping, where: str):
        self.data, self.where = data, where

    def _get(self, key: str, default):
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise CheckpointError(f"{self.where}: missing field {key!r}")
            return _MISSING
        return value

    def _bad(self, key: str, value, what: str):
        return CheckpointError(f"{self.where}: {key} must be {what}, got {value!r}",
                               hint="the config.json is damaged or belongs to another model")

    def int(self, key: str, default=_MISSING):
        value = self._get(key, default)
        if value is _MISSING:
            return default
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, value, "an integer")
        return value

    def float(self, key: str, default=_MISSING):
        value = self._get(key, default)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(key, value, "a number")
        return float(value)

    def bool(self, key: str, default=_MISSING):
        value = self._get(key, default)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value


class TensorSource(Protocol):
    """Read-only name -> tensor mapping whose tensors are loaded on demand."""

    name: str

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def get(self, key: str) -> np.ndarray: ...


class DictSource:
    """A TensorSource over in-memory arrays (tests, converted formats)."""

    def __init__(self, tensors: Mapping[str, np.ndarray], name: str = "<memory>"):
        self._t = dict(tensors)
        self.name = name

    def keys(self) -> list[str]:
        return list(self._t)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._t[key].shape)

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self._t[key])


class _SafetensorsFile:
    """One memory-mapped .safetensors file; validates the header against the file size."""

    def __init__(self, path: Path):
        self.path = path
        try:
            f = open(path, "rb")
        except OSError as e:
            raise CheckpointError(f"{path}: cannot open ({e.strerror})") from None
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)", hint="re-download or re-export it")
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header claims {n} bytes)", hint="re-download or re-export it")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(f"{path}: not a safetensors file (bad header)") from None
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = {}
        for key, info in header.items():
            start, end = info["data_offsets"]
            if self.base + end > size:
                raise CheckpointError(
                    f"{path}: truncated safetensors file (tensor {key!r} ends at byte {self.base + end}, file has {size})",
                    hint="re-download or re-export it",
                )
            if info["dtype"] not in _ST_DTYPES:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
            self.entries[key] = (_ST_DTYPES[info["dtype"]], tuple(info["shape"]), start, end)
        self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        f.close()

    def get(self, key: str) -> np.ndarray:
        dtype, shape, start, end = self.entries[key]
        buf = np.frombuffer(self._mm, dtype=np.uint8, count=end - start, offset=self.base + start)
        return buf.view(dtype).reshape(shape)


class SafetensorsSource:
    """A safetensors file, or a directory with ``model.safetensors`` / a sharded index."""

    def __init__(self, path: str | Path, index_name: str = "model.safetensors.index.json"):
        path = Path(path)
        self.name = str(path)
        if not path.exists():
            raise CheckpointError(f"{path}: does not exist")
        files: list[Path]
        if path.is_file():
            files = [path]
        elif (path / index_name).exists():
            try:
                index = json.loads((path / index_name).read_text())["weight_map"]
            except (ValueError, KeyError):
                raise CheckpointError(f"{path / index_name}: not a safetensors index (no weight_map)") from None
            files = [path / f for f in sorted(set(index.values()))]
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"{path / index_name}: shard files missing: {missing}")
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{path}: no *.safetensors files found", hint="give a directory holding model.safetensors")
        self._where: dict[str, _SafetensorsFile] = {}
        for f in files:
            sf = _SafetensorsFile(f)
            for k in sf.entries:
                self._where[k] = sf

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].entries[key][1]

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get(key)


def save_safetensors(tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Writes one safetensors file atomically (temporary file, then rename)."""
    items = list(tensors.items() if isinstance(tensors, Mapping) else tensors)
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    arrays = []
    for key, arr in items:
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _ST_NAMES:
            raise CheckpointError(f"cannot write tensor {key!r} of dtype {arr.dtype} to safetensors")
        header[key] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with atomic_file(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays:
            f.write(arr.tobytes())


# ----------------------------------------------------------------------------- transforms
@dataclasses.dataclass(frozen=True)
class Transform:
    """An invertible per-tensor map between the external layout and the Flax layout."""

    to_flax: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
    to_external: Callable[[np.ndarray], np.ndarray]
    name: str = "identity"


IDENTITY = Transform(lambda x, shape: x.reshape(shape), lambda x: x, "identity")
# PyTorch Linear (out, in) <-> Flax Dense (in, out).
TRANSPOSE = Transform(lambda x, shape: x.T.reshape(shape), lambda x: x.reshape(x.shape[0], -1).T, "transpose")


def conv1d_transform() -> Transform:
    """PyTorch Conv1d (out, in, width) <-> Flax Conv (width, in, out)."""
    return Transform(lambda x, shape: np.transpose(x, (2, 1, 0)).reshape(shape),
                     lambda x: np.transpose(x, (2, 1, 0)), "conv1d")


def reshape_transform(external_shape: tuple[int, ...]) -> Transform:
    return Transform(lambda x, shape: x.reshape(shape), lambda x: x.reshape(external_shape), "reshape")


# ----------------------------------------------------------------------------- tables
@dataclasses.dataclass(frozen=True)
class Rule:
    """``src`` external name and ``dst`` '/'-joined Flax path; both may contain ``{i}``."""

    src: str
    dst: str
    transform: Transform = IDENTITY


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


_LAYER_SEG = re.compile(r"(?P<seg>[A-Za-z_]+?)_(?P<i>\d+)(?=/|$)")


class _Resolver:
    """Maps an unscanned Flax path ('blocks_3/attn/kernel') onto the target tree, which may
    hold scanned layers ('blocks/attn/kernel' with a leading layer axis)."""

    def __init__(self, abstract_flat: Mapping[str, jax.ShapeDtypeStruct]):
        self.flat = abstract_flat

    def __call__(self, path: str) -> tuple[str, int | None] | None:
        if path in self.flat:
            return path, None
        m = _LAYER_SEG.search(path)
        while m is not None:
            stacked = path[: m.start()] + m.group("seg") + path[m.end():]
            if stacked in self.flat:
                return stacked, int(m.group("i"))
            m = _LAYER_SEG.search(path, m.end())
        return None


def _expand(rules: Iterable[Rule], source_keys: Iterable[str]):
    """Matches every source key against the table: {src_key: (rule, dst_path)}, unknown keys."""
    compiled = [(r, _pattern(r.src)) for r in rules]
    matched, unknown = {}, []
    for key in source_keys:
        for rule, pat in compiled:
            m = pat.match(key)
            if m:
                dst = rule.dst.replace("{i}", m.group("i")) if "i" in pat.groupindex else rule.dst
                matched[key] = (rule, dst)
                break
        else:
            unknown.append(key)
    return matched, unknown


def _fmt(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def _is_float(dtype) -> bool:
    try:
        ml_dtypes.finfo(dtype)  # numpy floats and bfloat16 / float8 alike
        return True
    except (ValueError, TypeError):
        return False


# Exponent bits of the 16-bit floats: all ones is inf / NaN. Testing them on a uint16 view is
# several times faster than ml_dtypes' isfinite (an 8B bf16 checkpoint is 16 GB to scan).
_EXPONENT16 = {np.dtype(ml_dtypes.bfloat16): 0x7F80, np.dtype(np.float16): 0x7C00}


def _count_nonfinite(arr: np.ndarray) -> int:
    mask = _EXPONENT16.get(arr.dtype)
    if mask is not None:
        return int(np.count_nonzero((np.ascontiguousarray(arr).view(np.uint16) & mask) == mask))
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def check_tensor(where: str, key: str, arr: np.ndarray, target_dtype) -> np.ndarray:
    """``arr`` if it can become a ``target_dtype`` parameter: a float parameter needs a float
    tensor (an int32 tensor is a wrong file, not something to cast) with no NaN / inf."""
    want_float = _is_float(target_dtype)
    if want_float != _is_float(arr.dtype):
        raise CheckpointError(f"{where}: tensor {key!r} has dtype {arr.dtype}, the model needs "
                              f"{'a floating-point' if want_float else np.dtype(target_dtype).name} tensor",
                              hint="the file is damaged or belongs to another model")
    if want_float and (bad := _count_nonfinite(arr)):
        raise CheckpointError(f"{where}: tensor {key!r} holds {bad} NaN / inf value(s) of {arr.size}",
                              hint="the weights are corrupt (a diverged run or a damaged file); use another checkpoint")
    return arr


def import_params(source: TensorSource, rules: Iterable[Rule], abstract: Mapping, *,
                  shardings: Mapping | None = None, ignore: Iterable[str] = (),
                  allow_unknown: bool = False, allow_missing: Iterable[str] = ()) -> dict:
    """Builds the parameter tree ``abstract`` (ShapeDtypeStructs) from ``source``.

    Every target leaf must be covered (except paths matching ``allow_missing`` regexes); every
    source tensor must match a rule (except names matching ``ignore`` regexes). Shapes are
    checked before anything is read. Each leaf is materialised directly in its sharding;
    float leaves are refused when the tensor is not float or holds NaN / inf (``check_tensor``).
    """
    abstract_flat = flatten(abstract)
    shard_flat = flatten(shardings) if shardings is not None else {}
    ignore_re = [re.compile(p) for p in ignore]
    keys = [k for k in source.keys() if not any(p.search(k) for p in ignore_re)]
    matched, unknown = _expand(rules, keys)
    if unknown and not allow_unknown:
        raise CheckpointError(f"{source.name}: {len(unknown)} unexpected tensor(s): {_fmt(sorted(unknown))}",
                              hint="is this a checkpoint of the right model and config?")
    resolve = _Resolver(abstract_flat)
    per_leaf: dict[str, dict[int | None, tuple[str, Rule]]] = {}
    bad_shape, no_target = [], []
    for key, (rule, dst) in matched.items():
        found = resolve(dst)
        if found is None:
            no_target.append(f"{key} -> {dst}")
            continue
        leaf, layer = found
        target = abstract_flat[leaf]
        want = target.shape if layer is None else target.shape[1:]
        src_shape = source.shape(key)
        if int(np.prod(src_shape)) != int(np.prod(want)):
            bad_shape.append(f"{key}: checkpoint {tuple(src_shape)} vs model {tuple(want)}")
            continue
        per_leaf.setdefault(leaf, {})[layer] = (key, rule)
    if no_target:
        raise CheckpointError(f"{source.name}: tensors with no place in the model: {_fmt(no_target)}",
                              hint="the checkpoint has more layers or parts than the config")
    if bad_shape:
        raise CheckpointError(f"{source.name}: mis-shaped tensor(s): {_fmt(bad_shape)}",
                              hint="the config does not match the checkpoint (sizes differ)")
    allow_re = [re.compile(p) for p in allow_missing]
    missing = []
    for leaf, target in abstract_flat.items():
        got = per_leaf.get(leaf, {})
        if None in got:
            continue
        stacked = [i for i in got if i is not None]
        if stacked and len(stacked) == target.shape[0] and sorted(stacked) == list(range(target.shape[0])):
            continue
        if any(p.search(leaf) for p in allow_re):
            continue
        missing.append(leaf if not stacked else f"{leaf} (layers {sorted(set(range(target.shape[0])) - set(stacked))})")
    if missing:
        raise CheckpointError(f"{source.name}: missing tensor(s) for: {_fmt(missing)}",
                              hint="is this a checkpoint of the right model and config?")

    out = {}
    for leaf, target in abstract_flat.items():
        got = per_leaf.get(leaf)
        if not got:
            continue
        dtype = target.dtype

        def load_one(key_rule, shape):
            key, rule = key_rule
            raw = check_tensor(source.name, key, source.get(key), dtype)
            return np.asarray(rule.transform.to_flax(raw, tuple(shape))).astype(dtype)

        if None in got:
            def cb(index, got=got, target=target):
                full = load_one(got[None], target.shape)
                return full[index]
        else:
            def cb(index, got=got, target=target):
                rows = range(*index[0].indices(target.shape[0])) if index else range(target.shape[0])
                rest = index[1:] if index else ()
                return np.stack([load_one(got[i], target.shape[1:])[rest] for i in rows])

        sharding = shard_flat.get(leaf) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        out[leaf] = jax.make_array_from_callback(target.shape, sharding, cb)
    return unflatten(out)


def export_params(params: Mapping, rules: Iterable[Rule], *, dtype=None,
                  skip_missing: Iterable[str] = ()) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (external name, array) for every rule whose destination exists in ``params``.

    Rules with ``{i}`` are expanded over the layers present (unscanned ``x_3`` segments or a
    scanned leaf's leading axis). Every parameter must be exported by some rule.
    """
    flat = flatten(params)
    used = set()
    for rule in rules:
        if "{i}" not in rule.dst:
            if rule.dst not in flat:
                continue
            arrs = [(rule.src, np.asarray(jax.device_get(flat[rule.dst])))]
            used.add(rule.dst)
        else:
            arrs = []
            pat = _pattern(rule.dst)
            for path in flat:
                m = pat.match(path)
                if m:
                    arrs.append((rule.src.replace("{i}", m.group("i")), np.asarray(jax.device_get(flat[path]))))
                    used.add(path)
            if not arrs:
                seg = _LAYER_SEG.search(rule.dst.replace("{i}", "0"))
                if seg is not None:
                    stacked = rule.dst[: rule.dst.index("_{i}")] + rule.dst[rule.dst.index("_{i}") + 4:]
                    if stacked in flat:
                        full = np.asarray(jax.device_get(flat[stacked]))
                        arrs = [(rule.src.replace("{i}", str(i)), full[i]) for i in range(full.shape[0])]
                        used.add(stacked)
        for name, arr in arrs:
            out = rule.transform.to_external(arr)
            if dtype is not None:
                out = out.astype(dtype)
            yield name, out
    skip_re = [re.compile(p) for p in skip_missing]
    left = [p for p in flat if p not in used and not any(r.search(p) for r in skip_re)]
    if left:
        raise CheckpointError(f"export: no conversion rule for parameter(s): {_fmt(sorted(left))}")

"""Lazy tensor files and table-driven checkpoint conversion.

One conversion table per checkpoint family (``Rule`` lists in ``whisper_hf.py``, ``llada_hf.py``,
...) drives both import and export. Each rule maps an external tensor name to a path in the
Flax parameter tree, with an invertible per-tensor transform, so a round trip is the identity.

Reading is lazy and sliced: safetensors files are opened with the ``safetensors`` library
(memory-mapped; bf16 through ``ml_dtypes``) and each device's shard of a target array is read
as exactly that block of the source tensor (``get_slice``), transposed on its own, so no device
or host ever holds more than its shard of a tensor while importing onto a mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import jax
import ml_dtypes
import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.outputs import atomic_file


# ----------------------------------------------------------------------------- tensor sources
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


def _open_safetensors(path: Path):
    """A ``safe_open`` handle (memory-mapped, numpy; bf16 through ml_dtypes); one clear error
    for a missing, truncated or corrupt file."""
    try:
        return safe_open(str(path), framework="np")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open ({e.strerror or e})") from None
    except SafetensorError as e:
        raise CheckpointError(f"{path}: truncated safetensors file or bad header ({e})",
                              hint="re-download or re-export it") from None


class SafetensorsSource:
    """A safetensors file, or a directory with ``model.safetensors`` / a sharded index, read
    through the ``safetensors`` library: ``get_slice`` copies only the requested block."""

    def __init__(self, path: str | Path, index_name: str = "model.safetensors.index.json"):
        path = Path(path)
        self.name = str(path)
        if not path.exists():
            raise CheckpointError(f"{path}: does not exist")
        files: list[Path]
        if path.is_file():
            files = [path]
        elif (path / index_name).exists():
            index = _read_index(path / index_name)
            files = [path / f for f in sorted(set(index.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{path / index_name}: shard files missing: {missing}",
                                      hint="the download is incomplete: fetch every shard the index names")
        elif (path / "model.safetensors").is_file():
            # The checkpoint proper; other *.safetensors beside it are other variants of the same
            # weights (whisper-large-v3 ships model.fp32-0000N-of-00002.safetensors too) or an adapter.
            files = [path / "model.safetensors"]
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                other = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
                hint = (f"it holds {', '.join(other)}: only safetensors are read (a pickle can run code); convert it, "
                        "e.g. transformers' save_pretrained(dir, safe_serialization=True)") if other else \
                    "give a directory holding model.safetensors"
                raise CheckpointError(f"{path}: no *.safetensors files found", hint=hint)
        self._where: dict[str, tuple[Path, object]] = {}
        for f in files:
            handle = _open_safetensors(f)
            for k in handle.keys():
                if k in self._where:  # two shards with one name: which one is meant is unknowable
                    raise CheckpointError(f"{path}: tensor {k!r} is in both {self._where[k][0].name} and {f.name}",
                                          hint="shards of two different downloads are mixed in one folder")
                self._where[k] = (f, handle)
        if path.is_dir() and (path / index_name).exists():
            # The index is the checkpoint's table of contents: a tensor it lists that its shard does
            # not hold is a shard from another revision (or a damaged one), not something to skip.
            absent = sorted(k for k, f in index.items() if self._where.get(k, (None,))[0] != path / f)
            if absent:
                raise CheckpointError(f"{path / index_name}: {len(absent)} tensor(s) are not in the shard the "
                                      f"index names: {_fmt(absent)}",
                                      hint="the shards and the index come from different revisions; re-download")

    def keys(self) -> list[str]:
        return list(self._where)

    def _slice(self, key: str):
        file, handle = self._where[key]
        try:
            return handle.get_slice(key)
        except SafetensorError as e:
            raise CheckpointError(f"{file}: cannot read tensor {key!r} ({e})") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        file, handle = self._where[key]
        try:
            return handle.get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{file}: cannot read tensor {key!r} ({e})") from None

    def get_slice(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
        """``get(key)[index]`` (``index``: one slice per axis) reading only that block."""
        if not index:
            return self.get(key)
        return self._slice(key)[tuple(index)]


def _read_index(file: Path) -> dict[str, str]:
    """``weight_map`` of a sharded-safetensors index: tensor name -> shard file name in the same
    folder; one clear error for anything else (not JSON, a list, a path leaving the folder)."""
    data = read_json_object(file, hint="a sharded checkpoint's index is a JSON object with a weight_map")
    index = data.get("weight_map")
    if not isinstance(index, dict) or not index:
        raise CheckpointError(f"{file}: not a safetensors index (weight_map must map tensor names to shard files)")
    bad = [f"{k}: {v!r}" for k, v in index.items()
           if not isinstance(v, str) or not v or Path(v).name != v or v in (".", "..")]
    if bad:
        raise CheckpointError(f"{file}: weight_map entries must name a shard file in the same folder, got "
                              f"{_fmt(bad, 4)}")
    return index


def read_slice(source: TensorSource, key: str, index: tuple[slice, ...]) -> np.ndarray:
    """``source.get(key)[index]``, reading only the block where the source can (safetensors)."""
    getter = getattr(source, "get_slice", None)
    if getter is not None:
        return getter(key, index)
    return source.get(key)[tuple(index)]


# numpy dtype name -> safetensors dtype code (the dtypes this package writes).
_ST_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _check_writable(key: str, dtype) -> None:
    if np.dtype(dtype).name not in _ST_CODES:
        raise CheckpointError(f"cannot write tensor {key!r} of dtype {dtype} to safetensors")


def save_safetensors(tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Writes one safetensors file atomically (temporary file, then rename) with the library."""
    items = {k: np.ascontiguousarray(v) for k, v in (tensors.items() if isinstance(tensors, Mapping) else tensors)}
    for key, arr in items.items():
        _check_writable(key, arr.dtype)
    with atomic_file(path, "wb") as f:
        f.write(safetensors.numpy.save(items, metadata=dict(metadata) if metadata else None))


def write_safetensors_streaming(specs: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
                                arrays: Iterable[np.ndarray], path: str | Path,
                                metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``path`` from ``arrays`` produced one at a time (``specs``: their names, dtypes and
    shapes, in order), so at most one tensor is on the host.

    The safetensors library writes only from tensors all held in memory at once, which is what
    this avoids for an 8B model; so this writes the documented layout (8-byte header length,
    JSON header, data) itself, and the result is read back through ``safe_open`` to check it.
    """
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, dtype, shape in specs:
        dtype = np.dtype(dtype)
        _check_writable(key, dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[key] = {"dtype": _ST_CODES[dtype.name], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (key, dtype, shape), arr in zip(specs, arrays, strict=True):
            arr = np.asarray(arr)
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise CheckpointError(f"{path}: tensor {key!r} is {arr.dtype}{arr.shape}, announced {dtype}{tuple(shape)}")
            # A byte view, not tobytes(): the largest tensor is never copied twice on the host.
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
            del arr  # before the next tensor is fetched: one on the host at a time
        f.flush()
        os.fsync(f.fileno())
    with safe_open(str(path), framework="np") as check:  # the library validates header and size
        if len(check.keys()) != len(specs):
            raise CheckpointError(f"{path}: wrote {len(check.keys())} tensors, expected {len(specs)}")



# ----------------------------------------------------------------------------- transforms
@dataclasses.dataclass(frozen=True)
class Transform:
    """An invertible per-tensor map between the external layout and the Flax layout.

    ``axes``: when ``to_flax`` is the axis permutation ``x.transpose(axes)`` (None: identity)
    and the target has exactly the permuted shape, a block of the target is the permuted block
    of the source, so a device reads only its shard; ``sliceable=False`` (reshapes) reads the
    whole tensor.
    """

    to_flax: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
    to_external: Callable[[np.ndarray], np.ndarray]
    name: str = "identity"
    axes: tuple[int, ...] | None = None
    sliceable: bool = True

    def source_index(self, index: tuple[slice, ...], src_shape: Sequence[int],
                     target_shape: Sequence[int]) -> tuple[slice, ...] | None:
        """The block of the source tensor that becomes ``target[index]``; None if it must be read whole."""
        axes = self.axes if self.axes is not None else tuple(range(len(src_shape)))
        if (not self.sliceable or not index or len(index) != len(target_shape) or len(axes) != len(src_shape)
                or tuple(src_shape[a] for a in axes) != tuple(target_shape)):
            return None
        block = [slice(None)] * len(src_shape)
        for i, a in enumerate(axes):
            block[a] = index[i]
        return tuple(block)

    def fits(self, src_shape: Sequence[int], target_shape: Sequence[int]) -> bool:
        """Whether a source tensor of ``src_shape`` becomes a ``target_shape`` leaf. The shapes must
        correspond axis by axis (a transposed or flattened tensor has the right number of elements
        but would be silently scrambled by the reshape); only a reshape transform compares counts."""
        if not self.sliceable:
            return int(np.prod(src_shape, dtype=np.int64)) == int(np.prod(target_shape, dtype=np.int64))
        axes = self.axes if self.axes is not None else tuple(range(len(src_shape)))
        return len(axes) == len(src_shape) == len(target_shape) and \
            tuple(src_shape[a] for a in axes) == tuple(target_shape)

    def block_to_flax(self, block: np.ndarray) -> np.ndarray:
        return block if self.axes is None else np.transpose(block, self.axes)


IDENTITY = Transform(lambda x, shape: x.reshape(shape), lambda x: x, "identity")
# PyTorch Linear (out, in) <-> Flax Dense (in, out).
TRANSPOSE = Transform(lambda x, shape: x.T.reshape(shape), lambda x: x.reshape(x.shape[0], -1).T, "transpose",
                      axes=(1, 0))


def conv1d_transform() -> Transform:
    """PyTorch Conv1d (out, in, width) <-> Flax Conv (width, in, out)."""
    return Transform(lambda x, shape: np.transpose(x, (2, 1, 0)).reshape(shape),
                     lambda x: np.transpose(x, (2, 1, 0)), "conv1d", axes=(2, 1, 0))


def reshape_transform(external_shape: tuple[int, ...]) -> Transform:
    return Transform(lambda x, shape: x.reshape(shape), lambda x: x.reshape(external_shape), "reshape",
                     sliceable=False)


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


def subtree(tree: Mapping | None, *keys: str) -> Mapping | None:
    """``tree[k1][k2]...``, or None once a level is missing (e.g. shardings that do not exist
    for a one-device import)."""
    for k in keys:
        if tree is None:
            return None
        tree = tree.get(k)
    return tree


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


def _external_shape(transform: Transform, target_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a source tensor needs to become ``target_shape`` (for error messages)."""
    if transform.axes is None or len(transform.axes) != len(target_shape):
        return target_shape
    out = [0] * len(target_shape)
    for i, a in enumerate(transform.axes):
        out[a] = target_shape[i]
    return tuple(out)


def _match_leaves(source: TensorSource, rules: Iterable[Rule], abstract: Mapping, ignore: Iterable[str],
                  allow_unknown: bool, allow_missing: Iterable[str]) -> dict[str, dict[int | None, tuple[str, Rule]]]:
    """{target leaf: {layer or None: (source key, rule)}} with every check of ``import_params``."""
    abstract_flat = flatten(abstract)
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
        if not rule.transform.fits(src_shape, want):
            external = _external_shape(rule.transform, tuple(want))
            bad_shape.append(f"{key}: checkpoint {tuple(src_shape)} vs model {tuple(want)}"
                             + (f" ({rule.transform.name} layout: needs {external})" if external != tuple(want) else ""))
            continue
        per_leaf.setdefault(leaf, {})[layer] = (key, rule)
    if no_target:
        raise CheckpointError(f"{source.name}: tensors with no place in the model: {_fmt(no_target)}",
                              hint="the checkpoint has more layers or parts than the config")
    if bad_shape:
        raise CheckpointError(f"{source.name}: mis-shaped tensor(s): {_fmt(bad_shape)}",
                              hint="the config does not match the checkpoint (sizes differ), or a tensor is "
                                   "stored in another layout (transposed, flattened)")
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
    return per_leaf


def _blocks(got: Mapping[int | None, tuple[str, Rule]], source: TensorSource, shape: tuple[int, ...],
            index: tuple[slice, ...]) -> list[tuple[str, Rule, tuple[int, ...], tuple[slice, ...] | None]]:
    """What building block ``index`` of one target leaf reads: (key, rule, layer target shape,
    source block or None for the whole tensor), one entry per source tensor involved."""
    if None in got:
        key, rule = got[None]
        return [(key, rule, shape, rule.transform.source_index(index, source.shape(key), shape))]
    rows = range(*index[0].indices(shape[0]))  # a scanned leaf: one source tensor per layer
    out = []
    for i in rows:
        key, rule = got[i]
        out.append((key, rule, shape[1:], rule.transform.source_index(index[1:], source.shape(key), shape[1:])))
    return out


def read_plan(source: TensorSource, rules: Iterable[Rule], abstract: Mapping, shardings: Mapping, *,
              ignore: Iterable[str] = (), allow_missing: Iterable[str] = ()) -> dict[str, dict]:
    """{leaf: {device: (elements read, elements of its shard)}}: what ``import_params`` reads
    per device, computed from shapes alone (no tensor is read), e.g. to check a paper-size
    import on a pod mesh: a whole-tensor read counts as the tensor's size."""
    per_leaf = _match_leaves(source, rules, abstract, ignore, False, allow_missing)
    abstract_flat, shard_flat = flatten(abstract), flatten(shardings)
    plan = {}
    for leaf, got in per_leaf.items():
        shape = tuple(abstract_flat[leaf].shape)
        plan[leaf] = {}
        for device, index in shard_flat[leaf].devices_indices_map(shape).items():
            index = tuple(index)
            want = int(np.prod([len(range(*sl.indices(n))) for sl, n in zip(index, shape)], dtype=np.int64))
            read = 0
            for key, _, _, block in _blocks(got, source, shape, index):
                src_shape = source.shape(key)
                sizes = src_shape if block is None else [len(range(*sl.indices(n))) for sl, n in zip(block, src_shape)]
                read += int(np.prod(sizes, dtype=np.int64))
            plan[leaf][device] = (read, want)
    return plan


def import_params(source: TensorSource, rules: Iterable[Rule], abstract: Mapping, *,
                  shardings: Mapping | None = None, ignore: Iterable[str] = (),
                  allow_unknown: bool = False, allow_missing: Iterable[str] = ()) -> dict:
    """Builds the parameter tree ``abstract`` (ShapeDtypeStructs) from ``source``.

    Every target leaf must be covered (except paths matching ``allow_missing`` regexes); every
    source tensor must match a rule (except names matching ``ignore`` regexes). Shapes are
    checked before anything is read. Each leaf is built in its sharding, each device reading
    only its block of the source tensors (``read_plan`` gives the counts).
    """
    per_leaf = _match_leaves(source, rules, abstract, ignore, allow_unknown, allow_missing)
    abstract_flat = flatten(abstract)
    shard_flat = flatten(shardings) if shardings is not None else {}

    def read(key: str, rule: Rule, shape: tuple[int, ...], index: tuple[slice, ...], block, dtype) -> np.ndarray:
        if block is None:  # a transform that cannot be sliced (reshape): the whole tensor
            full = np.asarray(rule.transform.to_flax(check_tensor(source.name, key, source.get(key), dtype), tuple(shape)))
            return full[tuple(index)].astype(dtype)
        # Every device checks its own block; together they cover the tensor.
        raw = check_tensor(source.name, key, read_slice(source, key, block), dtype)
        return np.asarray(rule.transform.block_to_flax(raw)).astype(dtype, copy=False)

    out = {}
    for leaf, target in abstract_flat.items():
        got = per_leaf.get(leaf)
        if not got:
            continue

        def cb(index, got=got, target=target):
            index, shape = tuple(index), tuple(target.shape)
            blocks = _blocks(got, source, shape, index)
            if None in got:
                return read(*blocks[0][:3], index, blocks[0][3], target.dtype)
            # a scanned leaf: fill the shard layer by layer (no list of layers, then a stacked copy)
            out = np.empty([len(range(*sl.indices(n))) for sl, n in zip(index, shape)], target.dtype)
            for j, (key, rule, layer_shape, block) in enumerate(blocks):
                out[j] = read(key, rule, layer_shape, index[1:], block, target.dtype)
            return out

        sharding = shard_flat.get(leaf) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
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

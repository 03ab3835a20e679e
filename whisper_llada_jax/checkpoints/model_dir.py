"""MODEL_DIR: the one on-disk form of a Whisper-LLaDA model that every command takes as ``--model``.

    MODEL_DIR/
      config.yaml          the ModelConfig (``config.to_dict``), token ids and chat prompt ids included
      tokenizer.json       the LLaDA tokenizer
      params.safetensors   the ``params`` collection, keys are '/'-joined Flax paths
      lora.safetensors     the ``lora`` collection (absent when LoRA is disabled)
      first_pass.json      optional: {"whisper": DIR} a Whisper recogniser for deliberation
      decode.yaml          optional: the model's default DecodeConfig fields (e.g. the response
                           canvas it was trained on); command-line settings override them

Writing is atomic (a temporary directory renamed into place), done by process 0, and streams
one tensor at a time from the devices (``save_model_dir`` takes sharded jax Arrays and gathers
leaf by leaf to process 0: host memory peaks at the largest tensor, not the model); reading
builds each device's shard straight from its block of the file, so a model is never held
whole on any host or device.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
import yaml

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.checkpoints import tensors
from whisper_llada_jax.checkpoints.tensors import Rule, SafetensorsSource, flatten, import_params
from whisper_llada_jax.config import ModelConfig
from whisper_llada_jax.decoding.config import DecodeConfig, load_decode_config, validate
from whisper_llada_jax.errors import CheckpointError, ConfigError, UserError
from whisper_llada_jax.outputs import atomic_dir

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
PARAMS_FILE = "params.safetensors"
LORA_FILE = "lora.safetensors"
FIRST_PASS_FILE = "first_pass.json"
DECODE_FILE = "decode.yaml"
FORMAT = "whisper-llada-model-dir/1"
# Every entry a MODEL_DIR may hold: `import --overwrite` replaces a folder holding only these.
FILES = (CONFIG_FILE, TOKENIZER_FILE, PARAMS_FILE, LORA_FILE, FIRST_PASS_FILE, DECODE_FILE)
# Names that look like weights or settings: one of these that is not in FILES (decode.yml,
# params-00002.safetensors, an adapter copied in) would be silently ignored, so it is refused.
# Other files (a README, notes) are left alone.
_MODEL_LIKE = (".safetensors", ".yaml", ".yml", ".json", ".pth", ".pt", ".bin", ".msgpack", ".npz", ".index")


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: ``model.apply(variables, ...)``; ``tokenizer`` is a LLaDATokenizer."""

    config: ModelConfig
    model: Any
    variables: dict
    tokenizer: Any
    path: Path
    first_pass: str | None = None  # a Whisper recogniser directory (deliberation's first pass)
    decode: dict | None = None  # decode.yaml: the model's default DecodeConfig fields


# ----------------------------------------------------------------------------- save
def _gather_to_process_0(arr) -> np.ndarray | None:
    """One leaf, whole, on process 0's host (None elsewhere). A leaf no process holds entirely
    is first replicated across the devices of its mesh (one tensor of device memory, briefly);
    only process 0 copies it to host memory."""
    if isinstance(arr, jax.Array) and not arr.is_fully_addressable:
        sharding = arr.sharding
        if not isinstance(sharding, jax.sharding.NamedSharding):
            from jax.experimental import multihost_utils

            full = multihost_utils.process_allgather(arr, tiled=True)
            return np.asarray(full) if jax.process_index() == 0 else None
        whole = _replicate(arr, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
        if jax.process_index() != 0:
            # Wait for it: a process that only dispatched its part would queue the next leaf's
            # gather behind it, and two collective programs in flight at once on the CPU's gloo
            # collectives paired up wrongly with process 0's (the import / export hung).
            whole.block_until_ready()
            return None
        return np.asarray(whole.addressable_data(0))
    if jax.process_index() != 0:
        return None
    if isinstance(arr, jax.Array):
        # A jax.Array keeps the host copy it once made (for its lifetime): fetch from a
        # throwaway device copy so the variables, still alive, do not pile up host copies.
        return np.asarray(jax.numpy.copy(arr))
    return np.asarray(arr)


def _identity(x):
    return x


def _replicate(arr: jax.Array, sharding) -> jax.Array:
    return jax.jit(_identity, out_shardings=sharding)(arr)


def _write_safetensors_streaming(tree: Mapping, path: Path | None) -> None:
    """One safetensors file from a (sharded) array tree, one leaf at a time: host memory peaks
    at the largest leaf, never the model. With ``path=None`` (processes other than 0) it only
    takes part in the collectives that replicate sharded leaves."""
    flat = flatten(tree)
    leaves = (_gather_to_process_0(arr) for arr in flat.values())
    if path is None:
        for _ in leaves:
            pass
        return
    specs = [(key, np.dtype(arr.dtype), tuple(arr.shape)) for key, arr in flat.items()]
    tensors.write_safetensors_streaming(specs, leaves, path, metadata={"format": FORMAT})


def save_model_dir(out: str | Path, config: ModelConfig, variables: Mapping, tokenizer_json: str | Path | None,
                   *, first_pass: str | Path | None = None, decode: Mapping[str, Any] | None = None) -> Path:
    """Writes MODEL_DIR ``out`` atomically. ``tokenizer_json``: a path to a tokenizer.json (or
    its text); ``variables``: ``{"params": ..., "lora": ...}`` (boxed or not, any sharding);
    ``decode``: default DecodeConfig fields for this model (``decode.yaml``)."""
    if decode:
        _decode_fields(decode, "decode")  # refuse bad fields before writing anything
    variables = nn.unbox(dict(variables))
    if "params" not in variables:
        raise CheckpointError("save_model_dir: variables have no 'params' collection")
    if tokenizer_json is None:
        raise CheckpointError(f"{out}: a MODEL_DIR needs the LLaDA tokenizer.json")
    text = Path(tokenizer_json).read_text() if _is_path(tokenizer_json) else str(tokenizer_json)
    out = Path(out)
    if jax.process_index() != 0:  # one writer; the others only join the gathers of sharded leaves
        _write_safetensors_streaming(variables["params"], None)
        if variables.get("lora"):
            _write_safetensors_streaming(variables["lora"], None)
        return out
    with atomic_dir(out) as tmp:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config_lib.to_dict(config), sort_keys=False))
        (tmp / TOKENIZER_FILE).write_text(text)
        _write_safetensors_streaming(variables["params"], tmp / PARAMS_FILE)
        if variables.get("lora"):
            _write_safetensors_streaming(variables["lora"], tmp / LORA_FILE)
        if first_pass is not None:
            (tmp / FIRST_PASS_FILE).write_text(json.dumps({"whisper": str(first_pass)}) + "\n")
        if decode:
            (tmp / DECODE_FILE).write_text(yaml.safe_dump(dict(decode), sort_keys=False))
    return out


def _decode_fields(fields: Mapping[str, Any], where: str) -> dict:
    """``fields`` checked as DecodeConfig fields (unknown names, bad values); CheckpointError
    naming ``where`` otherwise."""
    try:
        validate(config_lib.from_dict(DecodeConfig, dict(fields), where))
    except UserError as e:
        raise CheckpointError(e.message if where in e.message else f"{where}: {e.message}", hint=e.hint) from None
    return dict(fields)


def _read_decode_file(path: Path, model_config: ModelConfig | None = None) -> dict | None:
    """The validated fields of ``path/decode.yaml``, or None when the MODEL_DIR has none;
    with ``model_config``, its canvas must also fit the model's ``llm.max_len``."""
    file = path / DECODE_FILE
    if not file.exists():
        return None
    try:
        data = config_lib.read_yaml(file)
    except ConfigError as e:
        raise CheckpointError(e.message, hint=e.hint) from None
    fields = _decode_fields(data, str(file))
    # (only a canvas the file sets: a default one that does not fit may be replaced on the command line)
    if model_config is not None and {"gen_len", "max_new_tokens"} & set(fields):
        from whisper_llada_jax.decoding.config import check_fits_model

        try:
            check_fits_model(load_decode_config(fields), model_config)
        except UserError as e:
            raise CheckpointError(f"{file}: {e.message}", hint=e.hint) from None
    return fields


def read_decode_defaults(path: str | Path) -> DecodeConfig:
    """The DecodeConfig a MODEL_DIR decodes with by default: its ``decode.yaml`` over
    DecodeConfig's defaults (the paper's), or those alone when the file is absent."""
    return load_decode_config(_read_decode_file(Path(path)))


def _is_path(x: str | Path) -> bool:
    if isinstance(x, Path):
        return True
    return "\n" not in x and len(x) < 4096 and not x.lstrip().startswith("{")


# ----------------------------------------------------------------------------- load
def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_FILE).is_file()


def read_model_config(path: str | Path, overrides: Sequence[str] = ()) -> ModelConfig:
    """The ModelConfig of a MODEL_DIR (``overrides`` may change compute settings, not sizes)."""
    path = Path(path)
    if path.is_file():
        hint = f"give the folder that holds it: {path.parent}" if path.name in FILES else \
            "a MODEL_DIR is the folder written by `whisper-llada import` / `train`"
        raise CheckpointError(f"{path}: is a file, not a MODEL_DIR folder", hint=hint)
    if not path.is_dir():
        raise CheckpointError(f"{path}: MODEL_DIR does not exist", hint="create one with `whisper-llada import`")
    if (path / CONFIG_FILE).is_dir():
        raise CheckpointError(f"{path / CONFIG_FILE}: is a folder, not the MODEL_DIR's {CONFIG_FILE} file",
                              hint="remove it, or re-create the MODEL_DIR with `whisper-llada import`")
    if not (path / CONFIG_FILE).is_file():
        if (path / "run" / "train.yaml").is_file():  # a `train` workdir
            hint = (f"this is a training run: its final MODEL_DIR is {path / 'model'} (once written); export a "
                    f"checkpoint step with `whisper-llada export --checkpoint {path} --format model-dir`")
        elif (path / "config.json").is_file():
            hint = "this is a Hugging Face / CTranslate2 checkpoint: build a MODEL_DIR from it with `whisper-llada import`"
        else:
            hint = "create one with `whisper-llada import`, or give the directory it wrote"
        raise CheckpointError(f"{path}: not a MODEL_DIR (no {CONFIG_FILE})", hint=hint)
    if not config_lib.read_yaml(path / CONFIG_FILE):
        # Never the paper's sizes by default: they would not match the weights beside it.
        raise CheckpointError(f"{path / CONFIG_FILE}: the config is empty",
                              hint="restore it from the run that wrote this MODEL_DIR, or re-create the MODEL_DIR")
    return config_lib.load_model_config(path / CONFIG_FILE, overrides, written=True)


def check_entries(path: Path) -> None:
    """Refuses what a MODEL_DIR must not hold: one of its files as a folder, or a weights /
    settings file it does not read (a typo'd ``decode.yml``, an extra shard), either of which
    would otherwise be silently ignored."""
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue  # temporary files of an interrupted atomic write; never read
        if entry.name in FILES:
            if not entry.is_file():
                raise CheckpointError(f"{entry}: is a folder, not the MODEL_DIR's {entry.name} file",
                                      hint="remove it, or re-create the MODEL_DIR with `whisper-llada import`")
        elif entry.suffix.lower() in _MODEL_LIKE:
            raise CheckpointError(f"{entry}: a MODEL_DIR reads no such file, so it would be ignored",
                                  hint=f"a MODEL_DIR holds {', '.join(FILES)}; rename the file to the one "
                                       "it stands for, or move it out")


def check_tokenizer(tokenizer, config: ModelConfig, where: str | Path) -> None:
    """The tokenizer must agree with the config's special ids (the decoder masks, stops and
    strips with the config's ids, the text side with the tokenizer's) and fit the embedding
    table (an id past it is no error on device: the gather clamps it to the last row)."""
    if tokenizer.vocab_size > config.llm.vocab_size:
        raise CheckpointError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens, more than the "
                              f"LLM's llm.vocab_size {config.llm.vocab_size} embedding rows",
                              hint="the tokenizer belongs to another LLM: use the LLM's own tokenizer.json")
    fields = ("bos", "eos", "pad", "mask", "start_header", "end_header", "eot")  # pad: eos in LLaDA
    diff = [f"{f}: config {getattr(config.tokens, f)} vs tokenizer {getattr(tokenizer, f)}" for f in fields
            if getattr(config.tokens, f) != getattr(tokenizer, f)]
    if diff:
        raise CheckpointError(f"{where}: the tokenizer's special ids differ from the config's tokens "
                              f"({'; '.join(diff)})",
                              hint="the tokenizer.json belongs to another model: use the one the model was built with")


def _identity_rules(source: SafetensorsSource) -> list[Rule]:
    return [Rule(k, k) for k in source.keys()]


def load_variables(path: str | Path, config: ModelConfig, *, mesh: jax.sharding.Mesh | None = None,
                   rules: Sequence | None = None) -> dict:
    """The variables of MODEL_DIR ``path`` for ``config``, each leaf built in its sharding."""
    from whisper_llada_jax.models.composite import abstract_variables, mesh_shardings

    path = Path(path)
    abstract = nn.unbox(abstract_variables(config))
    shardings = mesh_shardings(config, mesh, rules) if mesh is not None else None
    out = {}
    for collection, file in (("params", PARAMS_FILE), ("lora", LORA_FILE)):
        target = abstract.get(collection)
        if not target:
            if (path / file).exists():
                raise CheckpointError(f"{path / file}: the config has no {collection!r} variables "
                                      "(lora.enabled: false?) but the MODEL_DIR holds them",
                                      hint=f"fix {path / CONFIG_FILE} or remove {file}")
            continue
        if not (path / file).is_file():
            raise CheckpointError(f"{path}: {file} is missing", hint="re-create the MODEL_DIR with `whisper-llada import`")
        source = SafetensorsSource(path / file)
        out[collection] = import_params(source, _identity_rules(source), target,
                                        shardings=None if shardings is None else shardings[collection])
    return out


def load_model_dir(path: str | Path, mesh: jax.sharding.Mesh | None = None, rules: Sequence | None = None, *,
                   overrides: Sequence[str] = (), for_decoding: bool = False) -> LoadedModel:
    """Reads MODEL_DIR ``path``: config, tokenizer and variables (sharded on ``mesh`` if given).

    ``for_decoding``: the layer stack unrolled (a scanned model is switched at load) and LoRA
    merged into the kernels (models/inference_layout.py); for decoding, not for training."""
    from whisper_llada_jax.models.composite import WhisperLLaDA
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer

    path = Path(path)
    try:
        config = read_model_config(path, overrides)
    except ConfigError as e:
        where = str(path / CONFIG_FILE)
        raise CheckpointError(e.message if e.message.startswith(where) else f"{where}: {e.message}",
                              hint=e.hint) from None
    check_entries(path)
    # The file is written whole (save_model_dir): a field it lacks would be a default standing in
    # for the model's value (rope_theta, lora.alpha, a head split...), which no tensor shape shows.
    missing = config_lib.missing_model_fields(config_lib.read_yaml(path / CONFIG_FILE))
    if missing:
        raise CheckpointError(f"{path / CONFIG_FILE}: missing field(s) {missing[:12]}"
                              + (f" (+{len(missing) - 12} more)" if len(missing) > 12 else ""),
                              hint="a MODEL_DIR's config.yaml holds every model field: restore them with the "
                                   "values the model was built with, or re-create the MODEL_DIR")
    if not (path / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{path}: {TOKENIZER_FILE} is missing", hint="copy the LLaDA tokenizer.json into it")
    tokenizer = LLaDATokenizer(path / TOKENIZER_FILE)
    check_tokenizer(tokenizer, config, path / TOKENIZER_FILE)
    decode = _read_decode_file(path, config)  # before the weights: a bad file fails fast
    first_pass = None
    if (path / FIRST_PASS_FILE).is_file():
        try:
            first_pass = json.loads((path / FIRST_PASS_FILE).read_text())["whisper"]
        except (ValueError, KeyError, TypeError):
            first_pass = None
        if not isinstance(first_pass, str) or not first_pass.strip():
            raise CheckpointError(f"{path / FIRST_PASS_FILE}: expected {{\"whisper\": DIR}} with DIR a Whisper "
                                  "directory or bundled:NAME", hint="fix or remove the file") from None
    variables = load_variables(path, config, mesh=mesh, rules=rules)
    if for_decoding:
        from whisper_llada_jax.models.inference_layout import for_decoding as layout

        config, variables = layout(config, variables)
    return LoadedModel(config, WhisperLLaDA(config), variables, tokenizer, path, first_pass, decode)

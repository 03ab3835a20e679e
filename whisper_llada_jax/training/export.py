"""From a training run to a MODEL_DIR: the trainer's final write and ``export --checkpoint``.

No host ever gathers the whole model. The variables stay sharded on the mesh and
``save_model_dir`` streams them one leaf at a time: a leaf that no single process holds is
gathered on its own, written by process 0 and dropped before the next (peak host memory: the
largest tensor, not the model).

A run records what turns a checkpoint step back into a MODEL_DIR in ``<workdir>/run/`` (written
at start-up): the model config with its token ids (``config.yaml``), the tokenizer, the decode
defaults and the train config (``train.yaml``, for the model, the trainable / frozen split of
the checkpointed state, the mesh rules and the checkpoint directory). Export restores only the
parameters of an Orbax step's ``state`` item onto their abstract shardings: no optimiser
moments, no data pipeline, no initialiser run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import yaml

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.errors import CheckpointError, ConfigError, UserError

RUN_META_DIR = "run"
TRAIN_FILE = "train.yaml"
STEP_CHOICES = "best, latest or a step number"


# --------------------------------------------------------------------------- the trainer's side
def decode_defaults(cfg, data_cfg) -> dict | None:
    """The decode.yaml of a run's MODEL_DIR: a model trained on its whole canvas decodes on
    exactly that canvas by default, and deliberates on it too: the first pass followed by the
    eos tail it always saw (a first pass alone, padding hidden, is a canvas it never saw), with a
    mask-filled confidence pass (pad is eos here, and an all-eos canvas reads as an empty
    transcript to such a model; docs/decoding.md "Deliberation inputs"). A model trained on
    group spans never saw a slot past ``max_response_len``: when that is shorter than the
    decoder's default canvas, it decodes on ``max_response_len`` slots (the default's two slots
    per step); a model trained from scratch does best on its longest training transcript + 1
    (docs/configs.md, ``loss_span``), which only the training data knows."""
    from whisper_llada_jax.decoding.config import DecodeConfig

    r = data_cfg.max_response_len
    if cfg.objective == "autoregressive":
        return None
    if cfg.loss_span == "canvas":
        return {"gen_len": r, "block_length": r, "steps": r, "deliberation_canvas": "training",
                "confidence_fill": "mask"}
    default = DecodeConfig()
    if r < default.gen_len:
        return {"gen_len": r, "block_length": r, "steps": max(1, r * default.steps // default.gen_len)}
    return None


def check_resume(workdir: str | Path, checkpoint_dir, mcfg, tokenizer_json: str | None) -> None:
    """Before a run that will resume from ``checkpoint_dir`` replaces ``<workdir>/run/``: the
    model config and tokenizer must be those the checkpoints were trained with. A different
    size fails at restore anyway; a same-shaped change (LoRA alpha, token ids, prompt, another
    tokenizer) would restore and silently go on training another model."""
    from whisper_llada_jax.checkpoints.model_dir import CONFIG_FILE, TOKENIZER_FILE

    meta = Path(workdir) / RUN_META_DIR
    try:
        has_steps = any(p.name.isdigit() for p in checkpoint_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        has_steps = False
    if not has_steps or not (meta / CONFIG_FILE).is_file():
        return
    old = config_lib.dotted_fields(config_lib.with_added_fields(config_lib.read_yaml(meta / CONFIG_FILE)))
    new = config_lib.dotted_fields(config_lib.to_dict(mcfg))
    # compute settings, dropout and init may change on resume; what the weights compute may not
    diff = [f"{k}: checkpoints {old.get(k)!r} vs now {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in config_lib.COMPUTE_FIELDS and _norm(old.get(k)) != _norm(new.get(k))]
    if tokenizer_json is not None and (meta / TOKENIZER_FILE).is_file():
        import json

        try:
            same = json.loads((meta / TOKENIZER_FILE).read_text()) == json.loads(tokenizer_json)
        except ValueError:
            same = False
        if not same:
            diff.append(f"tokenizer: not the {meta / TOKENIZER_FILE} the checkpoints were trained with")
    if diff:
        shown = "; ".join(diff[:6]) + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else "")
        raise ConfigError(f"{checkpoint_dir}: resuming a run of another model ({shown})",
                          hint="restore the run's settings (recorded in " f"{meta}), or start a new run: another "
                               "workdir / checkpoint.dir, or checkpoint.restore=false")


def _norm(value):
    return [_norm(v) for v in value] if isinstance(value, (list, tuple)) else value


def write_run_metadata(workdir: str | Path, cfg, mcfg, tokenizer_json: str, decode: Mapping | None) -> Path:
    """``<workdir>/run/``, replaced atomically at every start of the run. Process 0 writes it;
    a process that then cannot see it (a workdir on each host's local disk) writes its own copy,
    so ``export --checkpoint`` finds it on every host."""
    out = Path(workdir) / RUN_META_DIR
    if jax.process_index() == 0:
        _write_meta(out, cfg, mcfg, tokenizer_json, decode)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("whisper-llada run metadata")
        if jax.process_index() != 0 and not (out / TRAIN_FILE).is_file():
            _write_meta(out, cfg, mcfg, tokenizer_json, decode)
    return out


def _write_meta(out: Path, cfg, mcfg, tokenizer_json: str, decode: Mapping | None) -> None:
    from whisper_llada_jax.checkpoints.model_dir import CONFIG_FILE, DECODE_FILE, TOKENIZER_FILE
    from whisper_llada_jax.outputs import atomic_dir

    with atomic_dir(out) as tmp:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config_lib.to_dict(mcfg), sort_keys=False))
        (tmp / TOKENIZER_FILE).write_text(tokenizer_json)
        (tmp / TRAIN_FILE).write_text(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        if decode:
            (tmp / DECODE_FILE).write_text(yaml.safe_dump(dict(decode), sort_keys=False))


def write_model_dir(out: str | Path, mcfg, variables: Mapping, tokenizer_json: str,
                    decode: Mapping | None) -> Path:
    """A MODEL_DIR from sharded variables, one leaf at a time (every process calls this: the
    gathers of leaves spread over several processes are collective; process 0 writes).

    ``save_model_dir`` gathers one leaf at a time to process 0 (a leaf no process holds whole is
    copied across the mesh once), so no host ever holds the model.
    """
    from whisper_llada_jax.checkpoints.model_dir import save_model_dir

    leaves = jax.tree.leaves(variables)
    if not all(isinstance(x, jax.Array) for x in leaves):
        raise TypeError("write_model_dir takes the (sharded) device arrays, not host copies")
    return save_model_dir(out, mcfg, variables, tokenizer_json, decode=decode)


# --------------------------------------------------------------------------- a run on disk
@dataclasses.dataclass
class Run:
    """A training run's directory as export reads it."""

    path: Path
    meta: Path  # <run>/run: config.yaml, tokenizer.json, decode.yaml, train.yaml
    cfg: Any  # TrainConfig
    mcfg: Any  # ModelConfig (with the run's token ids)
    checkpoint_dir: Any  # etils.epath.Path: local, or gs:// as the run was given


def open_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Run:
    """Reads ``run_dir``'s recorded train + model config. ``overrides``: ``mesh.*=V`` (the mesh
    to restore onto when this machine differs from the training one) and ``distributed.*=V``
    (multi-process set-up; by default detected from the environment like ``train``)."""
    from whisper_llada_jax.checkpoints.model_dir import read_model_config
    from whisper_llada_jax.training.config import load_train_config

    run_dir = Path(run_dir)
    meta = run_dir / RUN_META_DIR
    if not (meta / TRAIN_FILE).is_file():
        raise CheckpointError(f"{run_dir}: not a training run ({RUN_META_DIR}/{TRAIN_FILE} is missing)",
                              hint="pass the workdir of a `whisper-llada train` run (it holds checkpoints/ and run/)")
    bad = [o for o in overrides if not o.startswith(("mesh.", "distributed."))]
    if bad:
        raise ConfigError(f"export --checkpoint: only mesh.* and distributed.* overrides apply, not {bad}")
    data = config_lib.read_yaml(meta / TRAIN_FILE)
    # The recorded process id / count are host 0's: each host finds its own, as in training.
    recorded = data.pop("distributed", None) or {}
    data["distributed"] = {k: recorded[k] for k in ("cpu_collectives", "initialization_timeout") if k in recorded}
    cfg = load_train_config(data, list(overrides))
    mcfg = read_model_config(meta)
    # the trainer's default; an explicit checkpoint.dir as given to the run (never through
    # pathlib, which reads gs://bucket/run as the local gs:/bucket/run)
    from whisper_llada_jax.training.checkpointing import checkpoint_path

    ckdir = checkpoint_path(cfg.checkpoint.dir or run_dir / "checkpoints")
    return Run(run_dir, meta, cfg, mcfg, ckdir)


def recorded_decode(meta: Path) -> dict | None:
    from whisper_llada_jax.checkpoints.model_dir import DECODE_FILE

    path = meta / DECODE_FILE
    return config_lib.read_yaml(path) if path.is_file() else None


def resolve_step(ckpt, spec: str | int, metric: str) -> int:
    """``best`` (lowest recorded ``metric``), ``latest`` or a kept step number."""
    steps = ckpt.all_steps()
    where = ckpt.directory
    if not steps:
        raise CheckpointError(f"{where}: no checkpoint steps", hint="has the run saved a checkpoint yet?")
    spec = str(spec)
    if spec == "latest":
        return max(steps)
    if spec == "best":
        best = ckpt.best_step(metric)
        if best is None:
            raise CheckpointError(f"{where}: no kept step recorded {metric}",
                                  hint="use --step latest, or train with validation (eval_interval / "
                                       "eval.wer_every) and checkpoint.keep_best: true")
        return best
    try:
        step = int(spec)
    except ValueError:
        raise UserError(f"--step {spec!r}: expected {STEP_CHOICES}") from None
    if step not in steps:
        raise CheckpointError(f"{where}: no step {step}; kept steps: {sorted(steps)}")
    return step


def restore_variables(run: Run, step: str | int = "latest") -> tuple[int, dict]:
    """(step, variables) of ``run`` at ``step``, sharded on the run's mesh (``mesh.*``
    overridable). Only the parameters are read (Orbax partial restore of the ``state`` item's
    ``trainable`` and ``frozen`` subtrees): no optimiser moments, no data iterator."""
    import orbax.checkpoint as ocp

    from whisper_llada_jax import mesh as mesh_lib
    from whisper_llada_jax.training import optim
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.state import abstract_setup
    from whisper_llada_jax.training.trainer import build_model, model_init_fn

    cfg = run.cfg
    mesh_lib.initialize_distributed(cfg.distributed)
    ckpt = Checkpointer(run.checkpoint_dir, cfg.checkpoint, with_data=False, read_only=True)
    try:
        n = resolve_step(ckpt, step, cfg.checkpoint.best_metric)
    finally:
        ckpt.close()
    model, _ = build_model(cfg, run.mcfg)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    # The trainable / frozen split follows the run's optimiser config; the initialiser is only traced.
    setup = abstract_setup(model_init_fn(model, run.mcfg, 0), mesh, mesh_lib.rules(cfg.mesh), cfg.optim)
    item = {"trainable": setup.abstract.trainable, "frozen": setup.abstract.frozen}
    manager = ocp.CheckpointManager(ckpt.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        with jax.set_mesh(mesh):
            out = manager.restore(n, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)))
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{ckpt.directory}/{n}: cannot restore ({str(e)[:300]})",
                              hint="was it written by another model or optimiser config?") from None
    finally:
        manager.close()
    state = out["state"]
    return n, optim.merge(state["trainable"], state["frozen"])


def export_model_dir(run_dir: str | Path, step: str | int, out: str | Path, overrides: Sequence[str] = ()
                     ) -> tuple[int, Path]:
    """``whisper-llada export --checkpoint RUN --step S --format model-dir --out DIR``."""
    from whisper_llada_jax.checkpoints.model_dir import TOKENIZER_FILE

    run = open_run(run_dir, overrides)
    n, variables = restore_variables(run, step)
    path = write_model_dir(out, run.mcfg, variables, (run.meta / TOKENIZER_FILE).read_text(),
                           recorded_decode(run.meta))
    return n, path

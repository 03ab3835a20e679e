"""Orbax checkpoints of the whole training position: state (params, optimiser, step, RNG) plus
the Grain data iterator, so a restart continues exactly where the run stopped.

- Saves are asynchronous; Orbax writes into a temporary directory and renames it only once
  every process has finished, so a crash mid-save never leaves a half-written latest step.
- Retention: the last ``max_to_keep`` steps, plus the best by ``checkpoint.best_metric``
  (validation loss or WER, recorded with each step that was evaluated).
- Restoring takes an abstract state whose leaves carry the *new* shardings, so a checkpoint
  written on one mesh restores onto another (8 devices -> 4, a different fsdp/tensor split).
- Preemption: SIGTERM (or a first Ctrl-C) sets a flag that the train loop checks (single
  process); with several processes Orbax's preemption sync point makes every host save the
  same step.
- Integrity: right after Orbax commits a step, process 0 records every file's size and CRC-32
  in ``<step>/integrity.json`` (in Orbax's finalize thread, off the training loop). Restoring
  checks the newest step against it and falls back to the newest intact one, saying which step
  was skipped and why; a damaged step is renamed ``<step>.corrupt`` (kept, never deleted), so
  the run can save that step number again.
- Steps lost to a kill: Orbax starts a save only after the previous one has committed, so a
  kill (SIGKILL, a lost VM) loses at most ``2 * save_interval_steps`` completed steps: those
  since the last save started, plus one interval while that save is still being written (the
  worst moment is just after a save step, before its save has begun). With
  ``async_save=false`` at most ``save_interval_steps``. SIGTERM saves the current step.
- Remote directories: ``checkpoint.dir=gs://bucket/run`` (any ``etils.epath`` path, as Orbax
  takes it) is used as given; every file operation here goes through ``epath``, never ``os``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import zlib
from pathlib import Path
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.outputs import WRITE_ERRNOS, OutputError, write_text
from whisper_llada_jax.training.config import CheckpointConfig

VAL_METRIC = "val_loss"
INTEGRITY_FILE = "integrity.json"
CORRUPT_SUFFIX = ".corrupt"
# Orbax saves a replicated array "replica-parallel": each replica writes a slice of it, cut by
# one eager slicing op per slice. Across hosts that spreads the writing of a large array; for a
# small one (norm scales, optimiser counters) it is pure overhead: the tiny model's 270 arrays
# over 8 data-parallel devices took about 1 s per save, and 4 s for the first (every slicing
# op compiled). Slices smaller than this are written whole by one replica.
REPLICA_PARALLEL_MIN_SLICE_BYTES = 1 << 20


def _register_array_handler() -> None:
    """Orbax's default ``jax.Array`` handler (process-wide registry), with replica-parallel
    writing kept for slices of at least ``REPLICA_PARALLEL_MIN_SLICE_BYTES``."""
    from orbax.checkpoint._src.metadata import array_metadata_store  # the default handler's store

    handler = ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                             min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES)
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def checkpoint_path(directory: str | Path) -> epath.Path:
    """A checkpoint directory as Orbax takes it: a URL (``gs://bucket/run``) as given, a local
    path made absolute. (``Path.absolute()`` would turn ``gs://bucket/run`` into
    ``$PWD/gs:/bucket/run``, and so would ``epath.Path.absolute()``.)"""
    path = epath.Path(directory)
    return path if path.is_absolute() else path.absolute()


def _crc32(path: epath.Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(step_dir: epath.Path) -> dict[str, epath.Path]:
    # walk(), not rglob(): epath refuses recursive globs (one listing per folder on GCS)
    files = [epath.Path(folder) / name for folder, _, names in step_dir.walk() for name in names]
    return {p.relative_to(step_dir).as_posix(): p for p in sorted(files) if p.name != INTEGRITY_FILE}


def seal_step(step_dir: str | Path) -> None:
    """Writes ``integrity.json`` ({relative path: [size, crc32]}) for a committed step."""
    step_dir = epath.Path(step_dir)
    record = {name: [p.stat().length, _crc32(p)] for name, p in _files(step_dir).items()}
    text = json.dumps({"files": record}, indent=0)
    if "://" in str(step_dir):  # an object store writes an object whole or not at all
        (step_dir / INTEGRITY_FILE).write_text(text)
    else:
        write_text(Path(step_dir) / INTEGRITY_FILE, text)


def verify_step(step_dir: str | Path) -> str | None:
    """None if every file matches the step's integrity record, else what is wrong.

    A step without a record (the run was killed between Orbax's commit and the record, a
    window of milliseconds) returns None too: Orbax's commit is atomic, so it is complete."""
    step_dir = epath.Path(step_dir)
    path = step_dir / INTEGRITY_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"its {INTEGRITY_FILE} is damaged"
    for name, (size, crc) in sorted(record.items()):
        p = step_dir / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().length != size:
            return f"{name} has {p.stat().length} bytes, {size} were written"
        if _crc32(p) != crc:
            return f"{name} does not match its checksum"
    return None


class _SealingManager(ocp.CheckpointManager):
    """Orbax's manager, sealing each step in the finalize thread right after its commit."""

    seal: Callable[[int], None] = staticmethod(lambda step: None)

    def _finalize(self, step, steps_to_remove):
        super()._finalize(step, steps_to_remove)
        self.seal(step)


METRICS = ("val_loss", "val_wer")  # both lower-is-better
# What Orbax / tensorstore say (in a ValueError) when the disk refuses a write.
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|File too large|Read-only file system")


class Checkpointer:
    """One run's checkpoint directory: ``<dir>/<step>/{state,data}``.

    ``read_only``: for reading a run that may still be training (``export --checkpoint``):
    nothing is created, cleaned up or deleted.
    """

    def __init__(self, directory: str | Path, cfg: CheckpointConfig, *, with_data: bool = True,
                 read_only: bool = False):
        _register_array_handler()
        self.directory = checkpoint_path(directory)
        self.cfg = cfg
        self.with_data = with_data
        metric = cfg.best_metric
        # A step evaluated for the other metric only never counts as best.
        score = lambda m: m.get(metric, math.inf)  # noqa: E731
        keep = [cm.LatestN(cfg.max_to_keep)]
        if cfg.keep_best:
            keep.append(cm.BestN(get_metric_fn=score, reverse=True, n=1, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else cfg.save_interval_steps,
            preservation_policy=cm.AnyPreservationPolicy(keep),
            best_fn=score if cfg.keep_best else None,  # also makes Orbax write metrics
            best_mode="min",
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=not read_only,  # leftovers of a save killed half-way
            read_only=read_only,
            create=not read_only,
        )
        handlers = {"state": ocp.StandardCheckpointHandler()}
        if with_data:
            handlers["data"] = grain.checkpoint.CheckpointHandler()
        self.manager = _SealingManager(self.directory, options=options, handler_registry=_registry(handlers))
        self.manager.seal = self._seal
        self._preempted = threading.Event()
        self.interrupted = False  # the stop came from Ctrl-C (SIGINT), not SIGTERM
        self._previous_handlers: dict = {}

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self, metric: str | None = None) -> int | None:
        """The kept step with the lowest recorded ``metric`` (default ``checkpoint.best_metric``;
        ties: the earliest step); None if no kept step recorded it."""
        metric = metric or self.cfg.best_metric
        scored = [(float(m[metric]), s) for s in self.all_steps()
                  if (m := self.manager.metrics(s)) and m.get(metric) is not None]
        return min(scored)[1] if scored else None

    def metrics(self, step: int) -> dict:
        return dict(self.manager.metrics(step) or {})

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    # ------------------------------------------------------------------ save / restore
    def save(self, step: int, state: Any, data_iter: Any = None, *, val_loss: float | None = None,
             metrics: dict | None = None, force: bool = False) -> bool:
        """``metrics``: {"val_loss": .., "val_wer": ..} measured at this step (``val_loss`` is
        shorthand for the first)."""
        args = {"state": ocp.args.StandardSave(state)}
        if self.with_data:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        metrics = {k: float(v) for k, v in {VAL_METRIC: val_loss, **(metrics or {})}.items() if v is not None}
        metrics = metrics or None
        try:
            return self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=force)
        except Exception as e:  # noqa: BLE001  (a previous asynchronous save's failure surfaces here)
            raise self._write_failure(e) from e

    def restore(self, step: int | None, abstract_state: Any, data_iter: Any = None) -> Any:
        """The state at ``step`` (default latest) placed per ``abstract_state``'s shardings; the
        data iterator (if given) is moved to the saved position in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if self.with_data and data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**args))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{self.directory}/{step}: cannot restore ({e})",
                                  hint="was it written by another model or optimiser config?") from None
        return out["state"]

    def _seal(self, step: int) -> None:
        step_dir = self.directory / str(step)
        if jax.process_index() == 0 and step_dir.is_dir():  # not there if the save failed
            seal_step(step_dir)

    def restore_latest(self, abstract_state: Any, data_iter: Any = None,
                       report: Callable[[str], None] = print) -> tuple[int, Any] | None:
        """(step, state) from the newest intact step, or None if there is no checkpoint.

        A step whose files do not match its integrity record (or, in a single-process run,
        that Orbax cannot read although it has no record) is reported, renamed
        ``<step>.corrupt`` and skipped. A step whose files are intact but do not fit
        ``abstract_state`` (another model or optimiser config) raises CheckpointError."""
        skipped = []
        while (step := self._intact_latest(report, skipped)) is not None:
            sealed = (self.directory / str(step) / INTEGRITY_FILE).exists()
            try:
                return step, self.restore(step, abstract_state, data_iter)
            except Exception as e:  # noqa: BLE001  (tensorstore raises bare Exceptions)
                if sealed or jax.process_count() > 1:  # intact files: the config does not match
                    if isinstance(e, CheckpointError):
                        raise
                    raise CheckpointError(f"{self.directory}/{step}: cannot restore ({_first_line(e)})",
                                          hint="was it written by another model or optimiser config?") from None
                self._set_aside(step, f"Orbax cannot read it ({_first_line(e)})", report, skipped)
        if skipped:
            raise CheckpointError(f"{self.directory}: no intact checkpoint left (skipped steps {skipped})",
                                  hint=f"the damaged steps are kept as <step>{CORRUPT_SUFFIX}; run again to "
                                       "start from step 0, or restore a copy of the checkpoints")
        return None

    def _intact_latest(self, report, skipped: list) -> int | None:
        """The newest step that passes ``verify_step`` (process 0 checks, the others follow)."""
        while True:
            step = self.latest_step()
            reason = None
            if step is not None and jax.process_index() == 0:
                reason = verify_step(self.directory / str(step))
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                bad = multihost_utils.broadcast_one_to_all(np.int32(reason is not None))
                reason = reason or ("process 0 found it damaged" if int(bad) else None)
            if step is None or reason is None:
                return step
            self._set_aside(step, reason, report, skipped)

    def _set_aside(self, step: int, reason: str, report, skipped: list) -> None:
        src = self.directory / str(step)
        if jax.process_index() == 0:
            dst = src.with_name(f"{step}{CORRUPT_SUFFIX}")
            n = 1
            while dst.exists():
                dst, n = src.with_name(f"{step}{CORRUPT_SUFFIX}{n}"), n + 1
            src.rename(dst)
            report(f"checkpoint step {step} is damaged ({reason}): skipped, kept as {dst}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
        self.manager.reload()
        skipped.append(step)

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_failure(e) from e

    def _write_failure(self, e: Exception) -> Exception:
        """A save the disk refused (full, quota, size limit, read-only) as one clear error that
        names the last complete step (the failed one is only an Orbax temporary, removed at the
        next start); any other failure unchanged."""
        found = _DISK_FULL.search(str(e))
        if not found and not (isinstance(e, OSError) and e.errno in WRITE_ERRNOS):
            return e
        try:
            self.manager.reload()
            last = self.manager.latest_step()
        except Exception:  # noqa: BLE001
            last = None
        kept = f"the last complete step, {last}, is kept" if last is not None else "no step had been saved yet"
        return OutputError(f"{self.directory}: cannot write a checkpoint ({found.group(0) if found else e}); {kept}",
                           hint="free some space (or set checkpoint.dir to another disk) and run again: training "
                                "resumes from the last complete step")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        self.uninstall_signal_handlers()

    # ------------------------------------------------------------------ preemption
    def install_sigterm_handler(self) -> None:
        """SIGTERM, or a first Ctrl-C (SIGINT) -> ``preempted(step)`` becomes true; the loop saves
        the step it is on and exits cleanly. A second Ctrl-C stops at once (KeyboardInterrupt:
        the checkpoints stay as they are, the save in flight is an Orbax temporary)."""
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return  # multi-host: JAX's preemption service + Orbax's sync point handle it

        def on_term(signum, frame):
            self._preempted.set()

        def on_int(signum, frame):
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            self._preempted.set()
            # os.write: safe whatever the main thread was printing when the signal came
            os.write(2, b"\nCtrl-C: saving the current step, then exiting (Ctrl-C again to stop at once, "
                        b"losing the steps since the last checkpoint)\n")

        self._previous_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a run started with Ctrl-C ignored keeps that
            self._previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)

    def uninstall_signal_handlers(self) -> None:
        """The handlers from before ``install_sigterm_handler`` (the loop is over: a Ctrl-C now
        stops at once; the process may outlive the run: tests, notebooks)."""
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers = {}

    def preempted(self, step: int) -> bool:
        if jax.process_count() > 1:
            return self.manager.reached_preemption(step)
        return self._preempted.is_set()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:300] if text else type(e).__name__)


def _registry(handlers: dict) -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    reg = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name, h in handlers.items():
        if name == "state":
            reg.add(name, ocp.args.StandardSave, h)
            reg.add(name, ocp.args.StandardRestore, h)
        else:
            reg.add(name, grain.checkpoint.CheckpointSave, h)
            reg.add(name, grain.checkpoint.CheckpointRestore, h)
    return reg

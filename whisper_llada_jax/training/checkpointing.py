"""Orbax checkpoints of the whole training position: state (params, optimiser, step, RNG) plus
the Grain data iterator, so a restart continues exactly where the run stopped.

- Saves are asynchronous; Orbax writes into a temporary directory and renames it only once
  every process has finished, so a crash mid-save never leaves a half-written latest step.
- Retention: the last ``max_to_keep`` steps, plus the best by ``checkpoint.best_metric``
  (validation loss or WER, recorded with each step that was evaluated).
- Restoring takes an abstract state whose leaves carry the *new* shardings, so a checkpoint
  written on one mesh restores onto another (8 devices -> 4, a different fsdp/tensor split).
- Preemption: SIGTERM sets a flag that the train loop checks (single process); with several
  processes Orbax's preemption sync point makes every host save the same step.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from whisper_llada_jax.errors import CheckpointError
from whisper_llada_jax.training.config import CheckpointConfig

VAL_METRIC = "val_loss"
METRICS = ("val_loss", "val_wer")  # both lower-is-better


class Checkpointer:
    """One run's checkpoint directory: ``<dir>/<step>/{state,data}``.

    ``read_only``: for reading a run that may still be training (``export --checkpoint``):
    nothing is created, cleaned up or deleted.
    """

    def __init__(self, directory: str | Path, cfg: CheckpointConfig, *, with_data: bool = True,
                 read_only: bool = False):
        self.directory = Path(directory).absolute()
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
        self.manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_registry(handlers))
        self._preempted = threading.Event()

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
        return self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=force)

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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # ------------------------------------------------------------------ preemption
    def install_sigterm_handler(self) -> None:
        """SIGTERM -> ``preempted(step)`` becomes true; the loop saves and exits cleanly."""
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return  # multi-host: JAX's preemption service + Orbax's sync point handle it

        def handler(signum, frame):
            self._preempted.set()

        signal.signal(signal.SIGTERM, handler)

    def preempted(self, step: int) -> bool:
        if jax.process_count() > 1:
            return self.manager.reached_preemption(step)
        return self._preempted.is_set()


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

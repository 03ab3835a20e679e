"""JAX profiler traces of a few train steps or of an evaluation.

The trace (``<dir>/plugins/profile/<run>/<host>.xplane.pb`` and ``perfetto_trace.json.gz``) opens
in TensorBoard's profile tab (``tensorboard --logdir DIR``, with ``tensorboard-plugin-profile``)
or at ui.perfetto.dev. Every process writes its own trace (one per host), named by the host.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import jax

from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.training.config import check_steps


def parse_steps(spec: str) -> tuple[int, int]:
    """``"10:15"`` -> (10, 15): trace the steps after step 10 up to and including step 15."""
    try:
        start, stop = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"--profile-steps {spec!r}: expected START:STOP, e.g. 10:15") from None
    return check_steps((start, stop), "--profile-steps")


def start(out_dir: str | Path) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # perfetto_trace.json.gz beside the xplane.pb: opens at ui.perfetto.dev without TensorBoard
    jax.profiler.start_trace(str(out_dir), create_perfetto_trace=True)


class StepProfiler:
    """Starts a trace when the loop has done ``start`` steps and stops it after ``stop``.

    ``after_step(step, state)`` is called with the step just dispatched; at the stop step it
    waits for ``state`` so the trace holds the device work of every traced step.
    """

    def __init__(self, steps: Sequence[int], out_dir: str | Path, print_fn=print):
        self.start, self.stop = check_steps(steps) if steps else (-1, -1)
        self.out_dir = Path(out_dir)
        self.print = print_fn
        self.active = False
        self.done = False

    @property
    def enabled(self) -> bool:
        return self.stop > 0

    def before_step(self, step: int) -> None:
        """``step``: updates done so far (the next one is step + 1)."""
        if self.enabled and self.start <= step < self.stop and not (self.active or self.done):
            # (a resumed run past START traces from where it resumed)
            start(self.out_dir)
            self.active = True

    def after_step(self, step: int, state) -> None:
        if self.active and step >= self.stop:
            self.finish(state)

    def finish(self, state=None) -> None:
        if not self.active:
            return
        if state is not None:
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.active, self.done = False, True
        if jax.process_index() == 0:
            self.print(f"profiler trace of steps up to {self.stop} in {self.out_dir} "
                       f"(tensorboard --logdir {self.out_dir}, or ui.perfetto.dev)")


@contextlib.contextmanager
def trace(out_dir: str | Path | None) -> Iterator[None]:
    """A profiler trace of the block into ``out_dir`` (nothing when None)."""
    if out_dir is None:
        yield
        return
    start(out_dir)
    try:
        yield
    finally:
        jax.profiler.stop_trace()

"""Writes one benchmark's results into its own section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` so
several benchmarks can update the page independently.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import time
from pathlib import Path

import jax

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every number here was printed by a script in `benchmarks/`; each section says the command,
the machine and the date. Speeds are ratios against a baseline measured in the same run on the
same machine.
"""


def machine() -> str:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return f"{platform.machine()} {platform.processor() or ''} ({jax.device_count()} x {kind}), jax {jax.__version__}".strip()


def write_section(name: str, title: str, body: str, command: str) -> None:
    stamp = datetime.date.today().isoformat()
    block = (f"<!-- BEGIN {name} -->\n## {title}\n\n`{command}` on {machine()}, {stamp}.\n\n"
             f"{body.strip()}\n<!-- END {name} -->")
    text = DOC.read_text() if DOC.exists() else HEADER
    pat = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


# ----------------------------------------------------------------------------- trustworthy timing
def runnable_jobs() -> int:
    """Runnable scheduling entities right now (the 4th field of /proc/loadavg, minus this read)."""
    try:
        return max(0, int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return -1


class LoadMonitor:
    """Samples the machine's load while a benchmark runs; ``clean`` is False when at any sample
    the 1-minute load average or the runnable jobs exceeded the core count (other jobs shared
    the CPU, so times and ratios are not publishable)."""

    def __init__(self):
        self.cores = os.cpu_count() or 1
        self.samples: list[tuple[float, int]] = []
        self.sample()

    def sample(self) -> None:
        self.samples.append((os.getloadavg()[0], runnable_jobs()))

    @property
    def max_load(self) -> float:
        return max(s[0] for s in self.samples)

    @property
    def max_runnable(self) -> int:
        return max(s[1] for s in self.samples)

    @property
    def clean(self) -> bool:
        return self.max_load <= self.cores and self.max_runnable <= self.cores

    def summary(self) -> str:
        loads = [s[0] for s in self.samples]
        verdict = ("clean" if self.clean else
                   f"NOT CLEAN: more load than the {self.cores} cores, times and ratios are invalid")
        return (f"{self.cores} cores; 1-min load average {min(loads):.1f}-{max(loads):.1f} over "
                f"{len(loads)} samples, up to {self.max_runnable} runnable jobs: {verdict}")


def median_spread(values) -> tuple[float, float, float]:
    """(median, min, max) of repeated measurements."""
    v = sorted(values)
    n = len(v)
    med = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
    return med, v[0], v[-1]


def alternate(sides: dict, rounds: int, monitor: LoadMonitor | None = None) -> dict[str, list[float]]:
    """Times every side once per round, in alternating order (forward, then backward), so slow
    drifts of the machine hit every side alike. ``sides`` maps a name to a no-argument callable
    (already warmed up); returns the seconds of every round per side."""
    names = list(sides)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            sides[n]()
            times[n].append(time.perf_counter() - t)
        if monitor is not None:
            monitor.sample()
    return times

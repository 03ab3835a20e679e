"""benchmarks/_report.py: medians with their range, alternated sides, and a load monitor that
flags a run with more load than cores."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _report  # noqa: E402


def test_median_spread():
    assert _report.median_spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert _report.median_spread([4.0, 1.0, 2.0, 10.0]) == (3.0, 1.0, 10.0)


def test_alternate_reverses_the_order_every_other_round():
    calls = []
    sides = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = _report.alternate(sides, 3)
    assert calls == list("abccbaabc")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_load_monitor_flags_more_load_than_cores(monkeypatch):
    monkeypatch.setattr(_report.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_report, "runnable_jobs", lambda: 1)
    loads = iter([1.5, 1.9, 3.5])
    monkeypatch.setattr(_report.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    mon = _report.LoadMonitor()
    mon.sample()
    assert mon.clean and "clean" in mon.summary()
    mon.sample()
    assert not mon.clean and "NOT CLEAN" in mon.summary() and mon.max_load == 3.5
    monkeypatch.setattr(_report, "runnable_jobs", lambda: 5)
    quiet = iter([0.5, 0.5])
    monkeypatch.setattr(_report.os, "getloadavg", lambda: (next(quiet), 0.0, 0.0))
    mon = _report.LoadMonitor()
    mon.sample()
    assert not mon.clean  # a quiet average but more runnable jobs than cores right now

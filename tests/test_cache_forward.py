"""benchmarks/cache_forward.py runs end to end at a tiny size and times a later forward."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import cache_forward  # noqa: E402


def test_tiny_run(tmp_path, capsys):
    out = cache_forward.main(["--tiny", "--batch", "2", "--rounds", "1", "--save", str(tmp_path / "t.npy")])
    # threshold 1.0 on random weights: one slot per forward (fewer once an eos fills the rest)
    assert 1 < out["forwards"] <= 16
    # a later forward's time is a difference of two timings: under load it can come out negative
    assert out["first_s"] > 0 and np.isfinite(out["later_s"])
    assert np.load(tmp_path / "t.npy").shape == (2, 16)
    assert "later forward" in capsys.readouterr().out

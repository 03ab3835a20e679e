"""benchmarks/gpu_decode_paper.py runs end to end at a tiny size on CPU (the GPU run is one call)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import gpu_decode_paper  # noqa: E402


def test_tiny_dry_run_measures_every_row(tmp_path, capsys):
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps([{"exact_nfe": 5, "fast_nfe": 2, "length": 6},
                                  {"exact_nfe": 7, "fast_nfe": 3, "length": 9}]))
    rows = gpu_decode_paper.main(["--tiny", "--batches", "1,2", "--repeats", "1", "--counts", str(counts),
                                  "--query-slots", "4"])
    out = capsys.readouterr().out
    assert "| decoder | batch |" in out and "scanned" in out
    got = {(name.split(" ")[0], b): (n, t) for name, b, n, t in rows}
    assert set(got) == {(k, b) for k in ("exact", "length", "autoregressive") for b in (1, 2)}
    # batch 2 runs in lock step: its longest row's counts
    assert [got[(k, 2)][0] for k in ("exact", "length", "autoregressive")] == [7, 3, 10]
    assert [got[(k, 1)][0] for k in ("exact", "length", "autoregressive")] == [5, 2, 7]
    assert all(t > 0 for _, t in got.values())
    # batch 1 also reports the mean over both utterances
    assert "mean over all 2 utterances" in out and "| length prior | 2.50 |" in out


def test_second_call_skips_the_probe(tmp_path, capsys):
    rows = gpu_decode_paper.main(["--tiny", "--batches", "2", "--repeats", "1", "--no-probe"])
    out = capsys.readouterr().out
    assert "scanned" not in out and [b for _, b, _, _ in rows] == [2, 2, 2]


def test_length_prior_on_a_smaller_canvas(tmp_path, capsys):
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps([{"exact_nfe": 5, "fast_nfe": 2, "length": 6}]))
    rows = gpu_decode_paper.main(["--tiny", "--batches", "2", "--repeats", "1", "--no-probe", "--counts", str(counts),
                                  "--lp-canvas", "8"])
    got = {name: (b, n, t) for name, b, n, t in rows}
    assert set(got) == {"exact diffusion (steps = measured forwards)", "length prior, 4 query slots",
                        "autoregressive baseline (greedy, K/V cache)", "length prior, 4 query slots, 8-slot canvas"}
    assert got["length prior, 4 query slots, 8-slot canvas"][:2] == (2, 2) and all(t > 0 for _, _, t in got.values())
    assert "| length prior, 4 query slots, 8-slot canvas | 2 | 2 |" in capsys.readouterr().out
    for canvas in ("6", "33"):  # no room for the longest transcript's eos; more than the canvas
        with pytest.raises(SystemExit):
            gpu_decode_paper.main(["--tiny", "--counts", str(counts), "--lp-canvas", canvas])
        assert "--lp-canvas" in capsys.readouterr().err

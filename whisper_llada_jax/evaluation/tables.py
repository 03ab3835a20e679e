"""Markdown tables of evaluation results: one row per decode config, and the paper's grids."""

from __future__ import annotations

from typing import Sequence


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def results_table(rows: Sequence[dict]) -> str:
    """One row per decode config: WER, S/D/I, RTF, utterances/s, mean forward passes, and for
    deliberation the first-pass WER beside the deliberated one."""
    delib = any(r.get("first_pass_wer") is not None for r in rows)
    head = ["config", "WER %", "S", "D", "I", "N", "RTF", "utt/s", "mean NFE"]
    if delib:
        head[1:1] = ["first-pass WER %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        w = r["wer"]
        cells = [f"`{r['name']}`", _pct(w["wer"]), str(w["substitutions"]), str(w["deletions"]),
                 str(w["insertions"]), str(w["ref_words"]), f"{r['rtf']:.4f}", f"{r['utterances_per_s']:.2f}",
                 f"{r['mean_nfe']:.1f}"]
        if delib:
            fp = r.get("first_pass_wer")
            cells[1:1] = [_pct(fp["wer"]) if fp else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_table(rows: Sequence[dict], row_key: str, col_key: str, row_title: str, col_title: str) -> str:
    """WER % laid out as the paper's tables: ``row_key`` values down, ``col_key`` across.

    Each result row carries ``grid: {row_key: value, col_key: value}``."""
    cells = {(r["grid"][row_key], r["grid"][col_key]): r for r in rows if "grid" in r}
    rvals = list(dict.fromkeys(k[0] for k in cells))
    cvals = list(dict.fromkeys(k[1] for k in cells))
    lines = [f"| {row_title} \\ {col_title} | " + " | ".join(str(c) for c in cvals) + " |",
             "|" + "---|" * (len(cvals) + 1)]
    for rv in rvals:
        vals = []
        for cv in cvals:
            r = cells.get((rv, cv))
            vals.append("-" if r is None else f"{_pct(r['wer']['wer'])} ({r['mean_nfe']:.0f} NFE)")
        lines.append(f"| {rv} | " + " | ".join(vals) + " |")
    return "\n".join(lines)

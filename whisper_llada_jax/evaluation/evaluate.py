"""Runs decode configurations over a dataset and scores them: results.json, hypotheses, tables.

Each config decodes every utterance of the eval split once (``data.pipeline`` eval iterator,
batch shape fixed by the config's ``batch_size`` and ``gen_len``) through
``inference.driver.run_decode``. Timing excludes compilation: the first batch is decoded once
before the clock starts and its compile time is reported on its own. RTF = decoding seconds /
audio seconds; ``mean_nfe`` counts LLM forward passes per utterance.

Grids expand one base config into the paper's table layouts:
``steps_x_block`` (steps x block length: diffusion when the block is the whole canvas,
semi-AR otherwise), ``masking_x_ratio`` (deliberation: masking type x mask ratio) and
``chunks`` (semi-AR deliberation: number of chunks).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.data.config import DataConfig
from whisper_llada_jax.data.pipeline import SKIP_REASONS, build_eval_iterator
from whisper_llada_jax.data.sources import RecordSource, parse_source
from whisper_llada_jax.decoding.config import DecodeConfig, check_fits_model, load_decode_config, validate
from whisper_llada_jax.errors import ConfigError, DataError
from whisper_llada_jax.evaluation.tables import grid_table, results_table
from whisper_llada_jax.evaluation.wer import corpus_wer
from whisper_llada_jax.outputs import atomic_file, write_text

GRIDS = {
    # name: (row field, col field, row title, col title)
    "steps_x_block": ("steps", "block_length", "steps", "block length"),
    "masking_x_ratio": ("masking", "mask_ratio", "masking", "mask ratio"),
    "chunks": ("num_chunks", "strategy", "chunks", "deliberation"),
}
MASK_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)
CHUNKS = (1, 2, 4, 8)


def _split_top_level(text: str) -> list[str]:
    """Splits ``a=1,b=[2,3]`` at commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def parse_decode_spec(spec: str, base: DecodeConfig | None = None) -> tuple[str, DecodeConfig]:
    """``(name, config)`` from a YAML path, a name under configs/decode/, inline overrides
    ``decoder=semi_ar,steps=64,block_length=32`` (of ``base``, e.g. a MODEL_DIR's defaults;
    DecodeConfig's when None), or ``NAME:overrides``."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty --decode config", hint="a YAML path, a name under configs/decode/, or k=v,k=v")
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path.stem, load_decode_config(path)
    if "=" not in spec:
        return spec, load_decode_config(spec)
    head, sep, tail = spec.partition(":")
    if sep and "=" not in head:
        return spec, load_decode_config(head, _split_top_level(tail))
    start = None if base is None else config_lib.to_dict(base)
    return spec, load_decode_config(start, _split_top_level(spec))


def expand_grid(grid: str, base: DecodeConfig) -> list[tuple[str, DecodeConfig, dict]]:
    """The paper's layouts as (name, config, grid cell) triples around ``base``."""
    if grid not in GRIDS:
        raise ConfigError(f"unknown grid {grid!r}", hint=f"choose one of {sorted(GRIDS)}")
    out = []
    g = base.gen_len
    if grid == "steps_x_block":
        for steps in (g, g // 2, g // 4):
            for block in (g, g // 2, g // 4):
                if steps < 1 or block < 1 or steps % (g // block):
                    continue
                cfg = dataclasses.replace(base, decoder="diffusion" if block == g else "semi_ar",
                                          strategy="none", steps=steps, block_length=block)
                out.append((f"steps={steps},block_length={block}", cfg, {"steps": steps, "block_length": block}))
    elif grid == "masking_x_ratio":
        strategy = base.strategy if base.strategy != "none" else "diffusion"
        for masking in ("random", "low_confidence"):
            for ratio in MASK_RATIOS:
                cfg = dataclasses.replace(base, strategy=strategy, masking=masking, mask_ratio=ratio)
                out.append((f"{strategy}:masking={masking},mask_ratio={ratio}", cfg,
                            {"masking": masking, "mask_ratio": ratio}))
    else:
        for chunks in CHUNKS:
            if chunks > base.steps:
                continue
            cfg = dataclasses.replace(base, strategy="semi_ar", num_chunks=chunks)
            out.append((f"semi_ar:num_chunks={chunks}", cfg, {"num_chunks": chunks, "strategy": "semi_ar"}))
    for _, cfg, _ in out:
        validate(cfg)
    return out


def check_unique_ids(records, where) -> None:
    """Refuses two utterances with one id (a list of records, or a source holding
    ``records``): their hypotheses and scores could not be told apart."""
    records = getattr(records, "records", records)
    if not isinstance(records, list):
        return  # tfds / synthetic: ids checked while decoding (decode_dataset)
    seen: dict[str, object] = {}
    for r in records:
        if r["id"] in seen:
            raise DataError(f"{where}: duplicate id {r['id']!r} ({_audio_name(seen[r['id']])} and "
                            f"{_audio_name(r.get('audio'))})", hint="give every utterance its own id")
        seen[r["id"]] = r.get("audio")


def check_first_pass_coverage(records, first_pass: dict[str, str] | None) -> None:
    """Before any decoding: every utterance to deliberate has a first pass (from ``--first-pass``
    or the manifest), so a gap is one error up front, not a failure after some batches. Sources
    without a record list (tfds) are checked batch by batch while decoding."""
    records = getattr(records, "records", records)
    if not isinstance(records, list):
        return
    missing = [r["id"] for r in records if (first_pass is None or r["id"] not in first_pass)
               and r.get("first_pass") is None]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"no first-pass transcript for {len(missing)} of {len(records)} utterance(s): {shown}",
                        hint="give --first-pass FILE with their ids, or first_pass in the manifest")


def _audio_name(audio) -> str:
    return audio if isinstance(audio, str) else "in-memory audio"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "config"


def window_seconds(model_cfg) -> float:
    """Seconds of audio the model reads at once (``whisper.input_frames``), at most 30."""
    return min(30.0, model_cfg.whisper.input_frames * 160 / 16000)


def skip_summary(counts: dict) -> str:
    """``"scored 8 of 10 utterances; skipped: unreadable 2"`` (or all of them)."""
    total = sum(counts.get(r, 0) for r in SKIP_REASONS)
    seen = counts.get("seen", 0)
    if not total:
        return f"scored all {seen} utterances"
    reasons = ", ".join(f"{r} {counts[r]}" for r in SKIP_REASONS if counts.get(r))
    return f"scored {seen - total} of {seen} utterances; skipped: {reasons} (see results.json)"


def doc_data(data, source) -> str:
    return data if isinstance(data, str) else repr(source)


def decode_dataset(loaded: Any, source: RecordSource, cfg: DecodeConfig, *, first_pass: dict[str, str] | None = None,
                   seed: int = 0, num_workers: int = 0, strict: bool = False, share: tuple[int, int] = (0, 1)) -> dict:
    """Decodes every utterance of ``source`` once with ``cfg``; hypotheses, timings, counts.

    ``share=(i, n)``: decode only batches i, i + n, ... (process i of n; rows carry their batch
    number in ``batch`` for ``merge_shares``). Every process reads every batch (audio and
    log-mel: cheap next to decoding), so the batches, skips included, are those of one process,
    and so are the tokens."""
    import jax

    from whisper_llada_jax.inference.driver import run_decode

    check_fits_model(validate(cfg), loaded.config)
    deliberating = cfg.strategy != "none"
    # batches are padded to a fixed shape: never more rows than utterances
    rows_per_batch = max(1, min(cfg.batch_size, len(source)))
    # A clip longer than the model's window is skipped (too_long), not cut: its whole reference
    # scored against the part the model heard would count the rest as deletions.
    dcfg = DataConfig(eval_source="", batch_size=rows_per_batch, max_response_len=cfg.gen_len,
                      num_workers=num_workers, strict=strict, max_seconds=window_seconds(loaded.config))
    it = build_eval_iterator(dcfg, loaded.config, loaded.tokenizer, source=source)
    me, hosts = share
    first_decode = True
    key = jax.random.key(seed)
    rows, decode_s, audio_s, compile_s = [], 0.0, 0.0, 0.0
    seen: set[str] = set()
    for index, batch in enumerate(it):
        if index % hosts != me:
            continue
        valid = batch["valid"].copy()
        fp = None
        if deliberating:
            given = batch.get("first_pass")
            fp = []
            for i, (uid, ok) in enumerate(zip(batch["ids"], valid)):
                if first_pass is not None and uid in first_pass:
                    fp.append(first_pass[uid])
                elif given is not None or not ok:
                    fp.append(given[i] if given is not None else "")
                else:
                    raise DataError(f"no first-pass transcript for utterance {uid!r}",
                                    hint="give --first-pass FILE or first_pass in the manifest")
            batch = {**batch, "first_pass": fp}
            # an empty first pass has nothing to deliberate: it stays empty, the row is skipped
            batch["valid"] = valid & np.array([bool(t.strip()) for t in fp])
        if not batch["valid"].any():
            out = [{"hypothesis": "", "tokens": [], "nfe": 0}] * len(valid)
        else:
            rng = jax.random.fold_in(key, index)
            if first_decode:  # compile outside the clock
                first_decode = False
                t0 = time.perf_counter()
                run_decode(loaded, batch, cfg, rng)
                compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = run_decode(loaded, batch, cfg, rng)
            decode_s += time.perf_counter() - t0
        for i, ok in enumerate(valid):
            if not ok:
                continue
            if batch["ids"][i] in seen:
                raise DataError(f"{source!r}: duplicate id {batch['ids'][i]!r}", hint="give every utterance its own id")
            seen.add(batch["ids"][i])
            live = bool(batch["valid"][i])
            row = {"id": batch["ids"][i], "reference": batch["text"][i], "batch": index,
                   "hypothesis": out[i]["hypothesis"] if live else "", "nfe": out[i]["nfe"] if live else 0}
            if fp is not None:
                row["first_pass"] = fp[i]
                if live and "first_pass_tokens" in out[i]:  # its length before the cut to the canvas
                    row["first_pass_tokens"] = out[i]["first_pass_tokens"]
            rows.append(row)
            audio_s += float(batch["audio_len"][i]) / 16000.0
    it.close()
    return {"rows": rows, "decode_s": decode_s, "audio_s": audio_s, "compile_s": compile_s, "counts": it.counts,
            "skipped": list(it.skipped)}


def report_skipped(counts: dict, skipped: list[dict], what: str = "evaluation") -> None:
    """One console line per skipped utterance (the reason, naming the file) and the totals,
    so that a clip left out of a WER is never left out silently."""
    for ex in skipped:
        print(f"skipped {ex['id']} ({ex['skip']}): {ex['message']}", file=sys.stderr)
    total = sum(counts.get(r, 0) for r in SKIP_REASONS)
    if total:
        listed = "" if total <= len(skipped) else f" (the first {len(skipped)} listed)"
        reasons = ", ".join(f"{r} {counts[r]}" for r in SKIP_REASONS if counts.get(r))
        print(f"{what}: skipped {total} of {counts.get('seen', total)} utterance(s){listed}: {reasons}; "
              "--strict makes them errors", file=sys.stderr)


def merge_shares(run: dict) -> dict | None:
    """Every process's ``decode_dataset`` result, merged on process 0 in input order (rows by
    batch number; seconds as the slowest process; counts and skips, the same on every
    process, from process 0); None on the others."""
    import jax

    from whisper_llada_jax.inference.placement import gather_to_process_0

    if jax.process_count() == 1:
        return run
    runs = gather_to_process_0(run)
    if runs is None:
        return None
    rows = sorted((r for one in runs for r in one["rows"]), key=lambda r: r["batch"])  # stable: in-batch order kept
    return {"rows": rows, "counts": runs[0]["counts"], "skipped": runs[0]["skipped"],
            "audio_s": sum(r["audio_s"] for r in runs), **{k: max(r[k] for r in runs) for k in ("decode_s", "compile_s")}}


def score(name: str, cfg: DecodeConfig, run: dict) -> dict:
    rows = run["rows"]
    refs = [r["reference"] for r in rows]
    res = {"name": name, "config": config_lib.to_dict(cfg), "utterances": len(rows),
           "wer": corpus_wer(refs, [r["hypothesis"] for r in rows]).to_dict(),
           "first_pass_wer": None,
           "rtf": run["decode_s"] / run["audio_s"] if run["audio_s"] else 0.0,
           "utterances_per_s": len(rows) / run["decode_s"] if run["decode_s"] else 0.0,
           "mean_nfe": float(np.mean([r["nfe"] for r in rows])) if rows else 0.0,
           "decode_s": run["decode_s"], "audio_s": run["audio_s"], "compile_s": run["compile_s"],
           "data": run["counts"]}
    if cfg.strategy != "none":
        res["first_pass_wer"] = corpus_wer(refs, [r.get("first_pass", "") for r in rows]).to_dict()
    return res


def evaluate(loaded: Any, data: str | RecordSource, configs: Sequence[tuple[str, DecodeConfig]], out_dir: str | Path,
             *, first_pass: dict[str, str] | None = None, grid: str | None = None, seed: int = 0,
             num_workers: int = 0, strict: bool = False, extra: dict | None = None, progress: bool = False,
             skipped_before: tuple[dict, list[dict]] | None = None) -> dict:
    """Decodes and scores each ``(name, config)``; writes ``results.json``, ``results.md`` and
    ``hypotheses/<name>.jsonl`` under ``out_dir``; returns the results dict. ``progress``
    shows a bar over the configs. ``skipped_before``: (counts, skipped clips) of an earlier stage
    over the same data (cascade's first pass), so that results.md and results.json count the
    clips it left out too."""
    import jax
    from tqdm import tqdm

    from whisper_llada_jax.inference.driver import report_cut_first_passes

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: the output path is a file, not a folder", hint="give a folder name")
    writer = jax.process_index() == 0  # every process decodes its share of the batches; process 0 writes
    if writer:
        (out_dir / "hypotheses").mkdir(parents=True, exist_ok=True)
    source = parse_source(data) if isinstance(data, str) else data
    check_unique_ids(source, data if isinstance(data, str) else repr(source))
    if any(cfg.strategy != "none" for _, cfg in configs):
        check_first_pass_coverage(source, first_pass)
    cells = {}
    if grid:
        expanded = []
        for _, base in configs:
            for name, cfg, cell in expand_grid(grid, base):
                expanded.append((name, cfg))
                cells[name] = cell
        configs = expanded
    results, cut_listed = [], set()
    skipped, counts = [], {}
    bar = tqdm(configs, desc="evaluation", unit="config", disable=not progress)
    for index, (name, cfg) in enumerate(bar):
        bar.set_postfix_str(name[:40])
        run = merge_shares(decode_dataset(loaded, source, cfg, first_pass=first_pass, seed=seed,
                                          num_workers=num_workers, strict=strict,
                                          share=(jax.process_index(), jax.process_count())))
        if run is None:
            continue
        if index == 0:  # every config sees the same utterances: report the skipped ones once
            report_skipped(run["counts"], run["skipped"])
            skipped = [{k: ex[k] for k in ("id", "skip", "message")} for ex in run["skipped"]]
            counts = run["counts"]
            if skipped_before is not None:
                before, listed = skipped_before
                counts = {**counts, "seen": before.get("seen", counts.get("seen", 0)),
                          **{r: counts.get(r, 0) + before.get(r, 0) for r in SKIP_REASONS}}
                skipped = list(listed) + skipped
            if not run["rows"]:  # a WER over nothing would read as 0 %
                raise DataError(f"{doc_data(data, source)}: no utterance could be decoded "
                                f"({skip_summary(counts)})", hint="fix the clips named above")
        for r in run["rows"]:
            r.pop("batch")
        if cfg.strategy != "none":  # first passes longer than the canvas were cut: say so, naming them
            report_cut_first_passes(run["rows"], cfg.gen_len, name, listed=cut_listed)
        res = score(name, cfg, run)
        res["hypotheses"] = f"hypotheses/{_safe(name)}.jsonl"
        if name in cells:
            res["grid"] = cells[name]
        with atomic_file(out_dir / res["hypotheses"]) as f:
            for r in run["rows"]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        results.append(res)
    if not writer:
        return {}
    doc = {"model": str(getattr(loaded, "path", "")), "data": data if isinstance(data, str) else repr(data),
           "grid": grid, "seed": seed, "results": results, "skipped": skipped if results else [], **(extra or {})}
    write_text(out_dir / "results.json", json.dumps(doc, indent=2) + "\n")
    summary = skip_summary(counts) if results else "no configs decoded"
    md = [f"# Evaluation\n\nmodel `{doc['model']}`, data `{doc['data']}`; {summary}\n", results_table(results)]
    if grid:
        row_key, col_key, rt, ct = GRIDS[grid]
        md += ["", f"## Grid: {grid} (WER %)", "", grid_table(results, row_key, col_key, rt, ct)]
    write_text(out_dir / "results.md", "\n".join(md) + "\n")
    return doc

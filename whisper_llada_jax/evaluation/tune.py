"""Per-model decode tuning: the fewest forward passes within a WER budget of the exact mode.

On a trained model the reveal schedule that a paper grid fixes (steps, block length) is far
from what the model needs: its first all-mask forward already gets most tokens right. ``tune``
decodes a dev set with the model's exact configuration, then with a small grid of fast
configurations (thresholds x block layouts, fewer fixed steps, the length prior), and keeps the
one with the fewest mean forward passes whose WER is within ``budget`` points of the exact
mode's (ties: lower WER, then fewer LLM tokens). The choice is written into the MODEL_DIR's
``decode.yaml`` atomically, other fields kept.

The search takes any ``decode_fn(cfg) -> Trial``, so it runs the same on a MODEL_DIR and a
dataset (``dataset_decoder``) and on a bare test model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import yaml

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.decoding.config import DecodeConfig, validate
from whisper_llada_jax.errors import CheckpointError, ConfigError, UserError
from whisper_llada_jax.evaluation.wer import corpus_wer
from whisper_llada_jax.outputs import write_text

# the fields a tuned choice sets in decode.yaml (everything else there is kept)
TUNED_FIELDS = ("decoder", "steps", "block_length", "threshold", "length_prior", "query_slots")


class Trial(NamedTuple):
    """One configuration decoded over the dev set."""

    references: list[str]
    hypotheses: list[str]
    nfe: np.ndarray  # (N,) forward passes per utterance
    llm_tokens: np.ndarray | None = None  # (N,) LLM query positions per utterance, when known


@dataclasses.dataclass
class Result:
    name: str
    cfg: DecodeConfig
    wer: float  # percent
    wer_change: float  # points against the exact mode
    nfe: float  # mean forward passes per utterance
    llm_tokens: float | None
    within_budget: bool


def candidates(base: DecodeConfig, thresholds: Sequence[float] = (0.9, 0.8, 0.7, 0.6, 0.5),
               query_slots: Sequence[int] = (4, 8)) -> list[tuple[str, DecodeConfig]]:
    """The search grid around ``base`` (the exact configuration): fewer fixed steps, threshold
    decoding over one block or semi-AR blocks of a half / quarter canvas, and the length prior."""
    g = base.gen_len
    out: list[tuple[str, DecodeConfig]] = []

    def add(name, **fields):
        cfg = dataclasses.replace(base, **fields)
        try:
            validate(cfg)
        except UserError:
            return  # e.g. a block length that does not divide gen_len: not a candidate
        if all(cfg != c for _, c in out) and cfg != base:
            out.append((name, cfg))

    for steps in sorted({max(base.num_blocks, s) for s in (g // 16, g // 8, g // 4, base.steps // 2)}):
        if steps < base.steps and steps % base.num_blocks == 0:
            add(f"steps={steps}", steps=steps, threshold=None)
    for t in thresholds:
        # one-block diffusion ignores block_length: the base's stays (a MODEL_DIR's semi-AR block)
        add(f"diffusion,threshold={t}", decoder="diffusion", steps=g, threshold=t)
        for blk in (g // 2, g // 4):
            if blk >= 1:
                add(f"semi_ar,block={blk},threshold={t}", decoder="semi_ar", block_length=blk, steps=g, threshold=t)
        for q in query_slots:
            add(f"length_prior,threshold={t},query_slots={q}", decoder="diffusion", steps=g,
                threshold=t, length_prior=True, query_slots=q, cache="none", length_buckets=())
    return out


def search(decode_fn: Callable[[DecodeConfig], Trial], base: DecodeConfig, budget: float,
           grid: Sequence[tuple[str, DecodeConfig]] | None = None,
           log: Callable[[str], None] = lambda s: None) -> tuple[Result, list[Result]]:
    """Decodes ``base`` and every candidate; returns (the choice, every result, exact first).
    The choice is ``base`` itself when no candidate is within ``budget`` with fewer forwards."""
    if budget < 0:
        raise UserError(f"--budget {budget} must be >= 0 (WER points above the exact mode)")

    def run(name, cfg, exact_wer):
        t = decode_fn(cfg)
        wer = 100.0 * corpus_wer(t.references, t.hypotheses).wer
        change = 0.0 if exact_wer is None else wer - exact_wer
        tok = None if t.llm_tokens is None else float(np.mean(t.llm_tokens))
        r = Result(name, cfg, wer, change, float(np.mean(t.nfe)), tok, change <= budget + 1e-9)
        log(f"{name:44s} WER {wer:6.2f} ({change:+.2f})  forwards/utt {r.nfe:6.2f}"
            + ("" if tok is None else f"  LLM tokens/utt {tok:8.1f}"))
        return r

    exact = run("exact", base, None)
    results = [exact] + [run(n, c, exact.wer) for n, c in (candidates(base) if grid is None else grid)]
    ok = [r for r in results if r.within_budget]
    best = min(ok, key=lambda r: (r.nfe, r.wer, r.llm_tokens if r.llm_tokens is not None else 0.0))
    return best, results


def dataset_decoder(loaded: Any, source: Any, *, seed: int = 0, num_workers: int = 0,
                    strict: bool = False) -> Callable[[DecodeConfig], Trial]:
    """``decode_fn`` over a data source with a loaded MODEL_DIR (evaluate's decoding loop)."""
    from whisper_llada_jax.evaluation.evaluate import decode_dataset, report_skipped

    reported = []

    def fn(cfg: DecodeConfig) -> Trial:
        run = decode_dataset(loaded, source, cfg, seed=seed, num_workers=num_workers, strict=strict)
        rows = run["rows"]
        if not reported:  # every trial reads the same clips: name the skipped ones once
            report_skipped(run["counts"], run["skipped"], "tune")
            reported.append(True)
        if not rows:
            raise UserError("the tuning data has no utterances", hint="check --data / --limit")
        return Trial([r["reference"] for r in rows], [r["hypothesis"] for r in rows],
                     np.array([r["nfe"] for r in rows], np.float64))
    return fn


def choice_fields(cfg: DecodeConfig) -> dict:
    """The tuned fields of ``cfg`` as decode.yaml values (no ``block_length`` for one-block
    diffusion, which ignores it: the file's semi-AR block is left as it is)."""
    d = config_lib.to_dict(cfg)
    return {k: d[k] for k in TUNED_FIELDS if not (k == "block_length" and cfg.decoder == "diffusion")}


def write_decode_choice(model_dir: str | Path, cfg: DecodeConfig, decode_file: str = "decode.yaml") -> Path:
    """Sets the tuned fields in ``MODEL_DIR/decode.yaml``, keeping every other field; written to
    a temporary file in the same folder and renamed over the old one (never half-written)."""
    folder = Path(model_dir)
    path = folder / decode_file
    old: dict = {}
    if path.exists():
        try:
            old = config_lib.read_yaml(path)  # duplicate keys, a folder, bad YAML: refused
        except ConfigError as e:
            raise CheckpointError(f"{e.message}: not a mapping of decode config fields",
                                  hint="fix or remove the file, then rerun tune") from None
    chosen = config_lib.to_dict(cfg)
    # the tuned fields, plus any field of the file the choice had to change (e.g. cache)
    new = {**old, **choice_fields(cfg), **{k: chosen[k] for k in old if k in chosen and old[k] != chosen[k]}}
    validate(config_lib.from_dict(DecodeConfig, dict(new), str(path)))
    return write_text(path, yaml.safe_dump(new, sort_keys=False))


def report(best: Result, results: list[Result], budget: float) -> str:
    """A Markdown table of every trial and the choice."""
    lines = ["| config | WER % | change | forwards / utt | LLM tokens / utt | within budget |",
             "|---|---|---|---|---|---|"]
    for r in results:
        tok = "-" if r.llm_tokens is None else f"{r.llm_tokens:.0f}"
        mark = " **(chosen)**" if r is best else ""
        lines.append(f"| {r.name}{mark} | {r.wer:.2f} | {r.wer_change:+.2f} | {r.nfe:.2f} | {tok} | "
                     f"{'yes' if r.within_budget else 'no'} |")
    exact = results[0]
    lines.append(f"\nchosen: {best.name}: {best.nfe:.2f} forwards / utt vs {exact.nfe:.2f} exact "
                 f"({exact.nfe / max(best.nfe, 1e-9):.1f}x fewer), WER {best.wer_change:+.2f} points "
                 f"(budget +{budget})")
    return "\n".join(lines)

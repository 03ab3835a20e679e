"""Shell blocks of the docs and their check markers (see tests/test_docs.py), shared with
tests/test_demo.py, which runs the ``demo`` blocks on the demo's MODEL_DIR."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "launch" / "README.md"]
BLOCK = re.compile(r"(?:<!--\s*check:\s*(?P<kind>run|parse|demo|ci)\b[^>]*-->\s*\n)?```(?:bash|sh)\n(?P<body>.*?)```", re.S)


def blocks():
    for page in PAGES:
        for m in BLOCK.finditer(page.read_text()):
            yield page, m.group("kind"), m.group("body")


def commands(body: str) -> list[str]:
    """Shell lines of a block, with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def cli_args(command: str) -> list[str] | None:
    """The arguments after ``whisper-llada`` in a command (with or without .venv/bin/)."""
    words = shlex.split(command, comments=True)
    for i, w in enumerate(words):
        if w.endswith("whisper-llada"):
            args = []
            for a in words[i + 1:]:
                if a in ("&&", "||", "|", ";"):
                    break
                args.append(a)
            return args
    return None

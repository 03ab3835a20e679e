"""Writes one benchmark's results into its own section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` so
several benchmarks can update the page independently.
"""

from __future__ import annotations

import datetime
import platform
import re
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

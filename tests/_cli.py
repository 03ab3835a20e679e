"""The CLI in a fresh process, as a user runs it: one CPU device and XLA's default optimisation.

The conftest's XLA_FLAGS (8 fake devices, LLVM optimisation off) are dropped: they suit the
many small programs the in-process tests compile, but halve the speed of a real model's
forwards (the Whisper tiny.en transcription: 62 s against 30 s here).
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(args: list[str], cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", "whisper_llada_jax.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)

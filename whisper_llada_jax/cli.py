"""``whisper-llada`` command line: one subcommand per module in ``whisper_llada_jax.commands``.

Each command module defines ``NAME``, ``HELP``, ``register(parser)`` (adds its arguments, with
examples in the epilog) and ``run(args) -> int``. User errors print one line plus a hint;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from whisper_llada_jax import commands
from whisper_llada_jax.errors import UserError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-llada",
        description="Whisper-LLaDA in JAX: audio-conditioned diffusion LLM for speech recognition.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP,
                           epilog=getattr(mod, "EXAMPLES", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks for errors")
        mod.register(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # a disk that refuses a write (full, quota, size limit, read-only) wherever it happens
        from whisper_llada_jax.outputs import WRITE_ERRNOS, output_error

        if getattr(args, "debug", False) or e.errno not in WRITE_ERRNOS:
            raise
        err = output_error(e.filename or "an output", e)
        print(f"error: {err.message}", file=sys.stderr)
        print(f"hint: {err.hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

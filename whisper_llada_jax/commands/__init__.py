"""CLI subcommands, discovered by ``whisper_llada_jax.cli``."""

from __future__ import annotations

import argparse


def seed_arg(text: str) -> int:
    """argparse type of ``--seed``: an integer JAX accepts as a PRNG seed (a 64-bit int), so a
    huge value is a usage error instead of an OverflowError deep in ``jax.random.key``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not -(2 ** 63) <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{value} does not fit a 64-bit seed")
    return value

"""CLI subcommands, discovered by ``whisper_llada_jax.cli``."""

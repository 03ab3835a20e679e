"""Whisper-LLaDA in JAX/Flax."""

"""One decode configuration for every decoder, deliberation strategy and fast mode.

Validated before anything compiles (``validate``), so a bad combination fails with one clear
line. ``evaluate`` grids and the CLI build these; YAML files under ``configs/decode/`` too.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from whisper_llada_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    # ---- what runs
    decoder: Literal["diffusion", "semi_ar", "autoregressive"] = "diffusion"
    # deliberation over a first pass: "none" decodes from an all-masked canvas
    strategy: Literal["none", "diffusion", "semi_ar"] = "none"
    # ---- reference semantics (SPEC section 8)
    gen_len: int = 128
    steps: int = 64
    block_length: int = 128  # semi_ar: 64 / 32
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    temperature: float = 0.0
    # ---- deliberation
    masking: Literal["random", "low_confidence"] = "low_confidence"
    mask_ratio: float = 0.3
    num_chunks: int = 4
    text_only: bool = False  # the paper's ablation: no audio span
    # ---- fast modes (each documented in docs/decoding.md with what it approximates)
    threshold: float | None = None  # (b) reveal every block token with p >= threshold
    cache: Literal["none", "prefix", "dual"] = "none"  # (a)
    length_buckets: tuple[int, ...] = ()  # (c) canvas sizes chosen from a length estimate
    edit_length: bool = False  # (d) deliberation may insert / delete tokens
    audio_span: Literal["full", "trimmed"] = "full"  # (e) keep only windows covering real audio
    audio_margin_windows: int = 1
    # ---- batching
    batch_size: int = 16
    max_new_tokens: int = 128  # autoregressive baseline


def load_decode_config(source=None, overrides=()) -> DecodeConfig:
    """From a YAML path / name under configs/decode/, a dict, or defaults, plus overrides."""
    return config_lib.load(DecodeConfig, source, overrides, kind="decode")

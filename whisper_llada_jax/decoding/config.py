"""One decode configuration for every decoder, deliberation strategy and fast mode.

Validated before anything compiles (``validate``), so a bad combination fails with one clear
line. ``evaluate`` grids and the CLI build these; YAML files under ``configs/decode/`` too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from whisper_llada_jax import config as config_lib
from whisper_llada_jax.errors import DecodeConfigError


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
    # ---- deliberation inputs (docs/decoding.md "Deliberation inputs"; defaults = the reference)
    deliberation_canvas: Literal["first_pass", "training"] = "first_pass"  # training: + eos tail to gen_len
    confidence_fill: Literal["pad", "mask"] = "pad"  # response filler of the confidence forward
    mask_threshold: float | None = None  # re-mask tokens with p < tau instead of mask_ratio
    first_pass_normalizer: Literal["none", "spoken_en"] = "none"  # text/first_pass.py
    unknown_words: Literal["keep", "mask"] = "keep"  # mask: one always-masked slot per <unk> word
    # ---- fast modes (each documented in docs/decoding.md with what it approximates)
    threshold: float | None = None  # (b) reveal every block token with p >= threshold
    cache: Literal["none", "prefix", "dual"] = "none"  # (a)
    length_buckets: tuple[int, ...] = ()  # (c) canvas sizes chosen from a length estimate
    edit_length: bool = False  # (d) deliberation may insert / delete tokens
    edit_insert_slots: int = 1  # (d) extra masked slots per masked first-pass token
    edit_tail_slots: int = 4  # (d) masked slots appended after the first pass
    audio_span: Literal["full", "trimmed"] = "full"  # (e) keep only windows covering real audio
    audio_margin_windows: int = 1
    # (f) length prior: one full forward estimates the length, then only masked slots are queried
    length_prior: bool = False
    query_slots: int = 8  # (f) query positions per forward after the first
    length_margin: int = 2  # (f) slots kept after the last non-eos argmax of the first forward
    # ---- batching
    batch_size: int = 16
    max_new_tokens: int = 128  # autoregressive baseline


    @property
    def block(self) -> int:
        """Block length actually used: the whole canvas for ``diffusion``."""
        return self.gen_len if self.decoder == "diffusion" else self.block_length

    @property
    def num_blocks(self) -> int:
        return self.gen_len // self.block


def _fail(field: str, message: str, hint: str) -> None:
    raise DecodeConfigError(f"decode config field {field}: {message}", hint=hint)


def validate(cfg: DecodeConfig) -> DecodeConfig:
    """Rejects impossible combinations with one clear line, before anything is traced."""
    if cfg.gen_len < 1:
        _fail("gen_len", f"{cfg.gen_len} must be positive", "the paper uses 128")
    if cfg.block_length < 1 or cfg.gen_len % cfg.block:
        _fail("block_length", f"{cfg.block_length} does not divide gen_len {cfg.gen_len}",
              "use a divisor of gen_len, e.g. 64 or 32 for gen_len 128")
    if cfg.steps < 1:
        _fail("steps", f"{cfg.steps} must be positive", "the paper uses 128, 64 or 32")
    if cfg.strategy == "none" and cfg.decoder != "autoregressive":
        if cfg.steps % cfg.num_blocks:
            _fail("steps", f"{cfg.steps} is not divisible by the {cfg.num_blocks} blocks "
                  f"(gen_len {cfg.gen_len} / block_length {cfg.block})",
                  f"use a multiple of {cfg.num_blocks}")
        if cfg.steps > cfg.gen_len:
            _fail("steps", f"{cfg.steps} exceeds gen_len {cfg.gen_len}",
                  "each step reveals at least one token; use steps <= gen_len")
    if not 0 <= cfg.temperature < math.inf:
        _fail("temperature", f"{cfg.temperature} must be >= 0 and finite", "0 is greedy")
    if not 0.0 <= cfg.mask_ratio <= 1.0:
        _fail("mask_ratio", f"{cfg.mask_ratio} is outside [0, 1]", "the paper uses 0.3")
    if cfg.num_chunks < 1:
        _fail("num_chunks", f"{cfg.num_chunks} must be positive", "the paper uses 4")
    if cfg.strategy == "semi_ar" and cfg.steps < cfg.num_chunks:
        _fail("steps", f"{cfg.steps} is fewer than num_chunks {cfg.num_chunks}",
              "semi_ar deliberation spends steps // num_chunks steps per chunk")
    if cfg.threshold is not None and not 0.0 < cfg.threshold <= 1.0:
        _fail("threshold", f"{cfg.threshold} is outside (0, 1]", "Fast-dLLM uses 0.9")
    if cfg.decoder == "autoregressive" and cfg.strategy != "none":
        _fail("strategy", f"{cfg.strategy} deliberation needs a diffusion model, not decoder=autoregressive",
              "use decoder: diffusion with a strategy, or strategy: none")
    if cfg.decoder == "autoregressive" and (cfg.threshold is not None or cfg.cache != "none" or cfg.length_buckets):
        _fail("decoder", "threshold / cache / length_buckets are diffusion fast modes",
              "the autoregressive baseline always uses its own K/V cache")
    if cfg.text_only and cfg.strategy == "none":
        _fail("text_only", "text-only decoding has nothing to transcribe", "text_only is for deliberation")
    if cfg.edit_length and cfg.strategy != "diffusion":
        _fail("edit_length", f"needs strategy diffusion, not {cfg.strategy}", "set strategy: diffusion")
    if cfg.mask_threshold is not None:
        if not 0.0 < cfg.mask_threshold < 1.0:
            _fail("mask_threshold", f"{cfg.mask_threshold} is outside (0, 1)", "e.g. 0.005, or null for mask_ratio")
        # (strategy none: a MODEL_DIR's decode.yaml may hold it for its deliberations)
        if cfg.strategy == "semi_ar" or cfg.masking != "low_confidence":
            _fail("mask_threshold", f"needs strategy diffusion with masking low_confidence, not "
                  f"{cfg.strategy} / {cfg.masking}", "the threshold reads the confidence pass's probabilities")
    if cfg.deliberation_canvas == "training" and (cfg.strategy == "semi_ar" or cfg.edit_length):
        _fail("deliberation_canvas", "training canvas needs strategy diffusion without edit_length",
              "use deliberation_canvas: first_pass for semi_ar or edit_length")
    if cfg.edit_insert_slots < 0 or cfg.edit_tail_slots < 0:
        _fail("edit_insert_slots", "slot counts must be >= 0", "the default is 1 and 4")
    if cfg.length_buckets:
        if cfg.strategy != "none":
            _fail("length_buckets", "applies to decoding from an all-masked canvas", "drop it for deliberation")
        for size in cfg.length_buckets:
            if size < 1 or size > cfg.gen_len or (cfg.decoder == "semi_ar" and size % cfg.block):
                _fail("length_buckets", f"bucket {size} must be in 1..gen_len"
                      + (f" and a multiple of block_length {cfg.block}" if cfg.decoder == "semi_ar" else ""),
                      f"e.g. [{cfg.gen_len // 4}, {cfg.gen_len // 2}]")
    if cfg.audio_margin_windows < 0:
        _fail("audio_margin_windows", f"{cfg.audio_margin_windows} is negative", "1 is the default")
    if cfg.length_prior:
        if cfg.decoder != "diffusion" or cfg.strategy != "none":
            _fail("length_prior", f"needs decoder diffusion and strategy none, not {cfg.decoder} / {cfg.strategy}",
                  "set decoder: diffusion (the length prior decodes one block of the estimated length)")
        if cfg.threshold is None:
            _fail("length_prior", "needs a threshold (it reveals by confidence, not by a fixed schedule)",
                  "set threshold, e.g. 0.7")
        if cfg.cache != "none" or cfg.length_buckets or cfg.remasking != "low_confidence":
            _fail("length_prior", "brings its own cache and length; not with cache / length_buckets / random remasking",
                  "set cache: none, length_buckets: [] and remasking: low_confidence")
    if cfg.query_slots < 1 or cfg.length_margin < 0:
        _fail("query_slots", f"query_slots {cfg.query_slots} must be >= 1 and length_margin {cfg.length_margin} >= 0",
              "the defaults are 8 and 2")
    if cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        _fail("batch_size", "batch_size and max_new_tokens must be positive", "e.g. 16 and 128")
    return cfg


def canvas_width(cfg: DecodeConfig) -> int:
    """Response positions the decoder allocates (the edit-length canvas grows by its slots)."""
    if cfg.decoder == "autoregressive":
        return cfg.max_new_tokens
    if cfg.edit_length:
        return cfg.gen_len + int(cfg.gen_len * cfg.mask_ratio) * cfg.edit_insert_slots + cfg.edit_tail_slots
    return cfg.gen_len


def check_fits_model(cfg: DecodeConfig, model_cfg) -> DecodeConfig:
    """Rejects a canvas that with the prompt and the audio exceeds the LLM's ``max_len``
    (a huge ``gen_len`` would otherwise try to allocate its attention matrix)."""
    prefix = len(model_cfg.tokens.prompt_ids) + model_cfg.audio_tokens
    width = canvas_width(cfg)
    if prefix + width > model_cfg.llm.max_len:
        field = "max_new_tokens" if cfg.decoder == "autoregressive" else "gen_len"
        _fail(field, f"a {width}-token canvas after the {prefix}-token prompt and audio exceeds the model's "
              f"llm.max_len {model_cfg.llm.max_len}", f"use {field} <= {max(model_cfg.llm.max_len - prefix, 0)}")
    return cfg


def load_decode_config(source=None, overrides=()) -> DecodeConfig:
    """From a YAML path / name under configs/decode/, a dict, or defaults, plus overrides; validated."""
    return validate(config_lib.load(DecodeConfig, source, overrides, kind="decode"))

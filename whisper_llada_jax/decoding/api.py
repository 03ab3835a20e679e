"""Python API of the decoders: one function per mode, a dispatcher, and file transcription.

Each mode is one jitted program per (config, shapes): encode the audio once, build the
``[prompt | audio]`` prefix, run the fused loop, and hand back tokens and forward-pass counts.
``DecodeConfig`` is validated before anything is traced.

    out = diffusion_decode(model, variables, {"features": feats}, cfg, rng)
    out = deliberate(model, variables, {"features": feats}, first_pass_ids, cfg, rng)
    out = autoregressive_decode(model, variables, {"features": feats}, cfg)

Driving these over batches of a dataset and over audio files (``run_decode``,
``transcribe_files``) is ``inference/driver.py``'s job.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from whisper_llada_jax.decoding import autoregressive, deliberation, diffusion, length_prior
from whisper_llada_jax.decoding.backbone import LOOP_COMPILER_OPTIONS, Backbone, Prefix, full_forward
from whisper_llada_jax.decoding.config import DecodeConfig, validate
from whisper_llada_jax.errors import DataError, DecodeConfigError


class DecodeOutput(NamedTuple):
    """``tokens (B, R)`` response canvases, ``length (B,)`` valid slots, ``nfe (B,)``, and
    ``llm_tokens (B,)`` the LLM query positions the row's forward passes processed (diffusion
    decoding only; None elsewhere): a machine-independent cost next to ``nfe``."""

    tokens: np.ndarray
    length: np.ndarray
    nfe: np.ndarray
    llm_tokens: np.ndarray | None = None


def _host(*xs) -> tuple[np.ndarray, ...]:
    """A program's outputs on the host, fetched together (one wait, not one per array: at batch
    1 on CPU a decode is a few milliseconds and each separate fetch is a measurable share).
    Outputs of a model placed on a mesh that spans several processes (validation WER during
    multi-host training: every process decodes the same batch) are split over all of them:
    gathered, which every process does in step."""
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in xs):
        from jax.experimental import multihost_utils

        return tuple(np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in xs)
    return tuple(np.asarray(x) for x in jax.device_get(xs))


# ----------------------------------------------------------------------------- conditioning
@dataclasses.dataclass(frozen=True)
class Conditioner:
    """How a program turns its ``inputs`` into the ``[prompt | audio]`` prefix.

    ``inputs`` is a ``Prefix`` (bare LLM: embeddings given) or a dict with ``features`` or
    ``encoder_out`` (composite: encoded once inside the program). ``audio_tokens`` keeps only
    the first audio vectors (trimmed span); ``text_only`` drops the audio altogether.
    """

    audio_tokens: int | None = None
    text_only: bool = False

    def __call__(self, bb: Backbone, variables: Any, inputs: Any) -> Prefix:
        if isinstance(inputs, Prefix):
            return inputs
        audio = None
        if not self.text_only:
            audio = bb.module.apply(variables, features=inputs.get("features"), encoder_out=inputs.get("encoder_out"),
                                    method="encode_audio")
            if self.audio_tokens is not None:
                audio = audio[:, :self.audio_tokens]
        b = next(iter(inputs.values())).shape[0]
        embeds = bb.module.apply(variables, audio, b, method="prefix_embeds")
        return Prefix(embeds, jnp.ones(embeds.shape[:2], bool))


def backbone_of(model: Any) -> Backbone:
    """The composite exposes ``llm_forward``; a bare ``LLaDA`` is driven directly."""
    return Backbone(model, composite=hasattr(model, "llm_forward"))


def _rows(inputs: Any) -> int:
    return (inputs.embeds if isinstance(inputs, Prefix) else next(iter(inputs.values()))).shape[0]


# ----------------------------------------------------------------------------- programs
@functools.partial(jax.jit, static_argnames=("bb", "cond", "plan", "gen_len", "buckets", "prior"),
                   compiler_options=LOOP_COMPILER_OPTIONS)
def _diffusion_program(variables, inputs, spb, rng, row_ids, live, *, bb, cond, plan, gen_len, buckets, prior=None):
    """``spb`` (steps per block) is traced: every step count shares one compiled program.
    Returns ``(canvas, nfe, llm_tokens)``."""
    prefix = cond(bb, variables, inputs)
    b = row_ids.shape[0]
    if prior is not None:
        return length_prior.decode(bb, variables, prefix, gen_len, rng, row_ids, live, prior)

    def run(size: int, extra):
        if plan.block >= gen_len:  # one block: the bucket is the block, steps scale with it
            p, steps = dataclasses.replace(plan, num_segments=1, block=size), jnp.maximum(1, -(-spb * size // gen_len))
        else:  # semi-AR: fewer blocks of the same length and steps
            p, steps = dataclasses.replace(plan, num_segments=size // plan.block), spb
        x = jnp.full((b, size), plan.mask_id, jnp.int32)
        out, nfe, toks = diffusion.denoise(bb, variables, prefix, x, jnp.full((b,), size, jnp.int32),
                                           jnp.full((b,), steps, jnp.int32), rng, row_ids, live, p, count_tokens=True)
        out = jnp.concatenate([out, jnp.full((b, gen_len - size), plan.eos_id, jnp.int32)], axis=1)
        return out, nfe + extra, toks + extra * (prefix.embeds.shape[1] + gen_len)

    if not buckets:
        return run(gen_len, 0)
    # Length-adaptive (fast mode c): one forward over the all-masked full canvas estimates each
    # row's length (first position whose argmax is eos, plus a margin); the batch takes the
    # smallest bucket that fits its longest row and lax.switch runs that bucket's loop. Every
    # bucket is compiled once, inside this one program.
    h, _ = full_forward(bb, variables, prefix, jnp.full((b, gen_len), plan.mask_id, jnp.int32),
                        jnp.ones((b, gen_len), bool), return_kv=False)
    is_eos = jnp.argmax(bb.head(variables, h), -1) == plan.eos_id
    est = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1), gen_len) + 1 + gen_len // 16
    need = jnp.where(live, est, 0).max()
    sizes = tuple(s for s in buckets if s < gen_len) + (gen_len,)
    idx = jnp.minimum(jnp.searchsorted(jnp.asarray(sizes), need, side="left"), len(sizes) - 1)
    return jax.lax.switch(idx, [functools.partial(run, s) for s in sizes], live.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("bb", "cond", "plan"),
                   compiler_options=LOOP_COMPILER_OPTIONS)
def _deliberation_program(variables, inputs, first, length, num_masked, steps, mask, rng, row_ids, live, *, bb,
                          cond, plan):
    prefix = cond(bb, variables, inputs)
    return deliberation.deliberate_tokens(bb, variables, prefix, first, length, num_masked, steps, rng, row_ids,
                                          live, plan, mask)


@functools.partial(jax.jit, static_argnames=("bb", "cond", "max_new", "eos_id"),
                   compiler_options=LOOP_COMPILER_OPTIONS)
def _autoregressive_program(variables, inputs, live, *, bb, cond, max_new, eos_id):
    prefix = cond(bb, variables, inputs)
    # Left-pad nothing: every prefix is full length, so the last slot is each row's last token.
    return autoregressive.greedy(bb, variables, prefix, max_new, eos_id, live)


# ----------------------------------------------------------------------------- one function per mode
def _ids_and_live(b: int, row_ids, live):
    # Host arrays: the program's call transfers them with its other arguments (a jnp.ones here
    # would be a device dispatch of its own, per call: a tenth of a millisecond at batch 1 on CPU).
    ids = np.arange(b, dtype=np.int32) if row_ids is None else np.asarray(row_ids, np.int32)
    lv = np.ones((b,), bool) if live is None else np.asarray(live, bool)
    return ids, lv


def _cond(cfg: DecodeConfig, audio_tokens: int | None) -> Conditioner:
    return Conditioner(audio_tokens=audio_tokens if cfg.audio_span == "trimmed" else None, text_only=cfg.text_only)


def diffusion_plans(cfg: DecodeConfig, tok: Any) -> tuple[diffusion.Plan, length_prior.LengthPriorPlan | None]:
    """The static plans of ``_diffusion_program`` for ``cfg`` (``tok``: the mask / eos ids)."""
    plan = diffusion.Plan(num_segments=cfg.num_blocks, segments="blocks", block=cfg.block,
                          block_window=cfg.cache == "dual", eos_rule=True,
                          threshold=cfg.threshold, remasking=cfg.remasking, temperature=float(cfg.temperature),
                          cache=cfg.cache, mask_id=tok.mask, eos_id=tok.eos)
    prior = None
    if cfg.length_prior:
        prior = length_prior.LengthPriorPlan(threshold=cfg.threshold, query_slots=cfg.query_slots,
                                             length_margin=cfg.length_margin, temperature=float(cfg.temperature),
                                             mask_id=tok.mask, eos_id=tok.eos)
    return plan, prior


def diffusion_decode(model: Any, variables: Any, inputs: Any, cfg: DecodeConfig, rng: jax.Array, *,
                     tokens: Any = None, row_ids=None, live=None, audio_tokens: int | None = None) -> DecodeOutput:
    """Diffusion (one block) or semi-AR decoding from an all-masked canvas of ``cfg.gen_len``.

    inputs: ``{"features": (B, mels, frames)}`` / ``{"encoder_out": ...}`` for the composite, or
    a ``Prefix`` for a bare LLM. ``tokens``: the model's ``TokenConfig`` (mask / eos ids).
    ``row_ids``: per-row ids for the RNG (default 0..B-1); ``live``: False for padding rows.
    """
    validate(cfg)
    b = _rows(inputs)
    plan, prior = diffusion_plans(cfg, tokens or _tokens_of(model))
    ids, lv = _ids_and_live(b, row_ids, live)
    spb = np.int32(cfg.steps // cfg.num_blocks)
    out, nfe, toks = _diffusion_program(variables, inputs, spb, rng, ids, lv, bb=backbone_of(model),
                                        cond=_cond(cfg, audio_tokens), plan=plan, gen_len=cfg.gen_len,
                                        buckets=tuple(sorted(cfg.length_buckets)), prior=prior)
    out, nfe, toks = _host(out, nfe, toks)
    return DecodeOutput(out, np.full((b,), cfg.gen_len, np.int32), nfe, toks)


def pad_first_pass(first_pass: list[list[int]], width: int, pad_id: int, where: list[str] | None = None):
    """``(B, width)`` ids right-padded with pad, and the lengths; rejects empty / too long rows."""
    out = np.full((len(first_pass), width), pad_id, np.int32)
    lens = np.zeros(len(first_pass), np.int32)
    for i, ids in enumerate(first_pass):
        name = where[i] if where else f"row {i}"
        if len(ids) == 0:
            raise DataError(f"first pass of {name} is empty", hint="deliberation needs a non-empty first-pass transcript")
        if len(ids) > width:
            raise DecodeConfigError(f"first pass of {name} has {len(ids)} tokens, more than gen_len {width}",
                                    hint="raise decode gen_len")
        out[i, :len(ids)] = ids
        lens[i] = len(ids)
    return out, lens


def deliberate(model: Any, variables: Any, inputs: Any, first_pass: list[list[int]], cfg: DecodeConfig,
               rng: jax.Array, *, tokens: Any = None, row_ids=None, live=None, mask=None,
               audio_tokens: int | None = None, names: list[str] | None = None) -> DecodeOutput:
    """Deliberation of first-pass token ids (``cfg.strategy`` diffusion / semi_ar).

    ``mask``: an optional injected ``(B, gen_len)`` choice of positions (tests, random masking).
    """
    validate(cfg)
    if cfg.strategy == "none":
        raise DecodeConfigError("decode config field strategy: deliberation needs diffusion or semi_ar",
                                hint="set strategy: diffusion")
    tok = tokens or _tokens_of(model)
    first, lens = pad_first_pass(first_pass, cfg.gen_len, tok.pad, names)
    num_masked = np.array([int(n * cfg.mask_ratio) for n in lens], np.int32)  # float64, as the reference
    width = cfg.gen_len
    if cfg.edit_length:
        # a threshold or forced unknown-word slots may mask more than the ratio: room for every slot
        most = cfg.gen_len if (cfg.mask_threshold is not None or cfg.unknown_words == "mask") \
            else int(cfg.gen_len * cfg.mask_ratio)
        width = cfg.gen_len + most * cfg.edit_insert_slots + cfg.edit_tail_slots
    plan = deliberation.DeliberationPlan(
        strategy=cfg.strategy, masking=cfg.masking, num_chunks=cfg.num_chunks,
        remasking=cfg.remasking, temperature=float(cfg.temperature), threshold=cfg.threshold, cache=cfg.cache,
        mask_id=tok.mask, pad_id=tok.pad, eos_id=tok.eos, edit_length=cfg.edit_length,
        insert_slots=cfg.edit_insert_slots, tail_slots=cfg.edit_tail_slots, edit_width=width,
        canvas=cfg.deliberation_canvas, confidence_fill=cfg.confidence_fill, mask_threshold=cfg.mask_threshold,
        force_unknown=cfg.unknown_words == "mask")
    ids, lv = _ids_and_live(len(first_pass), row_ids, live)
    out, nfe = _deliberation_program(variables, inputs, jnp.asarray(first), jnp.asarray(lens), jnp.asarray(num_masked),
                                     jnp.asarray(cfg.steps, jnp.int32), None if mask is None else jnp.asarray(mask, bool), rng, ids, lv,
                                     bb=backbone_of(model), cond=_cond(cfg, audio_tokens), plan=plan)
    out, nfe = _host(out, nfe)
    whole = cfg.edit_length or cfg.deliberation_canvas == "training"
    length = np.full(len(lens), out.shape[1], np.int32) if whole else lens
    return DecodeOutput(out, length, nfe)


def autoregressive_decode(model: Any, variables: Any, inputs: Any, cfg: DecodeConfig, *, tokens: Any = None,
                          live=None, audio_tokens: int | None = None) -> DecodeOutput:
    """Greedy decoding with a K/V cache for a causal LLM (the Whisper-LLaMA baseline)."""
    validate(cfg)
    tok = tokens or _tokens_of(model)
    b = _rows(inputs)
    _, lv = _ids_and_live(b, None, live)
    out, length, nfe = _autoregressive_program(variables, inputs, lv, bb=backbone_of(model),
                                               cond=_cond(cfg, audio_tokens), max_new=cfg.max_new_tokens,
                                               eos_id=tok.eos)
    return DecodeOutput(*_host(out, length, nfe))


def _tokens_of(model: Any):
    cfg = getattr(model, "config", None)
    tokens = getattr(cfg, "tokens", None)
    if tokens is None:
        raise DecodeConfigError("the model carries no token ids", hint="pass tokens=TokenConfig(...)")
    return tokens


# ----------------------------------------------------------------------------- host side
def special_ids(tokens: Any) -> set[int]:
    return {tokens.bos, tokens.eos, tokens.pad, tokens.mask, tokens.start_header, tokens.end_header, tokens.eot}


def response_tokens(row: np.ndarray, length: int, tokens: Any) -> list[int]:
    """The response ids without special tokens (as ``skip_special_tokens`` decoding)."""
    drop = special_ids(tokens)
    return [int(t) for t in row[:length] if int(t) not in drop]

"""Drives the decoders over data: one batch of a dataset (``run_decode``) and audio files
(``transcribe_files``: loading, length-sorted fixed-shape batches, results in input order).

    rows = run_decode(loaded, batch, cfg, rng)          # list of {hypothesis, tokens, nfe}
    for rec in transcribe_files(model_dir, items, cfg): ...
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np

from whisper_llada_jax.audio.features import log_mel_numpy
from whisper_llada_jax.audio.io import check_duration, load_audio
from whisper_llada_jax.checkpoints.model_dir import load_model_dir
from whisper_llada_jax.decoding import api
from whisper_llada_jax.decoding.config import DecodeConfig, validate
from whisper_llada_jax.errors import DataError
from whisper_llada_jax.inference import placement
from whisper_llada_jax.text.first_pass import first_pass_ids, fit_canvas

SORT_WINDOW = 8  # transcribe_files sorts clips by length within this many batches
TRIM_BUCKETS = 8  # trimmed audio spans: finer than quarters of 30 s, still a small fixed set of shapes


def trimmed_audio_tokens(audio_len: np.ndarray, model_cfg: Any, margin_windows: int) -> int:
    """Audio vectors kept by ``audio_span="trimmed"``: the projector windows covering the
    longest real clip of the batch plus a margin, rounded up to a multiple of an eighth of all
    windows (11 of the 88, 3.75 s, at paper size), so at most ``TRIM_BUCKETS`` sizes ever compile."""
    hop, stride = 160 * 2, model_cfg.projector.stride  # one encoder frame = 2 mel hops
    frames = np.ceil(np.asarray(audio_len, np.float64) / hop)
    need = int(np.ceil(frames.max() / stride)) + margin_windows if len(frames) else 1
    total = model_cfg.num_windows
    bucket = max(1, math.ceil(total / TRIM_BUCKETS))
    windows = min(total, math.ceil(max(need, 1) / bucket) * bucket)
    return windows * model_cfg.projector.num_queries


def run_decode(loaded: Any, batch: dict, cfg: DecodeConfig, rng: jax.Array) -> list[dict]:
    """Decodes one batch (see docs/architecture.md) with ``loaded`` (a ``LoadedModel``).

    Returns one dict per row with ``hypothesis``, ``tokens`` and ``nfe`` (deliberation: also
    ``first_pass_tokens``, the first pass's length before it was cut to the ``gen_len`` canvas,
    see ``text.first_pass.fit_canvas``); padding rows (``valid`` False) are included, so
    results line up with ``batch["ids"]``. A model placed
    on a mesh decodes the batch split over ``data`` x ``fsdp``, padded to a multiple of it
    with rows that are not decoded (a row's tokens do not depend on the others).
    """
    validate(cfg)
    tok = loaded.config.tokens
    key = "encoder_out" if "encoder_out" in batch else "features"
    b = np.shape(batch[key])[0]
    live = np.asarray(batch.get("valid", np.ones(b, bool)), bool)
    audio_tokens = None
    if cfg.audio_span == "trimmed" and "audio_len" in batch:
        audio_tokens = trimmed_audio_tokens(np.asarray(batch["audio_len"])[live], loaded.config, cfg.audio_margin_windows)
    names = [str(x) for x in batch.get("ids", [f"row {i}" for i in range(b)])]
    row_ids = np.array([_stable_id(x) for x in batch.get("ids", range(b))], np.int64) % (2 ** 31 - 1)
    mesh = placement.model_mesh(loaded.variables)
    n = placement.padded_rows(b, mesh)
    inputs = {key: placement.put_rows(placement.pad_rows(batch[key], n), mesh)}
    live, row_ids = placement.pad_rows(live, n, False), placement.pad_rows(row_ids, n)
    names += [f"padding row {i}" for i in range(n - b)]
    first_len = None  # deliberation: first-pass lengths before the cut to the canvas
    if cfg.decoder == "autoregressive":
        out = api.autoregressive_decode(loaded.model, loaded.variables, inputs, cfg, tokens=tok, live=live,
                                        audio_tokens=audio_tokens)
    elif cfg.strategy != "none":
        texts = batch.get("first_pass")
        if texts is None:
            raise DataError("deliberation needs first-pass transcripts", hint="give first_pass in the manifest")
        texts = list(texts) + [""] * (n - b)
        first = [first_pass_ids(loaded.tokenizer, t, normalizer=cfg.first_pass_normalizer,
                                unknown_words=cfg.unknown_words, mask_id=tok.mask) if ok else [tok.eos]
                 for t, ok in zip(texts, live)]
        first_len = [len(ids) for ids in first]
        first = [fit_canvas(ids, cfg.gen_len) for ids in first]
        out = api.deliberate(loaded.model, loaded.variables, inputs, first, cfg, rng, tokens=tok, row_ids=row_ids,
                             live=live, audio_tokens=audio_tokens, names=names)
    else:
        out = api.diffusion_decode(loaded.model, loaded.variables, inputs, cfg, rng, tokens=tok, row_ids=row_ids,
                                   live=live, audio_tokens=audio_tokens)
    rows = []
    for i in range(b):
        ids = api.response_tokens(out.tokens[i], int(out.length[i]), tok)
        rows.append({"hypothesis": loaded.tokenizer.decode(ids).strip(), "tokens": ids, "nfe": int(out.nfe[i])})
        if first_len is not None:
            rows[-1]["first_pass_tokens"] = first_len[i]
    return rows


def report_cut_first_passes(rows: Iterable[dict], width: int, what: str, *, listed: set | None = None) -> int:
    """One stderr line per decoded row whose first pass was cut to the ``width``-slot canvas
    (naming the clip) and the total, so that no cut is silent; returns how many were cut.
    ``listed``: ids already named (several configs over the same clips name each clip once)."""
    rows = list(rows)
    cut = [r for r in rows if r.get("first_pass_tokens", 0) > width]
    for r in cut:
        if listed is None or r["id"] not in listed:
            print(f"{what}: the first pass of {r['id']} has {r['first_pass_tokens']} tokens, cut to the "
                  f"{width}-slot canvas", file=sys.stderr)
            if listed is not None:
                listed.add(r["id"])
    if cut:
        print(f"{what}: cut {len(cut)} of {len(rows)} first passes to the {width}-slot canvas (deliberation keeps "
              f"the token count; the cut words count as errors; a longer gen_len deliberates them whole)",
              file=sys.stderr)
    return len(cut)


def _stable_id(x: Any) -> int:
    """A process-independent integer for an utterance id (Python's hash() is salted)."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    import zlib
    return zlib.crc32(str(x).encode())


def transcribe_files(model_dir: str, items: Iterable[dict], cfg: DecodeConfig, batch_size: int | None = None,
                     seed: int = 0, *, mesh: Any = None, rules: Any = None,
                     audio: Sequence[np.ndarray | None] | None = None) -> Iterator[dict]:
    """Decodes audio files: ``items`` are dicts with ``id``, ``audio`` (path), optional ``text``
    and ``first_pass``. Yields ``{id, hypothesis, reference, nfe}`` (+ ``first_pass``) in input
    order.

    ``audio``: samples already read for the items (None where not kept: read from the file).
    ``mesh`` / ``rules``: the model is placed on this process's mesh (``inference.placement``).
    With several processes each decodes every n-th batch and process 0 yields every result
    (the others yield nothing); the batches, and so the tokens, are those of one process."""
    validate(cfg)
    loaded = load_model_dir(model_dir, mesh, rules, for_decoding=True)
    wcfg = loaded.config.whisper
    n_samples = wcfg.input_frames * 160
    bs = batch_size or cfg.batch_size
    items = list(items)
    if audio is not None and len(audio) != len(items):
        raise ValueError(f"transcribe_files: {len(audio)} audio entries for {len(items)} items")
    rng = jax.random.key(seed)
    hosts, me = jax.process_count(), jax.process_index()
    # Batches run in lock step until their longest row ends: decode clips of similar length
    # together. Sorting happens within windows of SORT_WINDOW batches (memory stays bounded and
    # results keep streaming); each window's results come out in input order. Every process
    # reads the window's audio (the sort needs every length) and decodes its batches of it.
    window = bs * SORT_WINDOW
    number = 0  # batch number over the whole run: batch j is process j % hosts's
    for w0 in range(0, len(items), window):
        group = items[w0:w0 + window]
        clips_of_group = []
        for j, it in enumerate(group):
            a = audio[w0 + j] if audio is not None else None
            a = load_audio(it["audio"]) if a is None else a
            check_duration(a, it["audio"], max_seconds=n_samples / 16000)
            clips_of_group.append(a)
        order = sorted(range(len(group)), key=lambda i: len(clips_of_group[i]))
        done: dict[int, dict] = {}
        for start in range(0, len(order), bs):
            number += 1
            if (number - 1) % hosts != me:
                continue
            idx = order[start:start + bs]
            chunk = [group[i] for i in idx]
            clips = [clips_of_group[i] for i in idx]
            pad = bs - len(chunk)  # fixed batch shape: pad the last batch with silent rows
            feats = log_mel_numpy(clips + [np.zeros(160, np.float32)] * pad, n_mels=wcfg.n_mels, n_samples=n_samples)
            batch = {"features": feats, "audio_len": np.array([len(a) for a in clips] + [160] * pad, np.int32),
                     "valid": np.array([True] * len(chunk) + [False] * pad), "ids": [it["id"] for it in chunk]
                     + [f"__pad{i}" for i in range(pad)]}
            if cfg.strategy != "none":
                batch["first_pass"] = [it.get("first_pass", "") for it in chunk] + [""] * pad
            rows = run_decode(loaded, batch, cfg, rng)
            for i, it, row in zip(idx, chunk, rows):
                rec = {"id": it["id"], "hypothesis": row["hypothesis"], "reference": it.get("text"), "nfe": row["nfe"]}
                if "first_pass" in it:
                    rec["first_pass"] = it["first_pass"]
                if "first_pass_tokens" in row:
                    rec["first_pass_tokens"] = row["first_pass_tokens"]
                done[i] = rec
        if hosts > 1:  # one gather per window, on every process alike
            parts = placement.gather_to_process_0(sorted(done.items()))
            if parts is None:
                continue
            done = {int(i): rec for part in parts for i, rec in part}
        for i in range(len(group)):
            yield done[i]

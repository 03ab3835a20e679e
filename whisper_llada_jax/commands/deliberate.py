"""``whisper-llada deliberate``: re-denoise a first-pass transcript with the audio (second pass)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys

from whisper_llada_jax.commands import seed_arg
from whisper_llada_jax.errors import DataError
from whisper_llada_jax.outputs import atomic_file, check_output

NAME = "deliberate"
HELP = "correct first-pass transcripts with Whisper-LLaDA deliberation (diffusion or semi_ar)"
EXAMPLES = """examples:
  # the paper's best cascade: mask the 30 % least confident first-pass tokens, re-denoise
  whisper-llada deliberate --model runs/demo/model --manifest test.jsonl \\
      --first-pass whisper_llama.jsonl --strategy diffusion --masking low_confidence \\
      --mask-ratio 0.3 --steps 64 --output delib.jsonl
  # chunk by chunk (4 chunks), 64 steps in total
  whisper-llada deliberate --model runs/demo/model --manifest test.jsonl \\
      --first-pass whisper_llama.jsonl --strategy semi_ar --num-chunks 4 --steps 64
  # deliberation inputs matched to how a small model trained (docs/decoding.md "Deliberation
  # inputs"): its training canvas, a mask-filled confidence pass, first passes spelled as its
  # corpus writes them, unknown words masked, re-masking tokens with p < 0.005 (the demo's MODEL_DIR
  # has all but the threshold in its decode.yaml)
  whisper-llada deliberate --model runs/demo/model --manifest test.jsonl --first-pass fp.jsonl \
      --deliberation-canvas training --confidence-fill mask --first-pass-normalizer spoken_en \
      --unknown-words mask --mask-threshold 0.005
  # the text-only ablation (no audio), and the length-editing fast mode
  whisper-llada deliberate --model runs/demo/model --manifest test.jsonl --first-pass fp.jsonl --text-only
  whisper-llada deliberate --model runs/demo/model --manifest test.jsonl --first-pass fp.jsonl --edit-length

manifest: JSON lines with "id", "audio" and optionally "text" (the reference).
first pass: JSON lines with "id" and "hypothesis" (what `transcribe` writes) or "first_pass".
Output: one JSON line per utterance: "id", "hypothesis", "reference", "first_pass", "nfe".
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="a Whisper-LLaDA MODEL_DIR")
    p.add_argument("--manifest", required=True, metavar="FILE", help="JSON lines with id, audio, optional text")
    p.add_argument("--first-pass", required=True, metavar="FILE.jsonl",
                   help="JSON lines with id and hypothesis (or first_pass)")
    p.add_argument("--strategy", choices=["diffusion", "semi_ar"], default="diffusion")
    p.add_argument("--masking", choices=["random", "low_confidence"], default="low_confidence")
    p.add_argument("--mask-ratio", type=float, metavar="R",
                   help="share of first-pass tokens to mask (default: the MODEL_DIR's decode.yaml, else 0.3)")
    p.add_argument("--mask-threshold", type=float, metavar="TAU",
                   help="low_confidence diffusion: re-mask the first-pass tokens with p < TAU instead of a "
                        "share (default: the MODEL_DIR's decode.yaml unless --mask-ratio is given, else off)")
    p.add_argument("--deliberation-canvas", choices=["first_pass", "training"],
                   help="first_pass: the first pass alone (the reference); training: followed by the eos tail "
                        "to --gen-len, as a model trained on its whole canvas saw text (default: decode.yaml; "
                        "first_pass for semi_ar and --edit-length, which need it)")
    p.add_argument("--confidence-fill", choices=["pad", "mask"],
                   help="response filler of the confidence forward (default: decode.yaml, else pad)")
    p.add_argument("--first-pass-normalizer", choices=["none", "spoken_en"],
                   help="rewrite the first pass as the model's corpus writes text, e.g. numbers spelled out "
                        "(default: decode.yaml, else none)")
    p.add_argument("--unknown-words", choices=["keep", "mask"],
                   help="first-pass words the vocabulary cannot represent: keep their <unk> tokens, or one "
                        "always re-masked slot each (default: decode.yaml, else keep)")
    p.add_argument("--num-chunks", type=int, default=4, metavar="K", help="semi_ar: chunks re-decoded in turn")
    p.add_argument("--steps", type=int, metavar="N",
                   help="denoising steps in total (default: the MODEL_DIR's decode.yaml, else 64)")
    p.add_argument("--gen-len", type=int, metavar="L",
                   help="the canvas in tokens: a longer first pass is cut to it, each cut clip named on stderr "
                        "(default: the MODEL_DIR's decode.yaml, else 128)")
    p.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    p.add_argument("--threshold", type=float, metavar="P", help="fast mode: reveal every token with p >= P")
    p.add_argument("--cache", choices=["none", "prefix"], default="none", help="fast mode: approximate prefix cache")
    p.add_argument("--text-only", action="store_true", help="ablation: deliberate without the audio")
    p.add_argument("--edit-length", action="store_true", help="fast mode: let the length change (insert / delete)")
    p.add_argument("--audio-span", choices=["full", "trimmed"], default="full")
    p.add_argument("--batch-size", type=int, default=16, metavar="N")
    p.add_argument("--seed", type=seed_arg, default=0, help="random masking / remasking seed")
    p.add_argument("--output", "-o", default="-", metavar="FILE.jsonl",
                   help="output JSON lines (default: stdout); written atomically, missing folders created")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="mesh.* / distributed.* overrides as for `train` (e.g. mesh.fsdp=4 mesh.tensor=2): the model "
                        "on this host's devices; several processes each decode every n-th batch, process 0 writes")


def decode_config(args: argparse.Namespace):
    """The flags over the MODEL_DIR's decode defaults (its canvas), validated."""
    from whisper_llada_jax.checkpoints.model_dir import read_decode_defaults
    from whisper_llada_jax.decoding.config import validate

    base = read_decode_defaults(args.model)
    gen_len = base.gen_len if args.gen_len is None else args.gen_len  # --gen-len 0 is an error, not the default
    # decode.yaml's threshold and training canvas apply where they can: an explicit --mask-ratio,
    # random masking or chunked (semi_ar) deliberation drops the threshold; semi_ar and
    # --edit-length read the first pass alone. Given as flags, they are validated as given.
    threshold = args.mask_threshold
    if threshold is None and args.mask_ratio is None and args.masking == "low_confidence" and args.strategy == "diffusion":
        threshold = base.mask_threshold
    canvas = args.deliberation_canvas
    if canvas is None:
        canvas = "first_pass" if args.strategy == "semi_ar" or args.edit_length else base.deliberation_canvas
    return validate(dataclasses.replace(
        base, strategy=args.strategy, masking=args.masking, num_chunks=args.num_chunks,
        mask_ratio=base.mask_ratio if args.mask_ratio is None else args.mask_ratio, mask_threshold=threshold,
        deliberation_canvas=canvas, confidence_fill=args.confidence_fill or base.confidence_fill,
        first_pass_normalizer=args.first_pass_normalizer or base.first_pass_normalizer,
        unknown_words=args.unknown_words or base.unknown_words,
        steps=min(base.steps, gen_len) if args.steps is None else args.steps, gen_len=gen_len, block_length=gen_len,
        remasking=args.remasking, threshold=args.threshold, cache=args.cache, text_only=args.text_only,
        edit_length=args.edit_length, audio_span=args.audio_span, batch_size=args.batch_size))


def run(args: argparse.Namespace) -> int:
    import jax

    from whisper_llada_jax.checkpoints.model_dir import read_model_config
    from whisper_llada_jax.commands.transcribe import KEEP_AUDIO_BYTES, check_inputs, model_window_seconds
    from whisper_llada_jax.data.manifest import read_first_passes, read_manifest
    from whisper_llada_jax.decoding.config import check_fits_model
    from whisper_llada_jax.evaluation.evaluate import check_unique_ids
    from whisper_llada_jax.inference.driver import report_cut_first_passes, transcribe_files
    from whisper_llada_jax.inference.placement import inference_mesh

    if args.output != "-":
        check_output(args.output, [args.model, args.manifest, args.first_pass], overwrite=args.overwrite,
                     kind="file", flag="--output")
    items = read_manifest(args.manifest, require_text=False, for_files=True)  # the reference is optional here
    # Batches are padded to a fixed shape: never past the inputs (--batch-size 100000 for two clips).
    args.batch_size = min(args.batch_size, len(items)) if args.batch_size >= 1 else args.batch_size
    cfg = decode_config(args)
    check_unique_ids(items, args.manifest)
    first = read_first_passes(args.first_pass)
    missing = [it["id"] for it in items if it["id"] not in first]
    if missing:
        raise DataError(f"{args.first_pass}: no first pass for {len(missing)} utterance(s), e.g. {missing[0]!r}",
                        hint="the ids must match the manifest's")
    items = [dict(it, first_pass=first[it["id"]]) for it in items]
    check_fits_model(cfg, read_model_config(args.model))  # before the model is loaded
    # every clip, before the model loads (those kept are not read again)
    audios = check_inputs(items, model_window_seconds(args.model), keep_bytes=KEEP_AUDIO_BYTES)
    mesh, rules = inference_mesh(args.overrides, "deliberate")
    decoded = transcribe_files(args.model, items, cfg, args.batch_size, seed=args.seed, mesh=mesh, rules=rules,
                               audio=audios)
    if jax.process_index() != 0:  # decodes its share of the batches; process 0 writes every result
        for _ in decoded:
            pass
        return 0
    # A temporary file renamed into place at the end: a bad clip half-way or a kill leaves the
    # old output as it was, never a partial file that looks complete.
    done = []
    with contextlib.nullcontext(sys.stdout) if args.output == "-" else atomic_file(args.output) as out:
        for rec in decoded:
            out.write(json.dumps({k: rec.get(k) for k in ("id", "hypothesis", "reference", "first_pass", "nfe")}) + "\n")
            out.flush()
            done.append(rec)
    # a first pass longer than the canvas is deliberated cut to it: named, and counted
    report_cut_first_passes(done, cfg.gen_len, "deliberate")
    if args.output != "-":
        print(f"wrote {len(items)} transcripts to {args.output}", file=sys.stderr)
    return 0

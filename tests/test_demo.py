"""The laptop demo: its batching and caching pieces, and `whisper-llada demo --quick` end to end
from a clean directory (table + MODEL_DIR), then `transcribe` of one clip with that model."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests._cli import run_cli
from tests._docs_blocks import blocks, cli_args, commands
from whisper_llada_jax.config import WhisperConfig
from whisper_llada_jax.demo import run as demo_run
from whisper_llada_jax.demo.encoder_cache import cached_encode, frames_for_seconds

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "data" / "clips"


def test_frames_for_seconds_gives_whole_windows():
    assert frames_for_seconds(5.17) == 544 and (544 // 2) % 17 == 0
    assert frames_for_seconds(0.01) == 34
    assert frames_for_seconds(40.0) == 3000


def _toy(n=10, t=6, d=3, r=5, eos=2):
    enc = np.arange(n * t * d, dtype=np.float16).reshape(n, t, d)
    ids = np.full((n, r), eos, np.int32)
    lens = np.arange(n, dtype=np.int32) % r + 1
    for i in range(n):
        ids[i, :lens[i]] = 10 + i
    texts, names = [f"t{i}" for i in range(n)], [f"u{i}" for i in range(n)]
    return enc, ids, lens, texts, names


def test_train_batches_shuffle_deterministically_and_cover_an_epoch():
    enc, ids, lens, texts, names = _toy()
    a = demo_run.train_batches(enc, ids, lens, texts, names, batch_size=4, seed=1, eos=2)
    b = demo_run.train_batches(enc, ids, lens, texts, names, batch_size=4, seed=1, eos=2)
    first = [next(a) for _ in range(2)]
    assert [x["ids"] for x in first] == [next(b)["ids"] for _ in range(2)]
    seen = sum((x["ids"] for x in first), [])
    assert len(set(seen)) == 8  # no repeats within an epoch
    x = first[0]
    i = int(seen[0][1:])
    assert x["encoder_out"].dtype == np.float32 and x["encoder_out"].shape == (4, 6, 3)
    np.testing.assert_array_equal(x["encoder_out"][0], enc[i].astype(np.float32))
    np.testing.assert_array_equal(x["response_ids"][0], ids[i])
    assert x["response_len"][0] == lens[i] and x["valid"].all()


def test_ordered_batches_pad_the_last_batch():
    enc, ids, lens, texts, names = _toy(n=10)
    batches = list(demo_run.ordered_batches(enc, ids, lens, texts, names, batch_size=4, eos=2))
    assert len(batches) == 3 and "audio_len" not in batches[0]
    last = batches[-1]
    assert last["valid"].tolist() == [True, True, False, False]
    assert last["ids"] == ["u8", "u9", "", ""]
    assert (last["response_ids"][2:] == 2).all() and (last["response_len"][2:] == 0).all()
    assert [u for b in batches for u, ok in zip(b["ids"], b["valid"]) if ok] == names


def test_batches_carry_each_clips_audio_len():
    """audio_span (variable training spans) trims by each clip's length: the cached-encoder
    batches carry it, row for row, and 0 on padding rows."""
    enc, ids, lens, texts, names = _toy(n=10)
    audio_len = 1000 * np.arange(1, 11, dtype=np.int32)
    x = next(demo_run.train_batches(enc, ids, lens, texts, names, batch_size=4, seed=1, eos=2, audio_len=audio_len))
    assert x["audio_len"].dtype == np.int32
    assert x["audio_len"].tolist() == [1000 * (int(u[1:]) + 1) for u in x["ids"]]
    last = list(demo_run.ordered_batches(enc, ids, lens, texts, names, batch_size=4, eos=2, audio_len=audio_len))[-1]
    assert last["audio_len"].tolist() == [9000, 10000, 0, 0]


def test_format_table_and_decode_modes():
    rows = [demo_run.Row("Whisper", 0.25, 0.05, 14.0, "x"), demo_run.Row("LLaDA", 0.125, 0.5, 24.0)]
    table = demo_run.format_table(rows)
    assert "| Whisper | 25.00 | 0.0500 | 14.0 | x |" in table and "| LLaDA | 12.50 |" in table
    canvas = demo_run.decode_canvas(demo_run.FULL, [13])
    labels = [m[1] for m in demo_run.decode_modes(demo_run.FULL, canvas)]
    assert len(labels) == 6 and any("Text-only" in x for x in labels)
    from whisper_llada_jax.decoding.config import DecodeConfig, validate

    for settings in (demo_run.FULL, demo_run.QUICK):
        canvas = demo_run.decode_canvas(settings, [13])
        for key, _, fields, _ in demo_run.decode_modes(settings, canvas):
            cfg = validate(DecodeConfig(batch_size=settings.eval_batch, **fields))
            assert (cfg.gen_len, cfg.steps) == (canvas["gen_len"], canvas["steps"])  # every row on the trained slots
            if key == "semi_ar":
                assert cfg.num_blocks == settings.semi_ar_blocks
            if cfg.strategy != "none":  # every deliberation row reads the first pass as the model was trained
                assert cfg.deliberation_canvas == "training" and cfg.unknown_words == "mask"
                assert cfg.first_pass_normalizer == "spoken_en"
            if key in ("deliberation_low_confidence", "text_only_deliberation"):
                assert cfg.confidence_fill == "mask" and cfg.mask_threshold == settings.mask_threshold
    # results.json: one WER / forwards / RTF triple per row, in %
    doc = demo_run.results_json([demo_run.Row(str(i), 0.01 * i, 0.1, 2.0) for i in range(8)], demo_run.QUICK,
                                 canvas)
    assert doc["first_pass_wer"] == 0.0 and doc["vocabulary_filter_wer"] == 1.0
    assert doc["text_only_deliberation_wer"] == pytest.approx(7.0) and doc["fast_forwards_per_utt"] == 2.0


def test_vocabulary_filter_row_scores_the_filtered_first_pass(tmp_path):
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json

    tok = LLaDATokenizer(build_tokenizer_json(["the lamp costs two hundred dollars"] * 10, tmp_path / "t.json",
                                              vocab_size=80))
    fp = [{"first_pass": "the lamp costs $200", "nfe": 5}, {"first_pass": "the lamp #", "nfe": 3}]
    row = demo_run.vocabulary_filter_row(tok, demo_run.QUICK, ["the lamp costs two hundred dollars", "the lamp"],
                                         fp, 0.5)
    assert row.wer == 0.0 and row.nfe == 4.0 and row.rtf == 0.5  # "$200" spelled, "#" deleted


def test_results_json_is_written_atomically(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    demo_run.write_json_atomic(path, {"a": 1.5})
    assert json.loads(path.read_text()) == {"a": 1.5} and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_results_page_keeps_the_hand_written_text_around_its_markers(tmp_path):
    """docs/results.md: a new run replaces only its block; the analysis around it survives."""
    page = tmp_path / "results.md"
    page.write_text(f"# Title\n\n{demo_run.RUN_BEGIN}\nold table\n{demo_run.RUN_END}\n\n## Analysis\nby hand\n")
    demo_run.write_results_page(page, "# Results\n\n| new table |\n")
    assert page.read_text() == (f"# Title\n\n{demo_run.RUN_BEGIN}\n# Results\n\n| new table |\n"
                                f"{demo_run.RUN_END}\n\n## Analysis\nby hand\n")
    other = tmp_path / "mine.md"  # a page without the markers (--results FILE) is the run's page
    other.write_text("anything\n")
    demo_run.write_results_page(other, "# Results\n")
    assert other.read_text() == "# Results\n"


def test_encoder_cache_is_reused(tmp_path):
    import flax.linen as nn
    import jax

    from whisper_llada_jax.models.whisper import abstract_params

    cfg = WhisperConfig(d_model=16, encoder_layers=1, encoder_heads=2, encoder_ffn=32, decoder_layers=1,
                        decoder_heads=2, decoder_ffn=32, vocab_size=50, input_frames=68)
    shapes = jax.tree.map(lambda s: s.shape, nn.unbox(abstract_params(cfg, encoder_only=True)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s)).astype(np.float32), shapes,
                          is_leaf=lambda s: isinstance(s, tuple))["encoder"]
    paths = [CLIPS / "clip000.flac", CLIPS / "clip001.flac", CLIPS / "clip002.flac"]
    a = cached_encode(tmp_path, "enc", params, cfg, paths, {"v": 1}, batch_size=2, progress=False)
    assert a.encoder_out.shape == (3, 34, 16) and a.encoder_out.dtype == np.float16
    assert np.isfinite(a.encoder_out).all() and a.audio_len.tolist() == [68 * 160] * 3
    mtime = (tmp_path / "enc.npy").stat().st_mtime_ns
    b = cached_encode(tmp_path, "enc", params, cfg, paths, {"v": 1}, batch_size=2, progress=False)
    np.testing.assert_array_equal(a.encoder_out, b.encoder_out)
    assert (tmp_path / "enc.npy").stat().st_mtime_ns == mtime
    cached_encode(tmp_path, "enc", params, cfg, paths[:2], {"v": 1}, batch_size=2, progress=False)
    assert (tmp_path / "enc.npy").stat().st_mtime_ns != mtime  # other inputs: recomputed


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    work = tmp_path / "clean"
    work.mkdir()
    proc = run_cli(["demo", "--quick", "--out", "run", "--no-progress"], work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = work / "run"
    summary = json.loads((run / "summary.json").read_text())
    systems = [r["system"] for r in summary["rows"]]
    assert len(systems) == 8 and systems[0].startswith("Whisper tiny.en") and systems[1].startswith("Vocabulary")
    for r in summary["rows"]:
        assert 0.0 <= r["wer"] < 5.0 and r["rtf"] > 0 and r["nfe"] >= 1, r
        assert f"| {r['system']} |" in proc.stdout
    assert (run / "results.md").read_text().count("\n|") >= 9
    results = json.loads((run / "results.json").read_text())
    for key in ("first_pass", "vocabulary_filter", "diffusion", "semi_ar", "fast", "deliberation_low_confidence",
                "deliberation_random", "text_only_deliberation"):
        wer, nfe = results[f"{key}_wer"], results[f"{key}_forwards_per_utt"]
        assert np.isfinite(wer) and 0.0 <= wer < 500.0 and np.isfinite(nfe) and nfe >= 1, (key, wer, nfe)
    assert results["diffusion_wer"] == pytest.approx(100 * summary["rows"][2]["wer"])  # rows in table order
    # The MODEL_DIR is complete and carries the real tiny.en encoder.
    from whisper_llada_jax.checkpoints.model_dir import load_model_dir

    loaded = load_model_dir(run / "model")
    assert loaded.config.whisper.d_model == 384 and loaded.config.whisper.input_frames == summary["input_frames"]
    assert loaded.config.tokens.prompt_ids and loaded.tokenizer.vocab_size <= loaded.config.llm.vocab_size
    # Trained with the reference's padding, so it decodes and deliberates on the slots it trained:
    # the training split's longest transcript + 1, rounded up to whole blocks (2) and steps (2
    # slots each); a mask-filled confidence pass, first passes read as its corpus writes them.
    train_texts = [json.loads(line)["text"] for line in (run / "corpus" / "train.jsonl").read_text().splitlines()]
    longest = max(len(ids) for ids in loaded.tokenizer.encode_batch(train_texts))
    n = loaded.decode["gen_len"]
    assert longest + 1 <= n < longest + 5 and n % 4 == 0 and summary["canvas"] == n
    assert loaded.decode == {"gen_len": n, "block_length": n // 2, "steps": n // 2, "deliberation_canvas": "training",
                             "confidence_fill": "mask", "first_pass_normalizer": "spoken_en", "unknown_words": "mask"}
    assert f"Canvas: {n} response slots, the training split's longest transcript ({longest} tokens) plus" in (
        run / "results.md").read_text()
    assert json.loads((run / "settings.json").read_text())["train_recipe"]["substitution_rate"] == 0.1
    # ... and transcribes a clip.
    clip = sorted((run / "corpus" / "test").glob("*.flac"))[0]
    proc = run_cli(["transcribe", "--model", "run/model", str(clip), "--batch-size", "1"], work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(out) == 1 and out[0]["id"] == clip.stem and isinstance(out[0]["hypothesis"], str)
    # ... and the README's commands on the demo's MODEL_DIR run as written, on this one.
    ran = 0
    for page, kind, body in blocks():
        for command in commands(body) if kind == "demo" else ():
            args = [a.replace("runs/demo", "run").replace("runs/eval", "eval") for a in cli_args(command)]
            proc = run_cli(args, work, timeout=600)
            assert proc.returncode == 0, f"{page.name}: `{command}` failed:\n{proc.stderr[-3000:]}"
            if "--output" in args:
                assert (work / args[args.index("--output") + 1]).read_text().strip(), command
            else:
                assert proc.stdout.strip(), command
            ran += 1
    assert ran >= 4


def test_out_folder_refuses_other_settings(tmp_path):
    from whisper_llada_jax.errors import UserError

    demo_run._check_settings(tmp_path, demo_run.QUICK)
    demo_run._check_settings(tmp_path, demo_run.QUICK)  # resuming the same run is fine
    with pytest.raises(UserError, match="other settings"):
        demo_run._check_settings(tmp_path, demo_run.FULL)
    # A run on an older corpus (other audio) is refused too: its first pass, encoder outputs and
    # model were made from that audio. Before version 2, settings.json did not record the corpus.
    path = tmp_path / "settings.json"
    settings = json.loads(path.read_text())
    assert settings["corpus"]["version"] >= 2
    path.write_text(json.dumps({k: v for k, v in settings.items() if k != "corpus"}))
    with pytest.raises(UserError, match="corpus version 1;"):
        demo_run._check_settings(tmp_path, demo_run.QUICK)


def test_recipe_draws_substitutions_from_the_tokenizers_words_only(tmp_path):
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json
    from whisper_llada_jax.training.config import TrainConfig

    tok = LLaDATokenizer(build_tokenizer_json(["the lamp costs two dollars"] * 10, tmp_path / "t.json", vocab_size=60))
    recipe = demo_run.substitution_range(demo_run.FULL.train_recipe, tok)
    low, high = recipe["substitution_range"]
    assert high == tok.vocab_size and low == max(tok.special_ids) + 1 and low not in tok.special_ids
    assert demo_run.FULL.train_recipe.get("substitution_range") is None  # the settings are left as they are
    cfg = TrainConfig(**recipe)  # every recipe field is a TrainConfig field
    assert cfg.loss_positions == "all" and cfg.loss_norm == "token_mean" and 0 < cfg.audio_drop_rate < 1
    assert cfg.loss_span == "group_longest"  # the reference's padding (the canvas bound comes from the data)
    assert demo_run.substitution_range({"loss_norm": "token_mean"}, tok) == {"loss_norm": "token_mean"}


def test_decode_canvas_is_the_trained_bound_plus_one_in_whole_blocks_and_steps():
    full, quick = demo_run.FULL, demo_run.QUICK
    # FULL: 2 blocks, one slot per step: the longest training transcript (13) + 1 = 14 slots.
    assert demo_run.decode_canvas(full, np.array([5, 13, 9])) == {"gen_len": 14, "block_length": 7, "steps": 14}
    assert demo_run.decode_canvas(full, [14]) == {"gen_len": 16, "block_length": 8, "steps": 16}  # 15 rounded up
    # QUICK: 2 blocks of 2-slot steps, so a multiple of 4.
    assert demo_run.decode_canvas(quick, [13]) == {"gen_len": 16, "block_length": 8, "steps": 8}
    # Never past the training slots: a transcript cut at max_response_len trained all of them.
    r = full.max_response_len
    assert demo_run.decode_canvas(full, [r])["gen_len"] == r == demo_run.decode_canvas(full, [400])["gen_len"]
    with pytest.raises(ValueError, match="not a multiple"):
        demo_run.decode_canvas(dataclasses.replace(full, max_response_len=23), [5])


def test_decode_inputs_are_merged_into_decode_yaml(tmp_path):
    import yaml

    (tmp_path / "decode.yaml").write_text(yaml.safe_dump({"gen_len": 24, "steps": 24}))
    fields = demo_run.deliberation_inputs(demo_run.FULL)
    demo_run.write_decode_inputs(tmp_path, fields)
    assert yaml.safe_load((tmp_path / "decode.yaml").read_text()) == {"gen_len": 24, "steps": 24, **fields}
    assert [p.name for p in tmp_path.iterdir()] == ["decode.yaml"]


def test_deliberate_flags_over_the_demo_models_decode_yaml(tmp_path):
    """`deliberate` starts from a MODEL_DIR's deliberation inputs (as the demo writes them), each
    flag overrides its field, and the defaults that cannot apply (a threshold under random masking
    or --mask-ratio, the training canvas under semi_ar) are dropped rather than refused."""
    import yaml

    from whisper_llada_jax import cli
    from whisper_llada_jax.commands import deliberate
    from whisper_llada_jax.errors import UserError

    decode = {"gen_len": 24, "block_length": 24, "steps": 24, "deliberation_canvas": "training",
              "confidence_fill": "mask", "mask_threshold": 0.005, **demo_run.deliberation_inputs(demo_run.FULL)}
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump(decode))
    parser = cli.build_parser()

    def cfg(*flags):
        return deliberate.decode_config(parser.parse_args(["deliberate", "--model", str(tmp_path), "--manifest", "m",
                                                           "--first-pass", "f", *flags]))

    c = cfg()
    assert (c.deliberation_canvas, c.confidence_fill, c.mask_threshold) == ("training", "mask", 0.005)
    assert (c.first_pass_normalizer, c.unknown_words, c.gen_len, c.steps) == ("spoken_en", "mask", 24, 24)
    c = cfg("--deliberation-canvas", "first_pass", "--confidence-fill", "pad", "--first-pass-normalizer", "none",
            "--unknown-words", "keep", "--mask-threshold", "0.01")
    assert (c.deliberation_canvas, c.confidence_fill, c.first_pass_normalizer, c.unknown_words, c.mask_threshold) == (
        "first_pass", "pad", "none", "keep", 0.01)
    c = cfg("--mask-ratio", "0.2")
    assert c.mask_threshold is None and c.mask_ratio == 0.2
    assert cfg("--masking", "random").mask_threshold is None
    c = cfg("--strategy", "semi_ar")
    assert c.deliberation_canvas == "first_pass" and c.mask_threshold is None
    assert cfg("--edit-length").deliberation_canvas == "first_pass"
    with pytest.raises(UserError, match="deliberation_canvas"):
        cfg("--strategy", "semi_ar", "--deliberation-canvas", "training")
    with pytest.raises(UserError, match="mask_threshold"):
        cfg("--masking", "random", "--mask-threshold", "0.01")


def test_training_batches_carry_first_passes_as_deliberation_reads_them(tmp_path):
    """``first_pass_rate``'s inputs: each training row's first pass normalised, one mask slot per
    unknown word and cut to the canvas (what deliberation reads), eos-padded, row for row."""
    from whisper_llada_jax.text.first_pass import first_pass_ids, fit_canvas
    from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json

    tok = LLaDATokenizer(build_tokenizer_json(["the lamp costs two dollars"] * 10, tmp_path / "t.json", vocab_size=60))
    mask, eos = tok.token_config().mask, tok.token_config().eos
    texts = ["the lamp costs $2", "the zebra lamp", "the lamp the lamp the lamp", ""]
    ids, lens = demo_run.first_pass_canvas(tok, texts, 4, eos, "spoken_en", mask)
    for i, text in enumerate(texts):
        want = fit_canvas(first_pass_ids(tok, text, normalizer="spoken_en", unknown_words="mask", mask_id=mask), 4)
        assert ids[i, :lens[i]].tolist() == want and (ids[i, lens[i]:] == eos).all()
    assert ids[0].tolist() == tok.encode("the lamp costs two dollars")[:4]  # "$2" spelled, cut to 4 slots
    assert mask in ids[1].tolist() and (lens[0], lens[2], lens[3]) == (4, 4, 0)
    enc, r_ids, r_lens, r_texts, names = _toy(n=4, r=4)
    x = next(demo_run.train_batches(enc, r_ids, r_lens, r_texts, names, batch_size=2, seed=1, eos=eos,
                                    first_pass=(ids, lens)))
    rows = [int(u[1:]) for u in x["ids"]]
    np.testing.assert_array_equal(x["first_pass_ids"], ids[rows])
    assert x["first_pass_len"].tolist() == lens[rows].tolist()
    last = list(demo_run.ordered_batches(enc, r_ids, r_lens, r_texts, names, batch_size=3, eos=eos))[-1]
    assert "first_pass_ids" not in last  # validation batches carry none
    padded = demo_run._batch(enc, r_ids, r_lens, r_texts, names, np.arange(3, 4), 3, eos, None, (ids, lens))
    assert (padded["first_pass_ids"][1:] == eos).all() and padded["first_pass_len"].tolist() == [0, 0, 0]


@pytest.mark.slow  # compiles tiny.en's recogniser and its decoder (about 30 s)
def test_first_pass_from_cached_encoder_outputs_is_the_recognizers():
    """tiny.en's decoder over stored encoder outputs gives what the recogniser gives from the
    audio (here the outputs of its own 30 s input, so the two must agree)."""
    import jax

    from whisper_llada_jax.assets import BUNDLED_WHISPER
    from whisper_llada_jax.audio.io import load_audio
    from whisper_llada_jax.inference.recognizer import WhisperRecognizer, _features
    from whisper_llada_jax.models.whisper import Whisper

    rec = WhisperRecognizer.from_dir(BUNDLED_WHISPER, max_new_tokens=40)
    audios = [load_audio(CLIPS / f"clip00{i}.flac") for i in range(2)]
    batch = np.zeros((2, 480000), np.float32)
    for i, a in enumerate(audios):
        batch[i, :len(a)] = a
    feats = _features(batch, np.asarray([len(a) for a in audios]), rec.config.n_mels, rec.feature_padding)
    enc = np.asarray(jax.jit(lambda p, f: Whisper(rec.config).apply({"params": p}, f, method="encode"))(rec.params,
                                                                                                         feats))
    got = demo_run.first_pass_from_encoder(rec, enc, batch_size=3)  # one padded batch
    want = rec.transcribe(audios, batch_size=2)
    assert got == want and all(want)

"""``tune``: the search picks the fewest forward passes within the WER budget (on a trained
tiny model: at least 2x fewer than exact), decode.yaml is updated atomically with other fields
kept, and the command runs end to end on a tiny MODEL_DIR."""

import dataclasses

import jax
import numpy as np
import pytest
import yaml

import reference_decode as ref
from whisper_llada_jax.checkpoints.model_dir import read_decode_defaults, save_model_dir
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.data.sources import _WORDS
from whisper_llada_jax.models.composite import init_variables
from whisper_llada_jax.text.llada_tokenizer import LLaDATokenizer, build_tokenizer_json
from whisper_llada_jax.cli import main
from whisper_llada_jax.decoding import api
from whisper_llada_jax.decoding.config import DecodeConfig
from whisper_llada_jax.errors import CheckpointError, UserError
from whisper_llada_jax.evaluation import tune

GEN = 16


def _fake(table):
    """decode_fn from {steps or threshold: (hypotheses, nfe)} over fixed references."""
    refs = ["a b c d", "e f g h"]

    def fn(cfg):
        hyp, nfe = table[cfg.threshold if cfg.threshold is not None else cfg.steps]
        return tune.Trial(refs, hyp, np.full(2, nfe, float))
    return fn


def test_search_takes_the_fewest_forwards_within_the_budget():
    base = DecodeConfig(gen_len=GEN, steps=GEN, block_length=GEN)
    grid = [("t0.9", DecodeConfig(gen_len=GEN, steps=GEN, block_length=GEN, threshold=0.9)),
            ("t0.5", DecodeConfig(gen_len=GEN, steps=GEN, block_length=GEN, threshold=0.5)),
            ("s8", DecodeConfig(gen_len=GEN, steps=8, block_length=GEN))]
    exact = ["a b c d", "e f g h"]
    table = {GEN: (exact, 10), 0.9: (exact, 6), 0.5: (["a b x d", "e f g h"], 2), 8: (exact, 8)}
    best, results = tune.search(_fake(table), base, 0.5, grid)
    assert best.name == "t0.9" and [r.within_budget for r in results] == [True, True, False, True]
    best, _ = tune.search(_fake(table), base, 20.0, grid)  # one word in 8 is 12.5 points: now allowed
    assert best.name == "t0.5"
    table[0.9] = table[8] = (["x"] * 2, 1)
    best, results = tune.search(_fake(table), base, 0.5, grid)
    assert best is results[0]  # nothing else within budget: the exact mode stays
    with pytest.raises(UserError):
        tune.search(_fake(table), base, -1.0, grid)


def test_tune_finds_half_the_forwards_on_a_trained_model():
    model, variables, prefix, targets = ref.overfit_model(GEN)
    text = lambda row: " ".join(map(str, api.response_tokens(row, GEN, ref.TOKENS)))
    refs = [text(t) for t in targets]

    def decode_fn(cfg):
        out = api.diffusion_decode(model, variables, prefix, cfg, jax.random.key(0), tokens=ref.TOKENS)
        return tune.Trial(refs, [text(t) for t in out.tokens], out.nfe, out.llm_tokens)

    base = DecodeConfig(gen_len=GEN, steps=GEN, block_length=GEN)
    grid = tune.candidates(base, thresholds=(0.9, 0.7), query_slots=(4,))
    assert {"steps=8", "diffusion,threshold=0.7", "semi_ar,block=8,threshold=0.9",
            "length_prior,threshold=0.7,query_slots=4"} <= {n for n, _ in grid}
    best, results = tune.search(decode_fn, base, 0.5, grid)
    print("\n" + tune.report(best, results, 0.5))
    assert best is not results[0] and best.within_budget and best.wer_change <= 0.5
    assert best.nfe * 2 <= results[0].nfe


def test_write_decode_choice_keeps_other_fields_and_is_atomic(tmp_path):
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump({"gen_len": 64, "batch_size": 4, "cache": "prefix"}))
    cfg = DecodeConfig(gen_len=64, steps=64, block_length=64, threshold=0.7, length_prior=True, query_slots=4,
                       batch_size=4)
    tune.write_decode_choice(tmp_path, cfg)
    got = yaml.safe_load((tmp_path / "decode.yaml").read_text())
    assert got["batch_size"] == 4 and got["gen_len"] == 64 and got["cache"] == "none"  # changed: the choice needs it
    assert (got["threshold"], got["length_prior"], got["query_slots"], got["decoder"]) == (0.7, True, 4, "diffusion")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decode.yaml"]  # no temporary file left
    assert read_decode_defaults(tmp_path).length_prior
    (tmp_path / "decode.yaml").write_text("- not a mapping\n")
    with pytest.raises(CheckpointError):
        tune.write_decode_choice(tmp_path, cfg)
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump({"gen_len": 64, "treshold": 0.5}))
    with pytest.raises(UserError, match="treshold"):  # an invalid file is refused before anything is written
        tune.write_decode_choice(tmp_path, cfg)
    assert yaml.safe_load((tmp_path / "decode.yaml").read_text()) == {"gen_len": 64, "treshold": 0.5}


def test_a_diffusion_choice_keeps_the_model_dirs_semi_ar_block(tmp_path):
    # The demo's decode.yaml: one-block diffusion by default, blocks of 7 for `--decoder semi_ar`.
    # Diffusion ignores block_length, so choosing it must not turn the semi-AR default into one block.
    own = {"gen_len": 14, "block_length": 7, "steps": 14}
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump(own))
    grid = dict(tune.candidates(DecodeConfig(**own), thresholds=(0.7,), query_slots=(4,)))
    for name in ("diffusion,threshold=0.7", "length_prior,threshold=0.7,query_slots=4"):
        tune.write_decode_choice(tmp_path, grid[name])
        got = yaml.safe_load((tmp_path / "decode.yaml").read_text())
        assert (got["block_length"], got["decoder"], got["threshold"]) == (7, "diffusion", 0.7), (name, got)
    assert grid["semi_ar,block=7,threshold=0.7"].block_length == 7


@pytest.mark.slow
def test_tune_command_dry_run_then_write(tmp_path, capsys):
    tok_json = build_tokenizer_json([" ".join(_WORDS)] * 4, tmp_path / "tokenizer.json", vocab_size=120)
    cfg = load_model_config("tiny")
    cfg = dataclasses.replace(cfg, tokens=LLaDATokenizer(tok_json).token_config())
    md = save_model_dir(tmp_path / "model", cfg, init_variables(cfg, jax.random.key(0)), tok_json,
                        decode={"gen_len": 8, "steps": 8, "block_length": 8, "batch_size": 2})
    # random weights: every WER is noise, so a wide budget makes the fewest forwards win
    argv = ["tune", "--model", str(md), "--data", "synthetic:n=2,seed=0,max_s=1", "--thresholds", "0.9",
            "--query-slots", "4", "--budget", "1000"]
    assert main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "| exact |" in out and "chosen: steps=1" in out and "would set" in out
    assert yaml.safe_load((md / "decode.yaml").read_text())["steps"] == 8  # dry run: unchanged
    # decode.yaml exists: refused (before decoding) unless --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert yaml.safe_load((md / "decode.yaml").read_text())["steps"] == 8
    assert main(argv + ["--overwrite"]) == 0
    assert "wrote" in capsys.readouterr().out
    got = read_decode_defaults(md)
    assert (got.steps, got.batch_size, got.gen_len) == (1, 2, 8)
    assert main(["tune", "--model", str(md), "--data", "synthetic:n=1", "--budget", "-1"]) == 2

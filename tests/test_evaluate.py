"""evaluate / cascade on a tiny random MODEL_DIR: files written, numbers consistent."""

import json

import pytest

from whisper_llada_jax.checkpoints.model_dir import load_model_dir
from whisper_llada_jax.cli import main
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.data.sources import SyntheticSource
from whisper_llada_jax.decoding.config import DecodeConfig
from whisper_llada_jax.errors import ConfigError
from whisper_llada_jax.evaluation.evaluate import GRIDS, evaluate, expand_grid, parse_decode_spec
from whisper_llada_jax.evaluation.tables import grid_table
from whisper_llada_jax.evaluation.wer import corpus_wer

DATA = "synthetic:n=5,seed=0,max_s=2"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests._data_helpers import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("evalmodel"))


def test_decode_specs_and_grid_layouts():
    name, cfg = parse_decode_spec("decoder=semi_ar,steps=64,block_length=32,length_buckets=[32,64]")
    assert (cfg.decoder, cfg.steps, cfg.block_length, cfg.length_buckets) == ("semi_ar", 64, 32, (32, 64))
    with pytest.raises(ConfigError):
        parse_decode_spec("stepz=3")
    base = DecodeConfig(gen_len=16, steps=8)
    cells = [c for _, _, c in expand_grid("steps_x_block", base)]
    assert [(c["steps"], c["block_length"]) for c in cells] == [(s, b) for s in (16, 8, 4) for b in (16, 8, 4)]
    decoders = {(c.steps, c.block_length): c.decoder for _, c, _ in expand_grid("steps_x_block", base)}
    assert decoders[(8, 16)] == "diffusion" and decoders[(8, 4)] == "semi_ar"
    masks = expand_grid("masking_x_ratio", base)
    assert len(masks) == 10 and {c.strategy for _, c, _ in masks} == {"diffusion"}
    assert [c.num_chunks for _, c, _ in expand_grid("chunks", base)] == [1, 2, 4, 8]
    with pytest.raises(ConfigError, match="unknown grid"):
        expand_grid("heads_x_tails", base)
    rows = [{"grid": {"steps": s, "block_length": b}, "wer": {"wer": (s + b) / 100}, "mean_nfe": s}
            for s in (8, 4) for b in (16, 8)]
    table = grid_table(rows, *GRIDS["steps_x_block"]).splitlines()
    assert table[0] == "| steps \\ block length | 16 | 8 |"
    assert table[2] == "| 8 | 24.00 (8 NFE) | 16.00 (8 NFE) |"


def test_evaluate_cli_writes_results_and_table(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(model_dir), "--data", DATA, "--out", str(out),
               "--decode", "decoder=semi_ar,gen_len=16,steps=8,block_length=8,batch_size=4"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["decoder=semi_ar,gen_len=16,steps=8,block_length=8,batch_size=4"]
    src = SyntheticSource(n=5, seed=0, max_s=2)
    for r in doc["results"]:
        rows = [json.loads(x) for x in (out / r["hypotheses"]).read_text().splitlines()]
        assert [x["id"] for x in rows] == [src[i]["id"] for i in range(5)]
        assert [x["reference"] for x in rows] == [src[i]["text"] for i in range(5)]
        assert r["wer"] == corpus_wer([x["reference"] for x in rows], [x["hypothesis"] for x in rows]).to_dict()
        assert r["utterances"] == 5 and 0 < r["mean_nfe"] <= 8 and r["rtf"] > 0 and r["utterances_per_s"] > 0
        assert r["first_pass_wer"] is None and r["data"]["kept"] == 5
    md = (out / "results.md").read_text()
    assert "| config | WER % | S | D | I | N | RTF | utt/s | mean NFE |" in md
    assert "decoder=semi_ar" in capsys.readouterr().out


def test_deliberation_scores_first_pass_and_second(model_dir, tmp_path):
    loaded = load_model_dir(model_dir)
    src = SyntheticSource(n=3, seed=2, max_s=2, max_words=5)
    first = {src[i]["id"]: src[i]["text"] if i else "the quick fox" for i in range(3)}
    cfg = DecodeConfig(strategy="diffusion", gen_len=32, steps=4, mask_ratio=0.5, batch_size=4)
    doc = evaluate(loaded, src, [("delib", cfg)], tmp_path, first_pass=first)
    r = doc["results"][0]
    refs = [src[i]["text"] for i in range(3)]
    assert r["first_pass_wer"] == corpus_wer(refs, [first[src[i]["id"]] for i in range(3)]).to_dict()
    rows = [json.loads(x) for x in (tmp_path / r["hypotheses"]).read_text().splitlines()]
    assert [x["first_pass"] for x in rows] == [first[src[i]["id"]] for i in range(3)]
    assert "first-pass WER %" in (tmp_path / "results.md").read_text()


def test_cascade_whisper_first_pass_then_deliberation(model_dir, tmp_path, capsys):
    from whisper_llada_jax.assets import BUNDLED_CLIPS

    out = tmp_path / "cascade"
    rc = main(["cascade", "--first", "bundled:tiny.en", "--model", str(model_dir), "--data", f"manifest:{BUNDLED_CLIPS}",
               "--limit", "3", "--batch-size", "2", "--decode", "strategy=diffusion,gen_len=64,steps=4,batch_size=2",
               "--out", str(out)])
    assert rc == 0
    # clip000 (4.7 s) is longer than the tiny model's 4 s window: skipped by both passes alike,
    # so the first-pass and deliberated WERs are over the same clips
    captured = capsys.readouterr()
    assert "skipped clip000 (too_long)" in captured.err
    first = [json.loads(x) for x in (out / "first_pass.jsonl").read_text().splitlines()]
    refs = [json.loads(x)["text"] for x in BUNDLED_CLIPS.read_text().splitlines()[1:3]]
    assert [f["id"] for f in first] == ["clip001", "clip002"] and [f["reference"] for f in first] == refs
    doc = json.loads((out / "results.json").read_text())
    fp_wer = corpus_wer(refs, [f["first_pass"] for f in first])
    # the real Whisper tiny.en hears these eSpeak clips: well under 100 % WER
    assert doc["first_pass"]["wer"] == fp_wer.to_dict() and fp_wer.wer < 0.6
    assert doc["first_pass"]["kind"] == "whisper" and doc["data"] == f"manifest:{BUNDLED_CLIPS}"
    r = doc["results"][0]
    assert r["first_pass_wer"] == fp_wer.to_dict()
    rows = [json.loads(x) for x in (out / r["hypotheses"]).read_text().splitlines()]
    assert [x["first_pass"] for x in rows] == [f["first_pass"] for f in first]
    assert "first pass (whisper, bundled:tiny.en)" in captured.out
    # the clip the first pass left out is counted where the WER is read
    assert "scored 2 of 3 utterances; skipped: too_long 1" in (out / "results.md").read_text()
    assert [s["id"] for s in doc["skipped"]] == ["clip000"]


def test_grid_run_writes_the_paper_layout(tmp_path, monkeypatch):
    """The grid plumbing with a stand-in decoder (no compile): one result per cell, laid out."""
    import types

    from tests._data_helpers import WordTokenizer
    from whisper_llada_jax.inference import driver

    calls = []

    def fake_run_decode(loaded, batch, cfg, rng):
        calls.append(cfg)
        # "deliberation" that fixes the first pass when the mask ratio is at least 0.5
        return [{"hypothesis": t if cfg.mask_ratio >= 0.5 else f, "tokens": [], "nfe": int(10 * cfg.mask_ratio)}
                for t, f in zip(batch["text"], batch["first_pass"])]

    monkeypatch.setattr(driver, "run_decode", fake_run_decode)
    loaded = types.SimpleNamespace(config=load_model_config("tiny"), tokenizer=WordTokenizer(), path="fake")
    src = SyntheticSource(n=3, seed=5, max_s=1.5)
    first = {src[i]["id"]: "wrong words" for i in range(3)}
    doc = evaluate(loaded, src, [("base", DecodeConfig(strategy="diffusion", gen_len=16, steps=4, batch_size=2))],
                   tmp_path, first_pass=first, grid="masking_x_ratio")
    assert len(doc["results"]) == 10 and {c.batch_size for c in calls} == {2}
    by_cell = {(r["grid"]["masking"], r["grid"]["mask_ratio"]): r for r in doc["results"]}
    assert by_cell[("random", 0.9)]["wer"]["wer"] == 0.0 and by_cell[("random", 0.1)]["wer"]["wer"] > 0.5
    assert by_cell[("low_confidence", 0.3)]["mean_nfe"] == 3.0
    assert all(r["first_pass_wer"] == by_cell[("random", 0.1)]["wer"] for r in doc["results"])
    md = (tmp_path / "results.md").read_text()
    assert "| masking \\ mask ratio | 0.1 | 0.3 | 0.5 | 0.7 | 0.9 |" in md
    assert "| random | " in md and "| low_confidence | " in md


def test_too_long_first_pass_is_cut_reported_and_deliberated(model_dir, tmp_path, capsys):
    """A first pass longer than the canvas is cut to it, named on stderr with a total, and
    deliberated with the others (``deliberate``), the same in ``evaluate`` (where the demo's table
    comes from); the one that fits is not reported."""
    import shutil

    from whisper_llada_jax.assets import BUNDLED_CLIPS
    from whisper_llada_jax.text.first_pass import first_pass_ids

    loaded = load_model_dir(model_dir)
    long_text = "the train to boston leaves at seven " * 6  # 42 words: well past a 16-slot canvas
    assert len(first_pass_ids(loaded.tokenizer, long_text)) > 16
    manifest = tmp_path / "clips.jsonl"
    recs = [r for r in map(json.loads, BUNDLED_CLIPS.read_text().splitlines()) if r["seconds"] < 4][:2]
    manifest.write_text("".join(json.dumps({**r, "id": f"clip{i}"}) + "\n" for i, r in enumerate(recs)))
    for rec in recs:
        shutil.copy(BUNDLED_CLIPS.parent / rec["audio"], tmp_path / rec["audio"])
    fp = tmp_path / "fp.jsonl"
    fp.write_text(json.dumps({"id": "clip0", "hypothesis": long_text}) + "\n"
                  + json.dumps({"id": "clip1", "hypothesis": "my sister bought apples"}) + "\n")
    out = tmp_path / "delib.jsonl"
    rc = main(["deliberate", "--model", str(model_dir), "--manifest", str(manifest), "--first-pass", str(fp),
               "--gen-len", "16", "--steps", "4", "--batch-size", "2", "--output", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "deliberate: the first pass of clip0 has" in err and "cut to the 16-slot canvas" in err
    assert "clip1" not in err and "deliberate: cut 1 of 2 first passes to the 16-slot canvas" in err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["clip0", "clip1"] and all(r["nfe"] >= 1 for r in rows)
    assert rows[0]["first_pass"] == long_text  # the output keeps the first pass as given
    # evaluate (and so the demo's table): cut, reported once per clip, the total per config
    cfg = DecodeConfig(strategy="diffusion", gen_len=16, steps=4, batch_size=2)
    first = {"clip0": long_text, "clip1": "my sister bought apples"}
    doc = evaluate(loaded, f"manifest:{manifest}", [("a", cfg), ("b", cfg)], tmp_path / "eval", first_pass=first)
    err = capsys.readouterr().err
    assert err.count("the first pass of clip0 has") == 1 and err.count("cut 1 of 2 first passes") == 2
    hyps = [json.loads(x) for x in (tmp_path / "eval" / doc["results"][0]["hypotheses"]).read_text().splitlines()]
    assert hyps[0]["first_pass_tokens"] > 16 >= hyps[1]["first_pass_tokens"] and hyps[0]["nfe"] >= 1

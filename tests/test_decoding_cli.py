"""``whisper-llada deliberate``: arguments, examples and input errors (no model is loaded)."""

import json

import pytest

from whisper_llada_jax import cli
from whisper_llada_jax.data.manifest import read_first_passes

MANIFEST = "tests/data/clips/manifest.jsonl"


def test_help_lists_the_flags_and_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["deliberate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--first-pass", "--strategy", "--masking", "--mask-ratio", "--num-chunks", "--steps",
                 "--text-only", "--edit-length", "examples:"):
        assert flag in out


def test_missing_first_pass_and_bad_config_are_one_line_errors(tmp_path, capsys):
    fp = tmp_path / "fp.jsonl"
    fp.write_text(json.dumps({"id": "clip000", "hypothesis": "the train to boston"}) + "\n")
    rc = cli.main(["deliberate", "--model", str(tmp_path / "none"), "--manifest", MANIFEST, "--first-pass", str(fp)])
    err = capsys.readouterr().err
    assert rc == 2 and "no first pass for" in err and "clip001" in err
    rc = cli.main(["deliberate", "--model", "x", "--manifest", MANIFEST, "--first-pass", str(fp), "--mask-ratio", "2"])
    assert rc == 2 and "mask_ratio" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{\"id\": 1}\nnot json\n")
    with pytest.raises(Exception, match="bad.jsonl:1"):
        read_first_passes(bad)

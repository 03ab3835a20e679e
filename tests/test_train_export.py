"""From a training run to a MODEL_DIR: the global batch split, `export --checkpoint --step
best|latest|N`, the trainer's final MODEL_DIR streamed from the shards, validation WER during
training, and profiler traces.

One tiny run (6 steps on 8 CPU devices) serves every test of the module; its validation loss is
scripted so that the best step is not the latest.
"""

import json

import numpy as np
import pytest

from whisper_llada_jax.errors import ConfigError

DECODE = "gen_len=16,steps=4,block_length=16,batch_size=4"
VAL_LOSS = {2: 3.0, 4: 1.0, 6: 2.0}  # scripted: the best step is 4


# --------------------------------------------------------------------------- global batch
def test_batch_layout_splits_the_global_batch_and_names_the_field():
    from whisper_llada_jax.training.batch import batch_layout

    # the reference recipe, 32 global, on each target machine
    for hosts, ways, per_host, per_device in [(1, 8, 32, 4), (1, 4, 32, 8), (4, 16, 8, 2), (8, 32, 4, 1)]:
        b = batch_layout(32, hosts, ways, 1)
        assert (b.per_host, b.per_device, b.micro_batch) == (per_host, per_device, per_device)
    b = batch_layout(32, 4, 16, 2)
    assert b.micro_batch == 1
    assert b.line() == ("global batch 32 = 4 host(s) x 8 per host = 16 data-parallel device(s) x 2 per device; "
                        "grad_accum 2 (micro-batch 1 per device)")
    with pytest.raises(ConfigError, match=r"data.batch_size: the global batch 30 does not split over 4 hosts"):
        batch_layout(30, 4, 2, 1)
    with pytest.raises(ConfigError, match=r"data.batch_size: the global batch 32 does not split over data x fsdp = 64"):
        batch_layout(32, 8, 64, 1)
    with pytest.raises(ConfigError, match=r"optim.grad_accum=3 does not divide the per-device batch 4"):
        batch_layout(32, 1, 8, 3)


def test_paper_config_batch_is_global_on_every_target():
    """The paper config's batch (32) splits on each documented machine without overrides."""
    from whisper_llada_jax.training.batch import batch_layout
    from whisper_llada_jax.training.config import load_train_config
    from whisper_llada_jax.training.trainer import load_data_config

    cfg = load_train_config("paper")
    global_batch = load_data_config(cfg).batch_size
    assert global_batch == 32
    # 8-GPU node, v5p-8 (4 chips, 1 host), v5e-16 (16 chips, 4 hosts), v5p-64 (32 chips, 8 hosts)
    for chips, hosts in [(8, 1), (4, 1), (16, 4), (32, 8)]:
        assert batch_layout(global_batch, hosts, chips, cfg.optim.grad_accum).per_device * chips == 32


def test_data_config_for_hosts():
    from whisper_llada_jax.data.config import DataConfig
    from whisper_llada_jax.errors import ConfigError

    assert DataConfig(batch_size=32).for_hosts(8).batch_size == 4
    with pytest.raises(ConfigError, match="does not split over 3 hosts"):
        DataConfig(batch_size=32).for_hosts(3)


# --------------------------------------------------------------------------- checkpoint metrics
def test_best_step_uses_the_selected_metric(tmp_path):
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.config import CheckpointConfig

    cfg = CheckpointConfig(async_save=False, max_to_keep=10, save_interval_steps=1, best_metric="val_wer")
    ck = Checkpointer(tmp_path, cfg, with_data=False)
    for step, m in [(1, {"val_loss": 2.0, "val_wer": 0.5}), (2, {"val_loss": 1.0}), (3, None),
                    (4, {"val_loss": 1.5, "val_wer": 0.3}), (5, {"val_loss": 3.0, "val_wer": 0.4})]:
        ck.save(step, {"x": np.full((2,), step, np.float32)}, metrics=m, force=True)
    ck.wait()
    assert ck.best_step() == 4 and ck.best_step("val_loss") == 2
    ck.close()
    ro = Checkpointer(tmp_path, cfg, with_data=False, read_only=True)
    assert ro.best_step() == 4 and ro.metrics(5) == {"val_loss": 3.0, "val_wer": 0.4}
    ro.close()


def test_remote_checkpoint_dirs_reach_orbax_as_given(tmp_path, monkeypatch):
    """checkpoint.dir=gs://bucket/run on a pod: Orbax (and export --checkpoint) get the URL, not
    pathlib's `$PWD/gs:/bucket/run`; a relative local directory is made absolute. Orbax's manager
    is replaced by a recorder: no storage is touched."""
    from whisper_llada_jax import config as config_lib
    from whisper_llada_jax.training import checkpointing
    from whisper_llada_jax.training.config import CheckpointConfig, load_train_config
    from whisper_llada_jax.training.export import _write_meta, open_run

    given = []

    class Recorder:
        def __init__(self, directory, **kw):
            given.append(directory)

    monkeypatch.setattr(checkpointing, "_SealingManager", Recorder)
    monkeypatch.chdir(tmp_path)
    for directory, want in [("gs://bucket/run/checkpoints", "gs://bucket/run/checkpoints"),
                            ("s3://bucket/run", "s3://bucket/run"), ("runs/x/checkpoints", f"{tmp_path}/runs/x/checkpoints")]:
        ck = checkpointing.Checkpointer(directory, CheckpointConfig(), read_only=True)
        assert str(ck.directory) == str(given[-1]) == want
        assert str(ck.directory / "4" / checkpointing.INTEGRITY_FILE) == f"{want}/4/{checkpointing.INTEGRITY_FILE}"
    # a run trained with a remote checkpoint.dir, as `export --checkpoint RUN` reads it
    cfg = load_train_config("tiny", ["checkpoint.dir=gs://bucket/run1", f"workdir={tmp_path / 'run'}"])
    _write_meta(tmp_path / "run" / "run", cfg, config_lib.load_model_config("tiny"), "{}", None)
    assert str(open_run(tmp_path / "run").checkpoint_dir) == "gs://bucket/run1"


def test_bad_eval_and_profile_fields_fail_at_start():
    from whisper_llada_jax.training.config import load_train_config

    for over, msg in [(["checkpoint.best_metric=val_wer"], "needs validation WER"),
                      (["eval.wer_every=-1"], "eval.wer_every=-1"),
                      (["profile_steps=[5,5]"], "profile_steps: [5, 5]"),
                      (["profile_steps=[3]"], "profile_steps: [3]")]:
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            load_train_config("tiny", over)  # the config itself refuses them, as it is built


def test_train_profile_steps_flag(capsys):
    from whisper_llada_jax.cli import build_parser, main
    from whisper_llada_jax.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--config", "tiny", "--profile-steps", "10:15"])
    assert config_from_args(args).profile_steps == (10, 15)
    assert main(["train", "--config", "tiny", "--profile-steps", "15"]) == 2
    assert "--profile-steps '15': expected START:STOP" in capsys.readouterr().err


def test_wer_validator_scores_the_subset_without_padding_rows(tmp_path, monkeypatch):
    """The first eval.wer_utterances utterances, padding rows of the last batch excluded."""
    from whisper_llada_jax.inference import driver
    from whisper_llada_jax.training.config import load_train_config
    from whisper_llada_jax.training.trainer import load_data_config, load_tokenizer, model_config
    from whisper_llada_jax.training.validation import WerValidator

    tok_path = _tokenizer(tmp_path)
    cfg = load_train_config("tiny", [f"tokenizer={tok_path}", "eval.wer_every=1", "eval.wer_utterances=5",
                                     f"eval.decode={DECODE}"])
    mcfg = model_config(cfg)
    seen = []

    def fake_decode(loaded, batch, dcfg, rng):
        # right on even rows of the subset, one substituted word on odd rows
        seen.append(len(batch["valid"]))
        return [{"hypothesis": t if i % 2 == 0 else "zzz " + " ".join(t.split()[1:]),
                 "tokens": [], "nfe": 0} for i, t in enumerate(batch["text"])]

    monkeypatch.setattr(driver, "run_decode", fake_decode)
    v = WerValidator(cfg, load_data_config(cfg), mcfg, None, load_tokenizer(cfg, mcfg), None)
    w = v(variables=None)
    assert seen == [4, 4]  # 5 utterances in batches of 4: the second batch has 3 padding rows
    assert w.utterances == 5 and w.substitutions == 2  # rows 1, 3 of batch 1 (row 0 of batch 2 is even)


# --------------------------------------------------------------------------- one tiny run
def _tokenizer(tmp_path):
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    src = parse_source("synthetic:n=16,seed=0")
    return build_tokenizer_json([src[i]["text"] for i in range(len(src))], tmp_path / "tokenizer.json", vocab_size=100)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import jax

    from whisper_llada_jax.checkpoints import model_dir as model_dir_lib
    from whisper_llada_jax.training import trainer as trainer_lib
    from whisper_llada_jax.training.config import load_train_config

    root = tmp_path_factory.mktemp("export")
    tok = _tokenizer(root)
    cfg = load_train_config("tiny", [
        f"workdir={root / 'run'}", f"tokenizer={tok}", "steps=6", "eval_interval=2", "log_interval=2",
        "checkpoint.save_interval_steps=2", "checkpoint.max_to_keep=5", "checkpoint.async_save=false",
        "eval.wer_every=3", "eval.wer_utterances=4", f"eval.decode={DECODE}", "profile_steps=[2,4]",
        "progress_bar=false", "memory_report=false"])
    written = []
    original_save = model_dir_lib.save_model_dir

    def save(out, config, variables, *a, **kw):  # what the trainer hands the MODEL_DIR writer
        written.append([(type(x), len(x.sharding.device_set) if isinstance(x, jax.Array) else 0)
                        for x in jax.tree.leaves(variables)])
        return original_save(out, config, variables, *a, **kw)

    scripted = iter(VAL_LOSS.values())
    lines = []
    mp = pytest.MonkeyPatch()
    mp.setattr(model_dir_lib, "save_model_dir", save)
    mp.setattr(trainer_lib.Trainer, "evaluate", lambda self, state: next(scripted))
    try:
        t = trainer_lib.Trainer(cfg, print_fn=lines.append)
        summary = t.run()
        t.close()
    finally:
        mp.undo()
    return root, t, summary, lines, written


def test_trainer_writes_final_model_dir_from_the_shards(run):
    import jax

    root, t, summary, lines, written = run
    assert lines[0].startswith("global batch 8 = 1 host(s) x 8 per host = 8 data-parallel device(s) x 1 per device")
    assert summary.model_dir == str(root / "run" / "model")
    # one call, with the device arrays of the state (no host copy of the tree was made first)
    assert len(written) == 1 and len(written[0]) == len(jax.tree.leaves(t.state.variables))
    assert all(issubclass(tp, jax.Array) and n == 8 for tp, n in written[0])


def _load(path):
    import jax

    from whisper_llada_jax.checkpoints.model_dir import load_model_dir

    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(load_model_dir(path).variables)}


def _restored(t, step):
    import jax

    from whisper_llada_jax.training.checkpointing import Checkpointer

    ck = Checkpointer(t.ckpt.directory, t.cfg.checkpoint, with_data=False, read_only=True)
    state = ck.restore(step, t.setup.abstract)
    ck.close()
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.variables)}


@pytest.mark.parametrize("step,want,mesh", [("best", 4, []), ("latest", 6, []),
                                            ("2", 2, ["mesh.data=2", "mesh.fsdp=4"])])  # another mesh than the run's
def test_export_checkpoint_step_to_model_dir(run, step, want, mesh, capsys):
    from whisper_llada_jax.cli import main

    root, t, *_ = run
    out = root / f"exported_{step}"
    assert main(["export", "--checkpoint", str(root / "run"), "--step", step, "--format", "model-dir",
                 "--out", str(out), *mesh]) == 0
    assert f"step {want}" in capsys.readouterr().out
    got, ref = _load(out), _restored(t, want)
    assert sorted(got) == sorted(ref) and got
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    if step == "latest":  # the trainer's own MODEL_DIR is the same step
        final = _load(root / "run" / "model")
        for k in ref:
            np.testing.assert_array_equal(got[k], final[k], err_msg=k)


def test_export_checkpoint_to_reference_pth_and_errors(run, capsys):
    import torch

    from whisper_llada_jax.cli import main

    root, t, *_ = run
    out = root / "best.pth"
    assert main(["export", "--checkpoint", str(root / "run"), "--step", "best", "--format", "reference-pth",
                 "--out", str(out)]) == 0
    sd = torch.load(out, map_location="cpu", weights_only=False)
    assert sd and not list(root.glob(".best.pth.step*"))  # the temporary MODEL_DIR is gone
    for args, msg in [(["--step", "5"], "no step 5; kept steps: [2, 4, 6]"),
                      (["--step", "soon"], "--step 'soon': expected best, latest or a step number"),
                      (["--step", "best", "optim.peak_lr=1"], "only mesh.* and distributed.* overrides apply")]:
        rc = main(["export", "--checkpoint", str(root / "run"), "--format", "model-dir", "--out",
                   str(root / "never"), *args])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err, err
    assert not (root / "never").exists()
    rc = main(["export", "--checkpoint", str(root / "run" / "checkpoints"), "--format", "model-dir",
               "--out", str(root / "never")])
    assert rc == 2 and "not a training run" in capsys.readouterr().err


def _scalars(logdir, tag):
    """{step: value} of ``tag`` in the TensorBoard event files (TFRecord framing of Event protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (n,) = struct.unpack("<Q", raw[pos:pos + 8])
            ev = Event.FromString(raw[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                if v.tag == tag:
                    out[ev.step] = v.simple_value
    return out


def test_validation_wer_logged_and_recorded_with_the_checkpoint(run):
    root, t, summary, lines, _ = run
    wer = _scalars(root / "run" / "tensorboard", "val/wer")
    assert sorted(wer) == [3, 6]
    assert summary.final_val_wer == pytest.approx(wer[6]) and summary.best_val_wer == pytest.approx(min(wer.values()))
    assert any(line.startswith("step 3 validation WER") for line in lines)
    assert t.ckpt.metrics(6) == pytest.approx({"val_loss": VAL_LOSS[6], "val_wer": wer[6]})
    assert t.ckpt.metrics(4) == pytest.approx({"val_loss": VAL_LOSS[4]})
    assert json.loads((root / "run" / "summary.json").read_text())["final_val_wer"] == pytest.approx(wer[6])


@pytest.mark.slow  # compiles the decoder for one device (~15 s on 2 idle cores)
def test_profile_traces_of_train_steps_and_evaluate(run, capsys):
    from whisper_llada_jax.cli import main

    root, t, summary, lines, _ = run
    traces = list((root / "run" / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert list(traces[0].parent.glob("perfetto_trace.json.gz"))
    assert any(line.startswith("profiler trace of steps up to 4") for line in lines)

    prof = root / "eval_profile"
    assert main(["evaluate", "--model", str(root / "run" / "model"), "--data", "synthetic:n=2,seed=1,min_s=0.3,max_s=0.7",
                 "--decode", DECODE, "--out", str(root / "eval"), "--profile", str(prof)]) == 0
    assert f"profiler trace in {prof}" in capsys.readouterr().out
    assert list(prof.glob("plugins/profile/*/*.xplane.pb"))


def test_decode_defaults_never_decode_past_the_trained_slots():
    """A MODEL_DIR's decode.yaml from the trainer: a group-span model trained on fewer slots than
    the decoder's default canvas (128) decodes on its max_response_len (two slots per step, as the
    default), not on 128 slots that no row ever reached; the paper's 128 keeps the defaults; a
    canvas model decodes and deliberates on its canvas; the causal baseline sets nothing."""
    from whisper_llada_jax.data.config import DataConfig
    from whisper_llada_jax.training.config import TrainConfig
    from whisper_llada_jax.training.export import decode_defaults

    data = lambda r: DataConfig(max_response_len=r)  # noqa: E731
    assert decode_defaults(TrainConfig(), data(16)) == {"gen_len": 16, "block_length": 16, "steps": 8}
    assert decode_defaults(TrainConfig(loss_span="batch_longest"), data(15))["steps"] == 7
    assert decode_defaults(TrainConfig(), data(128)) is None
    assert decode_defaults(TrainConfig(loss_span="canvas"), data(24)) == {
        "gen_len": 24, "block_length": 24, "steps": 24, "deliberation_canvas": "training", "confidence_fill": "mask"}
    assert decode_defaults(TrainConfig(objective="autoregressive", loss_span="canvas"), data(16)) is None

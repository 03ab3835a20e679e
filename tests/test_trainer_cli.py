"""`whisper-llada train`: bad configs fail at start-up with one line; NaN stops the run."""

import numpy as np
import pytest

from whisper_llada_jax.cli import main
from whisper_llada_jax.training.config import load_train_config
from whisper_llada_jax.training.trainer import NonFiniteLossError, Trainer, model_config, synthetic_batch


@pytest.mark.parametrize("override,msg", [
    ("bogus=1", "unknown field(s) ['bogus']"),
    ("optim.lr=1", "unknown field(s) ['lr'] for OptimConfig"),
    ("data.batchsize=4", "unknown field(s) ['batchsize'] for DataConfig"),
    ("mesh.data=3", "need 3 devices, there are 8"),
    ("mesh.fsdp=-1", "at most one"),
    ("data.batch_size=6", "does not split over data x fsdp = 8"),
    ("optim.trainable=[nothing/.*]", "no parameter matches"),
])
def test_bad_config_fails_at_start_with_one_line(override, msg, capsys, tmp_path):
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    tok = build_tokenizer_json(["one two three"], tmp_path / "tokenizer.json", vocab_size=60)
    rc = main(["train", "--config", "tiny", f"workdir={tmp_path}", f"tokenizer={tok}", override])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err, err
    assert "Traceback" not in err and err.startswith("error: ")


def test_paper_config_documents_every_field():
    from whisper_llada_jax.config import to_dict

    cfg = load_train_config("paper")
    assert cfg.optim.peak_lr == 3e-5 and cfg.optim.warmup_steps == 3000 and cfg.optim.decay_steps == 360000
    text = (load_train_config.__globals__["config_lib"].CONFIG_DIR / "train" / "paper.yaml").read_text()
    for key in to_dict(cfg):
        assert f"\n{key}:" in text or text.startswith(f"{key}:"), key


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = load_train_config("tiny", [f"workdir={tmp_path}", "steps=8", "checkpoint.save_interval_steps=2",
                                     "checkpoint.async_save=false", "eval_interval=0", "log_interval=1",
                                     "progress_bar=false", "memory_report=false"])
    mcfg = model_config(cfg)

    def batches():
        for i in range(100):
            b = synthetic_batch(mcfg, 8, 16, seed=i)
            if i == 4:  # the 5th update sees NaN audio features
                b["features"][0, 0, 0] = np.nan
            yield b

    lines = []
    t = Trainer(cfg, train_iter=batches(), eval_batches=lambda: iter(()), print_fn=lines.append)
    with pytest.raises(NonFiniteLossError, match=r"at step 5; stopped, the last good checkpoint \(step 4\)"):
        t.run()
    assert t.ckpt.all_steps() == [2, 4]
    t.close()


# --------------------------------------------------------------------------- launchers
LAUNCH = load_train_config.__globals__["config_lib"].CONFIG_DIR.parent / "launch"
ECHO = '#!/usr/bin/env bash\nfor a in "$@"; do printf "%s\\0" "$a"; done\n'


def _stubs(tmp_path):
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"gcloud": ECHO, "whisper-llada": ECHO, "scontrol": "#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n",
                       "srun": '#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n'}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WHISPER_LLADA": str(bin_dir / "whisper-llada"),
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    return env


def _parse_train(argv):
    from whisper_llada_jax.cli import build_parser
    from whisper_llada_jax.commands.train import config_from_args

    args = build_parser().parse_args(argv)
    assert args.command == "train"
    return config_from_args(args)


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gpu_node.sh", "slurm.sbatch"])
def test_launchers_are_valid_bash_and_pass_real_cli_arguments(script, tmp_path):
    import shlex
    import subprocess

    path = LAUNCH / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    env = _stubs(tmp_path)
    train_args = ["--config", "paper", "mesh.fsdp=8", "checkpoint.dir=/ckpt/run 1"]
    if script == "tpu_pod.sh":
        cmd = ["bash", str(path), "my-tpu", "us-east5-a", "--project", "p", "--", *train_args]
    elif script == "gpu_node.sh":
        cmd = ["bash", str(path), "--gpus", "0,1", "--", *train_args]
    else:
        cmd = ["bash", str(path), *train_args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.split("\0")[:-1]
    if script == "tpu_pod.sh":
        assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in argv
        remote = shlex.split(argv[argv.index("--command") + 1])
        argv = remote[remote.index("train"):remote.index("2>&1")]
    cfg = _parse_train(argv)
    assert cfg.mesh.fsdp == 8 and cfg.checkpoint.dir == "/ckpt/run 1" and cfg.optim.warmup_steps == 3000
    if script == "slurm.sbatch":
        d = cfg.distributed
        assert (d.coordinator_address, d.num_processes, d.process_id) == ("node-a:29500", 2, 1)

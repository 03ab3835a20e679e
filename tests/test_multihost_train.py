"""Two processes x 4 CPU devices (jax.distributed, gloo collectives) train, are killed after a
checkpoint, restart, resume, and end bit-identical to an uninterrupted two-process run. The
global batch (``data.batch_size=8``) is split 4 per host, and the final MODEL_DIR is written
one leaf at a time (never a whole-tree all-gather).

Each process runs this file as a script: ``python THIS MODE WORKDIR TOKENIZER PROCESS_ID PORT``.
"""

import os
import signal
import sys

import numpy as np
import pytest

from tests import _multiprocess as mp

STEPS = 4


def _worker(mode, workdir, tokenizer, pid, port):
    mp.worker_setup()
    import jax
    from jax.experimental import multihost_utils

    from whisper_llada_jax.training import trainer as trainer_lib
    from whisper_llada_jax.training.config import load_train_config

    cfg = load_train_config("tiny", [
        f"workdir={workdir}", f"tokenizer={tokenizer}", f"steps={STEPS}", "data.batch_size=8",
        "checkpoint.save_interval_steps=2", "eval_interval=0", "progress_bar=false", "log_interval=1",
        "memory_report=false", *mp.distributed_args(pid, port)])
    if mode == "killed":
        original = trainer_lib.Trainer._global
        calls = {"n": 0}

        def global_batch(self, batch):
            calls["n"] += 1
            if calls["n"] == 3:  # step 2's checkpoint is committed: now both hosts die
                self.ckpt.wait()
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch)

        trainer_lib.Trainer._global = global_batch
    from whisper_llada_jax.checkpoints import model_dir as model_dir_lib

    gathered = []
    original_gather = model_dir_lib._gather_to_process_0

    def gather(x, *a, **kw):  # what the final MODEL_DIR write gathers: one leaf (an array) per call
        gathered.append(isinstance(x, jax.Array))
        return original_gather(x, *a, **kw)

    model_dir_lib._gather_to_process_0 = gather
    t = trainer_lib.Trainer(cfg)
    assert t.train_iter.get_state is not None  # the real per-host pipeline
    summary = t.run()
    model_dir_lib._gather_to_process_0 = original_gather
    with open(os.path.join(workdir, f"gathers{pid}.txt"), "w") as f:
        f.write(f"{len(gathered)} {all(gathered)}")
    params = multihost_utils.process_allgather(t.state.trainable, tiled=True)
    t.close()
    if pid == 0:
        leaves = jax.tree_util.tree_leaves_with_path(params)
        np.savez(os.path.join(workdir, "params.npz"),
                 **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
        with open(os.path.join(workdir, "start.txt"), "w") as f:
            f.write(str(summary.start_step))


def _launch(mode, workdir, tokenizer):
    port = mp.free_port()
    procs = mp.start(__file__, [[mode, str(workdir), str(tokenizer), str(i), str(port)] for i in range(2)])
    outs = [p.communicate(timeout=900) for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_two_processes_resume_after_kill_equal_uninterrupted(tmp_path):
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    src = parse_source("synthetic:n=16,seed=0")
    tok = build_tokenizer_json([src[i]["text"] for i in range(len(src))], tmp_path / "tokenizer.json", vocab_size=100)

    rcs, outs = _launch("straight", tmp_path / "straight", tok)
    assert rcs == [0, 0], outs[0][1][-3000:]
    assert "global batch 8 = 2 host(s) x 4 per host = 8 data-parallel device(s) x 1 per device" in outs[0][0]
    for pid in (0, 1):  # the tiny model's MODEL_DIR has 40+ leaves, each gathered on its own
        n, leaves_only = (tmp_path / "straight" / f"gathers{pid}.txt").read_text().split()
        assert int(n) > 10 and leaves_only == "True"
    assert (tmp_path / "straight" / "model" / "params.safetensors").is_file()
    rcs, outs = _launch("killed", tmp_path / "resumed", tok)
    assert rcs == [-signal.SIGKILL] * 2, outs[0][1][-3000:]
    assert not (tmp_path / "resumed" / "params.npz").exists()
    rcs, outs = _launch("resume", tmp_path / "resumed", tok)
    assert rcs == [0, 0], outs[0][1][-3000:]
    assert (tmp_path / "resumed" / "start.txt").read_text() == "2"

    want = np.load(tmp_path / "straight" / "params.npz")
    got = np.load(tmp_path / "resumed" / "params.npz")
    assert sorted(want.files) == sorted(got.files) and want.files
    for k in want.files:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))

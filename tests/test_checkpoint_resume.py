"""Exact resume: SIGKILL in the middle of an async save, SIGTERM, restore onto another mesh.

The killed runs are subprocesses running this file as a script (``python THIS MODE WORKDIR
TOKENIZER``); everything else runs in the test process. Resumed parameters must be
bit-identical to an uninterrupted run (same CPU, same mesh, same data order).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STEPS = 6


def _cfg(workdir, tokenizer, *extra):
    from whisper_llada_jax.training.config import load_train_config

    return load_train_config("tiny", [f"workdir={workdir}", f"tokenizer={tokenizer}", f"steps={STEPS}",
                                      "checkpoint.save_interval_steps=2", "checkpoint.max_to_keep=5",
                                      "eval_interval=0", "progress_bar=false", "log_interval=2",
                                      "memory_report=false", *extra])


def _make_tokenizer(path):
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    src = parse_source("synthetic:n=16,seed=0")
    return build_tokenizer_json([src[i]["text"] for i in range(len(src))], path, vocab_size=100)


def _params(state):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.trainable))]


def _worker(mode: str, workdir: str, tokenizer: str) -> None:
    """Runs in a subprocess: trains and dies as ``mode`` says."""
    import orbax.checkpoint as ocp

    from whisper_llada_jax.training import trainer as trainer_lib

    if mode == "sigkill_mid_save":
        # Die inside Orbax's background finalisation of step 4: its files are written but the
        # step is not committed yet, which is the worst moment for a crash.
        original = ocp.CheckpointManager._finalize

        def finalize(self, step, *a, **kw):
            if step == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, step, *a, **kw)

        ocp.CheckpointManager._finalize = finalize
    elif mode == "sigterm":
        original_global = trainer_lib.Trainer._global
        calls = {"n": 0}

        def global_batch(self, batch):
            calls["n"] += 1
            if calls["n"] == 3:  # a preemption notice arrives during step 3 (not a save step)
                os.kill(os.getpid(), signal.SIGTERM)
            return original_global(self, batch)

        trainer_lib.Trainer._global = global_batch
    trainer_lib.train(_cfg(workdir, tokenizer))


def _spawn(mode, workdir, tokenizer):
    env = dict(os.environ)
    return subprocess.run([sys.executable, __file__, mode, str(workdir), str(tokenizer)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from whisper_llada_jax.training.trainer import Trainer

    root = tmp_path_factory.mktemp("resume")
    tok = _make_tokenizer(root / "tokenizer.json")
    t = Trainer(_cfg(root / "straight", tok), print_fn=lambda s: None)
    t.run()
    t.close()
    return root, tok, _params(t.state), t


def _resume(workdir, tok):
    from whisper_llada_jax.training.trainer import Trainer

    t = Trainer(_cfg(workdir, tok), print_fn=lambda s: None)
    summary = t.run()
    t.close()
    return summary, _params(t.state)


def test_sigkill_during_async_save_keeps_previous_and_resumes_exactly(setup):
    root, tok, want, _ = setup
    work = root / "killed"
    proc = _spawn("sigkill_mid_save", work, tok)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.config import CheckpointConfig

    ck = Checkpointer(work / "checkpoints", CheckpointConfig())
    assert ck.all_steps() == [2]  # step 4 was half written: never visible as a checkpoint
    ck.close()
    summary, got = _resume(work, tok)
    assert summary.start_step == 2 and summary.steps == STEPS
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_then_resume_is_exact(setup):
    root, tok, want, _ = setup
    work = root / "term"
    proc = _spawn("sigterm", work, tok)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "preempted: saved step 3" in proc.stdout
    # the saved step is also a MODEL_DIR, written after the save committed
    assert f"MODEL_DIR: {work / 'model-latest'} (the latest step; preempted)" in proc.stdout
    assert not (work / "model").exists()
    _check_model_dir_is_step(work / "model-latest", work / "checkpoints", 3, setup[3])
    summary, got = _resume(work, tok)
    assert summary.start_step == 3
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _check_model_dir_is_step(model_dir, ckdir, step, t):
    import jax

    from whisper_llada_jax.checkpoints.model_dir import load_model_dir
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.config import CheckpointConfig

    ck = Checkpointer(ckdir, CheckpointConfig(), with_data=False, read_only=True)
    want = jax.tree_util.tree_leaves_with_path(ck.restore(step, t.setup.abstract).variables)
    ck.close()
    got = dict(jax.tree_util.tree_leaves_with_path(load_model_dir(model_dir).variables))
    assert len(got) == len(want)
    for k, v in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v), err_msg=jax.tree_util.keystr(k))


def test_restore_onto_a_smaller_mesh(setup):
    import jax

    from whisper_llada_jax.training import mesh as mesh_lib
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.config import CheckpointConfig, MeshConfig
    from whisper_llada_jax.training.state import setup_state
    from whisper_llada_jax.training.trainer import model_init_fn

    root, tok, want, t = setup
    mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    with jax.set_mesh(mesh):
        s = setup_state(model_init_fn(t.model, t.mcfg, 16), mesh, mesh_lib.rules(MeshConfig()), t.cfg.optim, seed=5)
    ck = Checkpointer(root / "straight" / "checkpoints", CheckpointConfig(), with_data=False)
    state = ck.restore(STEPS, s.abstract)
    ck.close()
    assert int(state.step) == STEPS
    assert all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(state.trainable))
    for a, b in zip(_params(state), want):
        np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import conftest  # noqa: F401  (same device setup as the tests)

    _worker(*sys.argv[1:4])

"""Exact resume: SIGKILL in the middle of an async save, SIGTERM, restore onto another mesh,
a damaged latest checkpoint, imports that race the data threads, and 12 SIGKILLs in a row.

The killed runs are subprocesses running this file as a script (``python THIS MODE WORKDIR
TOKENIZER [OVERRIDE...]``); everything else runs in the test process. Resumed parameters must
be bit-identical to an uninterrupted run (same CPU, same mesh, same data order).
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# Every test here trains in subprocesses or through the module's training fixture.
pytestmark = pytest.mark.slow

STEPS = 6


def _cfg(workdir, tokenizer, *extra):
    from whisper_llada_jax.config import with_defaults
    from whisper_llada_jax.training.config import load_train_config

    return load_train_config("tiny", with_defaults([f"workdir={workdir}", f"tokenizer={tokenizer}", f"steps={STEPS}",
                                                    "checkpoint.save_interval_steps=2", "checkpoint.max_to_keep=5",
                                                    "eval_interval=0", "progress_bar=false", "log_interval=2",
                                                    "memory_report=false"], extra))


def _make_tokenizer(path):
    from whisper_llada_jax.data.sources import parse_source
    from whisper_llada_jax.text.llada_tokenizer import build_tokenizer_json

    src = parse_source("synthetic:n=16,seed=0")
    return build_tokenizer_json([src[i]["text"] for i in range(len(src))], path, vocab_size=100)


def _params(state):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.trainable))]


def _worker(mode: str, workdir: str, tokenizer: str, *extra: str) -> None:
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
    elif mode in ("sigint", "sigint_twice"):
        # Ctrl-C as from a terminal, even where this test runs with SIGINT ignored (started in the
        # background), which a child inherits and the checkpointer rightly keeps.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        original_global = trainer_lib.Trainer._global
        calls = {"n": 0}

        def global_batch(self, batch):
            calls["n"] += 1
            if calls["n"] == 3:  # Ctrl-C during step 3 (not a save step); twice: stop at once
                for _ in range(2 if mode == "sigint_twice" else 1):
                    os.kill(os.getpid(), signal.SIGINT)
            return original_global(self, batch)

        trainer_lib.Trainer._global = global_batch
    elif mode == "imports":
        imported_off_main = _record_imports_off_main_thread()
    trainer_lib.train(_cfg(workdir, tokenizer, *extra))
    if mode == "imports":
        print("IMPORTS " + json.dumps({"torch": "torch" in sys.modules, "off_main": sorted(imported_off_main)}))


# Packages whose import from a data thread raced the main thread (the restart crash).
HEAVY = ("torch", "tensorboardX", "librosa", "scipy", "numba", "soundfile", "soxr", "audioread")


def _record_imports_off_main_thread() -> set:
    """Records every heavy package first imported outside the main thread."""
    import importlib.abc
    import threading

    seen: set = set()

    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY and threading.current_thread() is not threading.main_thread():
                seen.add(name)
            return None  # the normal finders import it

    sys.meta_path.insert(0, Recorder())
    return seen


def _spawn(mode, workdir, tokenizer, *extra):
    env = dict(os.environ)
    return subprocess.run([sys.executable, __file__, mode, str(workdir), str(tokenizer), *extra], env=env,
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


def test_ctrl_c_saves_the_step_a_second_stops_at_once_and_both_resume_exactly(setup):
    root, tok, want, _ = setup
    work = root / "ctrl_c"
    proc = _spawn("sigint", work, tok)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "interrupted (Ctrl-C): saved step 3" in proc.stdout and "Ctrl-C again to stop at once" in proc.stderr
    summary, got = _resume(work, tok)
    assert summary.start_step == 3
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    work = root / "ctrl_c_twice"
    proc = _spawn("sigint_twice", work, tok)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    assert not any(p.name.endswith("orbax-checkpoint-tmp") for p in (work / "checkpoints").iterdir())
    summary, got = _resume(work, tok)
    assert summary.start_step == 2  # the last complete save
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

    from whisper_llada_jax import mesh as mesh_lib
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


def test_restart_imports_nothing_heavy_off_the_main_thread(setup):
    """The restart crash: a data thread's first `import librosa` raced the main thread's import of
    torch (through tensorboardX). Restarted, training must not import torch at all, and no
    heavy package may be first imported by a thread other than the main one."""
    root, tok, _, _ = setup
    work = root / "imports"
    shutil.copytree(root / "straight", work)
    proc = _spawn("imports", work, tok, f"steps={STEPS + 2}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {work / 'checkpoints'}/{STEPS}" in proc.stdout
    report = json.loads(proc.stdout.split("IMPORTS ", 1)[1].splitlines()[0])
    assert report == {"torch": False, "off_main": []}


def _truncate_largest(folder: Path) -> Path:
    victim = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    return victim


def test_damaged_latest_checkpoints_fall_back_to_the_newest_intact_step(setup):
    root, tok, want, _ = setup
    work = root / "damaged"
    shutil.copytree(root / "straight", work)
    ck = work / "checkpoints"
    assert all((ck / str(s) / "integrity.json").is_file() for s in (2, 4, 6))  # sealed at commit
    victim = _truncate_largest(ck / "6" / "state")  # a truncated array file
    meta = ck / "4" / "state" / "_METADATA"  # a damaged metadata file, same length
    meta.write_bytes(meta.read_bytes().replace(b'"', b"'", 3))
    lines = []
    from whisper_llada_jax.training.trainer import Trainer

    t = Trainer(_cfg(work, tok), print_fn=lines.append)
    summary = t.run()
    t.close()
    out = "\n".join(lines)
    assert f"checkpoint step 6 is damaged ({victim.relative_to(ck / '6').as_posix()} has" in out
    assert "checkpoint step 4 is damaged (state/_METADATA does not match its checksum)" in out
    assert summary.start_step == 2 and f"resumed from {ck}/2" in out
    assert (ck / "6.corrupt").is_dir() and (ck / "4.corrupt").is_dir()  # kept, not deleted
    for a, b in zip(_params(t.state), want):
        np.testing.assert_array_equal(a, b)


KILLS, KILL_STEPS, KILL_SAVE = 12, 24, 2
KILL_CFG = (f"steps={KILL_STEPS}", f"checkpoint.save_interval_steps={KILL_SAVE}", "checkpoint.max_to_keep=2",
            "log_interval=1")


def _wait_for(log: Path, proc, pattern: str, count: int = 1, timeout: float = 300.0) -> bool:
    """True once ``pattern`` has matched ``count`` lines of ``log``; False if the process ended first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len(re.findall(pattern, log.read_text(errors="replace"), re.M)) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"{log}: no {pattern!r} after {timeout} s:\n{log.read_text()[-3000:]}")


def _committed(ckdir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckdir.glob("*") if p.name.isdigit())


def _wait_for_commit(ckdir: Path, proc, above: int, timeout: float = 300.0) -> None:
    """Until a step above ``above`` is committed (or the process has ended)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if any(s > above for s in _committed(ckdir)):
            return
        time.sleep(0.02)


def test_a_dozen_sigkills_at_random_moments_each_restart_resumes_exactly(setup):
    """SIGKILL at random moments (imports, building, restoring, compiling, mid-step, mid-save),
    12 times, each followed by a restart: every restart resumes from the newest committed
    step, loses at most 2 x save_interval_steps steps, and the end equals an uninterrupted run."""
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.config import CheckpointConfig
    from whisper_llada_jax.training.trainer import Trainer

    root, tok, _, _ = setup
    ref = Trainer(_cfg(root / "kill_ref", tok, *KILL_CFG), print_fn=lambda s: None)
    ref.run()
    ref.close()
    want = _params(ref.state)

    work, rng = root / "kill", random.Random(14)
    cmd = [sys.executable, __file__, "plain", str(work), str(tok), *KILL_CFG]
    last_logged, startup, resumes = 0, None, 0
    for i in range(KILLS + 1):
        steps = _committed(work / "checkpoints")
        log = root / f"kill-{i}.log"
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        if i < KILLS:
            moment = rng.random()
            if startup is not None and moment < 0.3:  # any moment of the start-up
                time.sleep(rng.uniform(0.0, startup))
            elif _wait_for(log, proc, r"^(resumed from|step \d+ loss)"):
                startup = time.monotonic() - t0
                if moment < 0.6:  # 0-3 steps in, 0-0.3 s into the next (mid-step, mid-save)
                    _wait_for(log, proc, r"^step \d+ loss", rng.randint(0, 3))
                else:  # up to 0.5 s after a new step has committed (sealing, the next steps)
                    _wait_for_commit(work / "checkpoints", proc, steps[-1] if steps else 0)
                time.sleep(rng.uniform(0.0, 0.5 if moment >= 0.6 else 0.3))
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=300)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and rc in (0, -signal.SIGKILL), text[-3000:]
        resumed = re.search(r"^resumed from .*/(\d+)$", text, re.M)
        if steps and (resumed or re.search(r"^step \d+ loss", text, re.M)):  # got past restoring
            assert resumed and int(resumed.group(1)) == steps[-1], (steps, text[-3000:])
            assert int(resumed.group(1)) >= last_logged - 2 * KILL_SAVE, (last_logged, text[-3000:])
            resumes += 1
        last_logged = max([int(s) for s in re.findall(r"^step (\d+) loss", text, re.M)] or [last_logged])
    assert rc == 0 and "trained steps" in text and f"..{KILL_STEPS} in" in text, text[-3000:]
    assert resumes >= KILLS // 4  # the kills did land after checkpoints existed
    ck = Checkpointer(work / "checkpoints", CheckpointConfig(), with_data=False)
    state = ck.restore(KILL_STEPS, ref.setup.abstract)
    ck.close()
    for a, b in zip(_params(state), want):
        np.testing.assert_array_equal(a, b)

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import conftest  # noqa: F401  (same device setup as the tests)

    _worker(*sys.argv[1:])

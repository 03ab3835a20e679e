"""Trainer start-up safety: the workdir lock, checkpoint integrity records, config validation.

Fast: no model is compiled (the trainer refuses before building one) and checkpoints are of a
two-array tree. The end-to-end cases (a damaged checkpoint under a real run, kills and
restarts) are in test_checkpoint_resume.py.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from whisper_llada_jax.errors import CheckpointError, ConfigError
from whisper_llada_jax.training.config import CheckpointConfig, load_train_config
from whisper_llada_jax.training.workdir_lock import WorkdirLock, WorkdirLockedError


# --------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("override, field", [
    ("checkpoint.save_interval_steps=0", "save_interval_steps"),
    ("checkpoint.save_interval_steps=-5", "save_interval_steps"),
    ("checkpoint.max_to_keep=0", "max_to_keep"),
    ("steps=0", "steps"),
    ("steps=-1", "steps"),
    ("log_interval=0", "log_interval"),
])
def test_non_positive_counts_are_refused_where_the_config_is_read(override, field):
    with pytest.raises(ConfigError, match=f"{field} must be >= 1"):
        load_train_config("tiny", [override])


@pytest.mark.parametrize("override, msg", [("checkpoint.save_interval_steps=0", "save_interval_steps must be >= 1"),
                                           ("steps=0", "steps must be >= 1")])
def test_train_command_refuses_in_one_line_and_writes_nothing(override, msg, capsys, tmp_path):
    from whisper_llada_jax.cli import main

    rc = main(["train", "--config", "tiny", f"workdir={tmp_path / 'run'}", override])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and msg in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field", ["workdir", "output_dir", "checkpoint.dir"])
def test_an_output_folder_that_is_a_file_is_refused_before_compiling(tmp_path, field):
    from whisper_llada_jax.training.trainer import Trainer

    f = tmp_path / "a_file"
    f.write_text("keep me")
    over = [f"workdir={tmp_path / 'w'}", f"{field}={f}"] if field != "workdir" else [f"workdir={f}"]
    with pytest.raises(ConfigError, match=f"{field}: {f} is a file"):
        Trainer(load_train_config("tiny", over))
    assert f.read_text() == "keep me"


# --------------------------------------------------------------------------- workdir lock
_HOLDER = """
import sys, time
from whisper_llada_jax.training.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_trainer_on_a_workdir_is_refused_naming_the_holder(tmp_path):
    from whisper_llada_jax.training.trainer import Trainer

    work = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(work)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError, match=f"another trainer is running on this workdir "
                                                     f"\\(host {socket.gethostname()}, pid {holder.pid},"):
            Trainer(load_train_config("tiny", [f"workdir={work}"]))
    finally:
        holder.kill()
        holder.wait()
    assert not (work / "checkpoints").exists()  # refused before touching anything


def _write_lock(path, host, pid, age_s=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "since": "then"}))
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path / ".train-lock.0", socket.gethostname(), dead.pid)
    said = []
    lock = WorkdirLock(tmp_path, print_fn=said.append).acquire()
    assert said == [f"took over a stale workdir lock {tmp_path / '.train-lock.0'} "
                    f"(host {socket.gethostname()}, pid {dead.pid}: process {dead.pid} on this host is gone)"]
    assert json.loads((tmp_path / ".train-lock.0").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".train-lock.0").exists()


def test_a_lock_from_another_host_is_kept_while_its_heartbeat_is_fresh(tmp_path):
    _write_lock(tmp_path / ".train-lock.0", "other-host", 4242, age_s=10)
    with pytest.raises(WorkdirLockedError, match="host other-host, pid 4242"):
        WorkdirLock(tmp_path, stale_seconds=300).acquire()
    _write_lock(tmp_path / ".train-lock.0", "other-host", 4242, age_s=1000)
    said = []
    with WorkdirLock(tmp_path, stale_seconds=300, print_fn=said.append):
        assert "no heartbeat for 1000 s" in said[0]


def test_each_process_of_a_run_holds_its_own_lock_and_heartbeats(tmp_path):
    a = WorkdirLock(tmp_path, 0, heartbeat_seconds=0.05).acquire()
    b = WorkdirLock(tmp_path, 1).acquire()  # process 1 of the same run on a shared workdir
    with pytest.raises(WorkdirLockedError):
        WorkdirLock(tmp_path, 1).acquire()  # process 1 of a second run
    t0 = (tmp_path / ".train-lock.0").stat().st_mtime
    time.sleep(0.3)
    assert (tmp_path / ".train-lock.0").stat().st_mtime > t0
    a.release()
    b.release()
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- checkpoint integrity
def _checkpointer(d):
    from whisper_llada_jax.training.checkpointing import Checkpointer

    return Checkpointer(d, CheckpointConfig(max_to_keep=5, keep_best=False), with_data=False)


def _abstract():
    import jax

    return {"a": jax.ShapeDtypeStruct((4096,), np.float32), "b": jax.ShapeDtypeStruct((3, 4), np.float32)}


def _save_steps(d, steps=(1, 2, 3)):
    import jax.numpy as jnp

    ck = _checkpointer(d)
    for s in steps:
        ck.save(s, {"a": jnp.arange(4096, dtype=jnp.float32) * s, "b": jnp.full((3, 4), float(s))}, force=True)
    ck.close()


def _largest_array_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()),
               key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncated array file", "checkpoint metadata", "array metadata",
                                    "integrity record"])
def test_restore_skips_a_damaged_latest_step_and_says_why(tmp_path, damage):
    _save_steps(tmp_path)
    step3 = tmp_path / "3"
    if damage == "truncated array file":
        victim = _largest_array_file(step3)
        size = victim.stat().st_size
        with open(victim, "r+b") as f:
            f.truncate(size - 100)
        why = f"{victim.relative_to(step3).as_posix()} has {size - 100} bytes, {size} were written"
    else:
        victim = {"checkpoint metadata": step3 / "_CHECKPOINT_METADATA", "array metadata": step3 / "state" / "_METADATA",
                  "integrity record": step3 / "integrity.json"}[damage]
        data = bytearray(victim.read_bytes())
        if damage == "integrity record":
            # torn: a flipped byte may still parse as JSON, naming another (missing) file instead
            data = data[:len(data) // 2]
        else:
            data[len(data) // 2] ^= 0x55  # one flipped byte, same length
        victim.write_bytes(bytes(data))
        why = {"integrity record": "its integrity.json is damaged"}.get(
            damage, f"{victim.relative_to(step3).as_posix()} does not match its checksum")
    said = []
    ck = _checkpointer(tmp_path)
    step, state = ck.restore_latest(_abstract(), report=said.append)
    assert step == 2 and float(state["b"][0, 0]) == 2.0
    assert said == [f"checkpoint step 3 is damaged ({why}): skipped, kept as {tmp_path / '3.corrupt'}"]
    assert ck.all_steps() == [1, 2]
    import jax.numpy as jnp

    ck.save(3, {"a": jnp.zeros(4096), "b": jnp.zeros((3, 4))}, force=True)  # the step number is free again
    ck.close()
    assert (tmp_path / "3" / "integrity.json").is_file() and (tmp_path / "3.corrupt").is_dir()


def test_no_intact_step_left_is_one_clear_error(tmp_path):
    _save_steps(tmp_path, steps=(1,))
    victim = _largest_array_file(tmp_path / "1")
    victim.write_bytes(victim.read_bytes()[:10])
    ck = _checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint left \(skipped steps \[1\]\)"):
        ck.restore_latest(_abstract(), report=lambda s: None)
    ck.close()


def test_an_intact_step_of_another_config_is_an_error_not_a_fallback(tmp_path):
    import jax

    _save_steps(tmp_path, steps=(1, 2))
    ck = _checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="cannot restore"):
        ck.restore_latest({"a": jax.ShapeDtypeStruct((4096,), np.float32)}, report=lambda s: None)
    ck.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]  # nothing set aside


def test_replica_parallel_saving_only_slices_large_arrays(tmp_path, monkeypatch):
    """Arrays replicated over the 8 devices: Orbax cuts each one it saves replica-parallel into
    one slice per replica (an eager op each); a small one is written whole, a large one (a slice
    of at least REPLICA_PARALLEL_MIN_SLICE_BYTES) still in slices, and both restore exactly."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from whisper_llada_jax.training import checkpointing

    mesh = jax.make_mesh((8,), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    big_rows = 8 * checkpointing.REPLICA_PARALLEL_MIN_SLICE_BYTES // (4 * 128)  # 8 slices of the minimum
    state = {"small": jax.device_put(jnp.arange(3 * 128, dtype=jnp.float32).reshape(3, 128), replicated),
             "big": jax.device_put(jnp.ones((big_rows, 128), jnp.float32), replicated)}
    sliced = []
    real = jax.lax.slice_in_dim

    def counting(x, *a, **kw):
        sliced.append(x.shape)
        return real(x, *a, **kw)

    monkeypatch.setattr(jax.lax, "slice_in_dim", counting)
    ck = _checkpointer(tmp_path)
    ck.save(1, state, force=True)
    ck.close()
    assert (3, 128) not in sliced and sliced.count((big_rows, 128)) == 8, sliced
    ck = _checkpointer(tmp_path)
    got = ck.restore(1, {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated) for k, v in state.items()})
    ck.close()
    for k in state:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(state[k]))

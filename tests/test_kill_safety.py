"""Kill loops and misuse of every writer: a SIGKILL at each step of an atomic write, a disk that
refuses the write, an output folder that cannot be written, temporaries of killed runs, and the
outputs of `train`, `tune`, `evaluate` and `demo` that must never replace what the user has.

Kills are deterministic: a subprocess (this file run as a script) SIGKILLs itself at the n-th
call of one file-system step (``os.replace``, ``os.fsync``, the folder swap, ``shutil.rmtree``),
for n = 1, 2, ... until the write completes, so every point between two steps is hit once.
"""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from whisper_llada_jax import cli, outputs
from whisper_llada_jax.errors import ConfigError, UserError
from whisper_llada_jax.outputs import OutputError, atomic_dir, atomic_file, remove_stale_temporaries

KILL_POINTS = ("os.replace", "os.fsync", "shutil.rmtree", "whisper_llada_jax.outputs._exchange")


def _writer(kind: str, target: str, version: str, kill_at: str, n: int, no_exchange: bool) -> None:
    """Runs in a subprocess: writes ``version`` to ``target`` and SIGKILLs itself at the n-th
    call of ``kill_at``."""
    import importlib
    import shutil  # noqa: F401  (patched below by name)

    if kill_at.startswith("wait:"):  # "wait:FUNC:GO": a run that passed check_output, then reaches FUNC
        import importlib  # (in its final rename) after another run wrote the same output
        import time

        _, func, go = kill_at.split(":")
        outputs.check_output(target, kind=kind)
        mod_name, name = func.rsplit(".", 1)
        mod = importlib.import_module(mod_name)
        real_fn = getattr(mod, name)

        def late(*a, **kw):
            Path(go + ".ready").touch()
            while not Path(go).exists():
                time.sleep(0.01)
            return real_fn(*a, **kw)

        setattr(mod, name, late)
        kill_at = "os.getpid"
    module, attr = kill_at.rsplit(".", 1)
    mod = importlib.import_module(module)
    real, calls = getattr(mod, attr), [0]

    def hook(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)

    setattr(mod, attr, hook)
    if no_exchange:  # a file system without renameat2(RENAME_EXCHANGE): the two-step swap
        outputs._exchange = lambda a, b: False
    if kind == "file":
        with atomic_file(target) as f:
            f.write(version * 1000)
    elif kind == "dir":
        with atomic_dir(target) as tmp:
            for name in ("a.txt", "b.txt", "c.txt"):
                (tmp / name).write_text(version * 1000)
    else:  # scratch: export --checkpoint's temporary MODEL_DIR beside OUT
        with outputs.scratch_dir(target) as tmp:
            (tmp / "model").mkdir()
            (tmp / "model" / "params").write_text(version)
            os.kill(os.getpid(), signal.SIGKILL)


def _spawn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))


def _read(target: Path, kind: str) -> str | None:
    """The complete version at ``target``, None if absent; fails on a partial or mixed one."""
    if not target.exists():
        return None
    if kind == "file":
        text = target.read_text()
        assert len(text) == 1000 and len(set(text)) == 1, "partial file at the real name"
        return text[0]
    names = sorted(p.name for p in target.iterdir())
    assert names == ["a.txt", "b.txt", "c.txt"], f"partial folder at the real name: {names}"
    texts = {(target / n).read_text() for n in names}
    assert len(texts) == 1 and len(next(iter(texts))) == 1000, "mixed or partial folder"
    return next(iter(texts))[0]


def _hidden(target: Path) -> list[str]:
    return sorted(e for e in os.listdir(target.parent) if e.startswith(f".{target.name}."))


@pytest.mark.parametrize("kind,no_exchange", [("file", False), ("dir", False), ("dir", True)],
                         ids=["file", "folder", "folder-two-step-swap"])
def test_a_kill_at_every_step_of_a_write_keeps_a_complete_output_and_no_temporaries(tmp_path, kind, no_exchange):
    target = tmp_path / ("out.jsonl" if kind == "file" else "out")
    assert _spawn(kind, str(target), "1", "os.getpid", "0", "").returncode == 0
    version = 1
    for point in KILL_POINTS:
        if kind == "file" and point in ("shutil.rmtree", "whisper_llada_jax.outputs._exchange"):
            continue  # a file is renamed over the old one in one step
        for n in range(1, 12):
            new = str(version + 1)
            proc = _spawn(kind, str(target), new, point, str(n), "1" if no_exchange else "")
            killed = proc.returncode == -signal.SIGKILL
            assert killed or proc.returncode == 0, proc.stderr[-2000:]
            got = _read(target, kind)
            if got is None:
                # only the two-step swap has a moment without the output: the old one waits in
                # a hidden .old folder, and the next write or check of this output puts it back
                assert no_exchange and killed, f"{point} #{n}: the output vanished"
                remove_stale_temporaries(target)
                got = _read(target, kind)
            assert got in (str(version), new), f"{point} #{n}: {got}"
            version = int(got)
            # the killed run's temporaries go with the next write; never more than its own
            assert len(_hidden(target)) <= (2 if killed else 0), _hidden(target)
            if not killed:
                break
    assert _spawn(kind, str(target), "9", "os.getpid", "0", "").returncode == 0
    assert _read(target, kind) == "9" and _hidden(target) == []


def test_a_killed_scratch_folder_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "export"
    for _ in range(3):  # three killed `export --checkpoint` runs: their temporary MODEL_DIRs
        assert _spawn("scratch", str(target), "1", "os.getpid", "0", "").returncode == -signal.SIGKILL
    assert len(_hidden(target)) == 1  # each run removed the one before it
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("done")
    assert _hidden(target) == [] and (target / "x").read_text() == "done"


@pytest.mark.parametrize("late_at", ["os.fsync", "os.replace"], ids=["before-the-final-check", "in-the-rename"])
def test_two_runs_writing_one_new_output_never_replace_each_other(tmp_path, late_at):
    """Both find the output new at the start; the one that finishes second is refused, clearly,
    and the first one's output stays whole (it is never replaced without --overwrite)."""
    target, go = tmp_path / "out", tmp_path / "go"
    slow = subprocess.Popen([sys.executable, __file__, "dir", str(target), "1", f"wait:{late_at}:{go}", "0", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    try:
        while not Path(f"{go}.ready").exists():  # the slow run has checked and written its output
            assert slow.poll() is None, slow.communicate()
            time.sleep(0.01)
        assert _spawn("dir", str(target), "2", "os.getpid", "0", "").returncode == 0
        go.touch()
        _, err = slow.communicate(timeout=120)
    finally:
        slow.kill()
    assert slow.returncode == 1 and "another process wrote this output while this one ran" in err, err
    assert _read(target, "dir") == "2" and _hidden(target) == []


def test_temporaries_of_live_processes_and_other_hosts_recent_ones_are_never_touched(tmp_path):
    target = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        host = outputs._owner_tag().rpartition("~")[0]
        live = tmp_path / f".out.{host}~{sleeper.pid}.abc.tmp"  # a concurrent run still writing
        other = tmp_path / f".out.otherhost~{dead}.abc.tmp"  # another host's run on a shared disk
        stale = tmp_path / f".out.{host}~{dead}.abc.tmp"
        legacy = tmp_path / ".out.k2j4h5.tmp"  # no owner in the name: not provably dead
        for p in (live, other, stale, legacy):
            p.mkdir()
            (p / "params").write_text("x")
        assert remove_stale_temporaries(target) == [stale]
        assert live.exists() and other.exists() and legacy.exists() and not stale.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def _age(path: Path, seconds: float) -> None:
    """Sets the modification time of ``path`` and everything under it ``seconds`` back."""
    when = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def test_another_hosts_temporaries_go_once_untouched_for_a_day(tmp_path):
    """A killed run on another host (a shared disk) cannot be checked by pid: its temporaries
    are removed once nothing in them changed for FOREIGN_STALE_SECONDS, its swapped-aside old
    output put back; one with a file written recently (a live writer) stays."""
    target = tmp_path / "out"
    day = outputs.FOREIGN_STALE_SECONDS
    old_file = tmp_path / ".out.otherhost~11.abc.tmp"
    old_dir = tmp_path / ".out.otherhost~12.def.tmp"
    busy = tmp_path / ".out.otherhost~13.ghi.tmp"  # its folder is old, one file inside is not
    aside = tmp_path / ".out.otherhost~14.jkl.old"  # the previous output, moved aside by a killed swap
    old_file.write_text("x")
    for d in (old_dir, busy, aside / "x"):
        d.mkdir(parents=True)
        (d / "params").write_text("x")
    for p in (old_file, old_dir, busy, aside):
        _age(p, day + 60)
    (busy / "shard").write_text("still being written")
    os.utime(busy, (time.time() - day - 60,) * 2)
    young = tmp_path / ".out.otherhost~15.mno.tmp"
    young.write_text("x")
    _age(young, day - 600)
    assert remove_stale_temporaries(target) == sorted([old_file, old_dir, aside])
    assert busy.exists() and young.exists() and not old_file.exists() and not old_dir.exists()
    assert (target / "params").read_text() == "x" and not aside.exists()  # the old output is back


# ----------------------------------------------------------------------------- the disk refuses
def _size_limited(code: str, limit: int) -> subprocess.CompletedProcess:
    """Runs ``code`` under a file-size limit (``ulimit -f``): writes past it fail with EFBIG."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))


def test_a_write_past_the_disk_limit_is_one_clear_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "big.txt"
    target.write_text("old")
    proc = _size_limited(f"""
from whisper_llada_jax.outputs import write_text, OutputError
try:
    write_text({str(target)!r}, "x" * 100_000)
except OutputError as e:
    print("OUTPUT_ERROR", e)
""", 50_000)
    assert "OUTPUT_ERROR" in proc.stdout and "File too large" in proc.stdout and str(target) in proc.stdout, proc
    assert target.read_text() == "old" and _hidden(target) == []


def test_export_past_the_disk_limit_exits_with_one_line(tmp_path):
    from tests._data_helpers import tiny_model_dir

    model = tiny_model_dir(tmp_path)
    out = tmp_path / "adapter"
    proc = _size_limited(f"""
import sys
from whisper_llada_jax import cli
sys.exit(cli.main(["export", "--model", {str(model)!r}, "--format", "peft", "--out", {str(out)!r}]))
""", 4096)  # the LoRA tensors are 13 kB
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "error: " in proc.stderr and "File too large" in proc.stderr
    assert "ulimit" in proc.stderr  # the hint
    assert not out.exists() and _hidden(out) == []


def test_a_checkpoint_the_disk_refuses_is_one_clear_error_naming_the_last_complete_step(tmp_path):
    code = f"""
import jax, jax.numpy as jnp
from whisper_llada_jax.errors import UserError
from whisper_llada_jax.training.checkpointing import Checkpointer
from whisper_llada_jax.training.config import CheckpointConfig
ck = Checkpointer({str(tmp_path / 'ck')!r}, CheckpointConfig(save_interval_steps=1, async_save=False), with_data=False)
ck.save(1, {{"w": jnp.zeros((4,), jnp.float32)}}, force=True)
ck.wait()
try:
    # 4 MiB of noise (zeros would compress): past the limit
    ck.save(2, {{"w": jax.random.normal(jax.random.key(0), (1 << 20,), jnp.float32)}}, force=True)
    ck.wait()
except UserError as e:
    print("USER_ERROR", e)
"""
    proc = _size_limited(code, 1 << 20)
    assert "USER_ERROR" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "File too large" in proc.stdout and "the last complete step, 1, is kept" in proc.stdout
    assert "resumes from the last complete step" in proc.stdout


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from whisper_llada_jax.inference import driver

    def decoder(*a, **kw):
        raise AssertionError("decoded before the output was checked")

    monkeypatch.setattr(driver, "transcribe_files", decoder)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u", "audio": "u.wav"}) + "\n")
    (tmp_path / "a_file").write_text("keep")
    argv = ["transcribe", "--model", str(tmp_path / "model"), "--manifest", str(manifest), "--output"]
    # a parent that is a file
    assert cli.main(argv + [str(tmp_path / "a_file" / "sub" / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "a_file is a file, not a folder" in err
    # a read-only disk (as a read-only mount answers; root ignores permission bits, a mount not)
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **kw):
        if str(dir).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert cli.main(argv + [str(tmp_path / "ro" / "new" / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Read-only file system" in err and "ro/new/out.jsonl" in err


# ----------------------------------------------------------------------------- train
def _train_cfg(tmp_path, *extra):
    from whisper_llada_jax.config import with_defaults
    from whisper_llada_jax.training.config import load_train_config

    return load_train_config("tiny", with_defaults([f"workdir={tmp_path / 'run'}"], extra))


def _model_dir_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("config.yaml", "params.safetensors", "tokenizer.json"):
        (folder / name).write_text("mine")


@pytest.mark.parametrize("case,match", [
    ("output_dir=WORK", "deleting the checkpoints"),
    ("output_dir=ROOT", "deleting the checkpoints"),
    ("output_dir=WORK/checkpoints/final", "overlap"),
    ("checkpoint.dir=ROOT/ck output_dir=ROOT/ck/model", "overlap"),
    ("output_dir=ROOT/init init_from=ROOT/init", "init_from"),
    ("output_dir=ROOT/tok tokenizer=ROOT/tok/tokenizer.json", "tokenizer"),
    ("output_dir=ROOT/data data.train_source=manifest:ROOT/data/train.jsonl", "data.train_source"),
    ("output_dir=ROOT/mine", "notes.txt"),
    ("output_dir=ROOT/other_model", "already holds a MODEL_DIR"),
    ("", "already holds a MODEL_DIR"),  # <workdir>/model of a fresh run
    ("output_dir=ROOT/a_file/model", "a_file is a file, not a folder"),
], ids=lambda x: x if isinstance(x, str) and "=" in x else None)
def test_train_refuses_a_final_model_dir_that_would_replace_something(tmp_path, case, match):
    from whisper_llada_jax.training.trainer import check_output_paths

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    (tmp_path / "a_file").write_text("x")
    _model_dir_files(tmp_path / "other_model")
    _model_dir_files(tmp_path / "init")
    _model_dir_files(tmp_path / "run" / "model")  # a model in a workdir without a checkpoint
    overrides = case.replace("WORK", str(tmp_path / "run")).replace("ROOT", str(tmp_path)).split()
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=match):
        check_output_paths(_train_cfg(tmp_path, *overrides))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_train_replaces_its_own_model_dir_only_when_resuming_and_says_so_on_the_command_line(tmp_path, capsys):
    from whisper_llada_jax.training.trainer import check_output_paths

    _model_dir_files(tmp_path / "run" / "model")
    (tmp_path / "run" / "checkpoints" / "20").mkdir(parents=True)  # the run has a checkpoint: it resumes
    check_output_paths(_train_cfg(tmp_path))
    (tmp_path / "run" / "run").mkdir()
    (tmp_path / "run" / "run" / "notes.txt").write_text("mine")  # <workdir>/run is replaced at every start
    with pytest.raises(ConfigError, match="notes.txt"):
        check_output_paths(_train_cfg(tmp_path))
    # through the command: one line, nothing written, nothing compiled
    assert cli.main(["train", "--config", "tiny", f"workdir={tmp_path / 'w'}", f"output_dir={tmp_path / 'w'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: output_dir:") and "hint:" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("field", ["workdir", "output_dir", "checkpoint.dir"])
def test_train_refuses_a_folder_it_cannot_write_before_compiling(tmp_path, monkeypatch, field):
    """Not after hours of training (the final MODEL_DIR used to fail at the very end)."""
    from whisper_llada_jax.training.trainer import check_output_paths

    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **kw):  # what a read-only mount answers (root ignores permission bits)
        if Path(str(dir)) == ro or ro in Path(str(dir)).parents:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=f"{field} cannot be written .Read-only file system"):
        check_output_paths(_train_cfg(tmp_path, f"{field}={ro / 'x'}"))


@contextlib.contextmanager
def _checkpointer_with_sigint(disposition, tmp_path):
    """A checkpointer with its signal handlers installed in a process whose SIGINT disposition
    was ``disposition``; afterwards that disposition is back, then the test process's own."""
    from whisper_llada_jax.training.checkpointing import Checkpointer
    from whisper_llada_jax.training.config import CheckpointConfig

    outer = signal.signal(signal.SIGINT, disposition)
    try:
        ck = Checkpointer(tmp_path / "ck", CheckpointConfig(), with_data=False)
        try:
            ck.install_sigterm_handler()
            yield ck
        finally:
            ck.close()
        assert signal.getsignal(signal.SIGINT) is disposition
    finally:
        signal.signal(signal.SIGINT, outer)


def test_ctrl_c_saves_the_current_step_and_a_second_one_stops_at_once(tmp_path):
    # A run started from a terminal: Python's own Ctrl-C handler. (A test process started in the
    # background inherits SIGINT ignored, which the checkpointer rightly keeps: next test.)
    with _checkpointer_with_sigint(signal.default_int_handler, tmp_path) as ck:
        assert not ck.preempted(1)
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: save this step, then exit
        assert ck.preempted(1) and ck.interrupted
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """``nohup`` and background jobs start with SIGINT ignored: the checkpointer leaves that be."""
    with _checkpointer_with_sigint(signal.SIG_IGN, tmp_path) as ck:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert not ck.preempted(1) and not ck.interrupted


# ----------------------------------------------------------------------------- tune, evaluate, demo
def test_tune_refuses_an_existing_decode_yaml_before_decoding(tmp_path, capsys, monkeypatch):
    from whisper_llada_jax.evaluation import tune

    from tests._data_helpers import tiny_model_dir

    model = tiny_model_dir(tmp_path)
    (model / "decode.yaml").write_text("steps: 8\n")

    def decoder(*a, **kw):
        raise AssertionError("decoded before decode.yaml was checked")

    monkeypatch.setattr(tune, "dataset_decoder", decoder)
    assert cli.main(["tune", "--model", str(model), "--data", "synthetic:n=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "decode.yaml already exists" in err and "--overwrite" in err
    assert (model / "decode.yaml").read_text() == "steps: 8\n"


def test_evaluate_overwrite_replaces_the_whole_evaluation_or_nothing(tmp_path, capsys, monkeypatch):
    from whisper_llada_jax.evaluation import evaluate as evaluate_lib

    from tests._data_helpers import tiny_model_dir

    model = tiny_model_dir(tmp_path)
    out = tmp_path / "eval"
    (out / "hypotheses").mkdir(parents=True)
    (out / "hypotheses" / "old_config.jsonl").write_text("old\n")
    (out / "results.json").write_text('{"old": true}')
    argv = ["evaluate", "--model", str(model), "--data", "synthetic:n=2,seed=0,max_s=1", "--out", str(out),
            "--decode", "gen_len=8,steps=8,batch_size=2", "--decode", "gen_len=8,steps=4,batch_size=2",
            "--overwrite"]
    calls = [0]

    def decode_dataset(loaded, source, cfg, **kw):  # stands in for the decoder (nothing compiles)
        calls[0] += 1
        if calls[0] == 2:
            raise UserError("a clip the second config cannot decode")
        rows = [{"id": source[i]["id"], "reference": source[i]["text"], "hypothesis": "a", "nfe": cfg.steps,
                 "batch": 0} for i in range(len(source))]
        return {"rows": rows, "counts": {}, "skipped": [], "decode_s": 1.0, "audio_s": 1.0, "compile_s": 0.0}

    monkeypatch.setattr(evaluate_lib, "decode_dataset", decode_dataset)
    assert cli.main(argv) == 2
    # the first config's hypotheses never reached --out: the old evaluation is whole
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "hypotheses", "hypotheses/old_config.jsonl", "results.json"]
    assert _hidden(out) == []
    calls[0] = -10
    assert cli.main(argv) == 0
    capsys.readouterr()
    got = sorted(p.relative_to(out).as_posix() for p in (out / "hypotheses").rglob("*"))
    assert len(got) == 2 and "old_config.jsonl" not in got  # no stale hypotheses of another run
    assert len(json.loads((out / "results.json").read_text())["results"]) == 2
    # a profiler trace asked inside --out arrives with the results (the README's example)
    traced = []
    monkeypatch.setattr("whisper_llada_jax.training.profiling.trace",
                        lambda d: _record_trace(traced, d))
    assert cli.main(argv + ["--profile", str(out / "profile")]) == 0
    assert (out / "profile" / "trace.txt").read_text() == "trace" and traced[0] != out / "profile"
    capsys.readouterr()
    assert cli.main(argv) == 2  # without --profile the trace is not what this run writes: kept, refused
    assert "profile" in capsys.readouterr().err and (out / "profile" / "trace.txt").exists()
    assert cli.main(argv + ["--profile", str(out / "profile")]) == 0  # the same run again replaces it
    capsys.readouterr()
    # a folder holding files evaluate does not write is never replaced
    (out / "notes.txt").write_text("mine")
    assert cli.main(argv) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


@__import__("contextlib").contextmanager
def _record_trace(traced, folder):
    traced.append(folder)
    folder.mkdir(parents=True)
    (folder / "trace.txt").write_text("trace")
    yield


def test_demo_refuses_a_foreign_out_folder_and_a_page_without_its_markers(tmp_path):
    from whisper_llada_jax.commands import demo
    from whisper_llada_jax.demo import run as demo_run
    from whisper_llada_jax.demo.run import RUN_BEGIN, RUN_END

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("my notes")
    with pytest.raises(UserError, match="no demo run"):
        demo.check_out(mine)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "settings.json").write_text("{}")
    demo.check_out(tmp_path / "run")  # a demo run's folder: resumed
    demo.check_out(tmp_path / "new")
    page = tmp_path / "page.md"
    page.write_text("# hand-written\n")
    with pytest.raises(UserError, match="would replace the whole page"):
        demo.check_results_page(page)
    page.write_text(f"# hand-written\n{RUN_BEGIN}\nold\n{RUN_END}\nmore\n")
    demo.check_results_page(page)
    demo.check_results_page(tmp_path / "new.md")
    # the page a run writes to a new --results file is accepted by the next run
    demo_run.write_results_page(tmp_path / "new.md", "# Results\n")
    demo.check_results_page(tmp_path / "new.md")
    demo_run.write_results_page(tmp_path / "new.md", "# Results again\n")
    assert (tmp_path / "new.md").read_text() == f"{RUN_BEGIN}\n# Results again\n{RUN_END}\n"
    assert (mine / "results.md").read_text() == "my notes"


def test_a_demo_cache_record_cut_short_by_a_kill_is_recomputed(tmp_path, monkeypatch):
    import numpy as np

    from whisper_llada_jax.demo import encoder_cache

    split = encoder_cache.EncodedSplit(np.ones((1, 2, 3), np.float32), np.array([5], np.int32), 1.0)
    calls = []
    monkeypatch.setattr(encoder_cache, "encode_files", lambda *a, **kw: calls.append(1) or split)
    monkeypatch.setattr(encoder_cache, "_fingerprint", lambda parts: "key")
    np.save(tmp_path / "enc.npy", split.encoder_out)
    (tmp_path / "enc.json").write_text('{"key": "key", "audio_le')  # killed while writing (older runs)
    got = encoder_cache.cached_encode(tmp_path, "enc", None, _Cfg(), [], {}, progress=False)
    assert calls == [1] and got.seconds == 1.0
    assert json.loads((tmp_path / "enc.json").read_text())["key"] == "key"
    got = encoder_cache.cached_encode(tmp_path, "enc", None, _Cfg(), [], {}, progress=False)
    assert calls == [1]  # the complete record is used


class _Cfg:
    input_frames, n_mels, d_model = 80, 80, 4


if __name__ == "__main__":
    _writer(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), bool(sys.argv[6]))

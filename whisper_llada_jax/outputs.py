"""Safe output writing: the one place every command writes files and folders through.

Rules, so that nothing the user has is lost and nothing half-written looks complete:

- ``check_output`` runs before any work: it refuses an ``--out`` that already holds something
  (unless ``--overwrite``), that is a file where a folder is written (or the reverse), that is
  the working directory or one above it, that is, contains or lies inside an input (the
  MODEL_DIR, a manifest, a checkpoint), or whose folder cannot be written (read-only, not a
  folder): one ``UserError`` names the path and the fix, before hours of work, not after.
- ``atomic_file`` / ``atomic_dir`` write into a temporary sibling (same filesystem), fsync
  it and rename it into place only when everything worked; any failure removes the temporary.
  An existing folder is swapped with the new one in one ``renameat2(RENAME_EXCHANGE)`` (Linux),
  so there is no moment without a complete output at the real name. A kill leaves at most a
  hidden ``.NAME.<host>~<pid>.*.tmp`` temporary, never a partial file under the real name.
- Temporaries name their host and process: the next write to the same output (and
  ``check_output``) removes those of dead processes of this host, so killed runs do not pile
  up copies of a model. A live process's temporaries (a concurrent run) are never touched.
  Another host's (a shared disk) cannot be checked for a live writer: they are removed once
  nothing in them has changed for ``FOREIGN_STALE_SECONDS`` (a day).
- A write that fails for lack of space, a read-only disk or a file-size limit is one
  ``OutputError`` naming the output, with nothing left at its real name.
- Outputs get the user's umask (``mkstemp`` / ``mkdtemp`` would leave them 0600 / 0700).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Iterable, Iterator, Literal

from whisper_llada_jax.errors import UserError

# errno values that mean "this output cannot be written here", whoever raised them
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
# Another host's temporary untouched (itself and everything in it) for this long is a killed
# run's: a live writer changes its files far more often than once a day.
FOREIGN_STALE_SECONDS = 24 * 3600


class OutputError(UserError):
    """An output cannot be written (no space, read-only disk, no permission, file-size limit)."""


def output_error(target: str | Path, e: OSError) -> OutputError:
    """One clear error for an OSError met while writing ``target``."""
    what = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space (or write to another disk) and run again",
            errno.EDQUOT: "free some of your quota (or write to another disk) and run again",
            errno.EFBIG: "the output exceeds the file-size limit (ulimit -f): raise it or write elsewhere",
            errno.EROFS: "give an output path on a writable disk"}.get(
        e.errno, "check the folder's permissions, or give another output path")
    return OutputError(f"{target}: cannot write ({what}{f': {e.filename}' if e.filename else ''}); "
                       "nothing was written there, an existing version is kept", hint=hint)


def _umask() -> int:
    """The process umask. Read from /proc where it can be (Linux): setting it to read it back
    would briefly change it for every other thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Outputs that ``check_output`` found absent (or an empty folder): a run that finds one there
# when its own is ready did not ask to replace it (another run wrote it meanwhile).
_NEW_OUTPUTS: set[Path] = set()


def _appeared(target: Path) -> bool:
    """``target`` was new when checked, and something has been written there since."""
    key = target.expanduser().resolve()
    if key not in _NEW_OUTPUTS:
        return False
    return key.is_file() or (key.is_dir() and any(key.iterdir()))


def _appeared_error(target: Path) -> OutputError:
    return OutputError(f"{target}: another process wrote this output while this one ran; its output is kept, "
                       "this run's is discarded", hint="run again with --overwrite to replace it, or give another path")


# ----------------------------------------------------------------------------- temporaries
def _owner_tag() -> str:
    """``host~pid`` of this process (read at each call: a forked child is another owner)."""
    host = socket.gethostname().split(".")[0].replace("~", "-") or "host"
    return f"{host}~{os.getpid()}"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{_owner_tag()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _owner(name: str, target: Path) -> tuple[str, int] | None:
    """(host, pid) of a temporary of ``target`` named ``name``, None if it is not one."""
    head = f".{target.name}."
    if not name.startswith(head) or not name.endswith((".tmp", ".old")):
        return None
    tag = name[len(head):].split(".", 1)[0]
    host, sep, pid = tag.rpartition("~")
    if not sep or not pid.isdigit():
        return None
    return host, int(pid)


def _untouched_for(path: Path, seconds: float) -> bool:
    """Whether ``path`` and everything under it were last modified more than ``seconds`` ago
    (False if any of it cannot be read: then it is not provably abandoned)."""
    limit = time.time() - seconds
    try:
        if os.lstat(path).st_mtime > limit:
            return False
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path, onerror=_raise):
                for name in dirs + files:
                    if os.lstat(os.path.join(root, name)).st_mtime > limit:
                        return False
    except OSError:
        return False
    return True


def _raise(e: OSError) -> None:
    raise e


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Removes the temporaries of ``target`` left by killed processes (a dead pid of this host,
    or another host's untouched for ``FOREIGN_STALE_SECONDS``); returns them. Those of live
    processes are left alone. A folder moved aside by a killed swap (the old output, while the
    real name is empty) is put back first."""
    target = Path(target).expanduser().absolute()
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    host = _owner_tag().rpartition("~")[0]
    removed = []
    for entry in sorted(entries):
        owner = _owner(entry.name, target)
        if owner is None:
            continue
        if owner[0] == host:
            if _alive(owner[1]):
                continue
        elif not _untouched_for(entry, FOREIGN_STALE_SECONDS):
            continue
        if entry.name.endswith(".old") and (entry / "x").exists() and not os.path.lexists(target):
            os.replace(entry / "x", target)  # the previous output, moved aside before a kill: restored
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass  # another process cleaned it first
        except OSError:
            pass  # not ours to fix (permissions); it stays hidden and harmless
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swaps ``a`` and ``b`` atomically (Linux renameat2); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV):
        return False  # a file system without the exchange: the two-step swap
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _write_errors(target: Path, ours: bool) -> Iterator[None]:
    """OSErrors of writing ``target`` as OutputError: every one raised by this module's own
    steps (``ours``), only disk-full / read-only / size-limit ones from the caller's block
    (an input it fails to read stays that input's error)."""
    try:
        yield
    except OSError as e:
        if ours or e.errno in WRITE_ERRNOS:
            raise output_error(target, e) from e
        raise


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` appears, complete, only when the
    block succeeds; on any exception (or a kill) the old ``path`` is untouched."""
    target = Path(target).expanduser()
    with _write_errors(target, ours=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp")
    try:
        with _write_errors(target, ours=False):
            os.fchmod(fd, 0o666 & ~_umask())
            f = os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
        with f:
            with _write_errors(target, ours=False):
                yield f
            with _write_errors(target, ours=True):
                f.flush()
                os.fsync(f.fileno())
        if _appeared(target):
            raise _appeared_error(target)
        with _write_errors(target, ours=True):
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        _NEW_OUTPUTS.discard(target.resolve())
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(target: str | Path, text: str) -> Path:
    """``target`` holds ``text``, written atomically."""
    with atomic_file(target) as f:
        f.write(text)
    return Path(target)


def atomic_dir(target: str | Path) -> "_AtomicDir":
    """``with atomic_dir(out) as tmp: write into tmp`` -> renamed to ``out`` only on success.

    An existing ``out`` is replaced as a whole (callers decide beforehand, with
    ``check_output``, whether that is allowed)."""
    return _AtomicDir(Path(target).expanduser().resolve())


class _AtomicDir:
    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        with _write_errors(self.target, ours=True):
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.target)
            self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=_temp_prefix(self.target),
                                             suffix=".tmp"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            return self._finish(exc_type, exc)
        finally:
            _NEW_OUTPUTS.discard(self.target)

    def _finish(self, exc_type, exc):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
                raise output_error(self.target, exc) from exc
            return False
        try:
            with _write_errors(self.target, ours=True):
                os.chmod(self.tmp, 0o777 & ~_umask())
                for f in self.tmp.rglob("*"):
                    if f.is_file():
                        with open(f, "rb") as fh:
                            os.fsync(fh.fileno())
            if _appeared(self.target):
                raise _appeared_error(self.target)
            with _write_errors(self.target, ours=True):
                if self.target.exists() and _exchange(self.tmp, self.target):
                    _fsync_dir(self.target.parent)
                    shutil.rmtree(self.tmp, ignore_errors=True)  # the old output, now at the temporary name
                elif self.target.exists():
                    # Old out of the way (kept until the new one is in place), then the swap. A kill
                    # between the two renames leaves the old one in ``.NAME.*.old/x``, put back
                    # by the next write or check of this output (remove_stale_temporaries).
                    old = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=_temp_prefix(self.target),
                                                suffix=".old"))
                    os.replace(self.target, old / "x")
                    os.replace(self.tmp, self.target)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    try:
                        os.replace(self.tmp, self.target)
                    except OSError as e:
                        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        raise _appeared_error(self.target) from None  # in the instant since the check above
                _fsync_dir(self.target.parent)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """``atomic_dir`` on the process that writes (process 0 of a multi-process run); the others
    get ``target`` itself, into which they write nothing (their results go to process 0)."""
    import jax

    if jax.process_index() != 0:
        yield Path(target)
        return
    with atomic_dir(target) as tmp:
        yield tmp


@contextlib.contextmanager
def scratch_dir(target: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same disk), removed on exit; named like the
    atomic writers' temporaries, so one left by a kill is removed by the next run."""
    target = Path(target).expanduser().absolute()
    with _write_errors(target, ours=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: str | Path, what: str, shown: str | Path | None = None) -> None:
    """``path`` (a file or folder to be created or replaced) can be written: its nearest
    existing folder is a folder this process can create files in. Checked by creating (and
    removing) a temporary there, which also catches read-only mounts that permission bits do
    not show. Remote paths (``gs://``) are left to their client. ``shown``: the path the
    message names (default ``path``)."""
    if "://" in str(path):
        return
    shown = path if shown is None else shown
    target = Path(path).expanduser().absolute()
    folder = target.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{shown}: {what} cannot be created: {folder} is a file, not a folder",
                          hint="give a path whose folders are folders")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(target), suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{shown}: {what} cannot be written ({e.strerror or e} in {folder})",
                          hint="give a path on a writable disk, or fix the folder's permissions") from None
    os.close(fd)
    os.unlink(probe)


# ----------------------------------------------------------------------------- the guard
def data_paths(spec: str | None) -> list[str]:
    """The local paths a data source spec reads (``manifest:F``, ``librispeech:D``, a bare path)."""
    if not spec:
        return []
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("manifest", "librispeech"):
        return [arg]
    if sep and kind in ("tfds", "synthetic", "bundled"):
        return []
    return [spec]


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies below it."""
    return a == b or b in a.parents


def check_output(out: str | Path, inputs: Iterable[str | Path | None] = (), *, overwrite: bool = False,
                 kind: Literal["file", "dir"] = "dir", replaces: Iterable[str] | None = None,
                 flag: str = "--out") -> Path:
    """Refuses an output path that would lose or clobber something; returns it resolved.

    ``kind="file"``: one file is written (refused: a folder, an existing file without
    ``overwrite``). ``kind="dir"``: a folder is written (refused: a file, a non-empty folder
    without ``overwrite``, the working directory or one above it). ``replaces``: glob patterns
    of every entry the command writes when it replaces the whole folder atomically; with
    ``overwrite``, a folder holding anything else is still refused, so unrelated files are
    never deleted. Any ``inputs`` equal to, inside or containing ``out`` are refused, and so
    is an ``out`` whose folder cannot be written (checked by creating a temporary there).
    Temporaries of ``out`` left by killed runs are removed.
    """
    given = str(out)
    raw = Path(out).expanduser()
    if raw.exists() and not raw.is_file() and not raw.is_dir():  # /dev/stdout, a pipe, a device
        raise UserError(f"{given}: {flag} is not a regular file or folder (a device, pipe or socket); outputs are "
                        "written to a temporary file and renamed into place", hint="give a path on a disk")
    path = raw.resolve()
    hint = f"give a new path, or add --overwrite to replace what this command writes at {given}"
    for item in inputs:
        if item is None or str(item) == "":
            continue
        src = Path(item).expanduser().resolve()
        if _inside(path, src) or _inside(src, path):
            where = "is" if path == src else "is inside" if _inside(path, src) else "contains"
            raise UserError(f"{given}: {flag} {where} the input {item}; writing there would destroy the input",
                            hint="write the output somewhere else")
    if kind == "dir" and _inside(Path.cwd().resolve(), path):
        raise UserError(f"{given}: {flag} is the working directory (or a folder above it)",
                        hint="give a new folder, e.g. out/run1")
    if kind == "file":
        if path.is_dir():
            raise UserError(f"{given}: {flag} is a folder, but a file is written", hint="give a file name, e.g. out.jsonl")
        if path.exists() and not overwrite:
            raise UserError(f"{given}: {flag} already exists", hint=hint)
        remove_stale_temporaries(path)
        check_writable(path, flag)
        _record(path, new=not path.exists())
        return path
    if path.exists() and not path.is_dir():
        raise UserError(f"{given}: {flag} is an existing file, but a folder is written", hint="give a folder name")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise UserError(f"{given}: {flag} is a non-empty folder ({shown})", hint=hint)
    if entries and replaces is not None:
        patterns = list(replaces)
        foreign = [e for e in entries if not any(fnmatch.fnmatch(e, p) for p in patterns)]
        if foreign:
            raise UserError(f"{given}: {flag} holds files this command does not write ({', '.join(foreign[:5])}); "
                            "--overwrite replaces the whole folder and would delete them",
                            hint="move them away or give a new folder")
    remove_stale_temporaries(path)
    check_writable(path, flag)
    _record(path, new=not entries)
    return path


def _record(path: Path, new: bool) -> None:
    (_NEW_OUTPUTS.add if new else _NEW_OUTPUTS.discard)(path)

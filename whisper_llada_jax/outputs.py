"""Safe output writing: the one place every command writes files and folders through.

Three rules, so that nothing the user has is lost and nothing half-written looks complete:

- ``check_output`` runs before any work: it refuses an ``--out`` that already holds something
  (unless ``--overwrite``), that is a file where a folder is written (or the reverse), that is
  the working directory or one above it, or that is, contains or lies inside an input (the
  MODEL_DIR, a manifest, a checkpoint). One ``UserError`` names the path and the fix.
- ``atomic_file`` / ``atomic_dir`` write into a temporary sibling (same filesystem), fsync
  it and rename it into place only when everything worked; any failure removes the temporary.
  A kill leaves at most a hidden ``.NAME.*`` temporary, never a partial file under the real name.
- Outputs get the user's umask (``mkstemp`` / ``mkdtemp`` would leave them 0600 / 0700).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Literal

from whisper_llada_jax.errors import UserError


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


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` appears, complete, only when the
    block succeeds; on any exception (or a kill) the old ``path`` is untouched."""
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
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
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".tmp"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            os.chmod(self.tmp, 0o777 & ~_umask())
            for f in self.tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if self.target.exists():
                # Old out of the way (kept until the new one is in place), then the swap.
                old = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".old"))
                os.replace(self.target, old / "x")
                os.replace(self.tmp, self.target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.target)
            _fsync_dir(self.target.parent)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False


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
    never deleted. Any ``inputs`` equal to, inside or containing ``out`` are refused.
    """
    given = str(out)
    path = Path(out).expanduser().resolve()
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
    return path

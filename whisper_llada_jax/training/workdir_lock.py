"""One trainer per workdir: an exclusive lock file that names its holder (host, pid).

Each process of a run holds ``<workdir>/.train-lock.<process_index>``, so one file per
process works both when every host has its own local workdir and when a pod's hosts share one
(NFS, Filestore): a second run on the same workdir collides with the first on process 0's file.
The file is created with ``O_EXCL`` (atomic on local file systems and NFSv3+), not ``flock``,
which NFS and FUSE mounts do not all honour.

A lock survives a crash (SIGKILL, a lost VM). It is taken over, with a message, when
- its holder ran on this host and that process is gone, or
- its holder ran on another host and has not refreshed the file for ``STALE_SECONDS`` (the
  holder touches it every ``HEARTBEAT_SECONDS`` from a daemon thread; a pod restarted on new
  VMs waits at most that long). The margin covers clock skew between hosts.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from whisper_llada_jax.errors import UserError

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


class WorkdirLockedError(UserError):
    """Another trainer holds the workdir."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live holder from a reused pid), Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    now = _process_start(pid)
    return start is None or now is None or now == start


class WorkdirLock:
    """``acquire()`` or raise WorkdirLockedError; ``release()`` removes the file if still ours."""

    def __init__(self, workdir: str | Path, process_index: int = 0, *, print_fn: Callable[[str], None] = print,
                 holder: str = "trainer",
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, stale_seconds: float = STALE_SECONDS):
        self.path = Path(workdir) / f".train-lock.{process_index}"
        self.holder = holder  # who takes it, for the message (a trainer, the demo)
        self.print = print_fn
        self.heartbeat_seconds, self.stale_seconds = heartbeat_seconds, stale_seconds
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _record(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "pid_start": _process_start(self.pid),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._record())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _holder(self) -> tuple[dict, float] | None:
        try:
            text, mtime = self.path.read_text(), self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
            info["host"], info["pid"] = str(info["host"]), int(info["pid"])
        except (ValueError, KeyError, TypeError):
            info = {"host": "?", "pid": -1}  # a lock file cut short by a crash while writing it
        return info, mtime

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a holder may release or another contender take over meanwhile
            if self._try_create():
                break
            held = self._holder()
            if held is None:
                continue
            info, mtime = held
            age = time.time() - mtime
            who = f"host {info['host']}, pid {info['pid']}"
            if info["host"] == self.host and info["pid"] > 0:
                stale = not _alive(info["pid"], info.get("pid_start"))
                why = f"process {info['pid']} on this host is gone"
            else:
                stale = info["pid"] < 0 or age > self.stale_seconds
                why = "unreadable lock file" if info["pid"] < 0 else f"no heartbeat for {age:.0f} s"
            if not stale:
                raise WorkdirLockedError(
                    f"{self.path.parent}: another {self.holder} is running on this "
                    f"{'workdir' if self.holder == 'trainer' else 'folder'} ({who}, since "
                    f"{info.get('since', '?')}; lock file {self.path})",
                    hint="wait for it to finish, or give this run another workdir; if that trainer is dead "
                         f"on another host, its lock is taken over {self.stale_seconds:.0f} s after its last "
                         "heartbeat (or delete the lock file)")
            # Rename, not unlink: of two contenders taking over the same stale lock, one wins.
            aside = self.path.with_name(f"{self.path.name}.stale-{self.host}-{self.pid}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            self.print(f"took over a stale workdir lock {self.path} ({who}: {why})")
        else:
            raise WorkdirLockedError(f"{self.path}: could not take the workdir lock (contended)")
        self.held = True
        atexit.register(self.release)  # a caller that never closes its trainer still frees the workdir
        self._thread = threading.Thread(target=self._heartbeat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a transient file-system error; the next beat retries

    def release(self) -> None:
        if not self.held or os.getpid() != self.pid:  # a forked child (data workers) never releases
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._holder()
        if held is not None and held[0].get("host") == self.host and held[0].get("pid") == self.pid:
            self.path.unlink(missing_ok=True)
        self.held = False
        atexit.unregister(self.release)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

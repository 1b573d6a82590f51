"""One writer per output folder: `stvla collect`, `train`, `eval` and `depth` hold a lock on their `--out`
for the whole run, and a benchmark cell holds one on its result file.

    with FolderLock(out, "stvla train"):
        ...                                   # a second writer gets FolderInUse naming this one

    @writes_to_out("stvla collect")           # the same, for a function of a config with `out`
    def collect(config): ...

The lock is the operating system's (`flock` on `<folder>/.stvla.lock`; `msvcrt.locking` on Windows): it
is released when its process ends however it ends, so a lock left by a killed run is never in the way,
and there is no stale-lock guessing. The file also says who holds it (command, pid, host, start time),
for the message the second writer gets. (Network file systems may not honour `flock` between
machines: give each machine its own `--out`.)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_FILE = ".stvla.lock"


class FolderInUse(RuntimeError):
    """Another process is writing to the folder (the message names it)."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder (created if missing) or, with `name`, on one file in it."""

    def __init__(self, folder: str | Path, command: str, name: str = LOCK_FILE) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderInUse(f"{self.folder} is in use by {holder}: wait for it to finish, or write somewhere "
                              f"else (another --out)") from None
        # The lock is ours: say who holds it (the file is never removed: that would race a next writer).
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def writes_to_out(command: str, finished: tuple[str, ...] = (),
                  check_out: Callable[[Path], None] | None = None) -> Callable:
    """Decorator for a function of a config with an `out` folder: it runs holding that folder's lock.

    A run that fails before it finished any work leaves nothing behind: when it made `out` itself and ends
    by an exception while nothing in `out` that matches `finished` holds anything (glob patterns of the
    work a run keeps: a checkpoint, an episode log; an empty file or folder is no finished work), the
    folder is removed with what it wrote so far (its config, logs, half-written files). Without
    `finished`, only a folder holding nothing but its lock is removed. A folder that was there before the
    run is never removed. `check_out(out)`, if given, may refuse the folder before the lock is taken in it
    (a refusal then leaves even the lock file out of a folder that is not the run's). Under torchrun only
    rank 0 writes, so only rank 0 (RANK unset or 0) takes the lock."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def locked(config, *args, **kwargs):
            if not str(config.out).strip():  # Path("") is the working directory: its files would be taken as ours
                raise ValueError(f"--out is empty: give the folder {command} writes to")
            if check_out is not None:
                check_out(Path(config.out))
            if int(os.environ.get("RANK", "0")) != 0:
                return function(config, *args, **kwargs)
            made_here = not Path(config.out).exists()
            with FolderLock(config.out, command) as lock:
                try:
                    return function(config, *args, **kwargs)
                except BaseException:
                    if made_here:
                        _remove_if_unfinished(lock, finished)
                    raise
        return locked
    return decorate


def _remove_if_unfinished(lock: FolderLock, finished: tuple[str, ...]) -> None:
    """Remove `lock`'s folder if nothing in it that matches `finished` holds anything (without `finished`: if
    it holds no file but the lock). Done while the lock is held: a second writer that opened the lock file
    before it went is refused until this one is gone."""
    if finished:
        done = any(_holds_something(path) for pattern in finished for path in lock.folder.glob(pattern))
    else:
        done = any(path != lock.path for path in lock.folder.rglob("*") if not path.is_dir())
    if not done:
        shutil.rmtree(lock.folder, ignore_errors=True)


def _holds_something(path: Path) -> bool:
    """A file with bytes in it, or a folder with anything in it."""
    return any(path.iterdir()) if path.is_dir() else path.stat().st_size > 0


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096) or b"{}")
        return f"`{holder['command']}` (pid {holder['pid']} on {holder['host']}, since {holder['started']})"
    except (ValueError, KeyError, OSError):
        return "another process"

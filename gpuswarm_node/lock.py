"""One setup at a time: a second run refuses instead of racing the first over apt and daemon.json."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import GpuswarmError
from .host import ensure_dir, open_owned

LOCK_PATH = "/run/gpuswarm-node.lock"


class AlreadyRunning(GpuswarmError):
    pass


def _open_lock(lock: Path) -> int:
    """The lock file, never through a symlink, and only when it is the running user's (root's)
    regular file with one link (it is truncated and written below): another user's could be held
    open by them to stop every setup. Mode 0600, so nobody else can open it to hold the lock."""
    fd, problem = open_owned(lock, os.O_RDWR | os.O_CREAT, 0o600)
    if problem:
        raise GpuswarmError(f"the run lock {lock} {problem}, so another user could hold or redirect it.",
                            f"Remove it (rm {lock}) and run again.")
    os.fchmod(fd, 0o600)
    return fd


@contextlib.contextmanager
def run_lock(path: str = LOCK_PATH) -> Iterator[None]:
    lock = Path(path)
    ensure_dir(lock.parent)
    fd = _open_lock(lock)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise AlreadyRunning(f"another gpuswarm-node setup is running (pid {holder}).",
                                 "Wait for it to finish, then run again.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process dies

"""One setup at a time: a second run refuses instead of racing the first over apt and daemon.json."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import GpuswarmError

LOCK_PATH = "/run/gpuswarm-node.lock"


class AlreadyRunning(GpuswarmError):
    pass


@contextlib.contextmanager
def run_lock(path: str = LOCK_PATH) -> Iterator[None]:
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
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

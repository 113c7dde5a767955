"""One run at a time: setup, leave and reset take the same lock, so a second refuses instead of
racing the first over apt, daemon.json and the swarm membership."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
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


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it: "<command> is running (pid N)"."""
    words = os.pread(fd, 64, 0).decode(errors="replace").split()
    pid = words[0] if words and words[0].isdigit() else "unknown"
    # Versions before the command was written there name only the pid.
    command = words[1] if len(words) > 1 and re.fullmatch(r"[a-z-]{1,16}", words[1]) else "command"
    return f"{command} is running (pid {pid})"


@contextlib.contextmanager
def run_lock(path: str | None = None, command: str = "setup") -> Iterator[None]:
    """Held while `command` (setup, leave, reset) runs; `path` None means LOCK_PATH."""
    lock = Path(path or LOCK_PATH)
    ensure_dir(lock.parent)
    fd = _open_lock(lock)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another gpuswarm-node {_holder(fd)}.",
                                 "Wait for it to finish, then run again.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process dies


def holder_pid(proc_locks: str, device: tuple[int, int], inode: int) -> int | None:
    """The pid holding an flock on the file (`device` as (major, minor), `inode`) according to
    /proc/locks's text, or None. Each line (proc(5), /proc/locks): `N: FLOCK ADVISORY WRITE PID
    MAJ:MIN:INODE START END`, the major and minor in hex; a blocked waiter's line has `->`."""
    for line in proc_locks.splitlines():
        fields = line.split()
        if len(fields) < 6 or "->" in fields or fields[1] != "FLOCK":
            continue
        parts = fields[5].split(":")
        try:
            if (int(parts[0], 16), int(parts[1], 16), int(parts[2])) == (*device, inode):
                return int(fields[4])
        except (ValueError, IndexError):
            continue
    return None


def running(path: str | None = None) -> str | None:
    """Who holds the run lock ("setup is running (pid N)"), or None; without taking it (a lock
    taken only to look could make a setup starting at that moment refuse)."""
    lock = Path(path or LOCK_PATH)
    try:
        st = os.stat(lock, follow_symlinks=False)
        proc_locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    pid = holder_pid(proc_locks, (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino)
    if pid is None:
        return None
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return f"gpuswarm-node command is running (pid {pid})"
    try:
        return _holder(fd)
    finally:
        os.close(fd)

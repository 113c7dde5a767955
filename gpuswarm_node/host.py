"""The seam to the machine: commands and files.

Steps read state through `query` (never changes anything) and change it only through actions that
call `run`, `write_text`, `remove` and `makedirs`. `LocalHost` is the one real implementation;
tests give a different `Host` with the state they want to see.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

from .errors import CommandFailed, StepFailed
from .journal import Journal


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Host(Protocol):
    def query(self, argv: list[str]) -> CommandResult:
        """Run a read-only command; a missing program gives returncode 127."""

    def run(self, argv: list[str], env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> CommandResult:
        """Run a command that changes the machine; raises CommandFailed on a non-zero exit."""

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""

    def write_text(self, path: str, content: str, mode: int = 0o644) -> None:
        """Replace the file atomically: readers see the old file or the new one, never a part."""

    def remove(self, path: str) -> None: ...

    def makedirs(self, path: str, mode: int = 0o755) -> None: ...

    def exists(self, path: str) -> bool: ...

    def which(self, program: str) -> str | None: ...

    def listdir(self, path: str) -> list[str]: ...

    def mtime(self, path: str) -> float | None: ...

    def verify_fstab(self, entries: str) -> str | None:
        """What `findmnt --verify` finds wrong with these fstab lines, or None."""

    def validate_docker_config(self, content: str) -> str | None:
        """What `dockerd --validate` finds wrong with this daemon.json, or None (also when the
        installed dockerd cannot validate)."""


BACKUP_DIR = "/var/backups/gpuswarm-node"


def atomic_write(target: Path, content: str, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: a crash at any point
    leaves the old file or the new one. An existing file keeps its mode and owner."""
    try:
        st = target.stat()
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        owner = None
    # A writer killed between its temp file and the rename left the temp file behind; only one
    # setup runs at a time (lock.py), so any such file is stale.
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LocalHost:
    """This machine, as root. Every file replaced or removed is first copied to `backup_dir`."""

    def __init__(self, backup_dir: str = BACKUP_DIR, journal: Journal | None = None) -> None:
        self.backup_dir = Path(backup_dir)
        self.backups: list[tuple[str, str]] = []  # (original path, backup path), in order
        self.journal = journal

    def _record(self, **entry) -> None:
        if self.journal is not None:
            self.journal.record(**entry)

    def _backup(self, target: Path) -> str | None:
        if not target.is_file():
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = f"{str(target).strip('/').replace('/', '__')}.{stamp}.{os.getpid()}.{len(self.backups)}"
        self.backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        backup = self.backup_dir / name
        shutil.copy2(target, backup)
        self.backups.append((str(target), str(backup)))
        return str(backup)

    def query(self, argv: list[str]) -> CommandResult:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                  env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError:
            return CommandResult(tuple(argv), 127, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            return CommandResult(tuple(argv), 124, "", f"{argv[0]}: timed out after 30 s")
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def run(self, argv: list[str], env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> CommandResult:
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=full_env,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise StepFailed(f"`{argv[0]}` is not installed on this machine.",
                             "Install it and run setup again.") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s.",
                             "Find out what it waits for and run setup again.") from None
        result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if not result.ok:
            raise CommandFailed(list(argv), proc.returncode, proc.stdout + proc.stderr)
        return result

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, content: str, mode: int = 0o644) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        backup = self._backup(target)
        atomic_write(target, content, mode)
        self._record(kind="write", path=str(target), backup=backup)

    def remove(self, path: str) -> None:
        backup = self._backup(Path(path))
        Path(path).unlink(missing_ok=True)
        self._record(kind="remove", path=path, backup=backup)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        created = not os.path.isdir(path)
        Path(path).mkdir(parents=True, exist_ok=True, mode=mode)
        if created:
            self._record(kind="mkdir", path=path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def mtime(self, path: str) -> float | None:
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    def validate_docker_config(self, content: str) -> str | None:
        # `dockerd --validate` came with Engine 23; Debian 12's docker.io is 20.10.
        if "--validate" not in self.query(["dockerd", "--help"]).stdout:
            return None
        with tempfile.NamedTemporaryFile("w", prefix="daemon.", suffix=".json") as candidate:
            candidate.write(content)
            candidate.flush()
            result = self.query(["dockerd", "--validate", "--config-file", candidate.name])
        if result.ok:
            return None
        return (result.stderr or result.stdout).strip().replace(candidate.name, "daemon.json") or "invalid"

    def verify_fstab(self, entries: str) -> str | None:
        with tempfile.NamedTemporaryFile("w", prefix="gpuswarm-fstab.", suffix=".tab") as tab:
            tab.write(entries)
            tab.flush()
            result = self.query(["findmnt", "--verify", "--tab-file", tab.name])
        if result.returncode == 127:
            return None  # util-linux without --verify: nothing to ask
        if not result.ok:
            return (result.stdout + result.stderr).strip().replace(tab.name, "fstab") or "findmnt --verify failed"
        return None

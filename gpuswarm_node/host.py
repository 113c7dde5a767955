"""The seam to the machine: commands and files.

Steps read state through facts (gpuswarm_node.facts), which read through `query` (never changes
anything) and the file reads here, and change it only through actions that call `run`,
`write_text`, `remove`, `makedirs` and `download`. `LocalHost` is the one real implementation;
tests give a different `Host` with the state they want to see.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import posixpath
import re
import selectors
import shlex
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, Protocol

from .errors import CommandFailed, StepFailed

if TYPE_CHECKING:
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
            timeout: float | None = None, log: str | None = None,
            apt_status: Callable[[str], None] | None = None) -> CommandResult:
        """Run a command that changes the machine; raises CommandFailed on a non-zero exit. With
        `log` (a path), its whole output is appended to that file as it comes (see `run_logged`),
        and with `apt_status` (argv is an apt-get command) each line apt writes to its
        APT::Status-Fd is given to that function while the command runs."""

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes (for files that are not text: bytecode), or None when it does not exist."""

    def write_text(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Replace the file atomically: readers see the old file or the new one, never a part. The
        file is root's, with `mode`, whatever the file it replaces was (a symlink is replaced).
        Bytes are written as they are (bytecode); text is encoded as UTF-8."""

    def remove(self, path: str) -> None: ...

    def download(self, url: str, timeout: float = 60) -> bytes:
        """The body of an HTTPS GET of `url`; raises OSError when it cannot be fetched."""

    def makedirs(self, path: str, mode: int = 0o755) -> None: ...

    def exists(self, path: str) -> bool: ...

    def which(self, program: str) -> str | None: ...

    def listdir(self, path: str) -> list[str]: ...

    def mtime(self, path: str) -> float | None: ...

    def touch(self, path: str) -> None:
        """Set the file's modification time to now, a symlink not followed; nothing when it does
        not exist or cannot be touched. Its content, owner and mode stay (for the tool's records:
        when last confirmed)."""

    def file_status(self, path: str) -> FileStatus | None:
        """The path's own owner and mode, a symlink not followed; None when it does not exist."""

    def realpath(self, path: str) -> str:
        """The path with every symlink in it resolved (os.path.realpath)."""

    def verify_fstab(self, entries: str) -> str | None:
        """What `findmnt --verify` finds wrong with these fstab lines, or None."""

    def bounded_status(self, path: str, timeout: float) -> PathAnswer:
        """The path's own status and immutable attribute, read in a child process given `timeout`
        seconds (a path on a hung NFS share blocks in the kernel; see gpuswarm_node.bounded)."""

    def served_certificate(self, host: str, port: int) -> dict[str, str]:
        """{"sha256": fingerprint} of the certificate the TLS server at host:port of this machine
        presents (hub_tls.served_fingerprint), or {"problem": why there is no TLS answer}."""

    def validate_docker_config(self, content: str) -> str | None:
        """What `dockerd --validate` finds wrong with this daemon.json, or None (also when the
        installed dockerd cannot validate)."""

    def lock_holder(self, path: str) -> LockHolder | None:
        """Who holds a POSIX (fcntl) lock on the file now, as apt and dpkg lock theirs; None when
        nobody does or the file does not exist. Asking takes no lock."""

    def os_release(self) -> dict[str, str]:
        """The os-release(5) fields (ID, VERSION_ID, VERSION_CODENAME, ...), as
        `platform.freedesktop_os_release()` reads /etc/os-release or /usr/lib/os-release; {} when
        neither exists."""

    def memory_bytes(self) -> int:
        """Physical memory in bytes: the page size times the physical pages (sysconf(3)), the
        total /proc/meminfo reports as MemTotal."""


BACKUP_DIR = "/var/backups/gpuswarm-node"
LOG_DIR = "/var/log/gpuswarm-node"  # the run log and the command logs
QUERY_TIMEOUT = 30  # seconds a read-only command (a fact) may take
ROOT = (0, 0)
# Temp files without a pid in their name come from versions before it was there; a writer holds
# its temp file for well under a second, so one this old has no writer left.
LEGACY_TEMP_STALE_AFTER = 3600.0


class FileStatus(NamedTuple):
    """A path's own owner and mode (os.lstat: a symlink is reported, never followed)."""

    uid: int
    gid: int
    mode: int  # permission bits only, e.g. 0o644
    is_symlink: bool
    is_dir: bool = False
    is_regular: bool = True  # a plain file (not a link, a directory, a FIFO, a socket or a device)


def file_status(path: str | Path) -> FileStatus | None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FileStatus(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_ISLNK(st.st_mode),
                      stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode))


class PathAnswer(NamedTuple):
    """What a bounded read of a path found: its lstat (None: no such path), whether it carries
    the immutable attribute (FS_IMMUTABLE_FL, chattr(1) +i; False where the filesystem has no
    such attributes), or why it could not be read ("does not answer within 10 s", "Stale file
    handle"; then the other fields say nothing)."""

    status: FileStatus | None
    immutable: bool = False
    problem: str = ""


# The child that reads one path for `bounded_status`: lstat(2), then, for a directory, the inode
# flags through the FS_IOC_GETFLAGS ioctl (what lsattr(1) reads). One JSON line on stdout.
_PATH_PROBE = r"""
import errno, fcntl, json, os, stat, struct, sys
path = sys.argv[1]
try:
    st = os.lstat(path)
except (FileNotFoundError, NotADirectoryError):
    print(json.dumps(None)); sys.exit(0)
except OSError as exc:
    print(json.dumps({"problem": exc.strerror})); sys.exit(0)
flags = 0
if stat.S_ISDIR(st.st_mode):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            flags = struct.unpack("l", fcntl.ioctl(fd, 0x80086601, b"\0" * 8))[0]
        finally:
            os.close(fd)
    except OSError:
        pass
print(json.dumps({"uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode, "flags": flags}))
"""
FS_IMMUTABLE_FL = 0x10  # linux/fs.h


def bounded_status(path: str, timeout: float) -> PathAnswer:
    """Host.bounded_status on this machine: `_PATH_PROBE` run by this Python, isolated (-I)."""
    import sys

    from . import bounded

    result = bounded.call([sys.executable, "-I", "-S", "-c", _PATH_PROBE, path], timeout)
    if result.returncode == 124:
        return PathAnswer(None, problem=f"does not answer within {timeout:g} s")
    try:
        data = json.loads(result.stdout) if result.ok else {"problem": result.stderr.strip() or "unreadable"}
    except ValueError:
        data = {"problem": "unreadable"}
    if data is None:
        return PathAnswer(None)
    if "problem" in data:
        return PathAnswer(None, problem=str(data["problem"]))
    mode = int(data["mode"])
    status = FileStatus(int(data["uid"]), int(data["gid"]), stat.S_IMODE(mode), stat.S_ISLNK(mode),
                        stat.S_ISDIR(mode), stat.S_ISREG(mode))
    return PathAnswer(status, bool(int(data["flags"]) & FS_IMMUTABLE_FL))


class LockHolder(NamedTuple):
    pid: int  # 0 when the kernel cannot say (a holder in another pid namespace, an OFD lock)
    command: str = ""  # its /proc/<pid>/comm, "" when gone or unknown

    def __str__(self) -> str:
        if self.pid <= 0:
            return "another process"
        return f"process {self.pid}" + (f" ({self.command})" if self.command else "")


# struct flock as F_GETLK reads and writes it: l_type, l_whence, l_start, l_len, l_pid (native
# alignment; off_t is 64 bits, Python being built with large-file support). Padded, since the
# kernel's struct may be longer than this format (trailing alignment).
_FLOCK = "hhqqi"


def lock_holder(path: str | Path) -> LockHolder | None:
    """Who holds a POSIX (fcntl) lock on `path`, asked with F_GETLK: apt and dpkg lock with
    F_SETLK, whose holder this sees, and F_GETLK takes no lock, so asking can never make the
    holder's next lock attempt fail (probing by taking the lock for a moment could). None when
    nobody holds one, the file does not exist or cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        asked = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0) + bytes(16)
        l_type, _, _, _, pid = struct.unpack_from(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, asked))
    except OSError:
        return None
    finally:
        os.close(fd)
    if l_type == fcntl.F_UNLCK:
        return None
    command = ""
    if pid > 0:
        try:
            command = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            pass
    return LockHolder(max(pid, 0), command)


def unsafe(status: FileStatus | None, owner: int = 0) -> str | None:
    """Why a file or directory that root writes, reads or runs could be changed by someone else
    (it is a symlink, has another owner, or is writable by group or others), or None. A missing
    path is not unsafe."""
    if status is None:
        return None
    if status.is_symlink:
        return "is a symlink"
    if status.uid != owner:
        return f"is owned by uid {status.uid}, not {'root' if owner == 0 else f'uid {owner}'}"
    if status.mode & 0o002:
        return f"is writable by others (mode {status.mode:04o})"
    if status.mode & 0o020:
        return f"is writable by group {status.gid} (mode {status.mode:04o})"
    return None


def trusted_path_problem(path: str, resolved: str, status_of: Callable[[str], FileStatus | None]) -> str | None:
    """Why a program root runs at `path` (which resolves to `resolved`) could be replaced by
    someone else, or None: the file it resolves to is not a regular file, or it, a directory
    above it, or a directory above the link is not root's or is writable by group or others
    (OpenSSH's safe_path rule for what it trusts as root). `status_of` is lstat."""
    target = status_of(resolved)
    if target is None:
        return f"{path} resolves to {resolved}, which does not exist"
    if not target.is_regular:
        return f"{path} resolves to {resolved}, which is not a regular file"
    problem = unsafe(target)
    if problem:
        return f"{path} resolves to {resolved}, which {problem}"
    for start in dict.fromkeys((resolved, path)):
        directory = posixpath.dirname(start)
        while True:
            problem = unsafe(status_of(directory))
            if problem:
                return f"directory {directory} (above {start}) {problem}"
            if directory == "/":
                break
            directory = posixpath.dirname(directory)
    return None


def dir_repair_commands(path: str, status: FileStatus) -> list[tuple[str, ...]]:
    """The commands that make an existing directory (not a symlink) root's and writable by root
    only, keeping its other bits (a 0700 directory stays 0700)."""
    commands: list[tuple[str, ...]] = []
    if status.uid != 0:
        commands.append(("chown", "root:root", path))
    if status.mode & 0o022:
        commands.append(("chmod", "go-w", path))
    return commands


def ensure_dir(path: str | Path, mode: int = 0o755) -> list[Path]:
    """Create the directory and its missing parents (those 0755, the directory itself `mode`),
    whatever the umask: mkdir's mode is masked by it, so each is chmod-ed after. Returns the
    directories created; existing ones are left as they are."""
    path = Path(path)
    missing: list[Path] = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    created: list[Path] = []
    for i, directory in enumerate(reversed(missing)):
        want = mode if i == len(missing) - 1 else 0o755
        try:
            os.mkdir(directory, 0o700)  # never wider than wanted, even for a moment
        except FileExistsError:
            continue
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, want)
        finally:
            os.close(fd)
        created.append(directory)
    return created


def checked_dir(path: str | Path, mode: int, what: str) -> Path:
    """A directory the tool keeps its own records in: created with `mode` when missing; an existing
    one that is a symlink, not the running user's (root's), or writable by group or others is
    refused, since whoever can change it could change or redirect what root writes there."""
    path = Path(path)
    ensure_dir(path, mode)
    problem = unsafe(file_status(path), owner=os.geteuid())
    if problem is None and not os.path.isdir(path):
        problem = "is not a directory"
    if problem:
        raise StepFailed(f"{what} {path} {problem}, so another user could change or redirect what the "
                         "tool writes there; nothing was written to it.",
                         f"Make it a directory owned by root with mode {mode:04o} "
                         f"(chown root:root {path}; chmod {mode:04o} {path}) and run again.")
    return path


def open_owned(path: Path, flags: int, mode: int) -> tuple[int | None, str | None]:
    """Open one of the tool's own files (journal, run log, run lock) without following a symlink:
    (fd, None), or (None, why it is refused) when it is a symlink, not a regular file of the
    running user (root), or has a second hard link (a write would change another file).
    FileNotFoundError propagates."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return None, "is a symlink"
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not {'root' if os.geteuid() == 0 else f'uid {os.geteuid()}'}"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links"
    if problem:
        os.close(fd)
        return None, problem
    return fd, None


def _open_record(path: Path, flags: int, mode: int, what: str) -> int | None:
    """A record file opened by `open_owned`, and writable by nobody else: what root reads back from
    it (reset acts on the journal) must be root's alone. None when it does not exist and `flags`
    do not create it."""
    try:
        fd, problem = open_owned(path, flags, mode)
    except FileNotFoundError:
        if flags & os.O_CREAT:
            raise
        return None
    if fd is not None:  # opened: no problem yet
        bits = stat.S_IMODE(os.fstat(fd).st_mode)
        if bits & 0o022:
            os.close(fd)
            problem = f"is writable by {'others' if bits & 0o002 else 'its group'} (mode {bits:04o})"
    if problem:
        raise StepFailed(f"{what} {path} {problem}, so the tool will not use it.",
                         f"Move it aside (mv {path} {path}.suspect) and run again.")
    return fd


def append_record(path: Path, text: str, mode: int, what: str, sync: bool = False) -> None:
    """Append whole lines with one O_APPEND write (concurrent readers never see half a record) to a
    file that gets `mode` whatever the umask."""
    fd = _open_record(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode, what)
    assert fd is not None, "O_CREAT opens or raises"
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def append_json_lines(path: Path, records: list[dict], mode: int, what: str, sync: bool = False) -> None:
    """Append one JSON object a line (the journal, the run log): every record in one write, so
    that a reader sees all of them or none."""
    append_record(path, "".join(json.dumps(r) + "\n" for r in records), mode, what, sync)


def read_record(path: Path, what: str) -> str | None:
    fd = _open_record(path, os.O_RDONLY, 0, what)
    if fd is None:
        return None
    with os.fdopen(fd, encoding="utf-8") as fh:
        return fh.read()


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def _remove_stale_temps(target: Path) -> None:
    """Remove temp files of writers of `target` that died between creating and renaming them. A
    temp file names its writer's pid, so one whose writer still runs (a concurrent `status
    --prometheus`, another thread) is never touched."""
    ours = re.compile(rf"\.{re.escape(target.name)}\.([1-9][0-9]*)\.[a-z0-9_]+\.tmp")
    legacy = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        temp = target.parent / name
        if match := ours.fullmatch(name):
            stale = not _writer_alive(int(match.group(1)))
        elif legacy.fullmatch(name):
            try:
                stale = time.time() - os.lstat(temp).st_mtime > LEGACY_TEMP_STALE_AFTER
            except FileNotFoundError:
                continue
        else:
            continue
        if stale:
            temp.unlink(missing_ok=True)


def _times_if_unchanged(target: Path, data: bytes) -> tuple[int, int] | None:
    """(atime, mtime) in ns of the file at `target` when it already holds exactly `data`: a rewrite
    that changes only owner or mode keeps them, so it does not count as a change (dockerd is
    restarted when daemon.json changed after it started). Read as `read_text` reads it, through a
    symlink, but never blocking on a FIFO or reading anything but a regular file of that size."""
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):  # never open a device or FIFO
            return None
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return None
        chunks, left = [], len(data) + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return (st.st_atime_ns, st.st_mtime_ns) if b"".join(chunks) == data else None
    finally:
        os.close(fd)


def atomic_write(target: Path, content: str | bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: a crash at any point
    leaves the old file or the new one.

    The file gets `mode` and `owner` (default: root's when running as root, else the writer's),
    whatever the umask and whatever the file it replaces had. A target that is a symlink is
    replaced by the file, never written through. Content that did not change keeps its
    modification time."""
    target = Path(target)
    if owner is None and os.geteuid() == 0:
        owner = ROOT
    data = content if isinstance(content, bytes) else content.encode()
    _remove_stale_temps(target)
    keep_times = _times_if_unchanged(target, data)
    # mkstemp: O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 until the fchmod below.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            os.fchmod(fh.fileno(), mode)  # after fchown, which clears set-id bits
            if keep_times is not None:
                os.utime(fh.fileno(), ns=keep_times)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


LOG_MODE = 0o640  # the command logs: root's, readable by the adm group's readers of /var/log too
LOG_TAIL = 65536  # bytes of a command's output kept for its error message (the log has it all)


def run_logged(argv: list[str], env: Mapping[str, str], timeout: float | None, log: str,
               apt_status: Callable[[str], None] | None = None) -> CommandResult:
    """Run `argv`, its stdout and stderr appended to the file `log` as they come, between a line
    naming the command and one with its exit status, so a failed install can be read in full
    afterwards (apt's own /var/log/apt/term.log has only dpkg's part). The log's directory is
    checked like the run log's and the file opened without following a symlink; the file gets
    LOG_MODE whatever the umask. With `apt_status`, `-o APT::Status-Fd=N` is added after argv[0]
    and each line apt writes to fd N goes to `apt_status`. The result's stdout is the last
    LOG_TAIL bytes of the output; a non-zero exit raises CommandFailed with them."""
    path = Path(log)
    checked_dir(path.parent, 0o755, "log directory")
    fd = _open_record(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, LOG_MODE, "command log")
    assert fd is not None, "O_CREAT opens or raises"
    try:
        os.fchmod(fd, LOG_MODE)
        os.write(fd, f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {shlex.join(argv)}\n".encode())
        start = os.lseek(fd, 0, os.SEEK_END)
        started = time.monotonic()
        returncode = _run_into(argv, env, timeout, fd, apt_status)
        end = os.lseek(fd, 0, os.SEEK_END)
        tail = os.pread(fd, LOG_TAIL, max(start, end - LOG_TAIL)) if end > start else b""
        if tail and not tail.endswith(b"\n"):
            os.write(fd, b"\n")
        os.write(fd, f"=== exit {returncode} after {time.monotonic() - started:.1f} s\n".encode())
    finally:
        os.close(fd)
    output = tail.decode(errors="replace")
    if returncode != 0:
        raise CommandFailed(list(argv), returncode, output)
    return CommandResult(tuple(argv), 0, output, "")


def _ignore_line(line: str) -> None:
    pass


def _run_into(argv: list[str], env: Mapping[str, str], timeout: float | None, out_fd: int,
              apt_status: Callable[[str], None] | None) -> int:
    """The command's exit status; its output goes to `out_fd`, its status lines (apt) to
    `apt_status`. The status pipe is read until the command exits, not until the pipe closes: a
    process it started (a daemon a maintainer script ran) may keep the write end open."""
    read_fd = write_fd = -1
    if apt_status is not None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        argv = [argv[0], "-o", f"APT::Status-Fd={write_fd}", *argv[1:]]
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        try:
            proc = subprocess.Popen(argv, stdout=out_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(env), pass_fds=(write_fd,) if write_fd >= 0 else ())
        except FileNotFoundError:
            raise StepFailed(f"`{argv[0]}` is not installed on this machine.",
                             "Install it and run setup again.") from None
        if write_fd >= 0:
            os.close(write_fd)
            write_fd = -1
        pending = b""
        # Only called with the status pipe open, which apt_status opened.
        report: Callable[[str], None] = apt_status if apt_status is not None else _ignore_line

        def take(drain: bool) -> bool:
            """Read what the pipe holds now (drain: all of it); True once no writer is left."""
            nonlocal pending
            while True:
                try:
                    chunk = os.read(read_fd, 65536)
                except BlockingIOError:
                    return False
                if not chunk:
                    return True
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    report(line.decode(errors="replace"))
                if not drain:
                    return False

        reading = read_fd >= 0
        with selectors.DefaultSelector() as selector:
            if reading:
                selector.register(read_fd, selectors.EVENT_READ)
            while proc.poll() is None:
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise StepFailed(f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s.",
                                     "Find out what it waits for and run setup again.")
                if reading:
                    if selector.select(timeout=0.2) and take(drain=False):
                        selector.unregister(read_fd)
                        reading = False
                else:
                    try:
                        proc.wait(timeout=0.2)
                    except subprocess.TimeoutExpired:
                        pass
        if read_fd >= 0:
            take(drain=True)
            if pending:
                report(pending.decode(errors="replace"))
        return proc.returncode
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)


def _file_undo(path: str, backup: str | None) -> dict:
    """The journal's undo record for a file write or removal (journal.Undo): its backup, or, where
    there was no file before, its removal."""
    return {"op": "restore", "path": path, "backup": backup} if backup else {"op": "remove", "path": path}


class LocalHost:
    """This machine, as root. Every file replaced or removed is first copied to `backup_dir`."""

    def __init__(self, backup_dir: str = BACKUP_DIR, journal: Journal | None = None) -> None:
        self.backup_dir = Path(backup_dir)
        self.backups: list[tuple[str, str]] = []  # (original path, backup path), in order
        self.journal = journal

    def _record(self, **entry) -> None:
        if self.journal is not None:
            self.journal.record(**entry)

    def _journal_ready(self) -> None:
        # Before the change, not after: a change the journal cannot record is not made.
        if self.journal is not None:
            self.journal.ready()

    def _backup(self, target: Path) -> str | None:
        """Copy the regular file at `target` (never a symlink's target) into the backup directory,
        keeping its mode and times for `reset`. None when there is nothing to copy."""
        try:
            src = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink: replaced, not copied through
                return None
            raise
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return None
            backup_dir = checked_dir(self.backup_dir, 0o700, "backup directory")
            stamp = time.strftime("%Y%m%dT%H%M%S")
            name = f"{str(target).strip('/').replace('/', '__')}.{stamp}.{os.getpid()}.{len(self.backups)}"
            for attempt in range(100):
                backup = backup_dir / (name if attempt == 0 else f"{name}.{attempt}")
                try:
                    dst = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600)
                    break
                except FileExistsError:
                    continue
            else:
                raise StepFailed(f"no free backup name for {target} in {backup_dir}.",
                                 "Move old backups elsewhere and run again.")
            try:
                while chunk := os.read(src, 1 << 20):
                    os.write(dst, chunk)
                os.fchmod(dst, stat.S_IMODE(st.st_mode) & 0o777)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.backups.append((str(target), str(backup)))
        return str(backup)

    def query(self, argv: list[str]) -> CommandResult:
        # Bounded even against a child the kernel holds (a stat on a hung NFS share, findmnt
        # --verify of a share's mount point): see gpuswarm_node.bounded.
        from . import bounded

        return bounded.call(argv, QUERY_TIMEOUT, env={**os.environ, "LC_ALL": "C"})

    def run(self, argv: list[str], env: Mapping[str, str] | None = None,
            timeout: float | None = None, log: str | None = None,
            apt_status: Callable[[str], None] | None = None) -> CommandResult:
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        if log is not None:
            return run_logged(argv, full_env, timeout, log, apt_status)
        if timeout is not None:
            # A command with a time limit (mount, umount of a share) is killed and, should the
            # kernel hold it, abandoned at its limit instead of waited for (gpuswarm_node.bounded).
            from . import bounded

            result = bounded.call(argv, timeout, env=full_env)
            if result.returncode == 127 and result.stderr == f"{argv[0]}: not found":
                raise StepFailed(f"`{argv[0]}` is not installed on this machine.", "Install it and run setup again.")
            if result.returncode == 124 and result.stderr.endswith(f"did not answer within {timeout:g} s"):
                raise StepFailed(f"`{shlex.join(argv)}` did not finish within {timeout:g} s.",
                                 "Find out what it waits for and run setup again.")
        else:
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                raise StepFailed(f"`{argv[0]}` is not installed on this machine.",
                                 "Install it and run setup again.") from None
            result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if not result.ok:
            raise CommandFailed(list(argv), result.returncode, result.stdout + result.stderr)
        return result

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        target = Path(path)
        self._journal_ready()
        ensure_dir(target.parent)
        replaced_link = os.readlink(target) if os.path.islink(target) else None
        backup = self._backup(target)
        atomic_write(target, content, mode)
        entry = {"symlink": replaced_link} if replaced_link is not None else {}
        self._record(kind="write", path=str(target), backup=backup, undo=_file_undo(str(target), backup), **entry)

    def remove(self, path: str) -> None:
        self._journal_ready()
        backup = self._backup(Path(path))
        Path(path).unlink(missing_ok=True)
        self._record(kind="remove", path=path, backup=backup, undo=_file_undo(path, backup))

    def download(self, url: str, timeout: float = 60) -> bytes:
        import urllib.request

        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed https URLs
            return response.read()

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self._journal_ready()
        if Path(path) in ensure_dir(path, mode):
            self._record(kind="mkdir", path=path, undo={"op": "rmdir", "path": path})

    def file_status(self, path: str) -> FileStatus | None:
        return file_status(path)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

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

    def touch(self, path: str) -> None:
        try:
            os.utime(path, follow_symlinks=False)
        except OSError:  # a record not renewed is asked about again next time; no run fails for it
            pass

    def served_certificate(self, host: str, port: int) -> dict[str, str]:
        from .hub_tls import served_fingerprint

        return served_fingerprint(host, port)

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

    def lock_holder(self, path: str) -> LockHolder | None:
        return lock_holder(path)

    def os_release(self) -> dict[str, str]:
        try:
            import platform  # only here: a converged node's status never asks

            return dict(platform.freedesktop_os_release())
        except OSError:
            return {}

    def memory_bytes(self) -> int:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def bounded_status(self, path: str, timeout: float) -> PathAnswer:
        return bounded_status(path, timeout)

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

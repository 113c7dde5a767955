"""Trust files: every file the configuration or a flag names that the tool reads as root and
acts on (a key, the host keys it trusts, a CA, the configuration itself, what it bundles for a
worker) follows one rule, `problem`: a regular file, not a symbolic link, owned by root (or by
the user running the tool, or by the user who ran it through sudo), writable by nobody else, and
for a secret readable by nobody else. Whoever could change such a file would choose what root trusts.

Files are opened once (O_NOFOLLOW, O_NONBLOCK so a FIFO cannot hang the open), checked with
fstat on the open descriptor, and read from it, so nothing can swap the file between the check
and the read. What is taken from a file is only what it is meant to hold (`certificates`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from .errors import ConfigError
from .host import FileStatus

# The command-line options that name a file the tool reads and trusts, with what it holds; every
# other option of type PATH is listed in UNTRUSTED_OPTIONS with the reason. tests/test_trust.py
# checks that every PATH option of every command is in one of the two.
TRUSTED_OPTIONS = {
    "--config": "the configuration",
    "--worker-config": "the workers' configuration template",
    "--registry-ca": "the registry's CA certificate",
    "--host-key": "the hub's public host key",
    "--tool": "the tool's source tarball",
    "--key": "the worker's public key",
    "--inventory": "a GPU inventory",
}
UNTRUSTED_OPTIONS = {
    "--out": "written, never read (it must not exist)",
    "--authorized-keys": "written and read back by hub authorize/revoke as the SSH user's own file",
}

PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----")


def problem(status: FileStatus | None, secret: bool = False, owner: int | None = None) -> str | None:
    """Why a file named as a trust file must not be trusted, or None. `status`: the file's own
    (lstat/fstat) status; `owner`: the uid allowed besides root (default: the running user)."""
    if status is None:
        return "does not exist"
    if status.is_symlink:
        return "is a symbolic link"
    if not status.is_regular:
        return "is not a regular file"
    allowed = {0, os.geteuid() if owner is None else owner} | invoking_user()
    if status.uid not in allowed:
        return "is owned by neither root nor the user running the tool"
    if secret and status.mode & 0o077:
        access = "readable by" if status.mode & 0o044 else "accessible to"
        return f"is {access} other users (mode {status.mode:o})"
    if status.mode & 0o022:
        return f"is writable by other users (mode {status.mode:o})"
    return None


def invoking_user() -> set[int]:
    """The uid of whoever ran the tool through sudo (SUDO_UID, which sudo sets; only when running
    as root): a file of theirs that nobody else may write is as trustworthy as their sudo command.
    Empty otherwise (the boot unit and cloud-init run without it, so files their runs read must be
    root's)."""
    value = os.environ.get("SUDO_UID", "")
    return {int(value)} if os.geteuid() == 0 and value.isdigit() else set()


def _status(st: os.stat_result) -> FileStatus:
    return FileStatus(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_ISLNK(st.st_mode),
                      stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode))


def open_checked(path: str | Path, secret: bool = False) -> tuple[int | None, str | None]:
    """(an open read-only fd, None) when the file may be trusted, else (None, why not)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None, "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            return None, "is a symbolic link"
        return None, f"cannot be opened: {exc.strerror}"
    why = problem(_status(os.fstat(fd)), secret)
    if why:
        os.close(fd)
        return None, why
    return fd, None


def read(path: str | Path, what: str, secret: bool = False) -> bytes:
    """The bytes of the trust file `path`, which `what` names (a config key or a flag);
    ConfigError naming the problem and the fix when it does not follow the rule."""
    fd, why = open_checked(path, secret)
    if why is not None and (why == "does not exist" or why.startswith("cannot be opened")):
        raise ConfigError(f"{what} {path} cannot be read: {why.replace('cannot be opened: ', '')}.",
                          "Check the path.")
    if fd is None:
        fix = ("Install the file itself (not a link), owned by root and readable by root only (chown root:root; "
               "chmod 600)." if secret else
               "Install the file itself (not a link), owned by root and writable only by root (chown root:root; "
               "chmod 644).")
        raise ConfigError(f"{what} {path} {why}; refusing to trust it.", fix)
    try:
        with os.fdopen(fd, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}.", "Check the path.") from None


def certificates(text: str) -> str:
    """Only the PEM certificates of `text`, one after the other ("" when it holds none): whatever
    else a CA file holds (a private key, notes) is never copied on."""
    return "".join(block.replace("\r\n", "\n") + "\n" for block in PEM_CERTIFICATE.findall(text))

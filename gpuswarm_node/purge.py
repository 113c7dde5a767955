"""`reset --purge`: after the journal's changes are reverted, remove what the tool installed for
itself, as k3s's uninstall script does: setup.sh's environments, PATH link and bash completion, the runtime wrapper,
the slice map, the journal and run log, and the run lock. Kept, and said so: the backups of the
operator's original files, every file of the operator's (config, SSH key, known_hosts, a CA), and
the packages setup installed.

Every path comes from `paths()`, which takes the root the tree hangs from, so tests run on a fake
machine under a temporary directory. Nothing is followed through a symlink (lstat only; a link is
removed itself, never its target), nothing that is not root's is removed, and a second run finds
nothing to do. The tool usually runs from the environment it removes: everything it needs is
imported before anything is removed (Linux keeps a running program's open files alive), and the
environment goes last.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import host, journal, lock, runlog
from .config import DEFAULT_CONFIG_PATH
from .steps import docker_daemon

# setup.sh's PREFIX and BIN_LINK (tests/test_purge.py checks setup.sh agrees).
PREFIX = "/opt/gpuswarm-node"
BIN_LINK = "/usr/local/bin/gpuswarm-node"
COMPLETION = "/usr/share/bash-completion/completions/gpuswarm-node"
# What marks the completion script as the tool's (`gpuswarm-node completion bash`, cli.COMPLETE_VAR).
COMPLETION_MARK = b"_GPUSWARM_NODE_COMPLETE"
# What setup.sh puts in PREFIX (PREFIX may be shared: only these are its own).
PREFIX_NAMES = re.compile(r"^(venv|source\.sha256|venv-([0-9a-f]{12}|old)-[0-9]+|venv\.new\.[0-9]+"
                          r"|source\.sha256\.new\.[0-9]+)$")
PACKAGES_NOTE = ("the packages setup installed (Docker, the NVIDIA driver and container toolkit): "
                 "apt-get purge them if they are to go")


@dataclass(frozen=True)
class Paths:
    prefix: Path
    bin_link: Path
    wrapper_dir: Path
    slice_map: Path
    config_dir: Path
    state_dir: Path
    log_dir: Path
    backup_dir: Path
    lock: Path
    completion: Path


def paths(root: str | Path = "/") -> Paths:
    """The tool's own paths on the machine whose filesystem starts at `root`."""
    def under(path: str | Path) -> Path:
        return Path(root) / Path(path).relative_to("/")

    return Paths(prefix=under(PREFIX), bin_link=under(BIN_LINK),
                 wrapper_dir=under(Path(docker_daemon.WRAPPER).parent), slice_map=under(docker_daemon.SLICE_MAP),
                 config_dir=under(DEFAULT_CONFIG_PATH.parent), state_dir=under(Path(journal.JOURNAL).parent),
                 log_dir=under(Path(runlog.RUN_LOG).parent), backup_dir=under(host.BACKUP_DIR),
                 lock=under(lock.LOCK_PATH), completion=under(COMPLETION))


@dataclass(frozen=True)
class Removal:
    path: Path
    what: str
    rmdir_only: bool = False  # a directory removed only when empty by then

    def describe(self) -> str:
        return f"remove directory {self.path} if empty" if self.rmdir_only else f"remove {self.path} ({self.what})"


@dataclass
class Plan:
    remove: list[Removal] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


@dataclass
class PurgeReport:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _link_into(path: Path, prefix: Path) -> bool:
    """Whether `path` is a symlink whose text names something inside `prefix`."""
    target = os.readlink(path)
    full = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return full.startswith(str(prefix).rstrip("/") + "/")


def plan(p: Paths) -> Plan:
    """What a purge removes and keeps now; reads (lstat, readlink, listdir), changes nothing."""
    result = Plan()
    add = result.remove.append
    if _lstat(p.wrapper_dir):
        add(Removal(p.wrapper_dir, "the runtime wrapper"))
    if _lstat(p.slice_map):
        add(Removal(p.slice_map, "the slice map setup wrote"))
    config = _lstat(p.config_dir)
    if config and stat.S_ISDIR(config.st_mode):
        theirs = [f"{p.config_dir / n} (the operator's)" for n in sorted(os.listdir(p.config_dir))
                  if p.config_dir / n != p.slice_map]
        result.kept += theirs
        if not theirs:
            add(Removal(p.config_dir, "", rmdir_only=True))
    backups = _lstat(p.backup_dir)
    if backups:
        result.kept.append(f"{p.backup_dir} (the backups of the original files setup replaced or removed)")
    if _lstat(p.state_dir):
        add(Removal(p.state_dir, "the journal of changes"))
    if _lstat(p.log_dir):
        add(Removal(p.log_dir, "the run log"))
    # The PATH link and its leftovers, only when they point into the prefix: otherwise not setup.sh's.
    for path in _with_leftovers(p.bin_link):
        if os.path.islink(path) and _link_into(path, p.prefix):
            add(Removal(path, f"the command's link to {os.readlink(path)}"))
        else:
            result.kept.append(f"{path} (not setup.sh's link into {p.prefix})")
    # setup.sh's completion script and what a killed run left of it: regular files of the tool's.
    for path in _with_leftovers(p.completion):
        if _is_completion_script(path):
            add(Removal(path, "the bash completion setup.sh installed"))
        else:
            result.kept.append(f"{path} (not setup.sh's completion script)")
    prefix = _lstat(p.prefix)
    if prefix and stat.S_ISLNK(prefix.st_mode):
        result.kept.append(f"{p.prefix} (a symlink, not followed)")
    elif prefix and stat.S_ISDIR(prefix.st_mode):
        names = sorted(os.listdir(p.prefix))
        # The link first (the command stops resolving), then the environments it named.
        for name in sorted((n for n in names if PREFIX_NAMES.match(n)), key=lambda n: n != "venv"):
            path = p.prefix / name
            what = ("the link to the environment in use" if name == "venv" and os.path.islink(path)
                    else "the hash of the installed source" if name.startswith("source.sha256")
                    else "the tool's environment")
            add(Removal(path, what))
        others = [f"{p.prefix / n} (not setup.sh's)" for n in names if not PREFIX_NAMES.match(n)]
        result.kept += others
        if not others:
            add(Removal(p.prefix, "", rmdir_only=True))
    if _lstat(p.lock):
        add(Removal(p.lock, "the run lock"))
    result.kept.append(PACKAGES_NOTE)
    return result


def _with_leftovers(path: Path) -> list[Path]:
    """`path` and the `NAME.new.PID` files a killed setup.sh left beside it (it writes each such
    file under that name, then renames it into place), those that exist, in name order."""
    if not _lstat(path.parent):
        return []
    leftover = re.compile(re.escape(path.name) + r"\.new\.[0-9]+")
    return [path.parent / name for name in sorted(os.listdir(path.parent))
            if name == path.name or leftover.fullmatch(name)]


def _is_completion_script(path: Path) -> bool:
    """Whether `path` is a regular file (not followed through a symlink) holding the tool's
    completion script, or an empty one (a killed setup.sh's temporary file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    return COMPLETION_MARK in head or (not head and path.name != COMPLETION.rsplit("/", 1)[1])


def _not_roots(path: Path, owner: int) -> str | None:
    """The first path in the tree at `path` (not followed through symlinks) that is not `owner`'s,
    as a reason; None when all are."""
    st = os.lstat(path)
    if st.st_uid != owner:
        return f"{path} is owned by uid {st.st_uid}, not {'root' if owner == 0 else f'uid {owner}'}"
    if stat.S_ISDIR(st.st_mode):
        for entry in os.scandir(path):
            why = _not_roots(Path(entry.path), owner)
            if why:
                return why
    return None


def _remove(path: Path, owner: int) -> None:
    st = _lstat(path)
    if st is None:
        return
    why = _not_roots(path, owner)
    if why:
        raise PermissionError(f"refused: {why}; remove it yourself if it is to go")
    if stat.S_ISDIR(st.st_mode):
        # rmtree works through directory descriptors on Linux, never through a symlink.
        shutil.rmtree(path)
    else:
        os.unlink(path)


def execute(p: Paths, owner: int = 0) -> PurgeReport:
    """Remove what `plan` names. `owner`: the uid whose files alone are removed (root)."""
    report = PurgeReport()
    for item in plan(p).remove:
        try:
            if item.rmdir_only:
                st = _lstat(item.path)
                if st and stat.S_ISDIR(st.st_mode) and not os.listdir(item.path):
                    if st.st_uid != owner:
                        raise PermissionError(f"refused: {item.path} is owned by uid {st.st_uid}, not root")
                    os.rmdir(item.path)
                    report.done.append(f"removed directory {item.path}")
                continue
            _remove(item.path, owner)
            report.done.append(f"removed {item.path} ({item.what})")
        except OSError as exc:
            report.failed.append(f"remove {item.path}: {exc}")
    return report

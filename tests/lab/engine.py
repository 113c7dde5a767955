"""The Docker Engine the lab's swarm manager runs: Debian 13's ``docker.io`` (26.1.x).

Why not the host's Debian 12 ``docker.io`` (20.10.24): its swarmkit has an inverted check in the
constraint enforcer (``manager/orchestrator/constraintenforcer/constraint_enforcer.go``,
``if genericresource.HasResource(...)`` where ``!`` was meant; moby/moby#44378, fixed by
moby/swarmkit#3082, commit 770a4d3, first vendored in Docker Engine 23.0.2). Whenever a node's
record changes, that manager rejects every task on it that holds a generic resource ("assigned
node no longer meets constraints"), and a task on an overlay network changes it at each start.
Real managers run a current Docker; the lab's manager does too. The lab's light workers (and the
fresh Debian 12 machines) keep Debian 12's engine: a worker's version does not matter for this.

How it is obtained: apt's own client, with a private configuration (sources list, lists, status
and cache under a work directory beside the cache), downloads the ``docker.io`` package of the
Debian 13 suite, and ``dpkg -x`` unpacks it; the host's apt state is never touched. Only
``dockerd`` and ``docker-proxy`` are kept. They run with the host's containerd (1.6) and runc,
and the host's ``docker-init`` (tini); dockerd finds ``docker-proxy`` on its PATH, where the
cached directory comes first. Debian 13's dockerd needs glibc 2.34, which Debian 12 has.

Cached under the lab's cache directory as ``docker-engine-<package version>/bin``, built under the
cache's lock like the root filesystems; the first build needs the Debian mirror (about 25 MB), a
later run none: the newest cached version is used.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from functools import cmp_to_key
from pathlib import Path

from . import rootfs

SUITE = "trixie"
PACKAGE = "docker.io"
PREFIX = "docker-engine-"
KEEP = ("usr/sbin/dockerd", "usr/sbin/docker-proxy")


def _cached() -> list[Path]:
    """Complete cached builds, oldest package version first (dpkg's order)."""
    found = [d for d in rootfs.cache_dir().glob(f"{PREFIX}*") if (d / "bin" / ".complete").exists()]
    return sorted(found, key=cmp_to_key(_compare))


def _compare(a: Path, b: Path) -> int:
    va, vb = a.name[len(PREFIX):], b.name[len(PREFIX):]
    if va == vb:
        return 0
    return -1 if subprocess.run(["dpkg", "--compare-versions", va, "lt", vb]).returncode == 0 else 1


def bin_dir() -> Path:
    """The directory holding Debian 13's ``dockerd`` and ``docker-proxy``; built on first use."""
    cached = _cached()
    if cached:
        return cached[-1] / "bin"
    cache = rootfs.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _cached()
        if cached:
            return cached[-1] / "bin"
        return _build(cache)


def _apt_options(work: Path) -> list[str]:
    return [
        "-o", f"Dir::Etc::sourcelist={work / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::State::status={work / 'status'}",
        "-o", f"Dir::Cache={work / 'cache'}", "-o", "APT::Architecture=amd64",
        # The work directory is root's; apt's download user could not write there.
        "-o", "APT::Sandbox::User=root",
    ]


def _build(cache: Path) -> Path:
    work = Path(tempfile.mkdtemp(prefix="build-engine-", dir=cache))
    try:
        (work / "sources.list").write_text(f"deb {rootfs.MIRROR} {SUITE} main\n")
        (work / "status").write_text("")
        for d in ("lists/partial", "cache/archives/partial", "debs"):
            (work / d).mkdir(parents=True)
        opts = _apt_options(work)
        subprocess.run(["apt-get", *opts, "-q", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", *opts, "-q", "download", PACKAGE], check=True, cwd=work / "debs",
                       stdout=subprocess.DEVNULL)
        [deb] = (work / "debs").glob("*.deb")
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
        final = cache / f"{PREFIX}{version}"
        shutil.rmtree(final, ignore_errors=True)
        staged = work / "engine" / "bin"
        staged.mkdir(parents=True)
        for path in KEEP:
            shutil.copy2(work / "root" / path, staged / Path(path).name)
        subprocess.run([str(staged / "dockerd"), "--version"], check=True, capture_output=True)
        (staged / ".complete").write_text(version + "\n")
        (work / "engine").rename(final)
        return final / "bin"
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(bin_dir())

"""A Debian root filesystem that looks like a fresh cloud machine: Debian 12 (bookworm), or
Debian 13 (trixie), the lab's second distribution.

Built once per release with debootstrap (about 2 minutes, 300 MB) and cached as a tarball keyed
by everything that shapes it; every fresh machine unpacks its own copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUITE = "bookworm"  # the default machine
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# What a cloud image has besides python3; docker, curl, gpg... are the
# product's job to install. python3-venv is here because Debian splits it out.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "sudo",
    "ca-certificates",
    "iproute2",
    "python3",
    "python3-venv",
    # A cloud image has it, and README.md's quick start uses its ssh-keyscan and ssh-keygen.
    "openssh-client",
)
# Per release, what its cloud image has beyond PACKAGES. trixie's minbase lacks libkmod, and its
# systemd-modules-load then fails at boot under nspawn ("degraded"); a cloud image has kmod.
EXTRA_PACKAGES = {"bookworm": (), "trixie": ("kmod",)}
USER = "worker"
# Bump when _customize changes what ends up in the tarball.
RECIPE = 1

SOURCES_TEMPLATE = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: {suite} {suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
SOURCES = SOURCES_TEMPLATE.format(suite=SUITE)


def packages(suite: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What the rootfs has installed; `extra` makes a variant (cached apart), such as a cloud image
    with cloud-init."""
    return PACKAGES + EXTRA_PACKAGES[suite] + tuple(extra)


def sources(suite: str) -> str:
    return SOURCES_TEMPLATE.format(suite=suite)


# --xattrs keeps file capabilities (ping, newuidmap) intact.
_TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]


def cache_dir() -> Path:
    return Path(os.environ.get("GSN_LAB_CACHE", "/var/cache/gpuswarm-node-lab"))


def _key(suite: str, extra: tuple[str, ...] = ()) -> str:
    spec = [suite, MIRROR, VARIANT, sorted(packages(suite, extra)), USER, RECIPE, sources(suite)]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def cached_rootfs_tarball(suite: str = SUITE, extra: tuple[str, ...] = ()) -> Path:
    """The rootfs tarball of a release, built on first use; concurrent callers wait on a lock."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"rootfs-{suite}-{_key(suite, extra)}.tar"
    if tarball.exists():
        return tarball
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            _build(tarball, suite, extra)
    return tarball


def _build(tarball: Path, suite: str, extra: tuple[str, ...] = ()) -> None:
    # Build next to the cache so the final rename is atomic and a crash leaves
    # only a temp dir, never a half-written tarball under the real name.
    work = Path(tempfile.mkdtemp(prefix="build-", dir=tarball.parent))
    try:
        root = work / "root"
        subprocess.run(
            ["debootstrap", f"--variant={VARIANT}", "--include=" + ",".join(packages(suite)),
             suite, str(root), MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )
        _customize(root, suite, extra)
        partial = work / "rootfs.tar"
        subprocess.run(["tar", *_TAR_FLAGS, "-C", str(root), "-cf", str(partial), "."],
                       check=True)
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _customize(root: Path, suite: str, extra: tuple[str, ...] = ()) -> None:
    def chroot(*argv: str) -> None:
        subprocess.run(["chroot", str(root), *argv], check=True)

    if extra:
        _install_extra(root, extra)

    # The usual cloud login: an unprivileged user with passwordless sudo.
    chroot("useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", USER)
    sudoers = root / "etc/sudoers.d/90-cloud-user"
    sudoers.write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)

    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(sources(suite))
    # debootstrap leaves its package lists and .debs behind; a fresh image has
    # neither, so the product must run apt-get update itself.
    chroot("apt-get", "clean")
    for p in (root / "var/lib/apt/lists").glob("*"):
        if p.is_file():
            p.unlink()
    # Empty means "not yet initialised"; unpack_fresh gives each copy its own.
    (root / "etc/machine-id").write_text("")


def _install_extra(root: Path, extra: tuple[str, ...]) -> None:
    """apt-get install the variant's packages in the chroot (debootstrap's --include resolves
    fewer dependencies than apt: cloud-init's fail there), without recommends as a cloud image
    would be built, with the host's resolver and ways to reach the mirror only while it runs."""
    from .machine import _REACH_APT  # the host's apt settings that reach the registries

    borrowed = [root / "etc/resolv.conf"]
    shutil.copyfile("/etc/resolv.conf", borrowed[0])
    for conf in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
        if conf.is_file() and _REACH_APT.search(conf.read_text(errors="replace")):
            borrowed.append(root / "etc/apt/apt.conf.d" / conf.name)
            shutil.copyfile(conf, borrowed[-1])
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    try:
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *extra]):
            subprocess.run(["chroot", str(root), *argv], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        for path in borrowed:
            path.unlink(missing_ok=True)


def unpack_fresh(dest: Path, suite: str = SUITE, extra: tuple[str, ...] = ()) -> None:
    """Unpack a fresh copy of the release's rootfs (with `extra` packages) into dest (created; must be empty)."""
    tarball = cached_rootfs_tarball(suite, extra)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    subprocess.run(["tar", *_TAR_FLAGS, "-C", str(dest), "-xpf", str(tarball)], check=True)
    # Two workers from one tarball must not share a machine-id (journald,
    # DHCP client ids and swarm-adjacent tooling key on it).
    (dest / "etc/machine-id").write_text(os.urandom(16).hex() + "\n")

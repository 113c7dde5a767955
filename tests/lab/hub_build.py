"""What the lab's JupyterHub needs, built once and cached beside the root filesystems.

- The hub: a virtual environment with ``jupyterhub`` and ``dockerspawner`` (PyPI), and
  ``configurable-http-proxy`` (npm), keyed by their versions and this Python's.
- The notebook image: the cached Debian 12 root filesystem (rootfs.py) with ``jupyterhub`` and
  ``jupyter_server`` from PyPI in ``/usr/local/lib/python3.11/dist-packages`` (a path Debian's
  python3 searches), and a ``jupyterhub-singleuser`` launcher for Debian's ``/usr/bin/python3``.
  The wheels are chosen for CPython 3.11 on manylinux2014 (Debian 12's Python and glibc 2.36),
  whatever Python builds them. Cached as a root filesystem tarball for ``docker import``.

Both are rebuilt when a version (or the recipe) changes: the key is in the name.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import rootfs

JUPYTERHUB = "6.1.1"
DOCKERSPAWNER = "14.0.0"
JUPYTER_SERVER = "2.21.1"
CHP = "5.3.0"  # configurable-http-proxy, npm
RECIPE = 1
# Debian 12's python3 (the notebook image's interpreter) and the platform its wheels must fit.
IMAGE_PYTHON = "3.11"
IMAGE_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64")
# Not needed in a notebook image; about a third of the root filesystem.
IMAGE_EXCLUDES = ("./usr/share/doc", "./usr/share/man", "./usr/share/locale", "./usr/share/info",
                  "./var/cache/apt", "./var/lib/apt/lists")
SINGLEUSER = """#!/usr/bin/python3
# jupyterhub-singleuser for Debian's python3 (pip --target writes no launcher for it).
import sys
from jupyterhub.singleuser import main

sys.exit(main())
"""


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _locked_build(final: Path, build, done: Path | None = None) -> Path:
    """`final`, built by `build(final)` unless `done` (default: `final`) exists; concurrent
    callers wait on the cache's lock."""
    done = done or final
    final.parent.mkdir(parents=True, exist_ok=True)
    if done.exists():
        return final
    with open(final.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            build(final)
    return final


def hub_env() -> Path:
    """The hub's directory: ``venv/bin/jupyterhub`` and ``chp/node_modules/.bin``; built on first
    use (about a minute), its name keyed by the versions."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    final = rootfs.cache_dir() / f"hub-{_key(JUPYTERHUB, DOCKERSPAWNER, CHP, py, RECIPE)}"
    return _locked_build(final, _build_hub, final / ".complete")


def chp_bin(env: Path) -> Path:
    return env / "chp" / "node_modules" / ".bin"


def _build_hub(final: Path) -> None:
    # A venv is not relocatable (its scripts name their interpreter), so it is built under its
    # final name and marked complete last: a build cut short is removed and built again.
    try:
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
        subprocess.run([sys.executable, "-m", "venv", str(final / "venv")], check=True)
        subprocess.run([str(final / "venv/bin/pip"), "install", "--quiet", "--disable-pip-version-check",
                        f"jupyterhub=={JUPYTERHUB}", f"dockerspawner=={DOCKERSPAWNER}"], check=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        str(final / "chp"), f"configurable-http-proxy@{CHP}"], check=True)
        (final / ".complete").write_text("")
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise


def notebook_rootfs_tarball() -> Path:
    """The notebook image's root filesystem as a tar, built on first use (1-2 minutes)."""
    base = rootfs.cached_rootfs_tarball("bookworm")
    key = _key(base.name, JUPYTERHUB, JUPYTER_SERVER, IMAGE_PYTHON, IMAGE_PLATFORMS, IMAGE_EXCLUDES,
               SINGLEUSER, RECIPE)
    final = rootfs.cache_dir() / f"notebook-{key}.tar"
    return _locked_build(final, lambda f: _build_notebook(base, f))


def _build_notebook(base: Path, final: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="notebook-build-", dir=final.parent))
    try:
        root = work / "root"
        root.mkdir()
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-xpf", str(base),
                        *(f"--exclude={e}" for e in IMAGE_EXCLUDES)], check=True)
        site = root / f"usr/local/lib/python{IMAGE_PYTHON}/dist-packages"
        platforms = [a for p in IMAGE_PLATFORMS for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-compile", "--target", str(site), "--python-version", IMAGE_PYTHON,
                        "--implementation", "cp", *platforms, "--only-binary=:all:",
                        f"jupyterhub=={JUPYTERHUB}", f"jupyter_server=={JUPYTER_SERVER}"], check=True)
        shutil.rmtree(site / "bin", ignore_errors=True)  # launchers for the building Python
        launcher = root / "usr/local/bin/jupyterhub-singleuser"
        launcher.write_text(SINGLEUSER)
        launcher.chmod(0o755)
        partial = work / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(hub_env())
    print(notebook_rootfs_tarball())

"""A release: one command (tools/release.sh) builds the tarball of a commit and its SHA-256; the
tarball holds what setup.sh installs from, and names its version and commit without git."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from gpuswarm_node import __version__

REPO = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def build(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "release.sh"), "-o", str(out)], capture_output=True, text=True,
                          timeout=120)


def test_release_sh_builds_a_tarball_whose_checksum_verifies_and_that_holds_what_setup_sh_needs(tmp_path):
    result = build(tmp_path / "dist")
    assert result.returncode == 0, result.stderr
    name = f"gpuswarm-node-{__version__}"
    tarball, checksum = tmp_path / "dist" / f"{name}.tar.gz", tmp_path / "dist" / f"{name}.tar.gz.sha256"
    assert result.stdout.splitlines() == [str(tarball), str(checksum)]
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [tarball.name, checksum.name]
    # The checksum file is what `sha256sum -c` reads, next to the tarball, and it verifies.
    assert checksum.read_text() == f"{hashlib.sha256(tarball.read_bytes()).hexdigest()}  {tarball.name}\n"
    assert subprocess.run(["sha256sum", "-c", checksum.name], cwd=checksum.parent, capture_output=True).returncode == 0

    head = git("rev-parse", "--short=7", "HEAD")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        # What setup.sh hashes and installs at that commit: pyproject.toml, the package, the templates.
        committed = git("ls-tree", "-r", "--name-only", "HEAD", "--", "setup.sh", "pyproject.toml", "gpuswarm_node",
                        "templates").splitlines()
        assert "setup.sh" in committed and "gpuswarm_node/__init__.py" in committed
        # At its top, as the quick start unpacks it (tar -xzf ... -C ~/gpuswarm-node).
        assert set(committed) <= names
        assert {"LICENSE", "CHANGELOG.md", "README.md"} <= names
        assert tar.getmember("setup.sh").mode & 0o111
        # git archive wrote the commit in (export-subst): no .git is needed to name it.
        assert tar.extractfile("gpuswarm_node/COMMIT").read().decode().strip()[:7] == head
        tar.extractall(tmp_path / "x", filter="data")
    tree = tmp_path / "x"
    # hub bundle --tool takes it as the tool to put into a worker's user-data.
    from gpuswarm_node.bundle import tool_bytes

    assert tool_bytes(tarball) == tarball.read_bytes()
    shown = subprocess.run([sys.executable, "-c", "import gpuswarm_node; print(gpuswarm_node.version())"], cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shown == f"{__version__} ({head})"
    # setup.sh finds the dependencies in the tarball's pyproject.toml.
    deps = subprocess.run(["sh", "-c", f'SRC={tree}; eval "$(sed -n "/^dependencies() {{/,/^}}/p" setup.sh)"; '
                                       "dependencies"], cwd=tree, capture_output=True, text=True, check=True).stdout
    assert any(line.startswith("typer") for line in deps.splitlines())


def test_the_same_commit_builds_the_same_bytes(tmp_path):
    """The checksum a quick start verifies is the release's, whoever builds it from that commit."""
    assert build(tmp_path / "a").returncode == 0 and build(tmp_path / "b").returncode == 0
    name = f"gpuswarm-node-{__version__}.tar.gz.sha256"
    assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_the_version_names_the_commit_of_a_checkout():
    from gpuswarm_node import commit, version

    assert re.fullmatch(r"[0-9a-f]{7}", commit()) and commit() == git("rev-parse", "--short=7", "HEAD")
    assert version() == f"{__version__} ({commit()})"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_pyproject_takes_its_version_from_the_package():
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and '[tool.hatch.version]\npath = "gpuswarm_node/__init__.py"' in text
    assert not re.search(r"^version\s*=", text, re.M)

"""The sdist and the wheel build from this tree with PyPA's `build` (hatchling, as pyproject.toml
names it, fetched into an isolated environment), and hold what the tool needs where it looks for
it: the templates inside the package (render.templates_dir), setup.sh and the docs' sources in the
sdist, the version of gpuswarm_node/__init__.py in both names. The wheel, installed without its
dependencies into a fresh virtual environment, renders from its own templates."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from gpuswarm_node import __version__

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"sdist": out / f"gpuswarm_node-{__version__}.tar.gz",
            "wheel": out / f"gpuswarm_node-{__version__}-py3-none-any.whl"}


def test_the_wheel_holds_the_package_its_templates_and_its_command(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    templates = {p.relative_to(REPO / "templates").as_posix() for p in (REPO / "templates").rglob("*") if p.is_file()}
    assert {f"gpuswarm_node/templates/{t}" for t in templates} <= names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "gpuswarm_node").rglob("*.py")}
    assert modules <= names
    entry_points = zipfile.ZipFile(built["wheel"]).read(
        f"gpuswarm_node-{__version__}.dist-info/entry_points.txt").decode()
    assert "gpuswarm-node = gpuswarm_node.entry:main" in entry_points
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_the_sdist_holds_what_setup_sh_and_a_rebuild_need(built):
    root = f"gpuswarm_node-{__version__}"
    names = set(tarfile.open(built["sdist"]).getnames())
    for path in ("setup.sh", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md",
                 "gpuswarm_node/__init__.py", "templates/gpuswarm-runtime.j2"):
        assert f"{root}/{path}" in names, path


def test_the_wheel_installed_alone_renders_from_its_own_templates(built, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # This interpreter's pip installs into the new environment: no download, no dependency.
    target = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                           "--target", target, str(built["wheel"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    code = ("import gpuswarm_node.render as r; print(r.templates_dir()); "
            "print(sorted(p.name for p in r.templates_dir().iterdir())[:1])")
    shown = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    where = shown.stdout.splitlines()[0]
    assert where.startswith(target) and where.endswith("gpuswarm_node/templates"), where

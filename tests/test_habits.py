"""The house habits, checked by the suite as by run-tests.sh's first stage and the pre-commit
hooks: `ruff check` on the package, tests and bench, and `mypy` on the package, both as
pyproject.toml configures them, report nothing. ruff and mypy come from the test extra
(tests/prepare.sh installs them in .venv); a missing one fails, it is not skipped. The canaries
show that each tool, run the same way, does report what it is there to find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The environment running the suite: .venv/bin, where tests/prepare.sh installs the test extra.
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), (f"{name} is not installed in {BIN}: it is in the test extra, so "
                            "`.venv/bin/python -m pip install -e '.[test]'` (tests/prepare.sh) installs it")
    return str(path)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=300)


def ruff(*args: str) -> subprocess.CompletedProcess:
    # No cache: the suite writes nothing into the checkout.
    return run(tool("ruff"), "check", "--no-cache", "--output-format", "concise", *args)


def mypy(cache: Path, *args: str) -> subprocess.CompletedProcess:
    return run(tool("mypy"), "--cache-dir", str(cache), "--no-error-summary", *args)


def test_ruff_finds_nothing_in_the_package_tests_and_bench():
    result = ruff("gpuswarm_node", "tests", "bench")
    assert result.returncode == 0, f"ruff check reports:\n{result.stdout}{result.stderr}"


def test_mypy_finds_nothing_in_the_package(tmp_path):
    result = mypy(tmp_path / "mypy-cache", "gpuswarm_node")
    assert result.returncode == 0, f"mypy gpuswarm_node reports:\n{result.stdout}{result.stderr}"


def test_ruff_as_configured_reports_an_unused_import_and_a_long_line(tmp_path):
    canary = tmp_path / "canary.py"
    canary.write_text("import os\n\nTEXT = '" + "x" * 130 + "'\n")
    result = ruff("--config", str(REPO / "pyproject.toml"), str(canary))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F401" in result.stdout and "E501" in result.stdout, result.stdout


def test_mypy_as_configured_reports_a_method_a_protocol_does_not_declare(tmp_path):
    # The kind of error mypy found in the engine: a Bracket's closing step was asked for planned(),
    # which the Step protocol did not declare.
    canary = tmp_path / "canary.py"
    canary.write_text("from typing import Protocol\n\n\n"
                      "class Step(Protocol):\n    def check(self) -> str: ...\n\n\n"
                      "def dry_run(step: Step) -> str:\n    return step.planned()\n")
    result = mypy(tmp_path / "mypy-cache", "--config-file", str(REPO / "pyproject.toml"), str(canary))
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"Step" has no attribute "planned"' in result.stdout, result.stdout

"""The rule for every file the tool installs (engine.file_rule), over every file every step
declares: each converged step case (tests/steps/*/*.json whose check is ok) is taken, and each
file its step's files() names, present with its content, is made a symlink, another user's,
writable by group or others, more open than planned or not executable; `status`'s check
(safe_check) must then plan to write it again, and applying that must converge. The list of
files is the steps' own declarations, not one kept here."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pytest

from gpuswarm_node.engine import State, WriteFile, converge, flatten, safe_check
from gpuswarm_node.host import FileStatus

from .test_step_cases import CASES, STEPS, build

CONVERGED = [p for p in CASES if json.loads(p.read_text())["expect"]["state"] == "ok"]


def declared_files(path: Path, monkeypatch) -> list:
    case = json.loads(path.read_text())
    ctx, host, *_ = build(case, monkeypatch)
    step = STEPS[path.parent.name]
    if safe_check(step, ctx).state is not State.OK:
        return []
    return [f for f in step.files(ctx) if host.files.get(f.path) == f.content]


def variants(mode: int) -> dict[str, FileStatus]:
    out = {"a symlink": FileStatus(0, 0, 0o777, True), "another user's": FileStatus(1000, 1000, mode, False),
           "group-writable": FileStatus(0, 1000, mode | 0o020, False),
           "world-writable": FileStatus(0, 0, mode | 0o002, False)}
    if mode & 0o044 != 0o044:
        out["readable by others"] = FileStatus(0, 0, mode | 0o044, False)
    if mode & 0o111:
        out["not executable"] = FileStatus(0, 0, mode & ~0o111, False)
    return out


def test_the_rule_covers_every_step_that_installs_files(monkeypatch) -> None:
    covered = {p.parent.name for p in CONVERGED if declared_files(p, monkeypatch)}
    assert covered >= {"boot", "docker-daemon", "metadata-guard", "nvidia-toolkit", "registry-trust", "shared-fs",
                       "tmpfs", "node-labels"}


@pytest.mark.parametrize("path", CONVERGED, ids=[f"{p.parent.name}/{p.stem}" for p in CONVERGED])
def test_every_declared_file_that_breaks_the_rule_is_written_again(path: Path, monkeypatch) -> None:
    for planned in declared_files(path, monkeypatch):
        for label, status in variants(planned.mode).items():
            case = json.loads(path.read_text())
            ctx, host, *_ = build(case, monkeypatch)
            host.stats[planned.path] = status
            step = STEPS[path.parent.name]
            check = safe_check(step, ctx)
            if path.parent.name == "node-labels" and "does not say what the manager answers" in check.detail:
                continue  # the record is not trusted, so the labels are asked of the manager again
            assert check.state is State.NEEDS_CHANGE, (planned.path, label, check.detail)
            writes = [a for a in flatten(check.actions) if isinstance(a, WriteFile) and a.path == planned.path]
            assert writes and writes[0].mode == planned.mode, (planned.path, label, check.detail)
            if path.parent.name == "node-labels":
                continue  # its re-check asks the manager again; its own cases apply it
            report = converge(step, ctx, before=check)
            assert report.state is State.OK, (planned.path, label, report.detail)
            assert host.stats[planned.path] == FileStatus(0, 0, planned.mode, False)


@pytest.mark.parametrize("path", CONVERGED, ids=[f"{p.parent.name}/{p.stem}" for p in CONVERGED])
def test_every_declared_files_directory_is_roots_alone(path: Path, monkeypatch) -> None:
    for planned in declared_files(path, monkeypatch):
        directory = posixpath.dirname(planned.path)
        case = json.loads(path.read_text())
        ctx, host, *_ = build(case, monkeypatch)
        host.stats[directory] = FileStatus(1000, 1000, 0o777, False, is_dir=True, is_regular=False)
        check = safe_check(STEPS[path.parent.name], ctx)
        assert check.state is State.NEEDS_CHANGE, (directory, check.detail)
        described = [a.describe() for a in flatten(check.actions)]
        assert f"run chown root:root {directory}" in described and f"run chmod go-w {directory}" in described
        ctx, host, *_ = build(case, monkeypatch)
        host.stats[directory] = FileStatus(0, 0, 0o777, True)
        check = safe_check(STEPS[path.parent.name], ctx)
        assert check.state is State.BLOCKED and "symlink" in check.detail, (directory, check.detail)


def test_trusted_path_checks_the_target_and_every_directory_above_it_and_the_link() -> None:
    from gpuswarm_node.host import trusted_path_problem

    root_dir = FileStatus(0, 0, 0o755, False, is_dir=True, is_regular=False)
    tree = {"/": root_dir, "/usr": root_dir, "/usr/local": root_dir, "/usr/local/bin": root_dir,
            "/opt": root_dir, "/opt/t": root_dir, "/opt/t/bin": root_dir,
            "/opt/t/bin/prog": FileStatus(0, 0, 0o755, False)}
    assert trusted_path_problem("/usr/local/bin/prog", "/opt/t/bin/prog", tree.get) is None
    for path, status, why in (("/opt", FileStatus(0, 0, 0o1777, False, is_dir=True, is_regular=False),
                               "directory /opt (above /opt/t/bin/prog) is writable by others"),
                              ("/usr/local/bin", FileStatus(0, 50, 0o775, False, is_dir=True, is_regular=False),
                               "directory /usr/local/bin (above /usr/local/bin/prog) is writable by group 50"),
                              ("/opt/t/bin/prog", FileStatus(1000, 0, 0o755, False), "is owned by uid 1000"),
                              ("/opt/t/bin/prog", FileStatus(0, 0, 0o755, False, is_regular=False),
                               "which is not a regular file")):
        problem = trusted_path_problem("/usr/local/bin/prog", "/opt/t/bin/prog", {**tree, path: status}.get)
        assert problem is not None and why in problem, (path, problem)

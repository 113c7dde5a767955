"""`logs`: the last runs of the run log and the apt log, read back read-only. Unit tests on logs in
tmp_path (written by the tool's own writers where there is one: runlog.append, host.LocalHost.run's
command log), and real CLI runs whose /var/log is a private overlay (conftest's `gsn`), also as an
unprivileged user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from gpuswarm_node import logs, runlog
from gpuswarm_node.engine import RunReport, State, StepReport
from gpuswarm_node.errors import CommandFailed

from .conftest import REPO, private_state


def report(command: str, *steps: tuple[str, State, bool, str]) -> RunReport:
    return RunReport([StepReport(name, state, detail, changed=changed, actions=[f"run {name}"] if changed else [],
                                 seconds=1.5, started=float(i))
                      for i, (name, state, changed, detail) in enumerate(steps)], command, command)


def three_runs(path: Path) -> None:
    """A setup that changed docker, a setup whose swarm-join failed, a leave: in the run log at `path`."""
    runlog.append(report("setup", ("docker", State.OK, True, "running"), ("image", State.SKIPPED, False, "none")),
                  str(path))
    runlog.append(report("setup", ("docker", State.OK, False, "running"),
                         ("swarm-join", State.FAILED, False, "the manager refused the token\x1b]0;owned\x07"),
                         ("node-labels", State.BLOCKED, False, "not in a swarm")), str(path))
    runlog.append(report("leave", ("drain", State.OK, True, "drained")), str(path))


# --- the run log ----------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [logs.BLOCK, 7])  # 7 bytes: every line crosses a block's end
def test_the_last_runs_come_back_whole_oldest_first(tmp_path, monkeypatch, block):
    monkeypatch.setattr(logs, "BLOCK", block)
    path = tmp_path / "runs.jsonl"
    three_runs(path)
    runs, skipped = logs.last_runs(2, str(path))
    assert skipped == 0
    assert [run.command for run in runs] == ["setup", "leave"]
    failed, leave = runs
    assert [r["step"] for r in failed.records] == ["docker", "swarm-join", "node-labels"]
    assert failed.changed == [] and failed.failed == ["swarm-join"] and failed.blocked == ["node-labels"]
    assert failed.errors == [("swarm-join", "the manager refused the token")]  # the escape sequence cleaned
    assert failed.seconds == 3.5  # the last step began 2 s after the first and took 1.5 s
    assert leave.changed == ["drain"] and leave.errors == []
    [first], _ = logs.last_runs(1, str(path))
    assert first.run == leave.run
    everything, _ = logs.last_runs(10, str(path))
    assert [run.command for run in everything] == ["setup", "setup", "leave"]
    assert everything[0].changed == ["docker"]


def test_a_torn_or_foreign_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "runs.jsonl"
    three_runs(path)
    with path.open("a") as log:
        log.write('not json\n["a list"]\n{"run": "x", "time": "2026-12-08T00:00:00+0000", "step": "docker", "mo')
    runs, skipped = logs.last_runs(1, str(path))
    assert skipped == 3 and [run.command for run in runs] == ["leave"]


def test_watch_records_are_runs_of_their_own(tmp_path):
    path = tmp_path / "runs.jsonl"
    runlog.append_records([{"time": "2026-12-08T01:00:00+0000", "mode": "watch", "step": "watch", "before": "ok",
                            "after": "fault", "actions": ["drain node w1"], "changed": True, "reason": "gpu",
                            "detail": "GPU 0 lost", "error": None}], str(path))
    [run], _ = logs.last_runs(5, str(path))
    assert run.command == "watch" and run.changed == ["watch"] and run.seconds is None
    from io import StringIO

    from rich.console import Console

    from gpuswarm_node.ui import print_runs

    buffer = StringIO()
    print_runs(Console(file=buffer, width=300), [run], 0, str(path))
    assert buffer.getvalue() == f"2026-12-08T01:00:00+0000  watch  run {run.run}: ok -> fault (gpu): GPU 0 lost\n"


def test_no_run_log_is_none(tmp_path):
    assert logs.last_runs(5, str(tmp_path / "absent.jsonl")) is None
    assert logs.apt_runs(None, 5, str(tmp_path / "absent.log")) is None


def test_a_symlink_or_a_fifo_is_not_read(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text('{"run": "a", "step": "docker"}\n')
    (tmp_path / "link.jsonl").symlink_to(target)
    with pytest.raises(logs.LogUnreadable, match="is a symlink"):
        logs.last_runs(5, str(tmp_path / "link.jsonl"))
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(logs.LogUnreadable, match="is not a regular file"):  # and it does not block
        logs.last_runs(5, str(tmp_path / "fifo.jsonl"))


def test_another_users_file_is_not_the_tools_log(tmp_path):
    path = tmp_path / "runs.jsonl"
    three_runs(path)
    os.chown(path, 65534, 65534)
    with pytest.raises(logs.LogUnreadable, match="is owned by uid 65534, not root"):
        logs.last_runs(5, str(path))


# --- the apt log ----------------------------------------------------------------------------------

def apt_log(tmp_path: Path) -> Path:
    """Three commands' output as host.LocalHost.run writes it: two whole, the last cut off."""
    from gpuswarm_node.host import LocalHost

    path = tmp_path / "apt.log"
    host = LocalHost()
    host.run(["sh", "-c", "echo Reading package lists..."], log=str(path))
    with pytest.raises(CommandFailed):
        host.run(["sh", "-c", "printf 'E: \\033[31mUnable to locate package nvidia-driver\\033[0m\\n'; exit 100"],
                 log=str(path))
    with path.open("a") as log:
        log.write("=== 2099-01-01T00:00:00+0000 apt-get install -y docker.io\nUnpacking docker.io\n")
    return path


def test_apt_runs_come_back_with_their_exit_status(tmp_path):
    path = apt_log(tmp_path)
    runs = logs.apt_runs(None, 10, str(path))
    assert [(r.command, r.exit) for r in runs] == [("sh -c 'echo Reading package lists...'", 0),
                                                   (runs[1].command, 100),
                                                   ("apt-get install -y docker.io", None)]
    assert runs[0].output == "Reading package lists..."
    assert runs[1].output == "E: Unable to locate package nvidia-driver"  # the colour sequences cleaned
    assert runs[2].output == "Unpacking docker.io" and runs[2].seconds is None
    assert [r.command for r in logs.apt_runs(None, 1, str(path))] == ["apt-get install -y docker.io"]


def test_apt_runs_since_a_time(tmp_path):
    path = apt_log(tmp_path)
    since = datetime.strptime("2098-12-31T23:59:59+0000", logs.TIME_FORMAT)
    assert [r.command for r in logs.apt_runs(since, 1, str(path))] == ["apt-get install -y docker.io"]
    assert len(logs.apt_runs(datetime.strptime("2000-01-01T00:00:00+0000", logs.TIME_FORMAT), 1, str(path))) == 3


# --- the command ----------------------------------------------------------------------------------

def host_log_dir(tmp_path: Path) -> Path:
    """/var/log/gpuswarm-node as the CLI run by `gsn` sees it: the upper layer of its private /var/log."""
    path = tmp_path / "host-state" / "var" / "log" / "upper" / "gpuswarm-node"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_logs_without_any_log_says_so(gsn):
    result = gsn("logs", "--apt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "no run log at /var/log/gpuswarm-node/runs.jsonl: no setup, leave, reset or watch has logged a run on this "
        "machine yet.",
        "no apt log at /var/log/gpuswarm-node/apt.log: no step of this tool has run apt-get or dpkg here yet."]


def test_logs_shows_the_last_runs_and_their_errors(gsn, tmp_path):
    three_runs(host_log_dir(tmp_path) / "runs.jsonl")
    result = gsn("logs", "--runs", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, lines
    assert " setup  run " in lines[0] and lines[0].endswith(
        ": 3 step(s) in 3.5 s; changed: nothing; failed: swarm-join; blocked: node-labels")
    assert lines[1] == "  error in swarm-join: the manager refused the token"
    assert " leave  run " in lines[2] and lines[2].endswith(": 1 step(s) in 1.5 s; changed: drain")
    data = json.loads(gsn("logs", "--json").stdout)
    assert [run["command"] for run in data["runs"]] == ["setup", "setup", "leave"]
    assert data["runs"][1]["errors"] == [{"step": "swarm-join", "error": "the manager refused the token"}]
    assert data["run_log_found"] is True and "apt" not in data


def test_logs_apt_shows_the_apt_runs_of_those_runs(gsn, tmp_path):
    log_dir = host_log_dir(tmp_path)
    three_runs(log_dir / "runs.jsonl")  # logged now
    (log_dir / "apt.log").write_text("=== 2001-01-01T00:00:00+0000 apt-get update\nold\n=== exit 0 after 1.0 s\n"
                                     "=== 2099-01-01T00:00:00+0000 apt-get install -y docker.io\nUnpacking\n"
                                     "=== exit 0 after 12.3 s\n")
    result = gsn("logs", "--runs", "1", "--apt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["=== 2099-01-01T00:00:00+0000 apt-get install -y docker.io",
                                              "Unpacking", "=== exit 0 after 12.3 s"]
    data = json.loads(gsn("logs", "--runs", "1", "--apt", "--json").stdout)
    assert data["apt"] == [{"time": "2099-01-01T00:00:00+0000", "command": "apt-get install -y docker.io", "exit": 0,
                            "seconds": 12.3, "output": "Unpacking"}]


def unprivileged_logs(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`gpuswarm-node logs ARGS` as nobody, over the same private /var/log as `gsn`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_"))}
    argv = [*private_state(tmp_path / "host-state"), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            sys.executable, "-m", "gpuswarm_node.cli", "logs", *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_logs_works_without_root_where_the_log_is_readable(tmp_path):
    path = host_log_dir(tmp_path) / "runs.jsonl"
    three_runs(path)
    path.chmod(0o644)
    result = unprivileged_logs(tmp_path, "--runs", "1")
    assert result.returncode == 0, result.stderr
    assert " leave  run " in result.stdout


def test_logs_without_root_on_roots_log_is_one_sentence(tmp_path):
    three_runs(host_log_dir(tmp_path) / "runs.jsonl")  # 0640, root's: as the tool writes it
    result = unprivileged_logs(tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: The run log /var/log/gpuswarm-node/runs.jsonl cannot be read by this user (permission denied). "
        "Run it with sudo (`sudo gpuswarm-node logs`), or give this user read access to /var/log/gpuswarm-node."]
    assert result.stdout == ""


def test_logs_on_a_run_log_that_is_a_symlink_refuses_it(gsn, tmp_path):
    (host_log_dir(tmp_path) / "runs.jsonl").symlink_to("/etc/passwd")
    result = gsn("logs")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: The run log /var/log/gpuswarm-node/runs.jsonl is a symlink")


def test_a_bad_runs_count_is_a_usage_error(gsn):
    result = gsn("logs", "--runs", "0")
    assert result.returncode == 2 and result.stderr.startswith("error: Invalid value for '--runs'")


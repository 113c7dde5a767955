"""Reads that may touch a hung NFS share are bounded by a child process that is abandoned, never
waited for, when the kernel holds it (gpuswarm_node.bounded; steps/shared_fs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from gpuswarm_node import bounded, host as host_mod
from gpuswarm_node.host import LocalHost


REAL_KILLPG = os.killpg


def unkillable(monkeypatch) -> list[int]:
    """Make the kill miss, as it does for a child in an uninterruptible sleep (D state); returns
    the process groups it was asked to kill (the test ends them itself)."""
    asked: list[int] = []
    monkeypatch.setattr(bounded.os, "killpg", lambda pgid, sig: asked.append(pgid))
    # subprocess's own kill (what subprocess.run(timeout=) and timeout(1) do before they wait).
    monkeypatch.setattr(subprocess.Popen, "send_signal", lambda self, sig: asked.append(self.pid))
    return asked


def end(groups: list[int]) -> None:
    for pgid in groups:
        try:
            REAL_KILLPG(pgid, 9)
        except ProcessLookupError:
            pass


def test_a_command_that_answers_gives_its_result() -> None:
    result = bounded.call([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], 10)
    assert (result.returncode, result.stdout) == (3, "hi\n")


def test_a_missing_program_is_127() -> None:
    assert bounded.call(["/nonexistent/program"], 1).returncode == 127


def test_a_child_the_kernel_holds_is_abandoned_at_its_bound(monkeypatch) -> None:
    groups = unkillable(monkeypatch)
    started = time.monotonic()
    try:
        result = bounded.call([sys.executable, "-c", "import time; time.sleep(60)"], 0.5)
        took = time.monotonic() - started
    finally:
        end(groups)
    assert result.returncode == 124 and "did not answer within" in result.stderr
    assert took < 0.5 + bounded.KILL_GRACE + 2, took  # not the child's 60 s


def test_a_grandchild_holding_the_pipes_does_not_hold_the_caller() -> None:
    # `timeout 10 stat` style: the killed child leaves one behind that keeps its stdout open.
    started = time.monotonic()
    result = bounded.call(["sh", "-c", "sleep 30 & sleep 30"], 0.5)
    assert result.returncode == 124
    assert time.monotonic() - started < 5


def test_the_childs_output_is_never_the_callers(capfd) -> None:
    # A child left behind must not keep the caller's stdout open (`status | cat` would not end).
    result = bounded.call([sys.executable, "-c", "import os; os.write(1, b'x'); os.write(2, b'y')"], 10)
    assert (result.stdout, result.stderr) == ("x", "y")
    assert capfd.readouterr() == ("", "")


def test_a_path_read_names_a_share_that_does_not_answer(monkeypatch) -> None:
    groups = unkillable(monkeypatch)
    # The probe as it behaves on a hung hard mount: its lstat never returns.
    monkeypatch.setattr(host_mod, "_PATH_PROBE", "import time; time.sleep(60)")
    started = time.monotonic()
    try:
        answer = LocalHost().bounded_status("/srv/shared/data", 0.5)
    finally:
        end(groups)
    assert answer == host_mod.PathAnswer(None, problem="does not answer within 0.5 s")
    assert time.monotonic() - started < 3


def test_a_path_read_gives_status_and_immutable_attribute(tmp_path) -> None:
    directory = tmp_path / "share"
    directory.mkdir(mode=0o750)
    os.chmod(directory, 0o750)
    answer = LocalHost().bounded_status(str(directory), 10)
    assert answer.problem == "" and answer.status.is_dir and answer.status.mode == 0o750
    assert answer.immutable is False
    assert LocalHost().bounded_status(str(tmp_path / "missing"), 10) == host_mod.PathAnswer(None)
    link = tmp_path / "link"
    link.symlink_to(directory)
    assert LocalHost().bounded_status(str(link), 10).status.is_symlink


def test_a_path_read_sees_chattr_immutable(tmp_path) -> None:
    directory = tmp_path / "point"
    directory.mkdir()
    # chattr needs root and a filesystem with inode flags (ext4, xfs, btrfs; tmpfs since 6.0).
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
    try:
        assert done.returncode == 0, done.stderr
        assert LocalHost().bounded_status(str(directory), 10).immutable is True
    finally:
        subprocess.run(["chattr", "-i", str(directory)], capture_output=True)


def test_query_and_timed_run_use_the_bound(monkeypatch) -> None:
    import pytest

    from gpuswarm_node.errors import StepFailed

    groups = unkillable(monkeypatch)
    monkeypatch.setattr(host_mod, "QUERY_TIMEOUT", 0.5)
    started = time.monotonic()
    try:
        result = LocalHost().query([sys.executable, "-c", "import time; time.sleep(20)"])
        with pytest.raises(StepFailed, match="did not finish within 0.5 s"):
            LocalHost().run([sys.executable, "-c", "import time; time.sleep(20)"], timeout=0.5)
    finally:
        end([pid for pid in groups if pid > 0])
    assert result.returncode == 124
    assert time.monotonic() - started < 8  # not the children's 20 s each

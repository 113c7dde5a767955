"""The real host seam on this machine: atomic replacement, kept mode and owner, backups, the lock."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuswarm_node.host import LocalHost
from gpuswarm_node.lock import AlreadyRunning, run_lock


def test_write_keeps_mode_and_owner_and_backs_up(tmp_path):
    target = tmp_path / "etc" / "daemon.json"
    target.parent.mkdir()
    target.write_text("old\n")
    os.chmod(target, 0o640)
    os.chown(target, 65534, 65534)
    host = LocalHost(backup_dir=str(tmp_path / "backups"))

    host.write_text(str(target), "new\n")

    assert target.read_text() == "new\n"
    st = target.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 65534, 65534)
    [(original, backup)] = host.backups
    assert original == str(target) and Path(backup).read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["daemon.json"]  # no temp file left


def test_new_file_gets_the_given_mode_and_no_backup(tmp_path):
    host = LocalHost(backup_dir=str(tmp_path / "backups"))
    host.write_text(str(tmp_path / "a" / "b.conf"), "x\n", 0o600)
    assert (tmp_path / "a" / "b.conf").stat().st_mode & 0o777 == 0o600
    assert host.backups == [] and not (tmp_path / "backups").exists()


def test_remove_backs_up_first(tmp_path):
    target = tmp_path / "dropin.conf"
    target.write_text("[Service]\n")
    host = LocalHost(backup_dir=str(tmp_path / "backups"))
    host.remove(str(target))
    assert not target.exists()
    assert Path(host.backups[0][1]).read_text() == "[Service]\n"


WRITER = """
import sys
from gpuswarm_node.host import LocalHost
host = LocalHost(backup_dir=sys.argv[2])
print("ready", flush=True)
while True:
    host.write_text(sys.argv[1], "N" * 4_000_000 + "\\n")
"""


def test_killed_writer_leaves_old_or_new_never_partial(tmp_path):
    target = tmp_path / "fstab"
    old = "O" * 3_000_000 + "\n"
    new = "N" * 4_000_000 + "\n"
    for attempt in range(12):
        target.write_text(old)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(tmp_path / "bk")],
                                stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.003 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert target.read_text() in (old, new), f"partial file after kill at attempt {attempt}"


def test_second_holder_of_the_lock_is_refused_with_the_pid(tmp_path):
    path = str(tmp_path / "gpuswarm-node.lock")
    with run_lock(path):
        with pytest.raises(AlreadyRunning) as info:
            with run_lock(path):
                pass
    assert f"pid {os.getpid()}" in info.value.message()
    with run_lock(path):  # released after the first holder finished
        pass


def test_setup_refuses_while_another_runs(gsn, tmp_path):
    fd = os.open("/run/gpuswarm-node.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"4242\n", 0)
        result = gsn("setup", "--only", "image")
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert "another gpuswarm-node setup is running (pid 4242)" in result.stderr


def test_a_killed_writers_temp_file_is_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "daemon.json"
    stale = tmp_path / ".daemon.json.abc123.tmp"
    stale.write_text("half")
    other = tmp_path / ".fstab.abc123.tmp"
    other.write_text("not ours to clean now")
    LocalHost(backup_dir=str(tmp_path / "bk")).write_text(str(target), "{}\n")
    assert not stale.exists() and other.exists()

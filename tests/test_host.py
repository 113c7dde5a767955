"""The real host seam on this machine: atomic replacement, kept mode and owner, backups, the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuswarm_node.host import LocalHost
from gpuswarm_node.lock import AlreadyRunning, run_lock

from .conftest import REPO, private_state


# Changes file owners: the suite runs as root (run-tests.sh); elsewhere this fails, never skips.
needs_root = pytest.mark.usefixtures("as_root")


@needs_root
def test_write_makes_the_file_roots_with_the_given_mode_and_backs_up(tmp_path):
    # A file a local user owns or may write (tampered) is not trusted to keep its owner and mode.
    target = tmp_path / "etc" / "daemon.json"
    target.parent.mkdir()
    target.write_text("old\n")
    os.chmod(target, 0o666)
    os.chown(target, 65534, 65534)
    host = LocalHost(backup_dir=str(tmp_path / "backups"))

    host.write_text(str(target), "new\n")

    assert target.read_text() == "new\n"
    st = target.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o644, 0, 0)
    [(original, backup)] = host.backups
    assert original == str(target) and Path(backup).read_text() == "old\n"
    # The backup keeps the old mode (for reset) in a directory only root can enter.
    assert Path(backup).stat().st_mode & 0o777 == 0o666 and Path(backup).stat().st_uid == 0
    assert (tmp_path / "backups").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in target.parent.iterdir()) == ["daemon.json"]  # no temp file left


def test_write_gives_the_mode_asked_for_over_the_old_one(tmp_path):
    target = tmp_path / "gpuswarm-runtime"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    LocalHost(backup_dir=str(tmp_path / "backups")).write_text(str(target), "new\n", 0o755)
    assert target.stat().st_mode & 0o7777 == 0o755


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


def cli_while_locked(tmp_path, content: str, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI while another gpuswarm-node holds the run lock with `content` in it. The lock is
    taken in the CLI's own view of /run (tests never touch the machine's real one): a shell holds
    it on fd 9 with flock(1) and starts the CLI."""
    hold = ('exec 9>>/run/gpuswarm-node.lock && flock 9 && printf "$1" > /run/gpuswarm-node.lock && '
            'shift && exec "$@"')
    return subprocess.run([*private_state(tmp_path / "state"), "sh", "-c", hold, "hold", content,
                           sys.executable, "-m", "gpuswarm_node.cli", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_lock_names_its_holders_command(tmp_path):
    path = str(tmp_path / "gpuswarm-node.lock")
    with run_lock(path, command="leave"):
        assert Path(path).read_text() == f"{os.getpid()} leave\n"
        with pytest.raises(AlreadyRunning) as info:
            with run_lock(path, command="setup"):
                pass
    assert f"another gpuswarm-node leave is running (pid {os.getpid()})" in info.value.message()


def test_setup_refuses_while_a_leave_runs(tmp_path):
    result = cli_while_locked(tmp_path, "4242 leave\n", "setup", "--only", "image")
    assert result.returncode == 1, result.stderr
    assert "another gpuswarm-node leave is running (pid 4242)" in result.stderr


def test_a_lock_written_by_an_older_version_names_the_pid(tmp_path):
    result = cli_while_locked(tmp_path, "4242\n", "setup", "--only", "image")
    assert result.returncode == 1, result.stderr
    assert "another gpuswarm-node command is running (pid 4242)" in result.stderr


def test_leave_refuses_while_setup_runs(tmp_path):
    # Before: leave took no lock, and drained and left the swarm under a setup that was joining it.
    config = tmp_path / "node.toml"
    config.write_text('[swarm]\nmanager = "198.18.0.1"\n')
    result = cli_while_locked(tmp_path, "4242 setup\n", "leave", "--config", str(config), "--timeout", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "another gpuswarm-node setup is running (pid 4242)" in result.stderr


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no such process (pids are not reused this fast)


def test_a_killed_writers_temp_file_is_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "daemon.json"
    stale = tmp_path / f".daemon.json.{dead_pid()}.abc123.tmp"
    stale.write_text("half")
    other = tmp_path / f".fstab.{dead_pid()}.abc123.tmp"
    other.write_text("not ours to clean now")
    LocalHost(backup_dir=str(tmp_path / "bk")).write_text(str(target), "{}\n")
    assert not stale.exists() and other.exists()


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    # Two `status --prometheus` runs write one file at once: neither may delete the other's temp.
    target = tmp_path / "gpuswarm_node.prom"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".gpuswarm_node.prom.{sleeper.pid}.k2j4h5g6.tmp"
        theirs.write_text("being written")
        mine = tmp_path / f".gpuswarm_node.prom.{os.getpid()}.zz99yy88.tmp"  # another thread's
        mine.write_text("being written")
        LocalHost(backup_dir=str(tmp_path / "bk")).write_text(str(target), "x 1\n")
        assert theirs.exists() and mine.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_temp_files_of_older_versions_are_cleaned_only_when_old(tmp_path):
    # Before the pid was in the name: no writer is known, so only the age tells.
    target = tmp_path / "daemon.json"
    old = tmp_path / ".daemon.json.abc12345.tmp"
    old.write_text("half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    recent = tmp_path / ".daemon.json.xyz98765.tmp"
    recent.write_text("maybe being written")
    LocalHost(backup_dir=str(tmp_path / "bk")).write_text(str(target), "{}\n")
    assert not old.exists() and recent.exists()


CONCURRENT_WRITER = """
import sys
from gpuswarm_node.host import atomic_write
from pathlib import Path
target, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(rounds):
    atomic_write(target, (me * 20_000 + "\\n") * 5)
"""


def test_concurrent_writers_of_one_file_never_fail_and_never_show_a_part(tmp_path):
    target = tmp_path / "textfile" / "gpuswarm_node.prom"
    target.parent.mkdir()
    writers = "abcdefgh"
    complete = {(w * 20_000 + "\n") * 5 for w in writers}
    target.write_text(next(iter(complete)))
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(target), w, "150"],
                              stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
             for w in writers]
    seen = 0
    while any(p.poll() is None for p in procs):
        assert target.read_text() in complete, "a reader saw a partial file"
        seen += 1
    errors = [p.stderr.read() for p in procs if p.wait() != 0]
    assert errors == [], errors[0][-2000:]
    assert target.read_text() in complete and seen > 0
    assert not list(target.parent.glob(".*.tmp"))


def test_the_machine_reports_its_os_release_and_memory_as_the_files_say():
    from gpuswarm_node.host import LocalHost

    host = LocalHost()
    fields = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            fields[name] = value.strip().strip('"')
    release = host.os_release()
    assert release["ID"] == fields["ID"] and release.get("VERSION_ID") == fields.get("VERSION_ID")
    mem_total_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal:"))
    assert host.memory_bytes() // 1024 == mem_total_kib


def test_touch_renews_a_records_time_and_nothing_else_and_never_follows_a_symlink(tmp_path):
    from gpuswarm_node import facts as F

    record, target = tmp_path / "record.json", tmp_path / "target"
    record.write_text("{}")
    os.chmod(record, 0o600)
    os.utime(record, (1000, 1000))
    target.write_text("x")
    os.utime(target, (1000, 1000))
    link = tmp_path / "link"
    link.symlink_to(target)
    host = LocalHost()

    host.touch(str(record))
    host.touch(str(link))
    host.touch(str(tmp_path / "missing"))  # nothing to renew: no error, nothing made

    assert time.time() - record.stat().st_mtime < 60 and record.read_text() == "{}"
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert target.stat().st_mtime == 1000  # the link's own time changed, not its target's
    assert not (tmp_path / "missing").exists()
    age = F.Facts(host).get(F.AGE, str(record))
    assert 0 <= age < 60 and F.Facts(host).get(F.AGE, str(tmp_path / "missing")) is None

"""Waiting for apt's and dpkg's locks, with real fcntl locks held by another process.

apt takes the package lists' lock and the download directory's lock without waiting (only dpkg's
locks honour DPkg::Lock::Timeout): setup waits for each lock a command needs, names who holds it,
and gives up at apt.lock_timeout. The step cases (tests/steps/docker/apt-*.json) cover the plans;
these cover the looking and the waiting against the kernel's locks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpuswarm_node import config
from gpuswarm_node.errors import StepFailed
from gpuswarm_node.host import LocalHost, lock_holder
from gpuswarm_node.steps import apt
from gpuswarm_node.context import Context

# Holds a write lock on argv[1] the way apt does (fcntl F_SETLK on a file opened read-write), says
# so on stdout, and keeps it for argv[2] seconds.
HOLDER = textwrap.dedent("""
    import fcntl, sys, time
    f = open(sys.argv[1], "r+")
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")

# A stand-in for apt-get: takes the lock as apt does, without waiting; when it is taken, fails
# with apt's words and exit code; else records its arguments and succeeds.
FAKE_APT = textwrap.dedent("""
    import fcntl, json, os, sys
    lock, record = sys.argv[1], sys.argv[2]
    f = open(lock, "r+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"E: Could not get lock {lock}. It is held by process 1 (apt-get)", file=sys.stderr)
        print(f"E: Unable to lock directory {os.path.dirname(lock)}/", file=sys.stderr)
        sys.exit(100)
    with open(record, "a") as out:
        out.write(json.dumps(sys.argv[3:]) + "\\n")
""")


@pytest.fixture
def lock_file(tmp_path) -> Path:
    path = tmp_path / "lists" / "lock"
    path.parent.mkdir()
    path.write_text("")
    return path


@pytest.fixture
def hold(lock_file):
    """hold(seconds): another process holds `lock_file` from now on, for that long."""
    children: list[subprocess.Popen] = []

    def start(seconds: float) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file), str(seconds)],
                                 stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_the_holder_of_a_lock_is_named_and_a_free_or_missing_file_has_none(lock_file, hold, tmp_path):
    assert lock_holder(lock_file) is None
    assert lock_holder(tmp_path / "missing") is None
    child = hold(60)
    holder = lock_holder(lock_file)
    assert holder is not None and holder.pid == child.pid and holder.command == comm(child.pid) != ""
    assert str(holder) == f"process {child.pid} ({comm(child.pid)})"
    child.kill()
    child.wait()
    assert lock_holder(lock_file) is None  # the kernel releases a dead process's lock


def test_looking_at_a_lock_never_takes_it(lock_file, tmp_path):
    # Another apt taking and releasing the lock in a tight loop must never find it taken because
    # setup looked (probing by taking the lock for a moment would make apt fail at once). The two
    # loops overlap by construction: the taker runs from its first try until the looks are done.
    stop = tmp_path / "stop"
    taker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os
        f = open({str(lock_file)!r}, "r+")
        tries = refused = 0
        while not os.path.exists({str(stop)!r}):
            tries += 1
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                refused += 1
            else:
                fcntl.lockf(f, fcntl.LOCK_UN)
            if tries == 1:
                print("trying", flush=True)
        print(tries, refused)
    """)], stdout=subprocess.PIPE, text=True)
    assert taker.stdout.readline() == "trying\n"
    for _ in range(2000):
        lock_holder(lock_file)  # may well find the taker holding it: that is a look, not a take
    stop.touch()
    tries, refused = taker.stdout.read().split()
    assert taker.wait(60) == 0 and int(tries) >= 1
    assert refused == "0"


class FakeTime:
    """apt's clock (apt.time): sleep() moves it on at once, and runs each callback given to at()
    once the clock reaches its time. The locks stay real; only the waiting is not."""

    def __init__(self) -> None:
        self.now, self.slept, self.events = 1000.0, 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        for event in [e for e in self.events if e[0] <= self.now]:
            self.events.remove(event)
            event[1]()

    def at(self, seconds: float, callback) -> None:
        self.events.append((self.now + seconds, callback))


@pytest.fixture
def clock(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(apt, "time", fake)
    monkeypatch.setattr(apt, "POLL_SECONDS", 0.25)
    return fake


def let_go(child: subprocess.Popen):
    """The holder ends: the kernel releases its lock."""
    def end() -> None:
        child.kill()
        child.wait()
    return end


def test_waiting_ends_when_the_holder_lets_go(lock_file, hold, clock):
    clock.at(1.0, let_go(hold(60)))
    apt.wait_until_free(LocalHost(), (str(lock_file),), clock.now + 30, 30)
    assert clock.slept == 1.0  # it waited exactly until the holder let go, polling
    assert lock_holder(lock_file) is None


def test_waiting_gives_up_at_the_deadline_naming_lock_and_holder(lock_file, hold, clock, monkeypatch):
    monkeypatch.setitem(apt.LOCK_NAMES, str(lock_file), "the package lists lock")
    child = hold(60)
    with pytest.raises(StepFailed) as failure:
        apt.wait_until_free(LocalHost(), (str(lock_file),), clock.now + 0.5, 0.5)
    assert clock.slept == 0.5  # the whole time it was given, and no more
    assert (f"the package lists lock ({lock_file}) is still held by process {child.pid} ({comm(child.pid)})"
            in failure.value.message())
    assert "apt.lock_timeout" in failure.value.message()


def apt_command(tmp_path: Path, lock_file: Path, lock_timeout: int) -> apt.AptCommand:
    script = tmp_path / "fake-apt.py"
    script.write_text(FAKE_APT)
    return apt.AptCommand((sys.executable, str(script), str(lock_file), str(tmp_path / "ran.jsonl"),
                           "-o", f"DPkg::Lock::Timeout={lock_timeout}", "update"),
                          timeout=60, locks=(str(lock_file),), lock_timeout=lock_timeout)


def test_an_apt_command_waits_for_a_held_lock_then_runs_once_with_the_time_left(lock_file, hold, tmp_path,
                                                                                clock):
    ctx = Context(config=config.from_tables({}), host=LocalHost(backup_dir=str(tmp_path / "bk")),
                  log_dir=str(tmp_path / "log"))
    clock.at(1.5, let_go(hold(60)))
    apt_command(tmp_path, lock_file, 20).execute(ctx)
    [argv] = [line for line in (tmp_path / "ran.jsonl").read_text().splitlines()]
    # apt's own wait for dpkg's locks gets what is left of apt.lock_timeout (20 - 1.5, rounded up),
    # not all of it again
    assert argv == '["-o", "DPkg::Lock::Timeout=19", "update"]'


def test_an_apt_command_still_refused_at_the_deadline_fails_naming_the_holder(lock_file, hold, tmp_path,
                                                                              clock):
    ctx = Context(config=config.from_tables({}), host=LocalHost(backup_dir=str(tmp_path / "bk")),
                  log_dir=str(tmp_path / "log"))
    child = hold(60)
    with pytest.raises(StepFailed) as failure:
        apt_command(tmp_path, lock_file, 1).execute(ctx)
    assert clock.slept == 1.0
    assert f"is still held by process {child.pid}" in failure.value.message()
    assert not (tmp_path / "ran.jsonl").exists()


@pytest.mark.parametrize("output", [
    "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)\n"
    "E: Unable to lock directory /var/lib/apt/lists/",
    "E: Could not get lock /var/cache/apt/archives/lock - open (11: Resource temporarily unavailable)\n"
    "E: Unable to lock directory /var/cache/apt/archives/",
    "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (unattended-upgr)\n"
    "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?",
    "dpkg: error: dpkg frontend lock was locked by another process with pid 4242\n"
    "Note: removing the lock file is always wrong, can damage the locked area",
    "dpkg: error: dpkg status database is locked by another process",
])
def test_apt_and_dpkg_refusing_a_lock_are_recognised(output):
    assert apt.LOCK_REFUSED.search(output)


def test_other_apt_failures_are_not_taken_for_a_lock():
    assert not apt.LOCK_REFUSED.search("E: Unable to locate package nvidia-container-toolkit")
    assert not apt.LOCK_REFUSED.search("E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease")

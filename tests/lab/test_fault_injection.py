"""Kill the tool at every step boundary and in the middle of every step on a fresh machine, and
setup.sh while it builds the tool's own environment (python3 -m venv, pip), then run it again: it must always converge to the same final state, with no duplicate fstab lines,
group entries, drop-ins or daemon.json entries, and no half-configured dpkg.

"Kill" is a crash: SIGKILL to the tool and to the apt-get and dpkg it started, so a package
install cut off half-way is among the cases.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from .util import timed
from .worker import CONFIG, EXPECTED_SLICES, HOME, TMPFS, USER, provisioned_worker

NAME, ADDRESS = "gsn-w2", "198.18.0.12"
# Long actions are also killed some seconds after they started, to cut a dpkg run in half.
SLOW_ACTION = re.compile(r"apt-get .*install|dpkg --configure")
SLOW_KILL_AFTER = 6.0
# What a crash kills, by SIGKILL: the tool (it runs from /opt/gpuswarm-node/venv-<hash>-<pid>/,
# and setup.sh builds that environment with `python3 -m venv` and pip, whose command lines name
# it too), setup.sh itself with the sudo and shell it runs under, and the apt-get and dpkg they
# started. In Python, from /proc: a fresh Debian has no procps (pkill) until docker.io brings it.
CRASH_PY = """
import os, signal
me = {os.getpid(), os.getppid()}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\\0")
    except OSError:
        continue
    line = " ".join(argv)
    if int(pid) not in me and ("setup.sh --config" in line or "gpuswarm-node/venv" in line
                               or os.path.basename(argv[0]) in ("apt-get", "dpkg")):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
"""
CRASH = ["python3", "-c", CRASH_PY]
# setup.sh building the tool's environment: killed at once, and later, while venv and pip work.
BUILDING = re.compile(r"^setup\.sh: installing gpuswarm-node into ")
BUILD_KILLS_AFTER = (0.0, 1.0, 3.0, 6.0)


@pytest.fixture(scope="module")
def worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    with provisioned_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir,
                            name=NAME, address=ADDRESS) as w:
        yield w


# Progress lines (gpuswarm_node/progress.py: a pull's and apt's plain lines every few seconds)
# change with every byte: as events they would never run out. A crash inside a long apt run is
# SLOW_ACTION's "@later" kill.
PROGRESS = re.compile(r"^(pulling|pulled) |\d%|: done in |still working")


def event_key(line: str) -> str | None:
    """A step boundary ("changed tmpfs ..." / "ok docker ...") or an action line, without timings;
    setup.sh's start of its environment build."""
    text = re.sub(r"\(\d+\.\d+ s\)", "", line).strip()
    if BUILDING.match(text):
        return "setup.sh builds the tool's environment"
    if not text or text.startswith(("setup.sh:", "WARNING")) or PROGRESS.search(text):
        return None
    return re.sub(r"\s+", " ", text)


def kill_points(key: str) -> list[tuple[str, float]]:
    """Where to crash at this event: (point, seconds after the event)."""
    if key.startswith("setup.sh "):
        return [(f"{key} @{delay:g}s", delay) for delay in BUILD_KILLS_AFTER]
    if SLOW_ACTION.search(key):
        return [(key, 0.0), (key + " @later", SLOW_KILL_AFTER)]
    return [(key, 0.0)]


def tool_state(worker) -> str:
    """The installed tool after a crash: absent, or a link to a complete environment that runs."""
    link = worker.sh("readlink /opt/gpuswarm-node/venv || true").stdout.strip()
    if not link:
        assert worker.sh("test -e /opt/gpuswarm-node/venv", check=False).returncode != 0
        return "absent"
    assert re.fullmatch(r"(/opt/gpuswarm-node/)?venv-[0-9a-f]{12}-[0-9]+", link), link
    assert worker.sh("/usr/local/bin/gpuswarm-node version", check=False).returncode == 0, link
    return "complete"


def run_until_new_event(worker, killed_at: set[str]) -> tuple[str | None, subprocess.Popen]:
    """Start setup; crash it at the first event not crashed at before. None: it ran to the end."""
    machine = worker.machine
    argv = ["nsenter", "-t", str(machine.init_pid), "-a", "-r", "-w",
            "runuser", "-u", USER, "--", "bash", "-lc",
            f"cd {HOME}/gpuswarm-node && sudo ./setup.sh --config {CONFIG}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    for line in proc.stdout:
        key = event_key(line)
        if key is None:
            continue
        for point, delay in kill_points(key):
            if point in killed_at:
                continue
            killed_at.add(point)
            time.sleep(delay)
            machine.run(CRASH, check=False)
            proc.wait(60)
            return point, proc
    proc.wait(1800)
    return None, proc


def test_crash_anywhere_then_rerun_converges_without_duplicates(worker, manager):
    killed_at: set[str] = set()
    crashes = []
    with timed("fault injection: crash at every boundary and re-run"):
        for _ in range(150):
            point, proc = run_until_new_event(worker, killed_at)
            if point is None:
                break
            crashes.append(point)
            if point.startswith("setup.sh "):
                tool_state(worker)  # never a half-built environment behind the link
        else:
            pytest.fail(f"setup never ran to its end after {len(crashes)} crashes; the last ones: {crashes[-10:]}")
    print(f"\ncrashed setup at {len(crashes)} points, then it converged")
    assert proc.returncode == 0
    assert len(crashes) >= 9 + 9  # at least every step boundary and one action in each changing step
    assert len([c for c in crashes if c.startswith("setup.sh ")]) == len(BUILD_KILLS_AFTER)
    assert tool_state(worker) == "complete"
    # Nothing of the killed builds is left: one environment, its link and the source hash.
    entries = sorted(worker.sh("ls -A /opt/gpuswarm-node").stdout.split())
    assert len(entries) == 3 and entries[0] == "source.sha256" and entries[1] == "venv", entries
    assert re.fullmatch(r"venv-[0-9a-f]{12}-[0-9]+", entries[2]), entries
    assert worker.sh("ls /usr/local/bin | grep -c '^gpuswarm-node' || true").stdout.strip() == "1"

    code, states = worker.status()
    assert code == 0, states
    fstab = worker.machine.read_file("/etc/fstab")
    assert len([line for line in fstab.splitlines() if f" {TMPFS} " in line]) == 1
    members = worker.sh("getent group docker").stdout.strip().split(":")[3].split(",")
    assert members.count(USER) == 1
    dropins = worker.sh("ls /etc/systemd/system/docker.service.d 2>/dev/null || true").stdout.split()
    assert set(dropins) <= {"gpuswarm-node.conf"}
    daemon = json.loads(worker.machine.read_file("/etc/docker/daemon.json"))
    resources = daemon["node-generic-resources"]
    assert len(resources) == len(set(resources)) and sorted(resources) == sorted(f"gpu={s}" for s in EXPECTED_SLICES)
    assert worker.sh("dpkg --audit").stdout.strip() == ""
    nodes = [n for n in manager.nodes() if n["Status"].get("Addr") == ADDRESS and n["Status"]["State"] == "ready"]
    assert len(nodes) == 1
    # A write cut off between temp file and rename leaves the temp file; the next write cleans it.
    leftovers = worker.sh("find /etc /etc/docker /etc/gpuswarm-node /usr/local/lib/gpuswarm-node "
                          "-maxdepth 1 -name '.*.tmp'").stdout.split()
    assert leftovers == []

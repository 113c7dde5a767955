"""Kill the tool at every step boundary and in the middle of every step on a fresh machine, and
setup.sh while it builds the tool's own environment (python3 -m venv, pip), then run it again: it
must always converge to the same final state, with no duplicate fstab lines, group entries,
drop-ins or daemon.json entries, and no half-configured dpkg. Where it crashes is named by what the
run is doing (crash_points.py), so the same run always offers the same points.

"Kill" is a crash: SIGKILL to the tool and to the apt-get and dpkg it started, so a package
install cut off half-way is among the cases.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from gpuswarm_node.steps import STEP_NAMES

from .crash_points import BUILD_POINT, MARKS, point_of, points_of
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
BUILD_KILLS_AFTER = (0.0, 1.0, 3.0, 6.0)


@pytest.fixture(scope="module")
def worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    with provisioned_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir,
                            name=NAME, address=ADDRESS) as w:
        yield w


def kill_points(key: str) -> list[tuple[str, float]]:
    """Where to crash at this event: (point, seconds after the event)."""
    if key == BUILD_POINT:
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


# No action's description is wrapped onto a second line (crash_points reads the first): sudo keeps
# a variable set on its command line for a user allowed to run any command, as the lab's user is.
SETUP = f"cd {HOME}/gpuswarm-node && sudo COLUMNS=1000 ./setup.sh --config {CONFIG}"


def start_setup(worker) -> subprocess.Popen:
    argv = ["nsenter", "-t", str(worker.machine.init_pid), "-a", "-r", "-w",
            "runuser", "-u", USER, "--", "bash", "-lc", SETUP]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})


def run_until_new_point(worker, killed_at: set[str]) -> tuple[str | None, subprocess.Popen]:
    """Start setup; crash it at the first point not crashed at before. None: it ran to the end."""
    proc = start_setup(worker)
    for line in proc.stdout:
        key = point_of(line)
        if key is None:
            continue
        for point, delay in kill_points(key):
            if point in killed_at:
                continue
            killed_at.add(point)
            time.sleep(delay)
            worker.machine.run(CRASH, check=False)
            proc.wait(60)
            return point, proc
    proc.wait(1800)
    return None, proc


def points_of_a_whole_run(worker) -> tuple[list[str], str]:
    proc = start_setup(worker)
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out
    return points_of(out), out


# Each crash is at a point never crashed at before, and points come from a finite vocabulary: each
# step's boundary in each of its marks, its actions (as many again, a slow one twice), and
# setup.sh's build kills. A run past this bound is making points up: they are not stable.
MAX_CRASHES = len(BUILD_KILLS_AFTER) + 2 * len(STEP_NAMES) * len(MARKS)


def test_crash_anywhere_then_rerun_converges_without_duplicates(worker, manager):
    killed_at: set[str] = set()
    crashes = []
    with timed("fault injection: crash at every boundary and re-run"):
        for _ in range(MAX_CRASHES):
            point, proc = run_until_new_point(worker, killed_at)
            if point is None:
                break
            crashes.append(point)
            if point.startswith(BUILD_POINT):
                tool_state(worker)  # never a half-built environment behind the link
        else:
            pytest.fail(f"setup never ran to its end after {len(crashes)} crashes (points are not stable); "
                        f"they were: {crashes}")
    print(f"\ncrashed setup at {len(crashes)} points, then it converged:\n  " + "\n  ".join(crashes))
    assert proc.returncode == 0
    assert len(crashes) >= 9 + 9  # at least every step boundary and one action in each changing step
    assert len([c for c in crashes if c.startswith(BUILD_POINT)]) == len(BUILD_KILLS_AFTER)
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

    # Two more runs of the converged node do the same thing, though their text may differ (the
    # steps' times): they give the same points, each step's boundary among them.
    first, first_text = points_of_a_whole_run(worker)
    second, second_text = points_of_a_whole_run(worker)
    assert first == second, (first_text, second_text)
    assert {p.split(" ", 1)[1] for p in first if " " in p and p.split(" ", 1)[0] in MARKS} == set(STEP_NAMES), first

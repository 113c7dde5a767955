"""Kill the tool at every step boundary and in the middle of every step on a fresh machine, then
run it again: it must always converge to the same final state, with no duplicate fstab lines,
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
# The tool runs from /opt/gpuswarm-node/venv-<hash>-<pid>/bin/python (venv is a symlink to it).
CRASH = "pkill -KILL -f 'gpuswarm-node/venv' ; pkill -KILL -x apt-get ; pkill -KILL -x dpkg ; true"


@pytest.fixture(scope="module")
def worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    with provisioned_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir,
                            name=NAME, address=ADDRESS) as w:
        yield w


def event_key(line: str) -> str | None:
    """A step boundary ("changed tmpfs ..." / "ok docker ...") or an action line, without timings."""
    text = re.sub(r"\(\d+\.\d+ s\)", "", line).strip()
    if not text or text.startswith(("setup.sh:", "WARNING")):
        return None
    return re.sub(r"\s+", " ", text)


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
        for point in ([key, key + " @later"] if SLOW_ACTION.search(key) else [key]):
            if point in killed_at:
                continue
            killed_at.add(point)
            if point.endswith("@later"):
                time.sleep(SLOW_KILL_AFTER)
            machine.run(CRASH, check=False)
            proc.wait(60)
            return point, proc
    proc.wait(1800)
    return None, proc


def test_crash_anywhere_then_rerun_converges_without_duplicates(worker, manager):
    killed_at: set[str] = set()
    crashes = []
    with timed("fault injection: crash at every boundary and re-run"):
        for _ in range(80):
            point, proc = run_until_new_event(worker, killed_at)
            if point is None:
                break
            crashes.append(point)
        else:
            pytest.fail(f"setup never ran to its end after {len(crashes)} crashes")
    print(f"\ncrashed setup at {len(crashes)} points, then it converged")
    assert proc.returncode == 0
    assert len(crashes) >= 9 + 9  # at least every step boundary and one action in each changing step

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

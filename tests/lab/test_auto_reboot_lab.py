"""node.reboot = "auto" on a fresh GPU machine with no driver: setup installs the driver, reboots
the machine by itself, and its boot unit finishes the node after the reboot, with nobody at the
console.

The machine is the benchmark's fresh node (tests/lab/driver_deb.py: two GPUs on the PCI bus, NVML
answering only once the stand-in `nvidia-driver` is installed and the machine has booted again),
with a module build of seconds instead of minutes. What is asserted is the machine's own record:
the run log of both runs, the reboot marker, the boot id, the manager's view of the node.
"""

from __future__ import annotations

import json
import platform

import pytest

from . import driver_deb
from .util import timed, wait_for
from .worker import CONFIG, EXPECTED_SLICES, provisioned_worker

NAME, ADDRESS = "gsn-w4", "198.18.0.14"
RUN_LOG = "/var/log/gpuswarm-node/runs.jsonl"
MARKER = "/var/lib/gpuswarm-node/auto-reboot"


def run_log(worker) -> list[list[dict]]:
    """The run log's runs, each its steps' records (as bench/run.py reads it)."""
    runs: dict[str, list[dict]] = {}
    for line in worker.sh(f"cat {RUN_LOG} 2>/dev/null || true").stdout.splitlines():
        entry = json.loads(line)
        if "step" in entry:
            runs.setdefault(entry["run"], []).append(entry)
    return list(runs.values())


@pytest.fixture(scope="module")
def worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    repo = driver_deb.build_repo(lab_tmp / "driver-repo-auto-reboot", nvml_lib_dir, platform.release(),
                                 build_seconds=2)
    with provisioned_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir, name=NAME, address=ADDRESS,
                            driver_repo=repo) as w:
        w.sh(f"printf '\\n[node]\\nreboot = \"auto\"\\n' >> {CONFIG}")
        yield w


def test_setup_reboots_by_itself_once_and_the_boot_unit_finishes_the_node(worker, manager):
    boot_id = worker.sh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    with timed("auto reboot: fresh setup that installs the driver and reboots by itself") as t:
        result = worker.as_user(f"sudo ./setup.sh --config {CONFIG}")
        worker.machine.await_reboot(timeout=120)
    print(f"\nfresh setup until the machine went down and came back: {t.seconds:.1f} s")
    assert "rebooting now (node.reboot = auto) for nvidia-driver" in result.stdout + result.stderr, \
        result.stdout[-3000:] + result.stderr[-3000:]
    assert worker.sh("cat /proc/sys/kernel/random/boot_id").stdout.strip() != boot_id

    # The boot unit's run after the reboot: the second run in the log, converged.
    runs = wait_for("the boot unit's setup after the reboot", lambda: (r := run_log(worker)) and len(r) >= 2 and r,
                    timeout=300)
    first, second = ({e["step"]: e for e in run} for run in runs[:2])
    assert first["nvidia-driver"]["changed"] and first["nvidia-driver"]["after"] == "blocked"
    assert first["swarm-join"]["after"] == "ok"
    assert all(e["after"] in ("ok", "skipped") for e in second.values()), second
    assert second["docker-daemon"]["changed"] and second["node-labels"]["changed"]
    assert len(runs) == 2  # one reboot, one more run: nothing looped

    # Converged: the marker that allows one reboot per cause is gone, status is ok, the manager
    # sees the node with its slices.
    assert worker.sh(f"test -e {MARKER}", check=False).returncode == 1
    code, states = worker.status()
    assert code == 0, states
    node = wait_for("the rebooted worker Ready on the manager",
                    lambda: next((n for n in manager.nodes() if n["Status"].get("Addr") == ADDRESS
                                  and n["Status"]["State"] == "ready"), None))
    advertised = [r["NamedResourceSpec"]["Value"] for r in node["Description"]["Resources"]["GenericResources"]]
    assert sorted(advertised) == sorted(EXPECTED_SLICES)


NAME2, ADDRESS2 = "gsn-w6", "198.18.0.16"


@pytest.fixture(scope="module")
def busy_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    """A second fresh machine with no driver, node.reboot = "auto", on which a first setup without
    the nvidia-driver step installed Docker and joined the swarm, so that a container runs on it
    when the driver's setup asks for the reboot."""
    repo = driver_deb.build_repo(lab_tmp / "driver-repo-busy-reboot", nvml_lib_dir, platform.release(),
                                 build_seconds=2)
    with provisioned_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir, name=NAME2, address=ADDRESS2,
                            first=False, driver_repo=repo) as w:
        w.sh(f"printf '\\n[node]\\nreboot = \"auto\"\\n' >> {CONFIG}")
        w.as_user(f"sudo ./setup.sh --config {CONFIG} --skip nvidia-driver")
        yield w


def test_the_automatic_reboot_is_refused_while_a_notebook_runs(busy_worker, manager):
    # Before: setup rebooted the machine under the running container, as no Docker restart may.
    worker = busy_worker
    worker.sh(f"docker run -d --name notebook-alice {manager.image} sleep 3600")
    boot_id = worker.sh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    result = worker.gsn("setup", "--config", CONFIG)
    out = result.stdout + result.stderr
    assert ("not rebooting by itself: the automatic reboot (node.reboot = auto) would stop 1 running container(s): "
            "notebook-alice; run setup --drain to move swarm tasks off first, or --allow-restart to reboot anyway") \
        in out, out[-3000:]
    # Nothing rebooted, nothing was marked: the next run (the notebook gone) may still reboot once.
    assert worker.sh("cat /proc/sys/kernel/random/boot_id").stdout.strip() == boot_id
    assert worker.sh(f"test -e {MARKER}", check=False).returncode == 1
    assert worker.sh("docker inspect -f '{{.State.Running}}' notebook-alice").stdout.strip() == "true"
    report = json.loads(worker.gsn("status", "--json", "--config", CONFIG).stdout)
    assert report["reboot_required"] is True

"""The product on the lab's second distribution: a fresh Debian 13 (trixie) machine booted with
systemd, set up by `sudo ./setup.sh` against the same manager and registry as Debian 12's.

Fresh setup, a second run that changes nothing, break-and-repair and a GPU notebook, as on Debian
12. Its docker.io (26) has `dockerd --validate`, so the check of a new daemon.json before any restart
runs for real here (Debian 12's docker.io 20.10 has no such flag). trixie's systemd 257 boots
under the host's systemd-nspawn 252 on a cgroup v1 host: inside a container it follows the host's
hierarchy and skips its refusal of cgroup v1 (src/shared/mount-setup.c).
"""

from __future__ import annotations

import json

import docker
import pytest

from .test_fresh_worker import BREAKS, break_and_repair, runtime_calls, running_tasks
from .util import timed, wait_for
from .worker import CONFIG, EXPECTED_SLICES, provisioned_worker

NAME, ADDRESS = "gsn-w3", "198.18.0.13"
DAEMON_JSON = "/etc/docker/daemon.json"


@pytest.fixture(scope="module")
def worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    with provisioned_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir, name=NAME, address=ADDRESS,
                            suite="trixie") as w:
        yield w


@pytest.fixture(scope="module")
def fresh_setup(worker):
    assert worker.sh(". /etc/os-release && echo $VERSION_CODENAME").stdout.strip() == "trixie"
    with timed("fresh setup on Debian 13: sudo ./setup.sh --config node.toml") as t:
        result = worker.as_user(f"sudo ./setup.sh --config {CONFIG}")
    print(f"\nfresh setup on Debian 13 took {t.seconds:.1f} s")
    return result


def ready_node(manager) -> dict | None:
    return next((n for n in manager.nodes() if n["Status"].get("Addr") == ADDRESS
                 and n["Status"]["State"] == "ready"), None)


def test_a_fresh_debian_13_machine_becomes_a_ready_worker(worker, fresh_setup, manager):
    assert fresh_setup.returncode == 0, fresh_setup.stdout[-4000:] + fresh_setup.stderr[-4000:]
    node = wait_for("the Debian 13 worker Ready on the manager", lambda: ready_node(manager))
    advertised = [r["NamedResourceSpec"]["Value"] for r in node["Description"]["Resources"]["GenericResources"]]
    assert sorted(advertised) == sorted(EXPECTED_SLICES)
    assert worker.sh("docker version --format '{{.Server.Version}}'").stdout.startswith("26.")
    assert "--validate" in worker.sh("dockerd --help").stdout
    assert worker.sh("docker info --format '{{.DefaultRuntime}}'").stdout.strip() == "gpuswarm"

    pid = worker.docker_pid()
    again = worker.as_user(f"sudo ./setup.sh --config {CONFIG} --json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] == [] and worker.docker_pid() == pid
    assert worker.status()[0] == 0


def test_a_gpu_service_gets_exactly_its_slice(worker, fresh_setup, manager):
    service = manager.docker.services.create(
        manager.image, command=["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"], name="gsn-trixie-nb",
        constraints=[f"node.id=={worker.node_id()}"], resources=docker.types.Resources(generic_resources={"gpu": 1}),
        restart_policy=docker.types.RestartPolicy(condition="none"))
    try:
        [task] = wait_for("the task running", lambda: running_tasks([service]), timeout=120)
        cid = task["Status"]["ContainerStatus"]["ContainerID"]
        env = json.loads(worker.sh(f"docker inspect --format '{{{{json .Config.Env}}}}' {cid}").stdout)
        [slice_id] = [e.split("=", 1)[1] for e in env if e.startswith("DOCKER_RESOURCE_GPU=")]
        assert runtime_calls(worker)[cid]["hook_devices"] == [slice_id.split("::")[0]]
    finally:
        service.remove()
        wait_for("the task to stop", lambda: worker.sh("docker ps -q").stdout.strip() == "", timeout=120)


def test_break_everything_at_once_and_repair(worker, fresh_setup, manager):
    break_and_repair(worker, manager, list(BREAKS))
    assert wait_for("the Debian 13 worker Ready again", lambda: ready_node(manager))


def test_dockerd_validate_refuses_a_daemon_json_before_any_restart(worker, fresh_setup):
    settings = json.loads(worker.machine.read_file(DAEMON_JSON))
    # An operator's key dockerd rejects, and a change the tool must make: the new file is checked by
    # dockerd --validate, refused, and nothing is written or restarted.
    broken = {**settings, "max-concurrent-downloads": -1, "node-generic-resources": []}
    worker.machine.run(["sh", "-c", f"cat > {DAEMON_JSON}"], input=json.dumps(broken, indent=2))
    pid = worker.docker_pid()
    try:
        result = worker.gsn("setup", "--json", "--config", CONFIG)
        assert result.returncode == 1, result.stdout + result.stderr
        step = {s["name"]: s for s in json.loads(result.stdout)["steps"]}["docker-daemon"]
        assert step["state"] in ("failed", "blocked") and "concurrent downloads" in step["detail"], step
        assert worker.docker_pid() == pid
        assert json.loads(worker.machine.read_file(DAEMON_JSON)) == broken
    finally:
        worker.machine.run(["sh", "-c", f"cat > {DAEMON_JSON}"], input=json.dumps(settings, indent=2))
    repaired = worker.gsn("setup", "--json", "--config", CONFIG)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert worker.status()[0] == 0

"""The lab itself: a real swarm manager, real sshd, real TLS registry.

These tests check the lab's parts against real state, so the product's tests
can rely on them.  SSH is exercised from a worker's netns (gsn-d1), as the
product will do it from a worker machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from . import engine
from .dockerd import LabDockerd
from .manager import ManagerHost, trust_ca
from .util import wait_for

GPU_VALUES = ["GPU-aaaa::1", "GPU-aaaa::2"]
WAIT = 60.0

# Runs inside a worker netns; prints one JSON line describing the outcome.
PARAMIKO_SCRIPT = r"""
import json, sys, paramiko
host, port, known_hosts, key, command = sys.argv[1:6]
client = paramiko.SSHClient()
client.load_host_keys(known_hosts)
client.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    client.connect(host, port=int(port), username="root", key_filename=key,
                   look_for_keys=False, allow_agent=False, timeout=15)
    _, stdout, stderr = client.exec_command(command, timeout=30)
    rc = stdout.channel.recv_exit_status()
    print(json.dumps({"rc": rc, "out": stdout.read().decode(), "err": stderr.read().decode()}))
except Exception as e:
    print(json.dumps({"error_type": type(e).__name__, "error": str(e)}))
finally:
    client.close()
"""


@pytest.fixture(scope="session")
def d1_host(network, manager):
    host = network.add_host("gsn-d1", "198.18.0.21")
    yield host
    network.remove_host("gsn-d1")


@pytest.fixture(scope="session")
def d1_dockerd(d1_host, manager, lab_tmp):
    state = lab_tmp / "d1"
    trust_ca(state / "etc-docker", manager.registry_address, manager.ca_cert_path)
    with LabDockerd(d1_host, state, {"node-generic-resources": [f"gpu={v}" for v in GPU_VALUES]}) as d:
        yield d


@pytest.fixture(scope="session")
def d1_joined(d1_dockerd, manager):
    """The light worker, with the image pulled and joined to the swarm."""
    client = d1_dockerd.client()
    client.images.pull(manager.image)
    client.swarm.join(
        remote_addrs=[f"{manager.address}:2377"],
        join_token=manager.worker_join_token(),
        listen_addr="0.0.0.0:2377",
        advertise_addr=d1_dockerd.host.address,
    )
    node_id = client.info()["Swarm"]["NodeID"]
    yield client, node_id
    client.close()


def ssh_from(host, manager: ManagerHost, command: str, known_hosts: Path | None = None,
             key: Path | None = None) -> dict:
    argv = [
        *host.nsenter_prefix(), sys.executable, "-c", PARAMIKO_SCRIPT,
        manager.address, str(manager.ssh_port),
        str(known_hosts or manager.known_hosts_path),
        str(key or manager.client_key_path), command,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_swarm_is_active_with_one_manager(manager):
    info = manager.docker.info()["Swarm"]
    assert info["LocalNodeState"] == "active"
    assert info["ControlAvailable"] is True
    assert info["Managers"] == 1
    managers = [n for n in manager.nodes() if n["Spec"]["Role"] == "manager"]
    assert len(managers) == 1
    assert managers[0]["Status"]["State"] == "ready"
    assert managers[0]["ManagerStatus"]["Addr"] == "198.18.0.1:2377"
    assert set(manager.timings) == {
        "network", "dockerd_start", "swarm_init", "sshd", "registry", "image_push"
    }


def test_manager_runs_a_current_docker_engine(manager):
    """Debian 13's engine (engine.py), not the host's 20.10: its constraint enforcer keeps tasks
    that hold a generic resource when their node's record changes."""
    version = manager.docker.version()
    assert int(version["Version"].split(".")[0]) >= 26, version
    assert str(engine.bin_dir()) in Path(f"/proc/{manager.dockerd.pid}/cmdline").read_text()


def test_manager_files(manager):
    assert manager.client_key_path.stat().st_mode & 0o777 == 0o600
    line = manager.known_hosts_path.read_text().split()
    assert line[:2] == ["198.18.0.1", "ssh-ed25519"]
    assert manager.host_key_fingerprint.startswith("SHA256:")
    assert manager.image == "198.18.0.1:5000/gsn/notebook:test"


def test_ssh_from_worker_netns_gets_join_token(d1_host, manager):
    result = ssh_from(d1_host, manager, "docker swarm join-token -q worker")
    assert result.get("rc") == 0, result
    token = result["out"].strip()
    assert token.startswith("SWMTKN-1-")
    assert token == manager.worker_join_token()


def test_ssh_refuses_unknown_host_key(d1_host, manager, lab_tmp):
    empty = lab_tmp / "known_hosts.empty"
    empty.write_text("")
    result = ssh_from(d1_host, manager, "true", known_hosts=empty)
    assert result.get("error_type") == "SSHException", result
    assert "not found in known_hosts" in result["error"]

    # A different key recorded for the manager's address: a spoofed host.
    other = lab_tmp / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = lab_tmp / "known_hosts.wrong"
    key_type, blob = other.with_suffix(".pub").read_text().split()[:2]
    wrong.write_text(f"{manager.address} {key_type} {blob}\n")
    result = ssh_from(d1_host, manager, "true", known_hosts=wrong)
    assert result.get("error_type") == "BadHostKeyException", result


def test_ssh_refuses_unknown_client_key(d1_host, manager, lab_tmp):
    stranger = lab_tmp / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    result = ssh_from(d1_host, manager, "true", key=stranger)
    assert result.get("error_type") == "AuthenticationException", result


def test_worker_pulls_from_registry_and_joins(d1_joined, manager):
    client, node_id = d1_joined
    assert client.images.get(manager.image).tags == [manager.image]

    def ready_node():
        nodes = {n["ID"]: n for n in manager.nodes()}
        node = nodes.get(node_id)
        return node if node and node["Status"]["State"] == "ready" else None

    node = wait_for("the worker to be Ready", ready_node)
    assert node["Spec"]["Role"] == "worker"
    assert node["Status"]["Addr"] == "198.18.0.21"
    generic = node["Description"]["Resources"]["GenericResources"]
    named = sorted((g["NamedResourceSpec"]["Kind"], g["NamedResourceSpec"]["Value"]) for g in generic)
    assert named == [("gpu", v) for v in GPU_VALUES]


def test_service_gets_one_gpu(d1_joined, manager):
    client, node_id = d1_joined
    wait_for("the worker to be Ready", lambda: any(
        n["ID"] == node_id and n["Status"]["State"] == "ready" for n in manager.nodes()))
    service = manager.docker.services.create(
        manager.image,
        # sh as PID 1 ignores SIGTERM unless told otherwise; keeps removal fast.
        command=["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
        name="gsn-lab-gpu",
        resources=docker.types.Resources(generic_resources={"gpu": 1}),
        restart_policy=docker.types.RestartPolicy(condition="none"),
    )
    try:
        def running_task():
            for task in service.tasks():
                state = task["Status"]["State"]
                if state in ("failed", "rejected"):
                    raise AssertionError(f"task {state}: {task['Status']}")
                if state == "running":
                    return task
            return None

        task = wait_for("the GPU task to run", running_task)
        assert task["NodeID"] == node_id
        container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env.get("DOCKER_RESOURCE_GPU") in GPU_VALUES, env
    finally:
        service.remove()


def test_daemon_without_ca_gets_x509_error(network, manager, lab_tmp):
    host = network.add_host("gsn-d2", "198.18.0.22")
    try:
        with LabDockerd(host, lab_tmp / "d2") as d2:
            client = d2.client()
            try:
                with pytest.raises(docker.errors.APIError) as err:
                    client.images.pull(manager.image)
            finally:
                client.close()
        assert "x509" in str(err.value) or "certificate" in str(err.value), str(err.value)
    finally:
        network.remove_host("gsn-d2")

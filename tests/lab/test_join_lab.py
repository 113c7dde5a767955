"""swarm-join and image against the real lab: a real manager over real SSH, a real TLS registry,
real dockerds as workers. The product runs as its CLI, inside each worker's network namespace.

Bad and hostile input (unknown or changed host key, unreachable manager, wrong SSH key, untrusted
registry) must end in one clear error and a non-zero exit, leave the worker out of the swarm, and
never print the join token or the private key. Two workers joining at once both end up Ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .dockerd import LabDockerd
from .manager import trust_ca
from ..conftest import private_state
from .util import wait_for

REPO = Path(__file__).resolve().parents[2]

# The CLI gets a private /run and /var/log, and its own layer over /var/lib and /var/backups, so
# that light workers, which share this machine's filesystem, keep separate locks, run logs,
# journals and backups, as separate machines would, and this machine's own stay untouched.
ISOLATE = 'mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log && exec "$@"'


def resources(prefix: str) -> list[str]:
    return [f"gpu=GPU-{prefix}-0000-0000-0000-000000000000::{n}" for n in (1, 2)]


class LightWorker:
    def __init__(self, host, dockerd: LabDockerd, config: Path) -> None:
        self.host, self.dockerd, self.config = host, dockerd, config

    def popen(self, *args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_", "DOCKER_"))}
        env["DOCKER_HOST"] = self.dockerd.url
        argv = [*self.host.nsenter_prefix(), *private_state(self.config.parent / "host-state"),
                "sh", "-c", ISOLATE, "isolate", sys.executable, "-m", "gpuswarm_node.cli", *args]
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.popen(*args)
        out, err = proc.communicate(timeout=180)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def swarm_state(self) -> str:
        return self.dockerd.client().info()["Swarm"]["LocalNodeState"]


def write_config(path: Path, lab_manager, address: str, **swarm) -> Path:
    """A node config for a light worker; `swarm` overrides [swarm] keys."""
    values = {"manager": lab_manager.address, "ssh_key": str(lab_manager.client_key_path),
              "known_hosts": str(lab_manager.known_hosts_path), "advertise_addr": address, **swarm}
    lines = ["[swarm]", *(f'{k} = "{v}"' for k, v in values.items()),
             "[image]", f'name = "{lab_manager.image}"']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def make_worker(network, manager, lab_tmp):
    made = []
    workers: dict[str, LightWorker] = {}

    def make(name: str, address: str, trust: bool = True, **swarm) -> LightWorker:
        """A light worker, made once per module: later tests get the same one back."""
        if name in workers:
            return workers[name]
        state = lab_tmp / name
        if trust:
            trust_ca(state / "etc-docker", manager.registry_address, manager.ca_cert_path)
        host = network.add_host(name, address)
        dockerd = LabDockerd(host, state, {"node-generic-resources": resources(name[-2:])})
        made.append((name, dockerd))
        workers[name] = LightWorker(host, dockerd, write_config(state / "node.toml", manager, address, **swarm))
        return workers[name]

    yield make
    for name, dockerd in made:
        try:
            info = dockerd.client().info()["Swarm"]
            if info["LocalNodeState"] == "active":
                dockerd.client().swarm.leave(force=True)
                wait_for("the manager to see the node down",
                         lambda: manager.docker.nodes.get(info["NodeID"]).attrs["Status"]["State"] == "down")
                manager.docker.nodes.get(info["NodeID"]).remove(force=True)
        finally:
            dockerd.stop()
            network.remove_host(name)


def assert_no_secrets(manager, *outputs: str) -> None:
    token = manager.worker_join_token()
    key = manager.client_key_path.read_text()
    key_body = "".join(key.strip().splitlines()[1:-1])
    for text in outputs:
        assert token not in text and token.rsplit("-", 1)[1] not in text
        assert key_body[:40] not in text


def node_of(manager, address: str) -> dict | None:
    for node in manager.nodes():
        if node["Status"].get("Addr") == address and node["Status"]["State"] == "ready":
            return node
    return None


def test_two_workers_join_at_once_with_their_own_resources(make_worker, manager):
    workers = [make_worker("gsn-d3", "198.18.0.23"), make_worker("gsn-d4", "198.18.0.24")]

    procs = [w.popen("--debug", "setup", "--json", "--only", "image", "--only", "swarm-join",
                     "--config", str(w.config)) for w in workers]
    results = [p.communicate(timeout=180) + (p.returncode,) for p in procs]

    for (out, err, code), worker in zip(results, workers):
        assert code == 0, err
        report = json.loads(out)
        assert report["ok"] is True and report["changed"] == ["image", "swarm-join"]
        assert_no_secrets(manager, out, err)
    for worker, prefix in zip(workers, ("d3", "d4")):
        node = wait_for(f"{worker.host.address} Ready on the manager",
                        lambda: node_of(manager, worker.host.address))
        assert node["Spec"]["Role"] == "worker"
        advertised = sorted(f"{r['NamedResourceSpec']['Kind']}={r['NamedResourceSpec']['Value']}"
                            for r in node["Description"]["Resources"]["GenericResources"])
        assert advertised == resources(prefix)
        assert worker.dockerd.client().images.get(manager.image)

    again = workers[0].cli("setup", "--json", "--only", "image", "--only", "swarm-join",
                           "--config", str(workers[0].config))
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] == []


@pytest.fixture(scope="module")
def outsider(make_worker):
    """A worker that is never allowed to join: every fault test must leave it out of the swarm."""
    return make_worker("gsn-d5", "198.18.0.25", trust=False)


def run_join(worker: LightWorker, config: Path) -> subprocess.CompletedProcess:
    return worker.cli("--debug", "setup", "--only", "swarm-join", "--config", str(config))


def other_key(tmp: Path, name: str) -> Path:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_unknown_host_key_is_refused(outsider, manager, lab_tmp):
    empty = lab_tmp / "empty_known_hosts"
    empty.write_text("")
    config = write_config(lab_tmp / "unknown-key.toml", manager, "198.18.0.25", known_hosts=str(empty))
    result = run_join(outsider, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is not in" in result.stderr + result.stdout and "refusing an unknown host key" in result.stdout
    assert outsider.swarm_state() == "inactive"
    assert_no_secrets(manager, result.stdout, result.stderr)


def test_changed_host_key_is_refused(outsider, manager, lab_tmp):
    impostor = other_key(lab_tmp, "impostor_host_key")
    known = lab_tmp / "changed_known_hosts"
    known.write_text(f"{manager.address} {impostor.with_suffix('.pub').read_text()}")
    config = write_config(lab_tmp / "changed-key.toml", manager, "198.18.0.25", known_hosts=str(known))
    result = run_join(outsider, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "presented a host key that differs" in result.stdout
    assert outsider.swarm_state() == "inactive"
    assert_no_secrets(manager, result.stdout, result.stderr)


def test_wrong_ssh_key_is_refused(outsider, manager, lab_tmp):
    key = other_key(lab_tmp, "wrong_client_key")
    config = write_config(lab_tmp / "wrong-key.toml", manager, "198.18.0.25", ssh_key=str(key))
    result = run_join(outsider, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused the SSH key" in result.stdout, result.stdout + result.stderr
    assert outsider.swarm_state() == "inactive"
    assert key.read_text().splitlines()[1] not in result.stdout + result.stderr


def test_unreachable_manager(outsider, manager, lab_tmp):
    config = write_config(lab_tmp / "unreachable.toml", manager, "198.18.0.25", manager="198.18.0.99")
    # A manager that does not answer is tried again within node.network_retry (a first boot's bad
    # minute), saying so, then named: 20 s here instead of the default 120 s.
    result = outsider.cli("--debug", "setup", "--only", "swarm-join", "--set", "node.network_retry=20",
                          "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot reach the manager at root@198.18.0.99:22" in result.stdout
    assert "trying again in" in result.stdout + result.stderr, result.stdout + result.stderr
    assert outsider.swarm_state() == "inactive"


def test_untrusted_registry_certificate(outsider, manager):
    result = outsider.cli("setup", "--only", "image", "--config", str(outsider.config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "x509" in result.stdout or "certificate" in result.stdout
    assert "registry-trust" in result.stdout  # the fix names the step that installs the CA
    assert not any(manager.image in tag for image in outsider.dockerd.client().images.list()
                   for tag in image.tags)



def test_leave_drains_moves_tasks_and_leaves(make_worker, manager):
    import docker as docker_sdk

    leaving, staying = make_worker("gsn-d3", "198.18.0.23"), make_worker("gsn-d4", "198.18.0.24")
    ids = {w: w.dockerd.client().info()["Swarm"]["NodeID"] for w in (leaving, staying)}
    assert all(ids.values()), "the light workers joined in the concurrent-join test"
    service = manager.docker.services.create(
        manager.image, command=["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"], name="gsn-leave",
        mode=docker_sdk.types.ServiceMode("replicated", replicas=2),
        resources=docker_sdk.types.Resources(generic_resources={"gpu": 1}),
        constraints=["node.role==worker"])
    try:
        def running_on() -> list[str]:
            return sorted(t["NodeID"] for t in service.tasks(filters={"desired-state": "running"})
                          if t["Status"]["State"] == "running")

        wait_for("two running tasks", lambda: len(running_on()) == 2, timeout=120)
        if ids[leaving] not in running_on():
            pytest.fail(f"no task landed on the leaving node: {running_on()}")

        result = leaving.cli("leave", "--timeout", "120", "--config", str(leaving.config))

        assert result.returncode == 0, result.stdout + result.stderr
        assert leaving.swarm_state() == "inactive"
        assert ids[leaving] not in {n["ID"] for n in manager.nodes()}  # removed, not left "down"
        assert wait_for("both tasks on the staying node",
                        lambda: running_on() == [ids[staying]] * 2, timeout=120)
        assert_no_secrets(manager, result.stdout, result.stderr)
    finally:
        service.remove()


def test_a_pinned_fingerprint_is_trusted_without_known_hosts(make_worker, manager, lab_tmp):
    pinned = make_worker("gsn-d6", "198.18.0.26")
    config = write_config(lab_tmp / "pinned.toml", manager, "198.18.0.26",
                          known_hosts=str(lab_tmp / "no-such-known-hosts"),
                          host_key_fingerprint=manager.host_key_fingerprint)
    result = pinned.cli("setup", "--only", "swarm-join", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert pinned.swarm_state() == "active"
    assert_no_secrets(manager, result.stdout, result.stderr)


def test_a_wrong_pinned_fingerprint_is_refused(outsider, manager, lab_tmp):
    wrong = "SHA256:" + "A" * 43
    config = write_config(lab_tmp / "wrong-pin.toml", manager, "198.18.0.25",
                          known_hosts=str(lab_tmp / "no-such-known-hosts"), host_key_fingerprint=wrong)
    result = run_join(outsider, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"not the pinned {wrong}" in result.stdout and manager.host_key_fingerprint in result.stdout
    assert outsider.swarm_state() == "inactive"


def test_a_node_of_another_swarm_is_refused_unless_forced(make_worker, manager, lab_tmp):
    other = make_worker("gsn-d7", "198.18.0.27")
    other.dockerd.client().swarm.init(advertise_addr="198.18.0.27", default_addr_pool=["198.19.128.0/17"])
    # A swarm of its own that runs something: leaving it would stop that (an empty single-node swarm
    # is left without --force-rejoin: test_fleet_lab.py).
    other.dockerd.client().services.create(manager.image, command=["sleep", "3600"], name="gsn-own-service")
    refused = other.cli("setup", "--json", "--only", "swarm-join", "--config", str(other.config))
    assert refused.returncode == 1
    [step] = json.loads(refused.stdout)["steps"]
    assert step["state"] == "blocked" and "in another swarm" in step["detail"] and "--force-rejoin" in step["detail"]
    assert other.dockerd.client().info()["Swarm"]["ControlAvailable"] is True  # its own swarm, untouched

    forced = other.cli("setup", "--json", "--only", "swarm-join", "--force-rejoin", "--config", str(other.config))
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert json.loads(forced.stdout)["changed"] == ["swarm-join"]
    assert wait_for("the node Ready in the manager's swarm", lambda: node_of(manager, "198.18.0.27"))
    assert_no_secrets(manager, refused.stdout, forced.stdout, forced.stderr)


def test_a_manager_reached_at_another_address_is_joined_where_it_advertises(make_worker, manager):
    # SSH to the address workers are given; the swarm is joined at the one the manager advertises,
    # and membership is decided by the cluster, not by the address the node joined through.
    worker = make_worker("gsn-d8", "198.18.0.28", manager=manager.public_address, known_hosts="",
                         host_key_fingerprint=manager.host_key_fingerprint)
    result = worker.cli("setup", "--json", "--only", "swarm-join", "--config", str(worker.config))
    assert result.returncode == 0, result.stdout + result.stderr
    detail = {s["name"]: s["detail"] for s in json.loads(result.stdout)["steps"]}["swarm-join"]
    assert f"{manager.address}:2377" in detail and "advertises" in detail, detail
    assert wait_for("the worker Ready on the manager", lambda: node_of(manager, worker.host.address))
    again = worker.cli("setup", "--json", "--only", "swarm-join", "--config", str(worker.config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["changed"] == [] and json.loads(again.stdout)["ok"] is True
    # --force-rejoin leaves a node of this very cluster where it is.
    node_id = worker.dockerd.client().info()["Swarm"]["NodeID"]
    forced = worker.cli("setup", "--json", "--only", "swarm-join", "--force-rejoin", "--config", str(worker.config))
    assert forced.returncode == 0 and json.loads(forced.stdout)["changed"] == []
    assert worker.dockerd.client().info()["Swarm"]["NodeID"] == node_id
    assert_no_secrets(manager, result.stdout, result.stderr, again.stdout, forced.stdout, forced.stderr)

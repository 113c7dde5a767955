"""A fleet on a least-privilege hub, against the real lab: real sshd with forced commands, the real
manager's dockerd, light workers whose dockerds report their own host names, fake GPUs behind the
fake libnvidia-ml.so.1.

The manager's SSH user has only gated keys (`hub authorize`), each bound to one worker's host
name. Through them workers join, label themselves, leave and rejoin; anything else (`id`,
`docker ps`, a drain of another node) is refused. Services are placed by the GPU labels. A lone
box's own single-node swarm is left for the manager's without --force-rejoin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docker as docker_sdk
import pytest

from . import fake_nvml, hub_build
from ..conftest import private_state
from .dockerd import LabDockerd
from .manager import trust_ca
from .test_join_lab import ISOLATE, assert_no_secrets, node_of, resources
from .util import gate_program, wait_for

REPO = Path(__file__).resolve().parents[2]

A100 = [fake_nvml.FakeGpu(f"GPU-a100000{n}-1111-2222-3333-444444444444", "NVIDIA A100-SXM4-40GB", 40960)
        for n in (1, 2)]
T4 = [fake_nvml.FakeGpu("GPU-7400000a-5555-6666-7777-888888888888", "Tesla T4", 15360)]
WORKERS = {  # name (also its host name and its key's node name), address, GPUs
    "gsn-g1": ("198.18.0.41", A100),
    "gsn-g2": ("198.18.0.42", T4),
    "gsn-g3": ("198.18.0.43", T4),
}


class FleetWorker:
    """A light worker (a dockerd in its own netns and UTS namespace) with its own gated key."""

    def __init__(self, name: str, address: str, host, dockerd: LabDockerd, config: Path, key: Path,
                 nvml_env: dict[str, str]) -> None:
        self.name, self.address, self.host, self.dockerd = name, address, host, dockerd
        self.config, self.key, self.nvml_env = config, key, nvml_env

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_", "DOCKER_"))}
        env.update(self.nvml_env, DOCKER_HOST=self.dockerd.url)
        argv = [*self.host.nsenter_prefix(), *private_state(self.config.parent / "host-state"),
                "sh", "-c", ISOLATE, "isolate", sys.executable, "-m", "gpuswarm_node.cli", *args]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    def setup(self, *args: str) -> subprocess.CompletedProcess:
        return self.cli("setup", "--json", "--only", "swarm-join", "--only", "node-labels",
                        "--config", str(self.config), *args)

    def ssh(self, manager, command: str) -> subprocess.CompletedProcess:
        """`ssh root@manager COMMAND` with this worker's key, from its netns, the host key checked."""
        argv = [*self.host.nsenter_prefix(), "ssh", "-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={manager.known_hosts_path}", f"root@{manager.address}", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def swarm(self) -> dict:
        return self.dockerd.client().info()["Swarm"]


@pytest.fixture(scope="module")
def hub(manager, lab_tmp):
    """The manager's authorized_keys holds only gated keys, one per worker; restored afterwards."""
    authorized = manager.client_key_path.parent / "authorized_keys"
    original = authorized.read_text()
    hub_dir = lab_tmp / "hub"
    hub_dir.mkdir()
    program = gate_program(hub_dir)
    authorized.write_text("")
    keys = {}
    try:
        for name in WORKERS:
            key = hub_dir / f"{name}_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
            done = subprocess.run([sys.executable, "-m", "gpuswarm_node.cli", "hub", "authorize",
                                   "--key", f"{key}.pub", "--node", name, "--authorized-keys", str(authorized),
                                   "--program", str(program)], cwd=REPO, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"authorised the key for node {name}" in done.stdout
            keys[name] = key
        yield keys
    finally:
        authorized.write_text(original)


@pytest.fixture(scope="module")
def fleet(network, manager, lab_tmp, hub, nvml_lib_dir):
    made: dict[str, FleetWorker] = {}

    def make(name: str) -> FleetWorker:
        if name in made:
            return made[name]
        address, gpus = WORKERS[name]
        state = lab_tmp / name
        trust_ca(state / "etc-docker", manager.registry_address, manager.ca_cert_path)
        host = network.add_host(name, address)
        dockerd = LabDockerd(host, state, {"node-generic-resources": resources(name[-2:])}, hostname=name)
        config = state / "node.toml"
        config.write_text("\n".join([
            "[swarm]", f'manager = "{manager.address}"', f'ssh_key = "{hub[name]}"',
            f'known_hosts = "{manager.known_hosts_path}"', f'advertise_addr = "{address}"', ""]))
        nvml = fake_nvml.write_config(state / "fake-nvml.conf", gpus)
        made[name] = FleetWorker(name, address, host, dockerd, config, hub[name],
                                 fake_nvml.env_for(nvml_lib_dir, nvml, base={}))
        return made[name]

    yield make
    for name, worker in made.items():
        try:
            info = worker.swarm()
            if info["LocalNodeState"] == "active" and not info["ControlAvailable"]:
                worker.dockerd.client().swarm.leave(force=True)
                wait_for("the manager to see the node down",
                         lambda: manager.docker.nodes.get(info["NodeID"]).attrs["Status"]["State"] == "down")
                manager.docker.nodes.get(info["NodeID"]).remove(force=True)
        finally:
            worker.dockerd.stop()
            network.remove_host(name)


def labels_of(manager, node_id: str) -> dict[str, str]:
    labels = manager.docker.nodes.get(node_id).attrs["Spec"].get("Labels") or {}
    return {k: v for k, v in labels.items() if k.startswith("gpuswarm.")}


A100_LABELS = {"gpuswarm.gpu.model": "NVIDIA-A100-SXM4-40GB", "gpuswarm.gpu.count": "2",
               "gpuswarm.gpu.memory_mib": "40960", "gpuswarm.slices": "6", "gpuswarm.slice.memory_mib": "13653",
               "gpuswarm.driver.version": "550.54.15", "gpuswarm.cuda.version": "12.4"}


def test_the_hub_user_has_only_gated_keys(hub, manager, fleet):
    lines = (manager.client_key_path.parent / "authorized_keys").read_text().splitlines()
    assert len(lines) == len(WORKERS)
    assert all(line.startswith('restrict,command="') and " hub gate --node gsn-g" in line for line in lines)
    # The lab's ungated key is no longer a way in.
    worker = fleet("gsn-g1")
    plain = subprocess.run([*worker.host.nsenter_prefix(), "ssh", "-F", "/dev/null", "-i", str(manager.client_key_path),
                            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                            "-o", f"UserKnownHostsFile={manager.known_hosts_path}", f"root@{manager.address}", "id"],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 255 and "Permission denied" in plain.stderr


def test_a_gated_worker_joins_labels_itself_leaves_and_rejoins(fleet, manager, lab_tmp):
    worker = fleet("gsn-g1")
    joined = worker.setup()
    assert joined.returncode == 0, joined.stdout + joined.stderr
    report = json.loads(joined.stdout)
    assert report["changed"] == ["swarm-join", "node-labels"], report
    node = wait_for("gsn-g1 Ready on the manager", lambda: node_of(manager, worker.address))
    assert node["Description"]["Hostname"] == "gsn-g1" and node["Spec"]["Role"] == "worker"
    assert labels_of(manager, node["ID"]) == A100_LABELS

    again = worker.setup()
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] == [], again.stdout

    marker = lab_tmp / "gsn-g1-then"
    left = worker.cli("leave", "--timeout", "60", "--config", str(worker.config),
                      "--then", f"sh -c 'echo gone > {marker}; exit 3'")
    assert left.returncode == 3, left.stdout + left.stderr
    assert "then: `sh -c" in left.stdout and "exited 3" in left.stdout
    assert "the node is out of the swarm, but the --then command exited 3" in left.stderr
    assert marker.read_text() == "gone\n"
    assert worker.swarm()["LocalNodeState"] == "inactive"
    assert node["ID"] not in {n["ID"] for n in manager.nodes()}  # removed through the gate

    rejoined = worker.setup()
    assert rejoined.returncode == 0, rejoined.stdout + rejoined.stderr
    new = wait_for("gsn-g1 Ready again", lambda: node_of(manager, worker.address))
    assert new["ID"] != node["ID"] and labels_of(manager, new["ID"]) == A100_LABELS
    assert_no_secrets(manager, joined.stdout, joined.stderr, left.stdout, left.stderr, rejoined.stdout,
                      rejoined.stderr)


def test_the_gate_refuses_everything_else(fleet, manager):
    g1, g2 = fleet("gsn-g1"), fleet("gsn-g2")
    for worker in (g1, g2):
        if worker.swarm()["LocalNodeState"] != "active":
            result = worker.setup()
            assert result.returncode == 0, result.stdout + result.stderr
    other = g2.swarm()["NodeID"]
    manager_id = manager.docker.info()["Swarm"]["NodeID"]
    for command in ("id", "docker ps", "sh -c 'docker node ls'", f"gpuswarm-gate drain {other}",
                    f"gpuswarm-gate drain {manager_id}", f"gpuswarm-gate remove {other}",
                    f"gpuswarm-gate labels {other} gpuswarm.gpu.model=stolen", "gpuswarm-gate join-token manager"):
        result = g1.ssh(manager, command)
        assert result.returncode == 126, (command, result.stdout, result.stderr)
        assert result.stdout == "" and result.stderr.startswith("gpuswarm-gate: refused: "), (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for node_id in (other, manager_id):
        assert manager.docker.nodes.get(node_id).attrs["Spec"]["Availability"] == "active"
    assert labels_of(manager, other).get("gpuswarm.gpu.model") == "Tesla-T4"
    # What a worker may ask, it gets: its own node, and the swarm's identity.
    own = g1.ssh(manager, f"gpuswarm-gate node {g1.swarm()['NodeID']}")
    assert own.returncode == 0 and json.loads(own.stdout)["State"] == "ready"
    info = g1.ssh(manager, "gpuswarm-gate swarm-info")
    assert json.loads(info.stdout)["ClusterID"] == manager.docker.info()["Swarm"]["Cluster"]["ID"]


def test_a_service_constrained_to_a_gpu_model_lands_on_that_model(fleet, manager):
    g1, g2 = fleet("gsn-g1"), fleet("gsn-g2")
    for worker in (g1, g2):
        if worker.swarm()["LocalNodeState"] != "active":
            result = worker.setup()
            assert result.returncode == 0, result.stdout + result.stderr
    where = {}
    for model, worker in (("Tesla-T4", g2), ("NVIDIA-A100-SXM4-40GB", g1)):
        service = manager.docker.services.create(
            manager.image, command=["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
            name=f"gsn-place-{worker.name}", constraints=[f"node.labels.gpuswarm.gpu.model=={model}"],
            mode=docker_sdk.types.ServiceMode("replicated", replicas=2))
        try:
            def running() -> list[str]:
                return [t["NodeID"] for t in service.tasks(filters={"desired-state": "running"})
                        if t["Status"]["State"] == "running"]

            where[model] = wait_for(f"two {model} tasks running", lambda: running() if len(running()) == 2 else None,
                                    timeout=120)
        finally:
            service.remove()
    assert where == {"Tesla-T4": [g2.swarm()["NodeID"]] * 2,
                     "NVIDIA-A100-SXM4-40GB": [g1.swarm()["NodeID"]] * 2}

    # On the hub: one spawn-form profile per model, from the same labels.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "DOCKER_"))}
    printed = subprocess.run([sys.executable, "-m", "gpuswarm_node.cli", "hub-config", "--profiles",
                              "--set", f"image.name={manager.image}"], cwd=REPO,
                             env={**env, "DOCKER_HOST": manager.dockerd.url}, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    # Loaded as JupyterHub loads it: in the lab hub's environment (dockerspawner, traitlets), with
    # `c` a traitlets Config; the profiles it defines come back as JSON.
    script = ("from traitlets.config import Config\nc = Config()\n" + printed.stdout
              + "\nimport json, sys\njson.dump(GPUSWARM_PROFILES, sys.stdout)\n")
    loaded = subprocess.run([str(hub_build.hub_env() / "venv" / "bin" / "python"), "-c", script],
                            capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    profiles = json.loads(loaded.stdout)
    assert set(profiles) >= {"Tesla-T4", "NVIDIA-A100-SXM4-40GB"}
    assert profiles["Tesla-T4"]["constraints"] == ["node.labels.gpuswarm.gpu.model==Tesla-T4"]


def test_a_lone_single_node_swarm_is_left_for_the_managers_without_force(fleet, manager):
    worker = fleet("gsn-g3")
    # A lone box set up without a manager: its own single-node swarm (the embedded default).
    alone = worker.cli("setup", "--json", "--only", "swarm-join", "--set", "swarm.manager=",
                       "--config", str(worker.config))
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert worker.swarm()["ControlAvailable"] is True and worker.swarm()["Nodes"] == 1
    own_cluster = worker.swarm()["Cluster"]["ID"]

    joined = worker.setup()
    assert joined.returncode == 0, joined.stdout + joined.stderr
    detail = {s["name"]: s["detail"] for s in json.loads(joined.stdout)["steps"]}["swarm-join"]
    assert f"left its own single-node swarm (cluster {own_cluster}: no other node, no service)" in detail, detail
    node = wait_for("gsn-g3 Ready on the manager", lambda: node_of(manager, worker.address))
    assert node["Spec"]["Role"] == "worker" and worker.swarm()["ControlAvailable"] is False

    # A --then whose program does not exist is a usage error, found before the node leaves.
    refused = worker.cli("leave", "--then", "no-such-terminate-call --now", "--config", str(worker.config))
    assert refused.returncode == 2 and "no-such-terminate-call is not an executable program" in refused.stderr
    assert worker.swarm()["LocalNodeState"] == "active"
    assert_no_secrets(manager, alone.stdout, joined.stdout, joined.stderr, refused.stderr)


def test_a_revoked_key_no_longer_logs_in_however_its_line_was_hardened(fleet, manager):
    worker = fleet("gsn-g3")
    authorized = manager.client_key_path.parent / "authorized_keys"
    # An operator hardens the worker's line the way sshd(8) allows: options before and around ours.
    authorized.write_text("".join(
        (f'from="{worker.address}",no-pty,' + line.replace("restrict,command=", "Restrict,COMMAND=")
         if line.endswith("gpuswarm-node:gsn-g3") else line) + "\n"
        for line in authorized.read_text().splitlines()))
    hello = worker.ssh(manager, "gpuswarm-gate hello")
    assert hello.returncode == 0 and "node=gsn-g3" in hello.stdout, hello.stderr  # sshd still reads it
    revoked = subprocess.run([sys.executable, "-m", "gpuswarm_node.cli", "hub", "revoke", "--node", "gsn-g3",
                              "--authorized-keys", str(authorized)], cwd=REPO, capture_output=True, text=True)
    assert revoked.returncode == 0 and "revoked 1 key(s) of node gsn-g3" in revoked.stdout, revoked.stderr
    refused = worker.ssh(manager, "gpuswarm-gate hello")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert fleet("gsn-g1").ssh(manager, "gpuswarm-gate hello").returncode == 0  # the others stay


# A stand-in EC2 instance metadata service (IMDSv2: a token first), run in a worker's own netns on
# its loopback: what it answers is read from a JSON file {path: body} at every request, so the
# test changes the notice while it runs.
METADATA_STAND_IN = r"""
import http.server, json, sys
answers, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.send(200 if ok else 400, "TOKEN-LAB" if ok else "")
    def do_GET(self):
        body = json.load(open(answers)).get(self.path)
        if self.headers.get("X-aws-ec2-metadata-token") != "TOKEN-LAB":
            self.send(401, "")
        else:
            self.send(404 if body is None else 200, body or "")
    def send(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
"""
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"


def test_spot_notices_pause_the_node_then_make_it_leave_before_the_deadline(fleet, manager, lab_tmp):
    """`watch --once` rounds on a gated worker against a stand-in EC2 metadata service: a rebalance
    recommendation pauses the node through the hub's gate (no new tasks, the running one stays), its
    end makes it active again; a spot interruption two minutes out makes it leave: its task moves to
    another worker, the node leaves the swarm and the manager forgets it, all before the deadline."""
    import datetime
    import time

    import docker

    worker, other = fleet("gsn-g2"), fleet("gsn-g3")
    for w in (worker, other):
        if w.swarm()["LocalNodeState"] != "active":
            result = w.setup()
            assert result.returncode == 0, result.stdout + result.stderr
    node_id = worker.swarm()["NodeID"]
    answers = lab_tmp / "gsn-g2-metadata.json"
    answers.write_text("{}")
    server = subprocess.Popen([*worker.host.nsenter_prefix(), sys.executable, "-c", METADATA_STAND_IN, str(answers),
                               "8169"], stdout=subprocess.PIPE, text=True)
    service = None
    try:
        assert server.stdout.readline() == "ready\n"
        # Only what this test is about: the light worker has no tmpfs and no slice map to watch.
        watch_args = ("watch", "--once", "--config", str(worker.config), "--set", "watch.notices=aws",
                      "--set", "watch.metadata_url=http://127.0.0.1:8169", "--set", "tmpfs.enabled=false",
                      "--set", "watch.min_free_disk=0")

        def spec() -> dict:
            return manager.docker.nodes.get(node_id).attrs["Spec"]

        # A notebook on the node, which may run anywhere a T4 is (the other worker too).
        service = manager.docker.services.create(
            manager.image, command=["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"], name="gsn-spot",
            constraints=["node.labels.gpuswarm.gpu.model==Tesla-T4", f"node.id!={other.swarm()['NodeID']}"],
            restart_policy=docker.types.RestartPolicy(condition="any"))
        wait_for("the notebook running on gsn-g2", lambda: [t for t in service.tasks()
                                                             if t["Status"]["State"] == "running"], timeout=120)

        answers.write_text(json.dumps({REBALANCE_PATH: '{"noticeTime": "2026-12-08T00:00:00Z"}'}))
        first = worker.cli(*watch_args)
        assert first.returncode == 0, first.stdout + first.stderr
        assert spec()["Availability"] == "pause"
        assert labels_of(manager, node_id)["gpuswarm.health"] == "rebalance-recommended"
        assert [t for t in service.tasks() if t["Status"]["State"] == "running"], "the running notebook stays"
        again = worker.cli(*watch_args)  # the same notice: nothing more is done
        assert again.returncode == 0 and "paused node" not in again.stderr, again.stderr

        answers.write_text("{}")
        gone = worker.cli(*watch_args)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert spec()["Availability"] == "active"
        assert labels_of(manager, node_id)["gpuswarm.health"] == "ok"

        # The interruption: the notebook may now move to the other worker.
        service.update(constraints=["node.labels.gpuswarm.gpu.model==Tesla-T4"])
        wait_for("the notebook running again", lambda: [t for t in service.tasks()
                                                        if t["Status"]["State"] == "running"], timeout=120)
        deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=120)
        answers.write_text(json.dumps({INSTANCE_ACTION_PATH: json.dumps(
            {"action": "terminate", "time": deadline.strftime("%Y-%m-%dT%H:%M:%SZ")})}))
        started = time.monotonic()
        leave = worker.cli(*watch_args)
        took = time.monotonic() - started
        assert leave.returncode == 0, leave.stdout + leave.stderr
        assert "leaving the swarm (the notebooks get" in leave.stderr
        print(f"\nspot interruption: the node left {took:.1f} s after watch read the notice (deadline 120 s)")
        assert worker.swarm()["LocalNodeState"] == "inactive"
        assert node_id not in {n["ID"] for n in manager.nodes()}  # forgotten, through the gate
        running = [t for t in service.tasks() if t["Status"]["State"] == "running"]
        assert running and all(t["NodeID"] == other.swarm()["NodeID"] for t in running)
        after = worker.cli(*watch_args)  # out of the swarm: nothing more to do
        assert after.returncode == 0 and "leaving" not in after.stderr, after.stderr
    finally:
        if service is not None:
            service.remove()
        server.terminate()
        server.wait(timeout=10)

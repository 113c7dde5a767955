"""The product on a fresh machine, as a user runs it: `sudo ./setup.sh --config node.toml` on a
new Debian 12 booted with systemd, against a real swarm manager over SSH and a real TLS registry.

Everything is asserted on real state: what the manager sees, what systemd, the kernel and Docker
inside the machine say. Scenarios run in order on one machine (module scope): fresh setup,
scheduling through the swarm, a second run, break-and-repair, hostile input, a reboot.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import docker
import pytest

from . import fake_nvml, toolkit_deb
from . import machine as lab_machine
from .machine import FreshMachine
from .util import TIMINGS, timed, wait_for

REPO = Path(__file__).resolve().parents[2]
NAME, ADDRESS = "gsn-w1", "198.18.0.11"
USER = "worker"
HOME = f"/home/{USER}"
CONFIG = f"{HOME}/node.toml"
TMPFS = "/mnt/tmpfs"

GPUS = [
    fake_nvml.FakeGpu("GPU-0a0a0a0a-1111-2222-3333-444444444444", "NVIDIA A100-SXM4-40GB", 40960),
    fake_nvml.FakeGpu("GPU-0b0b0b0b-5555-6666-7777-888888888888", "NVIDIA A100-SXM4-40GB", 40960),
]
SLICES_PER_GPU = 3
# Interleaved: slice 1 of each GPU before slice 2 of any.
EXPECTED_SLICES = [f"{g.uuid}::{n}" for n in range(1, SLICES_PER_GPU + 1) for g in GPUS]

# Docker on the worker would pick 172.17/16 and friends; the lab keeps every address in
# 198.18.0.0/15. The operator's own keys must survive setup (asserted below).
PRESEEDED_DAEMON_JSON = {
    "bip": "198.18.130.1/24",
    "default-address-pools": [{"base": "198.18.160.0/19", "size": 24}],
    "log-level": "warn",
}


def project_tree(dest: Path) -> Path:
    """The project's files as a user would copy them: what git tracks, plus new unignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
            (dest / name).chmod(src.stat().st_mode & 0o777)
    return dest


class Worker:
    """The fresh machine plus a record of everything the product printed on it."""

    def __init__(self, machine: FreshMachine) -> None:
        self.machine = machine
        self.outputs: list[str] = []

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.machine.run(script, check=check, timeout=timeout)

    def as_user(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """`sudo COMMAND` typed by the machine's user, as on a new cloud instance."""
        script = f"cd {HOME}/gpuswarm-node && {command}"
        result = self.machine.run(["runuser", "-u", USER, "--", "bash", "-lc", script], check=False,
                                  timeout=timeout)
        self.outputs += [result.stdout, result.stderr]
        return result

    def gsn(self, *args: str) -> subprocess.CompletedProcess:
        return self.as_user("sudo gpuswarm-node " + shlex.join(args))

    def status(self) -> tuple[int, dict[str, str]]:
        result = self.gsn("status", "--json", "--config", CONFIG)
        report = json.loads(result.stdout)
        return result.returncode, {s["name"]: s["state"] for s in report["steps"]}

    def docker_pid(self) -> str:
        return self.sh("systemctl show --property=MainPID --value docker").stdout.strip()

    def node_id(self) -> str:
        return self.sh("docker info --format '{{.Swarm.NodeID}}'").stdout.strip()


@pytest.fixture(scope="module")
def toolkit_repo(lab_tmp) -> Path:
    return toolkit_deb.build_repo(lab_tmp / "toolkit-repo")


@pytest.fixture(scope="module")
def worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    lab_machine.cleanup_stale()
    network.enable_outbound_nat()  # apt and pip inside need the package registries
    host = network.add_host(NAME, ADDRESS)
    machine = FreshMachine(host, lab_tmp / NAME, name=NAME)
    try:
        with timed("fresh machine: unpack and boot"):
            machine.start()
        # The "hardware": two GPUs behind the fake libnvidia-ml.so.1.
        fake_nvml.install_into(machine.rootfs, GPUS, lib_dir=nvml_lib_dir)
        machine.copy_in(project_tree(lab_tmp / "project"), f"{HOME}/gpuswarm-node", owner=USER)
        machine.copy_in(toolkit_repo, "/srv/toolkit-repo")
        machine.copy_in(manager.client_key_path, "/etc/gpuswarm-node/id_ed25519")
        machine.copy_in(manager.known_hosts_path, "/etc/gpuswarm-node/known_hosts")
        machine.copy_in(manager.ca_cert_path, "/etc/gpuswarm-node/registry-ca.crt")
        machine.run(["sh", "-c", "mkdir -p /etc/docker && cat > /etc/docker/daemon.json"],
                    input=json.dumps(PRESEEDED_DAEMON_JSON, indent=2))
        config = f"""\
[nvidia]
toolkit_apt_source = "deb [trusted=yes] file:/srv/toolkit-repo ./"

[gpu]
slices_per_gpu = {SLICES_PER_GPU}

[registry]
address = "{manager.registry_address}"
ca_cert = "/etc/gpuswarm-node/registry-ca.crt"

[image]
name = "{manager.image}"

[swarm]
manager = "{manager.address}"
advertise_addr = "{ADDRESS}"
"""
        machine.run(["sh", "-c", f"cat > {CONFIG} && chown {USER}: {CONFIG}"], input=config)
        yield Worker(machine)
    finally:
        for node in manager.nodes():
            if node["Status"].get("Addr") == ADDRESS:
                manager.docker.nodes.get(node["ID"]).remove(force=True)
        machine.close()
        network.remove_host(NAME)
        TIMINGS.update({f"fresh machine {k}": v for k, v in machine.timings.items() if k in ("close",)})


@pytest.fixture(scope="module")
def fresh_setup(worker):
    with timed("fresh setup: sudo ./setup.sh --config node.toml") as t:
        result = worker.as_user(f"sudo ./setup.sh --config {CONFIG}")
    print(f"\nfresh setup took {t.seconds:.1f} s")
    return result


def ready_node(manager) -> dict | None:
    for node in manager.nodes():
        if node["Status"].get("Addr") == ADDRESS and node["Status"]["State"] == "ready":
            return node
    return None


# --- 1. fresh machine -------------------------------------------------------------------------

def test_fresh_machine_becomes_a_ready_worker(worker, fresh_setup, manager):
    assert fresh_setup.returncode == 0, fresh_setup.stdout[-4000:] + fresh_setup.stderr[-4000:]

    node = wait_for("the worker Ready on the manager", lambda: ready_node(manager))
    assert node["Spec"]["Role"] == "worker" and node["Spec"]["Availability"] == "active"
    advertised = [(r["NamedResourceSpec"]["Kind"], r["NamedResourceSpec"]["Value"])
                  for r in node["Description"]["Resources"]["GenericResources"]]
    assert sorted(advertised) == sorted(("gpu", s) for s in EXPECTED_SLICES)

    assert worker.sh(f"docker image inspect --format '{{{{.Id}}}}' {manager.image}").stdout.startswith("sha256:")

    mem_total = int(worker.sh("awk '/^MemTotal:/ {print $2}' /proc/meminfo").stdout) * 1024
    want_mib = int(mem_total * 0.5) // 2**20
    fstype, size = worker.sh(f"findmnt -bno FSTYPE,SIZE {TMPFS}").stdout.split()
    assert fstype == "tmpfs" and int(size) == want_mib * 2**20
    fstab = worker.machine.read_file("/etc/fstab").splitlines()
    assert [line for line in fstab if TMPFS in line] == [
        f"tmpfs {TMPFS} tmpfs size={want_mib}m,mode=1777,nofail 0 0"]
    assert worker.sh("findmnt --verify --tab-file /etc/fstab", check=False).returncode == 0

    assert "docker" in worker.sh(f"id -nG {USER}").stdout.split()
    daemon = json.loads(worker.machine.read_file("/etc/docker/daemon.json"))
    for key, value in PRESEEDED_DAEMON_JSON.items():
        assert daemon[key] == value  # the operator's keys survived
    runtimes = worker.sh("docker info --format '{{json .Runtimes}}'").stdout
    assert "nvidia" in json.loads(runtimes)
    default = worker.sh("docker info --format '{{.DefaultRuntime}}'").stdout.strip()
    assert default == daemon["default-runtime"] and default in json.loads(runtimes)
    assert worker.sh("systemctl is-enabled docker").stdout.strip() == "enabled"


# --- 2. scheduling through the real swarm ------------------------------------------------------

def test_services_fill_exactly_the_advertised_slices(worker, fresh_setup, manager):
    node_id = worker.node_id()
    services = []
    try:
        for i in range(len(EXPECTED_SLICES) + 1):
            services.append(manager.docker.services.create(
                manager.image, command=["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                name=f"gsn-nb-{i}", constraints=[f"node.id=={node_id}"],
                resources=docker.types.Resources(generic_resources={"gpu": 1}),
                restart_policy=docker.types.RestartPolicy(condition="none")))

        def states():
            tasks = [t for s in services for t in s.tasks()]
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            pending = [t for t in tasks if t["Status"]["State"] == "pending"]
            return (running, pending) if len(running) == len(EXPECTED_SLICES) and len(pending) == 1 else None

        def task_states() -> str:
            return "; ".join(f"{t['Status']['State']} {t['Status'].get('Err', '')}".strip()
                             for s in services for t in s.tasks())

        running, pending = wait_for("every slice taken and one service pending", states, timeout=180,
                                    explain=task_states)
        assert "insufficient resources" in pending[0]["Status"]["Err"]
        given = []
        for task in running:
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            env = json.loads(worker.sh(f"docker inspect --format '{{{{json .Config.Env}}}}' {cid}").stdout)
            given += [e.split("=", 1)[1] for e in env if e.startswith("DOCKER_RESOURCE_GPU=")]
        assert sorted(given) == sorted(EXPECTED_SLICES)  # one distinct slice each, all of them used

        # Every container went through the default runtime chain to nvidia-container-runtime.
        calls = toolkit_deb.read_calls(worker.machine.read_file("/var/log/fake-nvidia-runtime/calls.jsonl"))
        created = {c["id"] for c in calls if c.get("command") == "create"}
        assert {t["Status"]["ContainerStatus"]["ContainerID"] for t in running} <= created
    finally:
        for service in services:
            service.remove()
        wait_for("the tasks to stop", lambda: worker.sh("docker ps -q").stdout.strip() == "", timeout=120)


# --- 3. the second run changes nothing --------------------------------------------------------

def test_second_run_changes_nothing(worker, fresh_setup):
    pid_before = worker.docker_pid()
    with timed("second run: setup --json on a converged node") as t:
        result = worker.as_user(f"sudo ./setup.sh --config {CONFIG} --json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["changed"] == []
    assert worker.docker_pid() == pid_before  # docker was not restarted
    with timed("status on a converged node") as s:
        code, states = worker.status()
    assert code == 0 and set(states.values()) <= {"ok", "skipped"}
    print(f"\nsecond run took {t.seconds:.1f} s, status {s.seconds:.1f} s")


# --- 4. break and repair ----------------------------------------------------------------------

BREAKS = {
    "docker-daemon": "python3 -c \"import json; p='/etc/docker/daemon.json'; d=json.load(open(p)); "
                     "d.pop('node-generic-resources'); json.dump(d, open(p, 'w'))\"",
    "tmpfs": f"umount {TMPFS}",
    "swarm-join": "docker swarm leave --force",
    "image": "docker image rm --force {image}",
    "docker-group": f"gpasswd --delete {USER} docker",
}


def break_and_repair(worker, manager, broken: list[str]) -> None:
    for step in broken:
        worker.sh(BREAKS[step].format(image=manager.image))
    code, states = worker.status()
    assert code == 1
    assert {name for name, state in states.items() if state not in ("ok", "skipped")} == set(broken)
    result = worker.gsn("setup", "--json", "--config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(json.loads(result.stdout)["changed"]) == sorted(broken)
    code, states = worker.status()
    assert code == 0, states


@pytest.mark.parametrize("step", list(BREAKS))
def test_break_one_step_and_repair(worker, fresh_setup, manager, step):
    break_and_repair(worker, manager, [step])


def test_break_everything_at_once_and_repair(worker, fresh_setup, manager):
    break_and_repair(worker, manager, list(BREAKS))
    assert ready_node(manager)


# --- 5. hostile input on the machine ----------------------------------------------------------

def test_daemon_json_that_is_not_json_is_left_alone(worker, fresh_setup):
    good = worker.machine.read_file("/etc/docker/daemon.json")
    bad = good.replace("{", "{ oops", 1)
    worker.machine.run(["sh", "-c", "cat > /etc/docker/daemon.json"], input=bad)
    try:
        result = worker.gsn("setup", "--config", CONFIG)
        assert result.returncode == 1
        assert "/etc/docker/daemon.json is not valid JSON" in result.stdout
        assert worker.machine.read_file("/etc/docker/daemon.json") == bad
        assert worker.sh("systemctl is-active docker").stdout.strip() == "active"
    finally:
        worker.machine.run(["sh", "-c", "cat > /etc/docker/daemon.json"], input=good)


def test_malformed_config_is_a_usage_error(worker, fresh_setup):
    worker.machine.run(["sh", "-c", f"cat > {HOME}/bad.toml"], input='[swarm]\nssh_port = "ssh"\n')
    result = worker.gsn("setup", "--config", f"{HOME}/bad.toml")
    assert result.returncode == 2
    assert "[swarm] ssh_port" in result.stderr and "Traceback" not in result.stderr


def test_no_secret_in_any_output(worker, fresh_setup, manager):
    token = manager.worker_join_token()
    key = manager.client_key_path.read_text().strip().splitlines()[1]
    assert worker.outputs
    for text in worker.outputs:
        assert token not in text and token.rsplit("-", 1)[1] not in text
        assert key not in text
    log = worker.machine.read_file("/var/log/gpuswarm-node/runs.jsonl")
    assert token not in log and len(log.splitlines()) >= 9


# --- 6. a reboot keeps the node -----------------------------------------------------------------

def test_reboot_keeps_a_converged_node(worker, fresh_setup, manager):
    worker.machine.reboot()
    code, states = wait_for("status ok after the reboot",
                            lambda: (lambda r: r if r[0] == 0 else None)(worker.status()), timeout=120)
    assert worker.sh(f"findmnt -no FSTYPE {TMPFS}").stdout.strip() == "tmpfs"
    assert wait_for("the worker Ready again", lambda: ready_node(manager))


# --- 7. reset reverts what setup changed --------------------------------------------------------

def test_reset_reverts_from_the_journal(worker, fresh_setup, manager):
    result = worker.gsn("reset", "--yes", "--config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "packages left installed" in result.stdout
    assert json.loads(worker.machine.read_file("/etc/docker/daemon.json")) == PRESEEDED_DAEMON_JSON
    assert TMPFS not in worker.machine.read_file("/etc/fstab")
    assert worker.sh(f"findmnt {TMPFS}", check=False).returncode != 0
    assert "docker" not in worker.sh(f"id -nG {USER}").stdout.split()
    assert worker.sh("docker info --format '{{.Swarm.LocalNodeState}}'").stdout.strip() == "inactive"
    assert worker.sh(f"docker image inspect {manager.image}", check=False).returncode != 0
    assert worker.sh(f"test -e /etc/docker/certs.d/{manager.registry_address}/ca.crt", check=False).returncode != 0
    again = worker.gsn("reset", "--yes", "--config", CONFIG)
    assert again.returncode == 0 and "nothing to revert" in again.stdout

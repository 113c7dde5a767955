"""The product on a fresh machine, as a user runs it: README.md's quick start, its commands exactly
(tests/lab/worker.py, `quick_start_script`: only the lab's addresses replace hub.example.org) on
a new Debian 12 booted with systemd, against a real swarm manager over SSH and a real TLS registry.

Everything is asserted on real state: what the manager sees, what systemd, the kernel and Docker
inside the machine say. Scenarios run in order on one machine (module scope): fresh setup,
scheduling through the swarm, a second run, break-and-repair, hostile input, a reboot.
"""

from __future__ import annotations

import contextlib
import json
import shlex

import docker
import pytest

from . import toolkit_deb
from .util import timed, wait_for
from .worker import (ADDRESS, CONFIG, EXPECTED_SLICES, HOME, PRESEEDED_DAEMON_JSON, SLICES_PER_GPU, TMPFS,
                     USER, provisioned_worker, quick_start_script)


@pytest.fixture(scope="module")
def worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir):
    with provisioned_worker(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir, readme=True) as w:
        yield w


@pytest.fixture(scope="module")
def fresh_setup(worker, manager):
    # The README's quick start, under umask 000 (sudo's too), as some hosts and cloud-init setups
    # run it: nothing created may become writable by other users (asserted below).
    script = quick_start_script(manager)
    with timed("fresh setup: README quick start, ending sudo ./setup.sh --config ~/node.toml (umask 000)") as t:
        result = worker.quick_start(script, umask="000")
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
    # What the README says a successful run prints, and the apt log it names.
    assert fresh_setup.stdout.rstrip().endswith("node converged.")
    assert "full command output: /var/log/gpuswarm-node/apt.log" in fresh_setup.stdout
    apt_log = worker.machine.read_file("/var/log/gpuswarm-node/apt.log")
    assert "Setting up docker.io" in apt_log and "=== exit 0 after " in apt_log
    assert worker.sh("stat -c '%a %U' /var/log/gpuswarm-node/apt.log").stdout.split() == ["640", "root"]
    # Not a terminal: apt's progress as plain lines in apt's words, and setup.sh's word on pip.
    assert "installing" in fresh_setup.stderr and "\x1b[" not in fresh_setup.stderr
    assert "setup.sh: pip: done in " in fresh_setup.stderr
    assert f"pulled {manager.image}" in fresh_setup.stderr

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

    # One apt transaction for the whole fresh machine: one update, one install (Docker and the
    # NVIDIA toolkit together), read from the tool's own journal of what it ran.
    journal = [json.loads(line) for line in worker.machine.read_file(
        "/var/lib/gpuswarm-node/changes.jsonl").splitlines()]
    apt_runs = [e["argv"] for e in journal if e.get("kind") == "run" and e["argv"][:1] == ["apt-get"]]
    assert len([a for a in apt_runs if "update" in a]) == 1
    [install] = [a for a in apt_runs if "install" in a]
    assert {"docker.io", "nvidia-container-toolkit"} <= set(install)


# Everything setup.sh and the tool create, and the directories they write into.
OWNED_TREES = ["/opt/gpuswarm-node", "/usr/local/lib/gpuswarm-node", "/etc/gpuswarm-node", "/var/lib/gpuswarm-node",
               "/var/log/gpuswarm-node", "/var/backups/gpuswarm-node", "/etc/docker"]


def test_nothing_created_under_umask_000_is_writable_by_others(worker, fresh_setup):
    assert fresh_setup.returncode == 0, fresh_setup.stdout[-4000:] + fresh_setup.stderr[-4000:]
    loose = worker.sh(f"find {' '.join(OWNED_TREES)} ! -type l -perm /022 -printf '%m %u %p\\n'").stdout
    assert loose == "", loose
    foreign = worker.sh(f"find {' '.join(OWNED_TREES)} ! -user root -printf '%u %p\\n'").stdout
    assert foreign == "", foreign
    modes = dict(line.split(" ", 1)[::-1] for line in worker.sh(
        "stat -c '%a %n' /usr/local/lib/gpuswarm-node /usr/local/lib/gpuswarm-node/gpuswarm-runtime "
        "/usr/local/lib/gpuswarm-node/gpuswarm-runtime.py /etc/gpuswarm-node/slices.json /etc/docker/daemon.json "
        "/var/backups/gpuswarm-node /usr/share/bash-completion/completions/gpuswarm-node").stdout.splitlines())
    assert modes == {"/usr/local/lib/gpuswarm-node": "755", "/usr/local/lib/gpuswarm-node/gpuswarm-runtime": "755",
                     "/usr/local/lib/gpuswarm-node/gpuswarm-runtime.py": "644",
                     "/etc/gpuswarm-node/slices.json": "644", "/etc/docker/daemon.json": "644",
                     "/var/backups/gpuswarm-node": "700", "/usr/share/bash-completion/completions/gpuswarm-node": "644"}


# --- 2. scheduling through the real swarm ------------------------------------------------------

def runtime_calls(worker) -> dict[str, dict]:
    """What the stand-in nvidia-container-runtime was asked on `create`, by container id."""
    calls = toolkit_deb.read_calls(worker.machine.read_file("/var/log/fake-nvidia-runtime/calls.jsonl"))
    return {c["id"]: c for c in calls if c.get("command") == "create"}


def gpu_service(manager, name: str, node_id: str, restart: str = "none"):
    return manager.docker.services.create(
        manager.image, command=["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
        name=name, constraints=[f"node.id=={node_id}"],
        resources=docker.types.Resources(generic_resources={"gpu": 1}),
        restart_policy=docker.types.RestartPolicy(condition=restart))


def running_tasks(services) -> list[dict]:
    return [t for s in services for t in s.tasks() if t["Status"]["State"] == "running"]


# One slice of SLICES_PER_GPU, as the runtime wrapper sets it (slices.py: memory_share_env).
SHARE = 100 // SLICES_PER_GPU
SHARE_ENV = ["TF_FORCE_GPU_ALLOW_GROWTH=true", f"XLA_PYTHON_CLIENT_MEM_FRACTION={SHARE / 100:.2f}",
             f"XLA_CLIENT_MEM_FRACTION={SHARE / 100:.2f}", f"CUPY_GPU_MEMORY_LIMIT={SHARE}%"]


def test_services_fill_exactly_the_advertised_slices(worker, fresh_setup, manager):
    node_id = worker.node_id()
    gpu_of = {s: s.split("::")[0] for s in EXPECTED_SLICES}
    services = []
    try:
        # One after another, the first two land on different GPUs: the slice list interleaves them.
        for i in range(2):
            services.append(gpu_service(manager, f"gsn-nb-{i}", node_id))
            wait_for(f"service {i} running", lambda: len(running_tasks(services)) == i + 1, timeout=120)
        first_two = []
        for service in services:
            [task] = service.tasks()
            env = json.loads(worker.sh("docker inspect --format '{{json .Config.Env}}' "
                                       f"{task['Status']['ContainerStatus']['ContainerID']}").stdout)
            first_two += [e.split("=", 1)[1] for e in env if e.startswith("DOCKER_RESOURCE_GPU=")]
        assert len({gpu_of[s] for s in first_two}) == 2, first_two

        for i in range(2, len(EXPECTED_SLICES) + 1):
            services.append(gpu_service(manager, f"gsn-nb-{i}", node_id))

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
        calls = runtime_calls(worker)
        given = []
        for task in running:
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            env = json.loads(worker.sh(f"docker inspect --format '{{{{json .Config.Env}}}}' {cid}").stdout)
            [slice_id] = [e.split("=", 1)[1] for e in env if e.startswith("DOCKER_RESOURCE_GPU=")]
            given.append(slice_id)
            # The slice-aware runtime handed nvidia-container-runtime the real device of that slice,
            # and that is what the NVIDIA hook acts on.
            assert calls[cid]["nvidia_visible_devices"] == gpu_of[slice_id]
            assert calls[cid]["hook_devices"] == [gpu_of[slice_id]]
            # The notebook's own process (not a `docker exec`, which takes Docker's copy of the env)
            # has the frameworks' memory settings of one slice in SLICES_PER_GPU.
            init_env = worker.sh(f"docker exec {cid} cat /proc/1/environ").stdout.split("\0")
            assert set(SHARE_ENV) <= set(init_env), init_env
        assert sorted(given) == sorted(EXPECTED_SLICES)  # one distinct slice each, all of them used
    finally:
        for service in services:
            service.remove()
        wait_for("the tasks to stop", lambda: worker.sh("docker ps -q").stdout.strip() == "", timeout=120)


def test_a_container_without_a_reservation_sees_no_gpu(worker, fresh_setup, manager):
    cid = worker.sh(f"docker run -d -e NVIDIA_VISIBLE_DEVICES=all {manager.image} true").stdout.strip()
    worker.sh(f"docker wait {cid} && docker rm {cid}")
    assert runtime_calls(worker)[cid]["nvidia_visible_devices"] == "void"
    assert runtime_calls(worker)[cid]["hook_devices"] == []


def test_a_forged_slice_fails_the_container_start(worker, fresh_setup, manager):
    forged = f"{EXPECTED_SLICES[0].split('::')[0]}::99"
    result = worker.sh(f"docker run --rm -e DOCKER_RESOURCE_GPU={forged} {manager.image} true", check=False)
    assert result.returncode != 0
    assert "is not advertised on this node" in result.stderr


# --- 2b. no container gets a GPU it did not reserve -------------------------------------------

TOOLKIT_CONFIG = "/etc/nvidia-container-runtime/config.toml"
DRIVER_TOOLKIT_CONFIG = "/run/nvidia/driver" + TOOLKIT_CONFIG
BUSY_CMD = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def write_file(worker, path: str, text: str) -> None:
    worker.machine.run(["sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}"], input=text)


def tasks_of(service) -> str:
    return "; ".join(f"{t['Status']['State']}: {t['Status'].get('Err', '')}" for t in service.tasks())


def refused_everywhere(worker, manager, service, message: str) -> None:
    """The service's task never runs: the worker refuses every attempt, naming the cause."""
    failed = wait_for(f"a task of {service.name} refused", lambda: [
        t for t in service.tasks() if t["Status"]["State"] in ("failed", "rejected")], timeout=120,
        explain=lambda: tasks_of(service))
    assert any(message in t["Status"].get("Err", "") for t in failed), tasks_of(service)
    assert not running_tasks([service])


def toolkit_status(worker) -> dict:
    report = json.loads(worker.gsn("status", "--json", "--config", CONFIG).stdout)
    return {s["name"]: s for s in report["steps"]}["nvidia-toolkit"]


def test_swarm_resource_under_any_name_refuses_gpu_starts(worker, fresh_setup, manager):
    node_id = worker.node_id()
    for path, variable in ((TOOLKIT_CONFIG, "DOCKER_RESOURCE_FOO"), (DRIVER_TOOLKIT_CONFIG, "MY_GPUS")):
        write_file(worker, path, f'swarm-resource = "{variable}"\n')
        service = manager.docker.services.create(
            manager.image, command=BUSY_CMD, name="gsn-swarm-resource", constraints=[f"node.id=={node_id}"],
            env=[f"{variable}=all"], resources=docker.types.Resources(generic_resources={"gpu": 1}),
            restart_policy=docker.types.RestartPolicy(condition="none"))
        try:
            refused_everywhere(worker, manager, service, "sets swarm-resource")
            step = toolkit_status(worker)
            assert step["state"] == "blocked"
            assert f"{path} sets swarm-resource = '{variable}'" in step["detail"]
        finally:
            service.remove()
            worker.sh(f"rm -f {path}")
        # Not one create reached the NVIDIA runtime with that variable: the hook never chose.
        assert not [c for c in runtime_calls(worker).values() if variable in c["env"]]
    assert toolkit_status(worker)["state"] == "ok"


def test_a_device_list_as_volume_mounts_is_refused(worker, fresh_setup, manager):
    write_file(worker, TOOLKIT_CONFIG, "accept-nvidia-visible-devices-as-volume-mounts = true\n")
    try:
        assert "refused by the slice-aware runtime" in toolkit_status(worker)["detail"]
        result = worker.sh(f"docker run --rm -v /dev/null:/var/run/nvidia-container-devices/all {manager.image} true",
                           check=False)
        assert result.returncode != 0
        assert "would be read as a GPU request by the NVIDIA hook" in result.stderr
    finally:
        worker.sh(f"rm -f {TOOLKIT_CONFIG}")


def test_an_image_cannot_reserve_a_gpu(worker, fresh_setup, manager):
    image = f"{manager.registry_address}/gsn-hostile:1"
    forged = ",".join(EXPECTED_SLICES[:2])
    worker.machine.run(["sh", "-c", f"docker build --quiet -t {image} -"],
                       input=f"FROM {manager.image}\nENV DOCKER_RESOURCE_GPU={forged}\n")
    worker.sh(f"docker push --quiet {image}", timeout=120)
    before = set(runtime_calls(worker))
    # As `docker run` with no reservation: the image's ENV would name two GPUs.
    result = worker.sh(f"docker run --rm {image} true", check=False)
    assert result.returncode != 0
    assert "sets DOCKER_RESOURCE_GPU in its ENV; only Swarm may set it" in result.stderr
    # As a service without generic resources, and as one that reserves a slice of its own.
    for name, resources in (("gsn-hostile-none", None),
                            ("gsn-hostile-one", docker.types.Resources(generic_resources={"gpu": 1}))):
        service = manager.docker.services.create(
            image, command=BUSY_CMD, name=name, constraints=[f"node.id=={worker.node_id()}"], resources=resources,
            restart_policy=docker.types.RestartPolicy(condition="none"))
        try:
            refused_everywhere(worker, manager, service, "in its ENV")
        finally:
            service.remove()
    assert set(runtime_calls(worker)) == before, "no container of the image reached the NVIDIA runtime"


# --- 2c. the metadata guard: containers cannot reach the cloud metadata service ----------------

IMDS_NS = "gsn-imds"
IMDS_URL = "http://169.254.169.254/latest/meta-data/instance-id"
GUARD_RULE = ("-d 169.254.169.254/32 -m comment --comment gpuswarm-node-metadata-guard -j REJECT")


@pytest.fixture(scope="module")
def metadata_server(worker, lab_tmp):
    """A stand-in for the cloud's metadata service, off the worker as on EC2: 169.254.169.254 in a
    netns of its own, reached from the worker's netns over a veth (so a container's packets to it
    are forwarded, as they are to the real one)."""
    import subprocess
    import sys

    root = lab_tmp / "imds" / "latest" / "meta-data"
    root.mkdir(parents=True)
    (root / "instance-id").write_text("i-0lab")
    worker_ns = worker.machine.host.name
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", IMDS_NS)
    server = None
    try:
        run("ip", "link", "add", "gsn-imds0", "netns", worker_ns, "type", "veth", "peer", "name", "eth0",
            "netns", IMDS_NS)
        run("ip", "-n", IMDS_NS, "link", "set", "lo", "up")
        run("ip", "-n", IMDS_NS, "addr", "add", "169.254.169.254/16", "dev", "eth0")
        run("ip", "-n", IMDS_NS, "link", "set", "eth0", "up")
        run("ip", "-n", worker_ns, "addr", "add", "169.254.0.1/16", "dev", "gsn-imds0")
        run("ip", "-n", worker_ns, "link", "set", "gsn-imds0", "up")
        server = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{IMDS_NS}", sys.executable, "-m", "http.server",
                                   "80", "--bind", "169.254.169.254", "--directory", str(lab_tmp / "imds")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("the metadata stand-in answering the worker", lambda: host_reads_metadata(worker))
        yield server
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        subprocess.run(["ip", "-n", worker_ns, "link", "del", "gsn-imds0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", IMDS_NS], capture_output=True)


def host_reads_metadata(worker) -> bool:
    probe = ("import urllib.request; print(urllib.request.urlopen("
             f"'{IMDS_URL}', timeout=5).read().decode())")
    return worker.sh(f'python3 -c "{probe}"', check=False).stdout.strip() == "i-0lab"


def container_reads_metadata(worker, manager) -> str:
    """What a container on the worker's default bridge gets from the metadata address: its answer,
    or "refused" (ECONNREFUSED: the guard's REJECT), or what else went wrong. (busybox's nc, not its
    wget: a static busybox wget crashes on a refused connection instead of saying so.)"""
    request = "printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n'"
    result = worker.sh(f"docker run --rm {manager.image} sh -c \"{request} | nc -w 5 169.254.169.254 80\"",
                       check=False)
    if result.returncode == 0 and "200" in result.stdout.split("\n", 1)[0]:
        return result.stdout.rstrip().rsplit("\n", 1)[-1].strip()
    if "refused" in result.stderr:
        return "refused"
    diagnosis = worker.sh("sysctl net.ipv4.ip_forward; iptables -w -S DOCKER-USER; iptables -w -S FORWARD; "
                          "iptables -w -t nat -S POSTROUTING; ip route", check=False).stdout
    return f"failed ({result.returncode}: {result.stdout[-200:]} {result.stderr.strip()[-200:]})\n{diagnosis}"


def test_containers_cannot_reach_the_metadata_service_while_the_host_can(worker, fresh_setup, manager,
                                                                         metadata_server):
    assert host_reads_metadata(worker)
    assert container_reads_metadata(worker, manager) == "refused"
    assert GUARD_RULE in worker.sh("iptables -w -S DOCKER-USER").stdout
    assert "fd00:ec2::254/128" in worker.sh("ip6tables -w -S DOCKER-USER").stdout
    assert worker.sh("systemctl is-enabled gpuswarm-metadata-guard.service").stdout.strip() == "enabled"

    # Without the rule the container does reach it: the check above can fail.
    worker.sh(f"iptables -w -D DOCKER-USER {GUARD_RULE}")
    assert container_reads_metadata(worker, manager) == "i-0lab"
    code, states = worker.status()
    assert code == 1 and states["metadata-guard"] == "needs-change"
    repaired = worker.gsn("setup", "--json", "--only", "metadata-guard", "--config", CONFIG)
    assert repaired.returncode == 0 and json.loads(repaired.stdout)["changed"] == ["metadata-guard"]
    assert container_reads_metadata(worker, manager) == "refused"

    # Docker's restart re-applies it (the unit is wanted by docker.service and ordered after it).
    worker.sh("iptables -w -F DOCKER-USER && ip6tables -w -F DOCKER-USER")
    worker.sh("systemctl restart docker")
    # The unit's restart is a job of its own, queued after Docker's: wait for it, not for a time.
    wait_for("the guard's rule back after Docker's restart",
             lambda: GUARD_RULE in worker.sh("iptables -w -S DOCKER-USER").stdout)
    assert container_reads_metadata(worker, manager) == "refused"
    assert host_reads_metadata(worker)
    code, states = worker.status()
    assert states["metadata-guard"] == "ok", states


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


LABELS_RECORD = "/var/lib/gpuswarm-node/node-labels.json"


def test_labels_removed_on_the_manager_are_repaired_once_the_record_is_due(worker, fresh_setup, manager):
    """setup trusts its record of the node's labels for swarm.labels_recheck (an hour): a label
    removed on the manager by hand is put back by the first setup after that, which asks the
    manager over SSH; a manager that confirms the record renews its time, which is no change."""
    def model_label() -> str | None:
        return (manager.docker.nodes.get(node_id).attrs["Spec"].get("Labels") or {}).get("gpuswarm.gpu.model")

    def setup() -> dict:
        result = worker.gsn("setup", "--json", "--config", CONFIG)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def labels_step(report: dict) -> dict:
        return next(s for s in report["steps"] if s["name"] == "node-labels")

    def detail(report: dict) -> str:
        return labels_step(report)["detail"]

    node_id = worker.node_id()
    model = model_label()
    assert model
    node = manager.docker.nodes.get(node_id)
    spec = node.attrs["Spec"]
    spec["Labels"] = {k: v for k, v in spec["Labels"].items() if k != "gpuswarm.gpu.model"}
    assert node.update(spec)

    # The record is fresh: setup believes it and asks nobody, so the label stays missing.
    worker.sh(f"touch -d '10 minutes ago' {LABELS_RECORD}")
    trusted = setup()
    assert trusted["changed"] == [] and "said at " in detail(trusted), detail(trusted)
    # The time of the manager's answer (the record's), not an age: the text is the same a second later.
    recorded_at = worker.sh(f"date -u -r {LABELS_RECORD} +%Y-%m-%dT%H:%M:%SZ").stdout.strip()
    assert labels_step(trusted)["data"]["labels_confirmed_at"] == recorded_at, trusted
    assert recorded_at in detail(trusted) and detail(setup()) == detail(trusted)
    assert model_label() is None

    # An hour and more: setup asks the manager, which lacks the label, and sets it again.
    worker.sh(f"touch -d '61 minutes ago' {LABELS_RECORD}")
    repaired = setup()
    assert repaired["changed"] == ["node-labels"], repaired
    assert model_label() == model

    # Due again, and the manager agrees: nothing changed, the record's time renewed.
    worker.sh(f"touch -d '2 hours ago' {LABELS_RECORD}")
    confirmed = setup()
    assert confirmed["changed"] == [] and "said at" not in detail(confirmed), detail(confirmed)
    age = float(worker.sh(f"echo $(( $(date +%s) - $(stat -c %Y {LABELS_RECORD}) ))").stdout)
    assert 0 <= age < 60
    assert worker.sh(f"stat -c '%U %a' {LABELS_RECORD}").stdout.split() == ["root", "644"]


# Runs status with subprocess.Popen wrapped to count the processes it starts (every command a
# check runs goes through it), and prints each command line after the report.
COUNT_PROCESSES = """
import subprocess, sys
started = []
_init = subprocess.Popen.__init__
def init(self, args, *a, **k):
    started.append(args if isinstance(args, str) else " ".join(map(str, args)))
    _init(self, args, *a, **k)
subprocess.Popen.__init__ = init
sys.argv = ["gpuswarm-node", *sys.argv[1:]]
from gpuswarm_node import cli
try:
    cli.main()
finally:
    print("\\n".join(["STARTED", *started]), file=sys.stderr)
"""


def test_status_on_a_converged_node_starts_few_processes(worker, fresh_setup):
    """Facts read files where they say the same as a command (dpkg's database, /etc/group,
    /etc/passwd), one `systemctl show` for the units the steps look at and one `iptables -S` per
    family, each once per run: a converged node's status starts the processes listed here and no
    others (and is ok, so each unit's block was read as that unit's)."""
    # As root with no --config: the configuration of the last setup (root's), as the boot unit and
    # cron run it (the quick start's node.toml is the user's, for the sudo that user types).
    result = worker.sh(f"/opt/gpuswarm-node/venv/bin/python -c {shlex.quote(COUNT_PROCESSES)} "
                       "status --json", check=False)
    assert result.returncode == 0, result.stderr
    started = result.stderr.split("STARTED\n", 1)[1].splitlines()
    print(f"\nstatus started {len(started)} processes: {started}")
    show = ("systemctl show --property=LoadState,ActiveState,UnitFileState,MainPID,FragmentPath,DropInPaths,"
            "ExecStart,Environment,EnvironmentFiles docker gpuswarm-node-boot.service gpuswarm-metadata-guard.service "
            "gpuswarm-node-watch.service")
    allowed = {show, "iptables -w -S", "ip6tables -w -S"}
    assert show in started and set(started) <= allowed and len(started) == len(set(started)), started


def watch_records(worker) -> list[dict]:
    """watch's transitions (drains, activations, failures to carry one out) in the run log."""
    lines = worker.sh("cat /var/log/gpuswarm-node/runs.jsonl").stdout.splitlines()
    return [r for r in map(json.loads, lines) if r.get("mode") == "watch"]


def test_watch_drains_the_node_on_a_lost_gpu_and_makes_it_active_again(worker, fresh_setup, manager):
    """The watch service as setup installed it, with the README's configuration (a round every 3 s,
    a fault confirmed in 2 rounds, a clear in 6, transitions 60 s apart): a GPU that falls off the
    bus (the fake NVML's `lost` fault, NVML_ERROR_GPU_IS_LOST) drains the node on the manager
    (the time it took is printed), with the reason in its gpuswarm.health label, and a notebook's task there is shut
    down and waits for a slice; once the GPU answers again the node is made active and the task
    runs there again. Until the fault, the whole module's run so far drained nothing."""
    assert watch_records(worker) == [], "no transition before a fault was injected (no false drain)"
    node_id = worker.node_id()
    service = gpu_service(manager, "gsn-watch", node_id, restart="any")
    faults = "/etc/fake-nvml/faults"
    try:
        wait_for("the notebook's task running", lambda: running_tasks([service]), timeout=120)
        first = running_tasks([service])[0]["ID"]
        worker.machine.run(["sh", "-c", f"cat > {faults}"], input=f"lost {EXPECTED_SLICES[0].split('::')[0]}\n")

        def spec() -> dict:
            return manager.docker.nodes.get(node_id).attrs["Spec"]

        with timed("watch: GPU lost until the node is drained") as t:
            wait_for("the node drained by watch", lambda: spec()["Availability"] == "drain", timeout=30, interval=0.5)
        # A figure, not an assertion: on a quiet machine two rounds, so about 3 to 6 s.
        print(f"\nwatch drained the node {t.seconds:.1f} s after the fault")
        # The label follows the drain, in the same transition (a second call to the manager).
        wait_for("the health label", lambda: spec()["Labels"].get("gpuswarm.health") == "gpu-lost", timeout=30)
        [drain] = watch_records(worker)
        assert (drain["before"], drain["after"], drain["reason"], drain["error"]) == ("ok", "fault", "gpu-lost", None)
        assert f"drained node {node_id}" in drain["actions"]
        report = json.loads(worker.gsn("status", "--json", "--config", CONFIG).stdout)
        data = next(step for step in report["steps"] if step["name"] == "watch")["data"]
        assert (data["watch_verdict"], data["watch_reason"]) == ("fault", "gpu-lost"), data
        wait_for("the task shut down", lambda: not running_tasks([service]), timeout=60)
        assert next(t for t in service.tasks() if t["ID"] == first)["DesiredState"] == "shutdown"

        worker.sh(f"rm {faults}")
        # min_transition_interval (60 s) after the drain, then clear_rounds (6 x 3 s) at most.
        wait_for("the node active again", lambda: spec()["Availability"] == "active", timeout=120, interval=1)
        wait_for("the health label ok", lambda: spec()["Labels"].get("gpuswarm.health") == "ok", timeout=30)
        _drain, activate = watch_records(worker)
        assert (activate["before"], activate["after"], activate["reason"]) == ("fault", "ok", "ok")
        assert f"made node {node_id} active again" in activate["actions"]
        wait_for("the notebook running on the node again", lambda: running_tasks([service]), timeout=120)
    finally:
        worker.sh(f"rm -f {faults}")
        service.remove()
        wait_for("the tasks to stop", lambda: worker.sh("docker ps -q").stdout.strip() == "", timeout=120)
    assert worker.status()[0] == 0


# --- 4. break and repair ----------------------------------------------------------------------

BREAKS = {
    "docker-daemon": "python3 -c \"import json; p='/etc/docker/daemon.json'; d=json.load(open(p)); "
                     "d.pop('node-generic-resources'); json.dump(d, open(p, 'w'))\"",
    "tmpfs": f"umount {TMPFS}",
    "swarm-join": "docker swarm leave --force",
    "image": "docker image rm --force {image}",
    "docker-group": f"gpasswd --delete {USER} docker",
    "metadata-guard": f"iptables -w -D DOCKER-USER {GUARD_RULE}",
}


def break_and_repair(worker, manager, broken: list[str]) -> None:
    for step in broken:
        worker.sh(BREAKS[step].format(image=manager.image))
    # A node that left the swarm rejoins as a new node, which the manager has no labels for yet.
    expected = set(broken) | ({"node-labels"} if "swarm-join" in broken else set())
    code, states = worker.status()
    assert code == 1
    assert {name for name, state in states.items() if state not in ("ok", "skipped")} == expected, \
        worker.gsn("status", "--json", "--config", CONFIG).stdout  # the details, should it not be
    result = worker.gsn("setup", "--json", "--config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    changed = set(json.loads(result.stdout)["changed"])
    if "docker-daemon" in broken:
        # Its Docker restart restarts the guard's unit too (PartOf=docker.service), which puts the
        # rules back by itself; when the metadata-guard check comes before that job has ended, the
        # step puts them back. Either way the status below finds them.
        expected.discard("metadata-guard")
        changed.discard("metadata-guard")
    assert sorted(changed) == sorted(expected)
    code, states = worker.status()
    assert code == 0, states


@pytest.mark.parametrize("step", list(BREAKS))
def test_break_one_step_and_repair(worker, fresh_setup, manager, step):
    break_and_repair(worker, manager, [step])


def test_break_everything_at_once_and_repair(worker, fresh_setup, manager):
    break_and_repair(worker, manager, list(BREAKS))
    assert ready_node(manager)


# --- 4b. restarts on a live node -------------------------------------------------------------

BUSY = "trap 'exit 0' TERM; sleep 3600 & wait"


def test_running_containers_block_a_restart_unless_allowed(worker, fresh_setup, manager):
    worker.sh(f"docker run -d --name busy-notebook {manager.image} sh -c {shlex.quote(BUSY)}")
    try:
        worker.sh(BREAKS["docker-daemon"])
        pid = worker.docker_pid()
        refused = worker.gsn("setup", "--json", "--config", CONFIG)
        assert refused.returncode == 1
        states = {s["name"]: s for s in json.loads(refused.stdout)["steps"]}
        assert states["docker-daemon"]["state"] == "blocked"
        assert "would stop 1 running container(s): busy-notebook" in states["docker-daemon"]["detail"]
        assert worker.docker_pid() == pid
        assert worker.sh("docker inspect --format '{{.State.Running}}' busy-notebook").stdout.strip() == "true"

        allowed = worker.gsn("setup", "--allow-restart", "--json", "--config", CONFIG)
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert json.loads(allowed.stdout)["changed"] == ["docker-daemon"]
        assert worker.docker_pid() != pid
    finally:
        worker.sh("docker rm --force busy-notebook", check=False)
    assert worker.status()[0] == 0


def test_drain_moves_tasks_off_around_a_restart(worker, fresh_setup, manager):
    node_id = worker.node_id()
    # A notebook server is restarted by Swarm wherever it can run: that is what a drain relies on.
    service = gpu_service(manager, "gsn-drain", node_id, restart="any")
    try:
        wait_for("the task running", lambda: running_tasks([service]), timeout=120)
        first = running_tasks([service])[0]["ID"]
        worker.sh(BREAKS["docker-daemon"])
        result = worker.gsn("setup", "--drain", "--json", "--config", CONFIG)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["changed"] == ["docker-daemon"]
        node = manager.docker.nodes.get(node_id).attrs
        assert node["Spec"]["Availability"] == "active"  # made active again after the restart
        # The drained task was shut down by the manager (not killed by the restart), and a new one
        # runs on the node again.
        old = next(t for t in service.tasks() if t["ID"] == first)
        assert old["DesiredState"] == "shutdown"
        wait_for("a new task running", lambda: [t for t in running_tasks([service]) if t["ID"] != first],
                 timeout=120)
    finally:
        service.remove()
        wait_for("the tasks to stop", lambda: worker.sh("docker ps -q").stdout.strip() == "", timeout=120)
    assert worker.status()[0] == 0


def test_an_unhealthy_restart_restores_the_previous_daemon_json(worker, fresh_setup):
    broken = "/etc/systemd/system/docker.service.d/zz-broken.conf"
    worker.sh(BREAKS["docker-daemon"])
    previous = worker.machine.read_file("/etc/docker/daemon.json")
    worker.machine.run(["sh", "-c", f"mkdir -p $(dirname {broken}) && cat > {broken} && systemctl daemon-reload"],
                       input="[Service]\nExecStartPre=/bin/false\n")
    try:
        result = worker.gsn("setup", "--config", CONFIG)
        assert result.returncode == 1
        # The report names the step, the cause, what changed, and where the backups are.
        assert "docker-daemon failed: Docker did not come up healthy" in result.stdout
        assert "the previous file was restored" in result.stdout
        assert "backup of /etc/docker/daemon.json: /var/backups/gpuswarm-node/" in result.stdout
        assert worker.machine.read_file("/etc/docker/daemon.json") == previous
    finally:
        worker.sh(f"rm -f {broken} && systemctl daemon-reload && systemctl restart docker")
    repaired = worker.gsn("setup", "--config", CONFIG)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert worker.status()[0] == 0


# --- 5. hostile input on the machine ----------------------------------------------------------

def test_daemon_json_that_is_not_json_is_left_alone(worker, fresh_setup):
    good = worker.machine.read_file("/etc/docker/daemon.json")
    bad = good.replace("{", "{ oops", 1)
    worker.machine.run(["sh", "-c", "cat > /etc/docker/daemon.json"], input=bad)
    try:
        result = worker.gsn("setup", "--json", "--config", CONFIG)
        assert result.returncode == 1
        detail = {s["name"]: s["detail"] for s in json.loads(result.stdout)["steps"]}["docker-daemon"]
        assert "/etc/docker/daemon.json is not valid JSON" in detail
        assert worker.machine.read_file("/etc/docker/daemon.json") == bad
        assert worker.sh("systemctl is-active docker").stdout.strip() == "active"
    finally:
        worker.machine.run(["sh", "-c", "cat > /etc/docker/daemon.json"], input=good)


def test_malformed_config_is_a_usage_error(worker, fresh_setup):
    worker.machine.run(["sh", "-c", f"cat > {HOME}/bad.toml"], input='[swarm]\nssh_port = "ssh"\n')
    result = worker.gsn("setup", "--config", f"{HOME}/bad.toml")
    assert result.returncode == 2
    assert "[swarm] ssh_port" in result.stderr and "Traceback" not in result.stderr


# Another apt (cloud-init, unattended-upgrades) holding one of its locks, as apt and dpkg take
# them: an fcntl write lock on the file, for `seconds`.
HOLD_LOCK = ("import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.lockf(f, fcntl.LOCK_EX); "
             "time.sleep(float(sys.argv[2]))")
TRY_LOCK = "import fcntl, sys; f = open(sys.argv[1], 'w'); fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"


@contextlib.contextmanager
def another_apt_holds(worker, lock: str, seconds: float, unit: str):
    """`lock` held by a process of its own (a transient unit) while the block runs, then released."""
    worker.sh(f"systemd-run --unit {unit} python3 -c {shlex.quote(HOLD_LOCK)} {lock} {seconds}")
    try:
        wait_for(f"{lock} held", lambda: worker.sh(f"python3 -c {shlex.quote(TRY_LOCK)} {lock}",
                                                   check=False).returncode, timeout=30)
        yield
    finally:
        worker.sh(f"systemctl stop {unit}", check=False)


def test_a_held_dpkg_lock_is_waited_for_then_fails_clearly(worker, fresh_setup):
    worker.sh("apt-get remove --yes nvidia-container-toolkit", timeout=300)
    try:
        with another_apt_holds(worker, "/var/lib/dpkg/lock-frontend", 600, "gsn-holds-dpkg"):
            with timed("setup against a held dpkg lock (apt.lock_timeout = 5 s)") as t:
                result = worker.gsn("setup", "--json", "--set", "apt.lock_timeout=5", "--config", CONFIG)
    finally:
        # Repaired here, so that a failed assertion below never leaves later tests a broken node.
        repaired = worker.gsn("setup", "--json", "--config", CONFIG)
    assert result.returncode == 1
    detail = {s["name"]: s["detail"] for s in json.loads(result.stdout)["steps"]}["nvidia-toolkit"]
    assert "dpkg frontend lock (/var/lib/dpkg/lock-frontend)" in detail
    assert t.seconds >= 5  # it waited, within the bound
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "nvidia-toolkit" in json.loads(repaired.stdout)["changed"]


def test_apt_lists_held_on_a_busy_first_boot_are_waited_for(worker, fresh_setup):
    # cloud-init or unattended-upgrades refreshing the package lists: apt-get update alone would
    # fail at once (rc 100), since apt waits for dpkg's locks only.
    worker.sh("apt-get remove --yes nvidia-container-toolkit", timeout=300)
    with another_apt_holds(worker, "/var/lib/apt/lists/lock", 12, "gsn-holds-lists"):
        with timed("setup while another apt holds the package lists for 12 s") as t:
            result = worker.as_user(f"sudo ./setup.sh --json --config {CONFIG}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "nvidia-toolkit" in json.loads(result.stdout)["changed"]
    assert t.seconds >= 5  # it waited for the lock instead of failing


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
    # The lab machine's netns outlives its reboot, and with it any rule; without ours, only the
    # guard's unit at boot can make status ok again.
    worker.sh(f"iptables -w -D DOCKER-USER {GUARD_RULE}")
    worker.machine.reboot()
    # The boot unit runs setup again after the reboot (and the guard's unit puts the rule back
    # when Docker starts): first its setup ends, and succeeds, before the next test takes the run
    # lock. Its InvocationID is empty until it was started in this boot.
    show = "systemctl show -p InvocationID -p ActiveState -p Result gpuswarm-node-boot.service"
    props = wait_for("the boot unit's setup to end",
                     lambda: (lambda p: p if p.get("InvocationID") and p["ActiveState"] in ("inactive", "failed")
                              else None)(dict(kv.split("=", 1) for kv in worker.sh(show).stdout.splitlines())),
                     timeout=600)

    def journal() -> str:
        return worker.sh("journalctl -b -u gpuswarm-node-boot.service --no-pager | tail -n 40").stdout
    assert props["Result"] == "success", journal()
    code, states = wait_for("status ok after the reboot",
                            lambda: (lambda r: r if r[0] == 0 else None)(worker.status()), timeout=120,
                            explain=lambda: f"{worker.status()[1]}; the boot unit's setup: {journal()}")
    assert worker.sh(f"findmnt -no FSTYPE {TMPFS}").stdout.strip() == "tmpfs"
    assert GUARD_RULE in worker.sh("iptables -w -S DOCKER-USER").stdout
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


# --- 8. what real hosts bring: Docker's own rules, decided before anything changes --------------

DAEMON_JSON = "/etc/docker/daemon.json"
DROPIN_DIR = "/etc/systemd/system/docker.service.d"


def daemon_json(worker) -> dict:
    return json.loads(worker.machine.read_file(DAEMON_JSON))


def step_of(result, name: str) -> dict:
    return {s["name"]: s for s in json.loads(result.stdout)["steps"]}[name]


def test_live_restore_is_removed_before_the_join(worker, fresh_setup, manager):
    # After reset the node is out of the swarm, as a hardened host would be before its first setup.
    assert worker.sh("docker info --format '{{.Swarm.LocalNodeState}}'").stdout.strip() == "inactive"
    write_file(worker, DAEMON_JSON, json.dumps({**PRESEEDED_DAEMON_JSON, "live-restore": True}, indent=2))
    worker.sh("systemctl restart docker")
    assert worker.sh("docker info --format '{{.LiveRestoreEnabled}}'").stdout.strip() == "true"
    plan = worker.gsn("setup", "--dry-run", "--json", "--config", CONFIG)
    assert "live-restore" in step_of(plan, "docker-daemon")["detail"]  # the plan says it goes
    result = worker.as_user(f"sudo ./setup.sh --json --config {CONFIG}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "live-restore" not in daemon_json(worker)
    assert worker.sh("docker info --format '{{.LiveRestoreEnabled}}'").stdout.strip() == "false"
    assert worker.sh("docker info --format '{{.Swarm.LocalNodeState}}'").stdout.strip() == "active"
    assert wait_for("the worker Ready again", lambda: ready_node(manager))


def refused_before_any_change(worker, *fragments: str) -> None:
    pid, before = worker.docker_pid(), worker.machine.read_file(DAEMON_JSON)
    result = worker.gsn("setup", "--json", "--config", CONFIG)
    assert result.returncode == 1, result.stdout + result.stderr
    step = step_of(result, "docker-daemon")
    assert step["state"] == "blocked"
    for fragment in fragments:
        assert fragment in step["detail"], step["detail"]
    assert worker.docker_pid() == pid and worker.machine.read_file(DAEMON_JSON) == before
    assert worker.sh(f"test -e {DROPIN_DIR}/gpuswarm-node.conf", check=False).returncode != 0


def test_an_operator_drop_in_that_sets_the_default_runtime_is_refused(worker, fresh_setup):
    dropin = f"{DROPIN_DIR}/50-operator.conf"
    write_file(worker, dropin, "[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd -H fd:// "
                               "--containerd=/run/containerd/containerd.sock --default-runtime=runc\n")
    worker.sh("systemctl daemon-reload")
    try:
        refused_before_any_change(worker, "50-operator.conf", "--default-runtime=runc")
    finally:
        worker.sh(f"rm -f {dropin} && systemctl daemon-reload")
    assert worker.status()[0] == 0


def test_docker_opts_that_set_the_default_runtime_are_refused(worker, fresh_setup):
    original = worker.sh("cat /etc/default/docker 2>/dev/null || true").stdout
    write_file(worker, "/etc/default/docker", original + 'DOCKER_OPTS="--add-runtime=nvidia=/usr/bin/'
                                                           'nvidia-container-runtime --default-runtime=nvidia"\n')
    try:
        refused_before_any_change(worker, "/etc/default/docker", "--default-runtime=nvidia")
    finally:
        write_file(worker, "/etc/default/docker", original)
    assert worker.status()[0] == 0


def test_the_tools_drop_in_keeps_every_argument_as_systemd_reads_it(worker, fresh_setup):
    label = f"{DROPIN_DIR}/10-label.conf"
    write_file(worker, label, "[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd -H fd:// \\\n"
                              "    --containerd=/run/containerd/containerd.sock \\\n"
                              '    --label "team=ml research" $DOCKER_OPTS\n')
    worker.sh("systemctl daemon-reload")
    settings = daemon_json(worker)
    write_file(worker, DAEMON_JSON, json.dumps(
        {**settings, "hosts": ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"]}, indent=2))
    try:
        result = worker.gsn("setup", "--json", "--config", CONFIG)
        assert result.returncode == 0, result.stdout + result.stderr
        pid = worker.docker_pid()
        argv = worker.machine.read_file(f"/proc/{pid}/cmdline").split("\0")
        assert "-H" not in argv and argv[argv.index("--label") + 1] == "team=ml research", argv
        assert "team=ml research" in json.loads(worker.sh("docker info --format '{{json .Labels}}'").stdout)
        again = worker.gsn("setup", "--json", "--config", CONFIG)
        assert again.returncode == 0 and json.loads(again.stdout)["changed"] == []
        assert worker.docker_pid() == pid
    finally:
        worker.sh(f"rm -f {label} && systemctl daemon-reload")
        write_file(worker, DAEMON_JSON, json.dumps(settings, indent=2))
        # Back to `-H fd://`: dockerd must get a socket docker.socket re-created, since the one it
        # made itself while "hosts" was set went with it (restart.restart_docker).
        repaired = worker.gsn("setup", "--json", "--config", CONFIG)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert worker.sh(f"test -e {DROPIN_DIR}/gpuswarm-node.conf", check=False).returncode != 0
    assert worker.status()[0] == 0


# --- 9. uninstall: the last thing this machine does --------------------------------------------

def test_reset_purge_uninstalls_the_tool_and_keeps_what_is_not_its_own(worker, fresh_setup):
    kept = "/etc/gpuswarm-node/id_ed25519 /etc/gpuswarm-node/known_hosts /etc/gpuswarm-node/registry-ca.crt"
    sums = worker.sh(f"sha256sum {kept}").stdout
    plan = worker.gsn("reset", "--purge", "--config", CONFIG)
    assert plan.returncode == 0 and "reset --yes --purge" in plan.stdout, plan.stdout + plan.stderr
    result = worker.gsn("reset", "--yes", "--purge", "--config", CONFIG)
    # It removes the very environment it runs from: no traceback as that goes.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "/var/backups/gpuswarm-node" in result.stdout and "packages" in result.stdout
    for path in ("/opt/gpuswarm-node", "/usr/local/bin/gpuswarm-node", "/usr/local/lib/gpuswarm-node",
                 "/etc/gpuswarm-node/slices.json", "/var/lib/gpuswarm-node", "/var/log/gpuswarm-node",
                 "/run/gpuswarm-node.lock", "/usr/share/bash-completion/completions/gpuswarm-node"):
        assert worker.sh(f"test -e {path} || test -L {path}", check=False).returncode != 0, path
    assert worker.sh("command -v gpuswarm-node", check=False).returncode != 0
    assert worker.sh(f"sha256sum {kept}").stdout == sums
    assert worker.sh("ls -A /var/backups/gpuswarm-node").stdout.strip()
    assert worker.sh("dpkg-query -W -f='${Status}' docker.io nvidia-container-toolkit").stdout.count(
        "install ok installed") == 2
    assert "gpuswarm" not in worker.machine.read_file(DAEMON_JSON)
    assert worker.sh("docker info --format '{{.ServerVersion}}'").stdout.strip()
    # setup.sh brings it back.
    again = worker.as_user("sudo ./setup.sh --install-only")
    assert again.returncode == 0, again.stderr
    assert worker.sh("gpuswarm-node version").returncode == 0

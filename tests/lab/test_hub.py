"""The whole system with its real client: JupyterHub's SwarmSpawner spawns notebook servers on two
GPU workers that `sudo ./setup.sh` made, through the hub's REST API.

The lab: the manager (swarm, sshd, TLS registry) runs the hub (lab/hub.py) with the configuration
`gpuswarm-node hub-config` prints, verbatim, plus the lab's commented lines; two fresh Debian 12
machines, two fake GPUs each and one slice per GPU (four slices, kept small: each server is a real
jupyterhub-singleuser), pulled the notebook image in the tool's `image` step. Everything is
asserted on real state: the hub's API, the manager's services and tasks, the stand-in NVIDIA
runtime's record of each container's create, and an HTTP answer from each server through the
proxy. Each server also sees the shared filesystem as hub-config's `volumes` bind it (a local
directory per worker here: the lab's kernel has no NFS), read-only and read-write. The checks can
fail: a slice map that sends a slice to the wrong GPU fails them (the last test but one), and a
hub asking for a kind no worker advertises spawns nothing (the last).

What users see when `gpuswarm-node leave` takes a worker with running servers away (the last test
but one): Swarm stops their tasks there and starts them again on a free slice of another worker;
the hub does not notice (a task that runs or waits is a running server to SwarmSpawner's poll) and
keeps the server as ready, and the proxy reaches the new task at the same service name. The user's
server process is new: open kernels and anything not on a shared filesystem are gone. With no free
slice left anywhere, the task waits as pending and the user's requests fail until one frees.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuswarm_node.steps.docker_daemon import SLICE_MAP

from . import fake_nvml, toolkit_deb
from ..conftest import private_state
from .hub import LabHub, push_notebook_image
from .util import timed, wait_for
from .worker import CONFIG, node_toml, provisioned_worker

REPO = Path(__file__).resolve().parents[2]
WORKERS = {
    "gsn-h1": ("198.18.0.31", [fake_nvml.FakeGpu("GPU-a1a1a1a1-0000-4000-8000-000000000001", "NVIDIA L4", 23034),
                               fake_nvml.FakeGpu("GPU-a2a2a2a2-0000-4000-8000-000000000002", "NVIDIA L4", 23034)]),
    "gsn-h2": ("198.18.0.32", [fake_nvml.FakeGpu("GPU-b1b1b1b1-0000-4000-8000-000000000003", "NVIDIA L4", 23034),
                               fake_nvml.FakeGpu("GPU-b2b2b2b2-0000-4000-8000-000000000004", "NVIDIA L4", 23034)]),
}
SLICES_PER_GPU = 1
# Worker name -> its swarm node id (from the worker's own Docker), filled once both have joined.
NODE_IDS: dict[str, str] = {}
SLICES = {(name, f"{gpu.uuid}::1") for name, (_a, gpus) in WORKERS.items() for gpu in gpus}
# Short enough for the lab; the default (60 s) is what a site gets.
SLICE_WAIT = 20
SPAWN_TIMEOUT = 240
# The shared filesystem as the hub's node.toml declares it. The lab's kernel has no NFS (README,
# "The hub side"), so the workers' node.toml leaves [[shared.mounts]] out (shared-fs is skipped
# there) and each worker gets a local directory at each path instead; the servers bind them as
# the `volumes` hub-config prints.
SHARED = {"/srv/shared/tutorial": "ro", "/srv/shared/data": "rw"}
SHARED_TOML = """
[[shared.mounts]]
source = "198.18.0.1:/tutorial"
path = "/srv/shared/tutorial"
options = "ro"

[[shared.mounts]]
source = "198.18.0.1:/data"
path = "/srv/shared/data"
"""


@pytest.fixture(scope="module")
def notebook_image(manager):
    with timed("hub: notebook image import and push"):
        return push_notebook_image(manager)


@pytest.fixture(scope="module")
def workers(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir, notebook_image):
    with contextlib.ExitStack() as stack:
        made = {}
        for i, (name, (address, gpus)) in enumerate(WORKERS.items()):
            made[name] = stack.enter_context(provisioned_worker(
                network, manager, lab_tmp, toolkit_repo, nvml_lib_dir, name=name, address=address, gpus=gpus,
                slices_per_gpu=SLICES_PER_GPU, image=notebook_image, first=i == 0))
        with timed("hub: two workers' sudo ./setup.sh, at once"), concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda w: w.as_user(f"sudo ./setup.sh --config {CONFIG}"), made.values()))
        for result in results:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        for name, worker in made.items():
            NODE_IDS[name] = worker.sh("docker info --format '{{.Swarm.NodeID}}'").stdout.strip()
        for worker in made.values():  # lab: local directories where the shares would be mounted
            worker.machine.run(["sh", "-c", "mkdir -p /srv/shared/tutorial /srv/shared/data && "
                                "echo welcome > /srv/shared/tutorial/README.txt && chmod 1777 /srv/shared/data"])
        # What the manager records as each worker's address (asserted nowhere: diagnostics only).
        print({n["ID"]: n["Status"].get("Addr") for n in manager.nodes()}, NODE_IDS)
        yield made


def hub_config(manager, lab_tmp, image: str, *args: str) -> str:
    """`gpuswarm-node hub-config` for the workers' own node.toml, as the hub's admin runs it."""
    config = lab_tmp / "hub-node.toml"
    config.write_text(node_toml(manager, slices_per_gpu=SLICES_PER_GPU, image=image) + SHARED_TOML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_"))}
    result = subprocess.run([*private_state(lab_tmp / "hub-config-state"), sys.executable, "-m", "gpuswarm_node.cli",
                             "hub-config", "--config", str(config), "--slice-wait", str(SLICE_WAIT), *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def hub_status(manager, lab_tmp) -> tuple[int, dict]:
    """`gpuswarm-node hub status --json`, as the hub's admin runs it on the manager: its exit code
    and its report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_"))}
    env["DOCKER_HOST"] = manager.dockerd.url
    result = subprocess.run([*private_state(lab_tmp / "hub-status-state"), sys.executable, "-m", "gpuswarm_node.cli",
                             "hub", "status", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1) and not result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def hub(manager, workers, lab_tmp, notebook_image):
    text = hub_config(manager, lab_tmp, notebook_image)
    with contextlib.ExitStack() as stack:
        with timed("hub: start"):
            lab_hub = stack.enter_context(LabHub(manager, lab_tmp / "hub", text))
        assert lab_hub.config_path.read_text().startswith(text)  # verbatim, the lab's lines after it
        yield lab_hub


# --- what the tests read -------------------------------------------------------------------------

def spawn(hub: LabHub, user: str) -> int:
    status, _ = hub.api("POST", f"/users/{user}")
    assert status in (201, 409), status  # created, or there already
    status, body = hub.api("POST", f"/users/{user}/server")
    assert status in (201, 202), (status, body)
    return status


def server(hub: LabHub, user: str) -> dict | None:
    status, body = hub.api("GET", f"/users/{user}")
    if status == 404:  # a user the hub never had has no server
        return None
    assert status == 200, (status, body)
    return body["servers"].get("")


def wait_ready(hub: LabHub, user: str, manager=None) -> dict:
    def explain() -> str:
        tasks = "" if manager is None else "; its tasks: " + repr([
            (t["Status"]["State"], t["Status"].get("Err", "")) for s in
            manager.docker.services.list(filters={"name": f"jupyter-{user}"}) for t in s.tasks()])
        hub_lines = [line for line in hub.logs().splitlines() if "GET /hub/api/users/" not in line]
        return f"the hub: {server(hub, user)}{tasks}; its log: " + "\n".join(hub_lines[-30:])

    return wait_for(f"{user}'s server ready per the hub", lambda: (server(hub, user) or {}).get("ready") and
                    server(hub, user), timeout=SPAWN_TIMEOUT, explain=explain)


def answers(hub: LabHub, user: str) -> dict:
    """The user's server's own status (jupyter_server's /api/status), through the proxy."""
    status, body = hub.request("GET", f"/user/{user}/api/status")
    assert status == 200, (status, body)
    return body


def task_of(manager, user: str) -> dict | None:
    """The running task of the user's service, or None."""
    services = manager.docker.services.list(filters={"name": f"jupyter-{user}"})
    tasks = [t for s in services for t in s.tasks() if t["Status"]["State"] == "running"]
    assert len(tasks) <= 1, tasks
    return tasks[0] if tasks else None


def placement(manager, workers, task: dict) -> tuple[str, str]:
    """(worker name, slice) of a task: its node from the manager, the slice Swarm gave its
    container (DOCKER_RESOURCE_GPU) from what the worker's runtime was asked."""
    [name] = [n for n, node_id in NODE_IDS.items() if node_id == task["NodeID"]]
    call = runtime_create(workers[name], task["Status"]["ContainerStatus"]["ContainerID"])
    return name, call["docker_resources"]["DOCKER_RESOURCE_GPU"]


def runtime_create(worker, container_id: str) -> dict:
    """What the stand-in nvidia-container-runtime recorded for the container's create."""
    calls = toolkit_deb.read_calls(worker.machine.read_file(toolkit_deb.CALL_LOG))
    [call] = [c for c in calls if c.get("command") == "create" and c.get("id") == container_id]
    return call


def assert_on_its_slice(manager, workers, user: str) -> tuple[str, str]:
    task = task_of(manager, user)
    assert task, f"{user} has no running task"
    name, slice_id = placement(manager, workers, task)
    call = runtime_create(workers[name], task["Status"]["ContainerStatus"]["ContainerID"])
    gpu = slice_id.split("::")[0]
    assert call["docker_resources"] == {"DOCKER_RESOURCE_GPU": slice_id}
    assert call["nvidia_visible_devices"] == gpu  # exactly its slice's GPU, none other
    assert call["hook_devices"] == [gpu]
    return name, slice_id


def assert_sees_the_shared_filesystem(workers, name: str, task: dict) -> None:
    """The server's container reads the read-only share and cannot write it, and writes the
    read-write one: what hub-config's volumes say, checked inside the container."""
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    worker = workers[name]
    assert worker.sh(f"docker exec {cid} cat /srv/shared/tutorial/README.txt").stdout == "welcome\n"
    assert worker.sh(f"docker exec {cid} touch /srv/shared/tutorial/x", check=False).returncode != 0
    assert worker.sh(f"docker exec {cid} sh -c 'echo $HOSTNAME > /srv/shared/data/$HOSTNAME'").returncode == 0


def running_gpu_containers(workers) -> dict[str, list[str]]:
    """Per worker, DOCKER_RESOURCE_GPU of every running container ("" for one without)."""
    found = {}
    for name, worker in workers.items():
        ids = worker.sh("docker ps -q").stdout.split()
        found[name] = []
        for cid in ids:
            env = json.loads(worker.sh(f"docker inspect --format '{{{{json .Config.Env}}}}' {cid}").stdout)
            found[name] += [next((e.split("=", 1)[1] for e in env if e.startswith("DOCKER_RESOURCE_GPU=")), "")]
    return found


USERS = ["ada", "bob", "cyd", "dee"]
EXTRA = "eve"


# --- the scenarios -------------------------------------------------------------------------------

def test_users_fill_every_slice_each_on_its_own(hub, workers, manager):
    placed = {}
    for user in USERS:
        spawn(hub, user)
        wait_ready(hub, user)
        assert answers(hub, user)["started"]
        placed[user] = assert_on_its_slice(manager, workers, user)
        assert_sees_the_shared_filesystem(workers, placed[user][0], task_of(manager, user))
        if len(placed) == 2:  # Swarm spreads: the first two are on different workers
            assert placed[USERS[0]][0] != placed[USERS[1]][0], placed
    assert set(placed.values()) == SLICES, placed  # every slice, each once: all GPUs, both workers


def test_one_user_more_than_slices_is_refused_and_nothing_runs_without_a_slice(hub, workers, manager):
    spawn(hub, EXTRA)
    events = hub.progress(EXTRA, timeout=SLICE_WAIT + 120)
    assert events[-1].get("failed"), events
    message = events[-1]["message"]
    assert "no GPU slice is free" in message and "gpu" in message and "insufficient resources" in message, message
    wait_for("the hub to drop the failed server", lambda: server(hub, EXTRA) is None)
    assert not manager.docker.services.list(filters={"name": f"jupyter-{EXTRA}"})
    running = running_gpu_containers(workers)
    assert "" not in sum(running.values(), []), running
    assert sorted(s for r in running.values() for s in r) == sorted(s for _n, s in SLICES)


def test_a_stopped_server_frees_its_slice_for_the_waiting_user(hub, workers, manager, lab_tmp):
    freed = placement(manager, workers, task_of(manager, USERS[0]))
    spawn(hub, EXTRA)

    def pending():
        services = manager.docker.services.list(filters={"name": f"jupyter-{EXTRA}"})
        return [t for s in services for t in s.tasks() if t["Status"]["State"] == "pending"]

    wait_for(f"{EXTRA}'s task waiting for a slice", pending, timeout=60)
    # The operator's view: every slice of both workers in use, each by its user's server, and the
    # extra user's server waiting for lack of one, with Swarm's reason; a new user would wait (1).
    code, fleet = hub_status(manager, lab_tmp)
    workers_seen = {w["hostname"]: w for w in fleet["workers"] if w["role"] == "worker"}
    assert code == 1 and fleet["ok"] is False and fleet["free_slices"] == 0, fleet
    assert set(workers_seen) == set(WORKERS), fleet
    for name, seen in workers_seen.items():
        assert seen["state"] == "ready" and seen["availability"] == "active", seen
        assert seen["slices"] == {"total": 2, "used": 2, "free": 0} and seen["gpu_model"] == "NVIDIA-L4", seen
        assert len(seen["servers"]) == 2, seen
    assert sorted(s for w in workers_seen.values() for s in w["servers"]) == sorted(
        f"jupyter-{u}" for u in USERS if task_of(manager, u)), fleet
    [waiting] = fleet["pending"]
    assert waiting["service"] == f"jupyter-{EXTRA}" and "insufficient resources" in waiting["reason"], waiting
    status, _ = hub.api("DELETE", f"/users/{USERS[0]}/server")
    assert status in (202, 204), status
    wait_ready(hub, EXTRA)
    assert answers(hub, EXTRA)["started"]
    assert assert_on_its_slice(manager, workers, EXTRA) == freed
    assert server(hub, USERS[0]) is None and task_of(manager, USERS[0]) is None


def test_leave_moves_running_servers_to_another_worker(hub, workers, manager, lab_tmp):
    running = [u for u in USERS[1:] + [EXTRA] if task_of(manager, u)]
    on = {u: placement(manager, workers, task_of(manager, u))[0] for u in running}
    # One server per worker, so the other worker has a slice free for the one that moves.
    keep = {name: next(u for u in running if on[u] == name) for name in WORKERS}
    for user in running:
        if user not in keep.values():
            assert hub.api("DELETE", f"/users/{user}/server")[0] in (202, 204)
            wait_for(f"{user}'s task gone", lambda: task_of(manager, user) is None, timeout=120)
    leaving, staying = "gsn-h2", "gsn-h1"
    mover = keep[leaving]
    before = answers(hub, mover)["started"]

    result = workers[leaving].gsn("leave", "--config", CONFIG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Swarm moves the task to a free slice of the other worker while the hub polls every second
    # (the lab's poll_interval): the hub keeps the server (hub-config's poll), and the proxy
    # reaches the moved task at the same name.
    def moved() -> bool:
        current = server(hub, mover)
        assert current is not None, f"the hub marked {mover}'s server stopped during the move: {hub.logs()}"
        return bool(current.get("ready") and _status_or_none(hub, mover))

    wait_for(f"{mover}'s server moved", moved, timeout=180)
    name, _slice = wait_for(f"{mover}'s task running on {staying}",
                            lambda: task_of(manager, mover) and assert_on_its_slice(manager, workers, mover),
                            timeout=120)
    assert name == staying
    # A new server process, reached through the proxy at the same name.
    after = wait_for(f"{mover}'s server answering again", lambda: _status_or_none(hub, mover), timeout=120)
    assert after["started"] != before
    assert NODE_IDS[leaving] not in {n["ID"] for n in manager.nodes()}  # left and removed from the manager
    # The operator's view after the leave: one worker, holding both kept servers (the moved one
    # too) on its two slices, so a new user would wait (1).
    code, fleet = hub_status(manager, lab_tmp)
    [seen] = [w for w in fleet["workers"] if w["role"] == "worker"]
    assert seen["hostname"] == staying and seen["servers"] == sorted(f"jupyter-{u}" for u in keep.values()), fleet
    assert code == 1 and seen["slices"] == {"total": 2, "used": 2, "free": 0} and fleet["down"] == [], fleet


def test_a_moved_server_that_finds_no_slice_is_stopped_after_slice_wait(hub, workers, manager, lab_tmp):
    """The last worker drained while it holds every server: Swarm moves their tasks, which wait
    for a slice no worker has. The hub keeps each server as long as a start would wait (SLICE_WAIT,
    hub-config's --slice-wait), then stops it, which removes its service (hub-config's poll says
    it ended), instead of showing it running while the proxy answers 503; nothing is left pending."""
    staying = "gsn-h1"
    users = [u for u in USERS + [EXTRA] if server(hub, u)]
    assert users, "the servers kept through the leave"
    node = manager.docker.nodes.get(NODE_IDS[staying])
    spec = dict(node.attrs["Spec"], Availability="drain")
    node.update(spec)
    drained = time.monotonic()
    try:
        # The operator's view meanwhile: the worker drained, each moved server waiting for a slice
        # with Swarm's reason, and no room for a new user (exit 1).
        def waiting() -> tuple[int, dict] | None:
            code, fleet = hub_status(manager, lab_tmp)
            pending = {p["service"] for p in fleet["pending"]}
            return (code, fleet) if pending >= {f"jupyter-{u}" for u in users} else None

        code, fleet = wait_for("hub status showing the moved servers waiting", waiting, timeout=SLICE_WAIT - 5)
        [seen] = [w for w in fleet["workers"] if w["role"] == "worker"]
        assert (seen["hostname"], seen["availability"], code) == (staying, "drain", 1), fleet
        assert all("no suitable node" in p["reason"] for p in fleet["pending"]), fleet
        for user in users:
            wait_for(f"{user}'s server stopped by the hub", lambda: server(hub, user) is None,
                     timeout=SLICE_WAIT + 60, interval=1)
        took = time.monotonic() - drained
        print(f"\nmoved servers with no slice were stopped {took:.1f} s after the drain (slice_wait {SLICE_WAIT} s)")
        assert took >= SLICE_WAIT  # kept as long as a start waits, not given up at once
        for user in users:  # the hub stopped it, which removed its service: nothing starts later without the user
            assert manager.docker.services.list(filters={"name": f"jupyter-{user}"}) == []
        log = hub.log_path.read_text()
        for user in users:  # the hub's log names each server and why
            assert f"jupyter-{user} waited {SLICE_WAIT} s for a free gpu slice (no suitable node" in log, hub.logs()
    finally:
        node.reload()
        node.update(dict(node.attrs["Spec"], Availability="active"))


def _status_or_none(hub: LabHub, user: str) -> dict | None:
    status, body = hub.request("GET", f"/user/{user}/api/status")
    return body if status == 200 else None


def stop_every_server(hub: LabHub, manager) -> None:
    users = USERS + [EXTRA, "gus", "sam"]
    for user in users:
        if server(hub, user):
            hub.api("DELETE", f"/users/{user}/server")
    wait_for("every task gone", lambda: not any(task_of(manager, u) for u in users), timeout=120)


SHARE_USER = "sam"


def mount_options(worker, path: str, container: str = "") -> list[str]:
    """Per-mount options of the mount at `path`, on the worker or inside `container`."""
    prefix = f"docker exec {container} " if container else ""
    text = worker.sh(f"{prefix}cat /proc/self/mountinfo").stdout
    [line] = [line for line in text.splitlines() if line.split()[4] == path][-1:]
    return line.split()[5].split(",")


def test_setuid_files_and_device_nodes_on_a_share_give_nothing(hub, workers, manager):
    """A share cannot become a root door: a setuid-root file and a device node written onto a
    share from a notebook give nothing to a local user of the worker, nor to another container.
    The lab's kernel has no NFS, so each share is a local directory mounted as the shared-fs step
    mounts a share: on itself, with nosuid,nodev (read-only for the tutorial share). The controls
    show the machine honours a setuid bit and a device node where the flags are absent."""
    stop_every_server(hub, manager)
    for name, worker in workers.items():
        if NODE_IDS.get(name) not in {n["ID"] for n in manager.nodes()}:
            continue  # left the swarm (the leave test)
        for path, mode in SHARED.items():
            options = ",".join(["remount", "bind", "nosuid", "nodev"] + (["ro"] if mode == "ro" else []))
            worker.machine.run(["sh", "-c", f"mount --bind {path} {path} && mount -o {options} {path}"])
            assert {"nosuid", "nodev"} <= set(mount_options(worker, path))
    spawn(hub, SHARE_USER)
    wait_ready(hub, SHARE_USER, manager)
    task = task_of(manager, SHARE_USER)
    [name] = [n for n, node_id in NODE_IDS.items() if node_id == task["NodeID"]]
    worker = workers[name]
    cid = task["Status"]["ContainerStatus"]["ContainerID"]

    # Inside the notebook, both shares keep nosuid,nodev (the tutorial one is also read-only).
    for path in SHARED:
        assert {"nosuid", "nodev"} <= set(mount_options(worker, path, cid)), path

    # The notebook's root writes a setuid-root program and a world-openable device node.
    worker.sh(f"docker exec -u 0 {cid} sh -c 'cp \"$(command -v id)\" /srv/shared/data/id-suid && "
              "chown 0:0 /srv/shared/data/id-suid && chmod 4755 /srv/shared/data/id-suid && "
              "mknod -m 666 /srv/shared/data/null-node c 1 3'")

    # Controls: the same on the worker's own /tmp is honoured, so the checks below can fail.
    worker.sh("install -m 4755 -o 0 -g 0 /srv/shared/data/id-suid /tmp/id-suid && "
              "cp -a /srv/shared/data/null-node /tmp/null-node")
    assert worker.as_user("/tmp/id-suid -u").stdout.strip() == "0"
    assert worker.as_user(": < /tmp/null-node").returncode == 0

    # A local user of the worker gets nothing from the share.
    assert worker.as_user("/srv/shared/data/id-suid -u").stdout.strip() != "0"
    opened = worker.as_user(": < /srv/shared/data/null-node")
    assert opened.returncode != 0 and "Permission denied" in opened.stderr

    # Nor does a non-root process of another container: a plain docker run, the share read-only.
    image = worker.sh(f"docker inspect --format '{{{{.Config.Image}}}}' {cid}").stdout.strip()
    run = worker.sh(f"docker run --rm -u 1000 -v /srv/shared/data:/data:ro {image} "
                    "sh -c 'grep \" /data \" /proc/self/mountinfo; /data/id-suid -u'")
    mountinfo, euid = run.stdout.strip().splitlines()[-2:]
    assert {"nosuid", "nodev"} <= set(mountinfo.split()[5].split(","))
    assert euid != "0"

    worker.sh("rm -f /tmp/id-suid /tmp/null-node /srv/shared/data/id-suid /srv/shared/data/null-node")
    stop_every_server(hub, manager)


# What an image may set for the NVIDIA hook (gpuswarm_node/nvidia_hook.py HOOK_INPUTS, every
# variable the wrapper pins or strips), each asking for the most a tenant could get.
HOSTILE_ENV = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all,display",
               "NVIDIA_MIG_CONFIG_DEVICES": "all", "NVIDIA_MIG_MONITOR_DEVICES": "all",
               "NVIDIA_IMEX_CHANNELS": "0,1", "NVIDIA_GDS": "enabled", "NVIDIA_MOFED": "enabled",
               "NVIDIA_NVSWITCH": "enabled", "NVIDIA_GDRCOPY": "enabled", "NVIDIA_REQUIRE_JETPACK": "csv-mounts=all"}


def test_an_image_that_sets_every_hook_input_gets_its_slice_and_nothing_shared(hub, workers, manager, notebook_image):
    """An image whose ENV sets every hook input the wrapper decides: as a service with a slice it
    gets exactly its slice's GPU, as `docker run` (no slice) no GPU; neither gets what every
    tenant of the node would share (MIG config or monitor, IMEX channels, GDS, MOFED, NVSwitch,
    GDRCopy, Jetson CSV mounts, the display capability). Judged by the hook model on the spec the
    stand-in NVIDIA runtime received, after the wrapper."""
    from gpuswarm_node.nvidia_hook import HOOK_INPUTS

    assert {i.name for i in HOOK_INPUTS if i.kind == "env" and i.action in ("pin", "strip")} <= set(HOSTILE_ENV)
    stop_every_server(hub, manager)
    worker = workers["gsn-h1"]
    base = worker.sh(f"docker create {notebook_image} true").stdout.strip()
    changes = " ".join(f"--change 'ENV {k}={v}'" for k, v in HOSTILE_ENV.items())
    worker.sh(f"docker commit {changes} {base} gsn/hostile:1 && docker rm {base}")
    nothing_shared = {"mig_config": "", "mig_monitor": "", "imex_channels": [], "gated": [], "csv_mounts_all": False,
                      "cdi_annotations": []}

    # docker run: no slice, so no GPU and nothing shared.
    cid = worker.sh("docker run -d gsn/hostile:1 true").stdout.strip()
    worker.sh(f"docker wait {cid} && docker rm {cid}")
    grants = runtime_create(worker, cid)["hook_grants"]
    assert grants["devices"] == [] and {k: grants[k] for k in nothing_shared} == nothing_shared, grants

    # A service with one slice: that slice's GPU only.
    import docker

    service = manager.docker.services.create(
        "gsn/hostile:1", ["sleep", "600"], name="hostile",
        resources=docker.types.Resources(generic_resources={"gpu": 1}),
        constraints=["node.hostname==gsn-h1"])
    try:
        def running() -> dict | None:
            return next((t for t in service.tasks() if t["Status"]["State"] == "running"), None)

        task = wait_for("the hostile service's task running", running, timeout=120)
        name, slice_id = placement(manager, workers, task)
        call = runtime_create(workers[name], task["Status"]["ContainerStatus"]["ContainerID"])
        grants = call["hook_grants"]
        assert grants["devices"] == [slice_id.split("::")[0]], call
        assert {k: grants[k] for k in nothing_shared} == nothing_shared, grants
        assert "display" not in grants["capabilities"], grants
        assert not {"NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_IMEX_CHANNELS", "NVIDIA_GDS"} & set(call["env"]), call["env"]
    finally:
        service.remove()
        wait_for("the hostile service's container gone",
                 lambda: not worker.sh("docker ps -aq --filter label=com.docker.swarm.service.name=hostile").stdout.strip())


def test_a_wrapper_that_maps_a_slice_to_the_wrong_gpu_fails_the_scenario(hub, workers, manager):
    """The scenario's check can fail: with the two slices of the remaining worker swapped in its
    slice map (the map the runtime wrapper reads on every container start), a new server starts
    on one GPU while Swarm gave it the other's slice, and assert_on_its_slice says so."""
    stop_every_server(hub, manager)  # both slices of the remaining worker free
    worker = workers["gsn-h1"]
    original = worker.machine.read_file(SLICE_MAP)
    data = json.loads(original)
    (first, dev1), (second, dev2) = sorted(data["slices"].items())
    data["slices"] = {first: dev2, second: dev1}
    worker.machine.run(["sh", "-c", f"cat > {SLICE_MAP}"], input=json.dumps(data, indent=2))
    try:
        spawn(hub, "gus")
        wait_ready(hub, "gus")
        task = task_of(manager, "gus")
        name, slice_id = placement(manager, workers, task)
        call = runtime_create(workers[name], task["Status"]["ContainerStatus"]["ContainerID"])
        assert name == "gsn-h1" and call["nvidia_visible_devices"] != slice_id.split("::")[0], call
        with pytest.raises(AssertionError):
            assert_on_its_slice(manager, workers, "gus")
    finally:
        worker.machine.run(["sh", "-c", f"cat > {SLICE_MAP}"], input=original)
        hub.api("DELETE", "/users/gus/server")


def test_a_hub_asking_for_a_kind_no_node_advertises_spawns_nothing(hub, workers, manager, lab_tmp, notebook_image):
    # Every server stopped, so slices are free: only the kind stands in the way.
    stop_every_server(hub, manager)
    hub.close()
    text = hub_config(manager, lab_tmp, notebook_image, "--set", "gpu.resource=tpu")
    with LabHub(manager, lab_tmp / "hub-tpu", text) as other:
        spawn(other, "fay")
        events = other.progress("fay", timeout=SLICE_WAIT + 120)
        assert events[-1].get("failed"), events
        assert "no worker advertises the kind tpu" in events[-1]["message"]
        assert not manager.docker.services.list(filters={"name": "jupyter-fay"})

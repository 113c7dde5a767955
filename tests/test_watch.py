"""`gpuswarm-node watch`: the health facts' parsers, the judgement, the verdict state machine (tests
as data: observations in, transitions out), the actions through the manager, and the round."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from gpuswarm_node import config
from gpuswarm_node.errors import ConfigError
from gpuswarm_node.lock import holder_pid
from gpuswarm_node.probes.gpu_health import GpuReading, NvmlReading, NvmlWatch
from gpuswarm_node.watch import (APPLICATION_XIDS, HEALTH_LABEL, STATE, Fault, Observation, Rules, Seams, Verdict,
                                 Watcher, apply_transition, decide, docker_root, is_mounted, judge, parse_state,
                                 slice_map_devices, state_text)

from .fakes import FakeManager

GPU_A, GPU_B = "GPU-aaaa", "GPU-bbbb"
SLICE_MAP = json.dumps({"kind": "gpu", "variable": "DOCKER_RESOURCE_GPU",
                        "slices": {f"{GPU_A}::0": GPU_A, f"{GPU_A}::1": GPU_A, f"{GPU_B}::0": GPU_B}})
MOUNTINFO = ("22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"
             "98 29 0:45 / /mnt/tmpfs rw,relatime shared:50 - tmpfs tmpfs rw,size=1024k\n")


def healthy_nvml(*uuids: str, **kw) -> NvmlReading:
    return NvmlReading(gpus=tuple(GpuReading(i, u) for i, u in enumerate(uuids)), **kw)


# --- parsers -------------------------------------------------------------------------------------

def test_slice_map_devices():
    assert slice_map_devices(SLICE_MAP) == {GPU_A, GPU_B}
    assert slice_map_devices(json.dumps({"slices": {"MIG-1": "MIG-1"}})) == {"MIG-1"}
    for bad in (None, "", "not json", "[]", '{"slices": []}'):
        assert slice_map_devices(bad) == frozenset()


def test_docker_root():
    assert docker_root(None) == "/var/lib/docker"
    assert docker_root('{"data-root": "/data/docker", "runtimes": {}}') == "/data/docker"
    assert docker_root('{"graph": "/old/docker"}') == "/old/docker"
    assert docker_root('{"data-root": "relative"}') == "/var/lib/docker"
    assert docker_root("{broken") == "/var/lib/docker"


def test_is_mounted_reads_mountinfo():
    assert is_mounted(MOUNTINFO, "/mnt/tmpfs", "tmpfs")
    assert not is_mounted(MOUNTINFO, "/mnt/tmpfs", "ext4")
    assert not is_mounted(MOUNTINFO, "/mnt")
    assert is_mounted("99 1 0:46 / /mnt/my\\040dir rw - tmpfs tmpfs rw\n", "/mnt/my dir", "tmpfs")
    assert not is_mounted(None, "/mnt/tmpfs")


def test_holder_pid_reads_proc_locks():
    text = ("1: FLOCK  ADVISORY  WRITE 4242 00:1a:77 0 EOF\n"
            "1: -> FLOCK  ADVISORY  WRITE 4343 00:1a:77 0 EOF\n"
            "2: POSIX  ADVISORY  WRITE 99 08:01:77 0 EOF\n")
    assert holder_pid(text, (0, 0x1a), 77) == 4242
    assert holder_pid(text, (8, 1), 77) is None  # a POSIX lock is not the run lock's flock
    assert holder_pid("", (0, 0x1a), 77) is None


# --- the judgement -------------------------------------------------------------------------------

def judged(nvml=None, devices=(GPU_A, GPU_B), docker=None, free=10 * 2**30, min_free=2 * 2**30, tmpfs=None):
    return judge(nvml, devices, docker, free, min_free, tmpfs)


def test_a_healthy_node_has_no_fault():
    obs = judged(healthy_nvml(GPU_A, GPU_B))
    assert obs.healthy and obs.reason == "ok" and obs.summary() == "healthy"


@pytest.mark.parametrize("nvml, reason, words", [
    (NvmlReading(problem="NVML does not initialise (Driver Not Loaded)"), "nvml-down", "Driver Not Loaded"),
    (healthy_nvml(GPU_A), "gpu-missing", "advertises GPU-bbbb, which NVML does not report (1 GPU(s) answer)"),
    (NvmlReading(gpus=(GpuReading(0, GPU_A), GpuReading(1, GPU_B, lost=True))), "gpu-lost", "GPU-bbbb lost"),
    (healthy_nvml(GPU_A, GPU_B, xids=((GPU_B, 79),)), "xid-79", "Xid 79 on GPU-bbbb"),
    (NvmlReading(gpus=(GpuReading(0, GPU_A, remap_failure=True, remap_pending=False), GpuReading(1, GPU_B))),
     "row-remap-failure", "a row remapping failed on GPU-aaaa"),
    (NvmlReading(gpus=(GpuReading(0, GPU_A), GpuReading(1, GPU_B, remap_pending=True))),
     "row-remap-pending", "waits for a GPU reset on GPU-bbbb"),
    (NvmlReading(gpus=(GpuReading(0, GPU_A, retired_pages_pending=True), GpuReading(1, GPU_B))),
     "retired-pages-pending", "retired pages wait for a reboot on GPU-aaaa"),
])
def test_gpu_faults(nvml, reason, words):
    obs = judged(nvml)
    assert obs.reason == reason and words in obs.summary()


def test_application_xids_are_no_fault():
    # NVIDIA's device plugin skips 13, 31, 43, 45, 68; 69 and 94 hit the application alone too.
    assert {13, 31, 43, 45, 68} <= APPLICATION_XIDS
    xids = tuple((GPU_A, xid) for xid in sorted(APPLICATION_XIDS))
    assert judged(healthy_nvml(GPU_A, GPU_B, xids=xids)).healthy
    assert judged(healthy_nvml(GPU_A, GPU_B, xids=xids + ((GPU_A, 48),))).reason == "xid-48"


def test_unsupported_calls_are_no_fault():
    gpus = (GpuReading(0, GPU_A, retired_pages_pending=None, remap_pending=None, remap_failure=None),
            GpuReading(1, GPU_B))
    assert judged(NvmlReading(gpus=gpus, events=False)).healthy


def test_mig_devices_count_as_the_slice_maps_devices():
    nvml = NvmlReading(gpus=(GpuReading(0, GPU_A, mig_uuids=("MIG-1", "MIG-2")),))
    assert judged(nvml, devices=("MIG-1", "MIG-2")).healthy
    assert judged(nvml, devices=("MIG-1", "MIG-3")).reason == "gpu-missing"


def test_host_faults_and_their_order():
    assert judged(docker="the Docker daemon does not answer at unix:///run/docker.sock").reason == "docker-down"
    full = judged(free=2**30)
    assert full.reason == "image-disk-full" and "has 1.0 GiB free, less than watch.min_free_disk (2.0 GiB)" \
        in full.summary()
    assert judged(free=2**30, min_free=0).healthy  # the check is off
    assert judged(free=None).healthy  # statvfs failed: unknown, not a fault
    assert judged(tmpfs="no tmpfs is mounted at /mnt/tmpfs").reason == "tmpfs-missing"
    both = judged(NvmlReading(problem="x"), docker="down", tmpfs="gone")
    assert [f.slug for f in both.faults] == ["nvml-down", "docker-down", "tmpfs-missing"]


def test_a_node_without_gpus_to_watch_judges_the_host_alone():
    assert judged(None).healthy


# --- the state machine: observations in, transitions out ------------------------------------------

OK = Observation()
BAD = Observation((Fault("xid-79", "Xid 79 on GPU-bbbb"),))
OTHER = Observation((Fault("docker-down", "Docker does not answer"),))


def run(rounds: list[tuple[float, Observation]], rules: Rules, start: Verdict = Verdict()) -> list[tuple[float, str]]:
    """The transitions (time, kind:reason) a sequence of (time, observation) rounds makes."""
    verdict, out = start, []
    for now, obs in rounds:
        verdict, transition = decide(verdict, obs, now, rules)
        if transition is not None:
            out.append((now, f"{transition.kind}:{transition.reason}"))
    return out


def every(seconds: float, *observations: Observation, t0: float = 1000.0) -> list[tuple[float, Observation]]:
    return [(t0 + n * seconds, obs) for n, obs in enumerate(observations)]


CASES = {
    "a fault seen twice drains, at the second round": (
        Rules(2, 3, 0), every(3, OK, BAD, BAD, BAD), [(1006.0, "drain:xid-79")]),
    "a single bad round drains nothing": (
        Rules(2, 3, 0), every(3, OK, BAD, OK, BAD, OK, BAD, OK), []),
    "the clear must hold clear_rounds in a row": (
        Rules(2, 3, 0), every(3, BAD, BAD, OK, OK, BAD, OK, OK, OK), [(1003.0, "drain:xid-79"),
                                                                      (1021.0, "activate:ok")]),
    "the label names the first fault; another one later changes nothing": (
        Rules(1, 2, 0), every(3, BAD, OTHER, OTHER, BAD), [(1000.0, "drain:xid-79")]),
    "no second transition within min_interval: the clear waits, then comes at once": (
        Rules(1, 1, 60), every(10, BAD, OK, OK, OK, OK, OK, OK, OK), [(1000.0, "drain:xid-79"),
                                                                      (1060.0, "activate:ok")]),
    "a fault that clears before it is confirmed is forgotten": (
        Rules(3, 1, 0), every(1, BAD, BAD, OK, BAD, BAD, OK), []),
}


@pytest.mark.parametrize("name", CASES)
def test_decide(name):
    rules, rounds, expected = CASES[name]
    assert run(rounds, rules) == expected


def test_a_verdict_from_before_a_restart_holds_its_rate_limit():
    drained = Verdict("fault", "xid-79", since=1000.0, drained_by_watch=True)
    assert run(every(5, OK, OK, OK, t0=1010.0), Rules(2, 2, 60), drained) == []
    assert run(every(5, OK, OK, OK, t0=1060.0), Rules(2, 2, 60), drained) == [(1065.0, "activate:ok")]


@pytest.mark.parametrize("seed", range(20))
def test_never_flaps(seed):
    """Random health, changing every round: transitions alternate, and two are at least
    min_interval apart, whatever the observations."""
    rng = random.Random(seed)
    rules = Rules(rng.randint(1, 3), rng.randint(1, 6), rng.choice([0, 30, 60]))
    rounds, now = [], 1000.0
    for _ in range(500):
        now += rng.choice([1, 3, 5])
        rounds.append((now, rng.choice([OK, BAD, OTHER])))
    out = run(rounds, rules)
    kinds = [kind.split(":")[0] for _t, kind in out]
    assert kinds == ["drain", "activate"] * (len(kinds) // 2) + ["drain"] * (len(kinds) % 2)
    assert all(b - a >= rules.min_interval for (a, _), (b, _) in zip(out, out[1:]))


def test_state_round_trip_and_a_damaged_state():
    verdict = Verdict("fault", "gpu-lost", 1234.5, 0, True)
    text = state_text(verdict, BAD, 1240.0, "n1", {"kind": "drain"})
    back, data = parse_state(text)
    assert back == verdict and data["node_id"] == "n1" and data["observed"]["reason"] == "xid-79"
    for bad in (None, "", "{", '{"verdict": {"health": 3}}', "[]"):
        assert parse_state(bad)[0] == Verdict()


# --- actions through the manager -------------------------------------------------------------------

def session_of(manager: FakeManager):
    return manager.session().__enter__()


def test_drain_sets_availability_and_the_health_label():
    manager = FakeManager({"labels": {"gpuswarm.gpu.count": "2"}})
    verdict, done = apply_transition(session_of(manager), "n1", decide(Verdict(), BAD, 1.0, Rules(1, 1, 0))[1],
                                     Verdict("fault", "xid-79", 1.0))
    assert verdict.drained_by_watch
    assert manager.availability == {"n1": "drain"}
    assert manager.spec["labels"] == {"gpuswarm.gpu.count": "2", HEALTH_LABEL: "xid-79"}
    assert done == ["drained node n1", "set gpuswarm.health=xid-79"]


def test_a_node_an_operator_drained_is_not_activated_by_watch():
    manager = FakeManager({"labels": {}, "availability": "drain"})
    session = session_of(manager)
    _, transition = decide(Verdict(), BAD, 1.0, Rules(1, 1, 0))
    verdict, done = apply_transition(session, "n1", transition, Verdict("fault", "xid-79", 1.0))
    assert not verdict.drained_by_watch and "availability n1 drain" not in manager.reads
    _, clear = decide(verdict, OK, 100.0, Rules(1, 1, 0))
    after, done = apply_transition(session, "n1", clear, Verdict("ok", "ok", 100.0))
    assert "availability n1 active" not in manager.reads
    assert manager.spec["labels"] == {HEALTH_LABEL: "ok"}
    assert done == ["node n1 stays as it is: watch did not drain it", "set gpuswarm.health=ok"]


# --- the round -------------------------------------------------------------------------------------

class Node:
    """A node as the round's seams see it: files, NVML's answers, Docker, the manager, a clock."""

    def __init__(self, manager_spec=None):
        self.files = {"/etc/gpuswarm-node/slices.json": SLICE_MAP, "/proc/self/mountinfo": MOUNTINFO}
        self.nvml = healthy_nvml(GPU_A, GPU_B)
        self.docker: str | None = None
        self.free = 100 * 2**30
        self.now = 1000.0
        self.lock: str | None = None
        self.node = "n1"
        self.manager = FakeManager(manager_spec if manager_spec is not None else {"labels": {}})
        self.logs: list[dict] = []
        self.said: list[str] = []

    def write(self, text: str) -> None:
        self.files[STATE] = text

    def seams(self) -> Seams:
        return Seams(nvml=lambda wait_ms: self.nvml, read_text=self.files.get, write_state=self.write,
                     docker_problem=lambda: self.docker, free_bytes=lambda path: self.free,
                     node_id=lambda: None if self.docker else self.node, manager_session=self.manager.session,
                     log=self.logs.append, say=self.said.append, clock=lambda: self.now, busy=lambda: self.lock)


def watcher(node: Node, **watch) -> Watcher:
    cfg = config.from_tables({"watch": {"fault_rounds": 2, "clear_rounds": 2, "min_transition_interval": 10,
                                        **watch}})
    w = Watcher(cfg, node.seams())
    w.load()
    return w


def rounds(w: Watcher, node: Node, n: int, step: float = 3.0) -> list:
    out = []
    for _ in range(n):
        out.append(w.round())
        node.now += step
    return out


def test_a_gpu_fault_drains_and_its_clear_activates():
    node = Node()
    w = watcher(node)
    assert rounds(w, node, 2) == [None, None]
    node.nvml = healthy_nvml(GPU_A)  # a GPU gone
    drained = rounds(w, node, 2)
    assert drained[0] is None and drained[1].kind == "drain" and drained[1].reason == "gpu-missing"
    assert node.manager.availability == {"n1": "drain"}
    assert node.manager.spec["labels"] == {HEALTH_LABEL: "gpu-missing"}
    state = json.loads(node.files[STATE])
    assert state["verdict"]["health"] == "fault" and state["verdict"]["drained_by_watch"] is True
    assert state["last_transition"]["kind"] == "drain"
    assert [r["after"] for r in node.logs] == ["fault"] and node.logs[0]["reason"] == "gpu-missing"
    node.nvml = healthy_nvml(GPU_A, GPU_B)
    back = rounds(w, node, 4)  # clear twice by the second round; 10 s after the drain by the fourth
    assert [t.kind if t else None for t in back] == [None, None, None, "activate"]
    assert node.manager.availability == {"n1": "active"}
    assert node.manager.spec["labels"] == {HEALTH_LABEL: "ok"}
    assert [r["after"] for r in node.logs] == ["fault", "ok"]


def test_docker_down_drains_with_the_node_id_known_before():
    node = Node()
    w = watcher(node)
    rounds(w, node, 1)
    node.docker = "the Docker daemon does not answer at unix:///var/run/docker.sock"
    assert rounds(w, node, 2)[1].reason == "docker-down"
    assert node.manager.availability == {"n1": "drain"}


def test_a_manager_that_cannot_be_reached_is_tried_again_next_round():
    node = Node({"unreachable": "Connection refused"})
    w = watcher(node)
    node.nvml = NvmlReading(problem="NVML does not initialise (Unknown Error)")
    assert rounds(w, node, 3) == [None, None, None]
    assert json.loads(node.files[STATE])["verdict"]["health"] == "ok"
    assert len(node.logs) == 1 and node.logs[0]["error"] and node.logs[0]["changed"] is False  # once a cause
    assert any("tried again next round" in line for line in node.said)
    node.manager.spec = {"labels": {}}
    assert rounds(w, node, 1)[0].kind == "drain"


def test_rounds_pause_while_setup_runs():
    node = Node()
    w = watcher(node)
    node.docker = "down: setup restarts Docker"
    node.lock = "setup is running (pid 42)"
    assert rounds(w, node, 5) == [None] * 5
    state = json.loads(node.files[STATE])
    assert state["observed"]["reason"] == "paused" and "setup is running (pid 42)" in state["observed"]["detail"]
    node.lock, node.docker = None, None
    assert rounds(w, node, 3) == [None] * 3
    assert node.manager.availability == {}


def test_a_restarted_watch_keeps_who_drained():
    node = Node({"labels": {}, "availability": "drain"})
    node.nvml = healthy_nvml(GPU_A)
    w = watcher(node)
    rounds(w, node, 2)
    assert json.loads(node.files[STATE])["verdict"]["drained_by_watch"] is False
    node.nvml = healthy_nvml(GPU_A, GPU_B)
    w = watcher(node)  # a new process reads STATE
    node.now += 60
    assert [t.kind if t else None for t in rounds(w, node, 2)] == [None, "activate"]
    assert "availability n1 active" not in node.manager.reads


def test_gpus_are_watched_once_the_node_advertises_slices():
    node = Node()
    del node.files["/etc/gpuswarm-node/slices.json"]
    node.nvml = NvmlReading(problem="NVML does not initialise (Driver Not Loaded)")  # not asked
    w = watcher(node)
    assert rounds(w, node, 3) == [None] * 3 and w.observed.healthy
    node.files["/etc/gpuswarm-node/slices.json"] = SLICE_MAP
    assert rounds(w, node, 2)[1].reason == "nvml-down"


def test_a_node_that_left_is_not_drained_by_its_old_id():
    node = Node()
    w = watcher(node)
    rounds(w, node, 1)
    node.node = ""  # `leave`: Docker answers, in no swarm
    node.nvml = healthy_nvml(GPU_A)
    assert rounds(w, node, 3) == [None] * 3 and node.manager.reads == []


def test_no_swarm_no_action():
    node = Node()
    node.node = ""
    w = watcher(node)
    node.nvml = healthy_nvml(GPU_A)
    assert rounds(w, node, 3) == [None] * 3
    assert any("in no swarm" in line for line in node.said) and node.manager.reads == []


# --- the NVML reading, against a stand-in pynvml --------------------------------------------------

class FakeNvml:
    """pynvml's calls as watch uses them; `lost` GPUs raise GPU_IS_LOST; `events` is a queue."""

    class NVMLError(Exception):
        def __init__(self, value):
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, uuids, events_supported=True, remap=True):
        self.uuids, self.lost, self.events, self.inits = list(uuids), set(), [], 0
        self.events_supported, self.remap, self.registered = events_supported, remap, []
        self.handles = [("handle", i) for i in range(len(self.uuids))]  # NVML's handles are stable

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.handles[i]

    def nvmlDeviceGetUUID(self, h):
        if h[1] in self.lost:
            raise self.NVMLError(15)
        return self.uuids[h[1]].encode()

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h):
        raise self.NVMLError(3)  # NOT_SUPPORTED: an Ampere GPU

    def nvmlDeviceGetRemappedRows(self, h):
        if not self.remap:
            raise self.NVMLError(13)  # FUNCTION_NOT_FOUND: an older driver
        return (0, 1, 1 if h[1] == 1 else 0, 0)

    def nvmlDeviceGetMigMode(self, h):
        raise self.NVMLError(3)

    def nvmlEventSetCreate(self):
        if not self.events_supported:
            raise self.NVMLError(13)
        return "set"

    def nvmlDeviceGetSupportedEventTypes(self, h):
        return 0x8 | 0x1

    def nvmlDeviceRegisterEvents(self, h, types, events):
        self.registered.append(h[1])

    def nvmlEventSetWait(self, events, timeout_ms):
        if not self.events:
            raise self.NVMLError(10)  # TIMEOUT
        index, xid = self.events.pop(0)
        return SimpleNamespace(device=self.handles[index], eventType=0x8, eventData=xid)

    def nvmlEventSetFree(self, events):
        pass


def test_nvml_watch_reads_each_round_over_one_session():
    nv = FakeNvml([GPU_A, GPU_B])
    watch = NvmlWatch(nv)
    first = watch.read(10)
    assert first.events and nv.registered == [0, 1]
    assert [(g.uuid, g.retired_pages_pending, g.remap_pending) for g in first.gpus] == \
        [(GPU_A, None, False), (GPU_B, None, True)]
    nv.events.append((1, 79))
    nv.events.append((0, 13))
    second = watch.read(10)
    assert second.xids == ((GPU_B, 79), (GPU_A, 13)) and nv.inits == 1
    assert watch.read(10).xids == second.xids  # an Xid stays a fault until watch restarts
    nv.lost.add(0)
    assert watch.read(10).gpus[0].lost


def test_nvml_watch_without_events_or_remapping():
    nv = FakeNvml([GPU_A], events_supported=False, remap=False)
    reading = NvmlWatch(nv).read(10)
    assert not reading.events and reading.gpus[0].remap_failure is None and not reading.problem


def test_nvml_that_stops_answering_is_opened_again():
    nv = FakeNvml([GPU_A])
    watch = NvmlWatch(nv)
    watch.read(10)

    def broken():
        raise nv.NVMLError(999)

    nv.nvmlDeviceGetCount = broken
    assert "nvmlDeviceGetCount" in watch.read(10).problem
    del nv.nvmlDeviceGetCount
    assert not watch.read(10).problem and nv.inits == 2


def test_nvml_watch_against_the_fake_library(tmp_path, nvml_lib_dir):
    """The real pynvml against the lab's libnvidia-ml.so.1 stand-in, with faults injected through
    its faults file while the session is open: as the lab injects them into a worker."""
    from tests.lab import fake_nvml

    gpus = [fake_nvml.FakeGpu(GPU_A + "-1111", "NVIDIA A100-SXM4-40GB", 40960),
            fake_nvml.FakeGpu(GPU_B + "-2222", "NVIDIA A100-SXM4-40GB", 40960)]
    conf = fake_nvml.write_config(tmp_path / "fake-nvml.conf", gpus)
    faults = tmp_path / "faults"
    env = fake_nvml.env_for(nvml_lib_dir, conf, base={"PATH": "/usr/bin:/bin"})
    env[fake_nvml.FAULTS_ENV] = str(faults)
    before = f"xid {gpus[0].uuid} 48\n"
    during = (f"xid {gpus[0].uuid} 48\nxid {gpus[1].uuid} 79\nxid {gpus[1].uuid} 13\n"
              f"remap-pending {gpus[0].uuid}\nlost {gpus[1].uuid}\n")
    script = f"""
import json, pathlib, sys
from gpuswarm_node.probes.gpu_health import NvmlWatch
faults = pathlib.Path({str(faults)!r})
watch = NvmlWatch()
def show(r):
    print(json.dumps({{"problem": r.problem, "events": r.events, "xids": r.xids,
                       "gpus": [[g.uuid, g.lost, g.retired_pages_pending, g.remap_pending, g.remap_failure]
                                for g in r.gpus]}}))
faults.write_text({before!r})  # before the session: not delivered
show(watch.read(50))
faults.write_text({during!r})
show(watch.read(50))
faults.unlink()
show(watch.read(50))
"""
    import subprocess
    import sys

    from .conftest import REPO

    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    first, second, third = (json.loads(line) for line in done.stdout.splitlines())
    a, b = gpus[0].uuid, gpus[1].uuid
    assert first == {"problem": "", "events": True, "xids": [],
                     "gpus": [[a, False, False, False, False], [b, False, False, False, False]]}
    assert second["xids"] == [[b, 79], [b, 13]]
    assert second["gpus"] == [[a, False, False, True, False], ["", True, None, None, None]]
    assert third["xids"] == [[b, 79], [b, 13]] and third["gpus"][1] == [b, False, False, False, False]
    assert judge(NvmlReading(gpus=tuple(GpuReading(i, g[0], g[1]) for i, g in enumerate(second["gpus"])),
                             xids=tuple(map(tuple, second["xids"]))), {a, b}, None, None, 0, None).reason == "gpu-lost"


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("interval", 0.5, "interval must be from 1 to 600 seconds"),
    ("fault_rounds", 0, "fault_rounds must be from 1 to 100 rounds"),
    ("clear_rounds", 101, "clear_rounds must be from 1 to 100 rounds"),
    ("min_transition_interval", -1, "min_transition_interval must be from 0 to 86400 seconds"),
    ("min_free_disk", "2GB", "min_free_disk must be a size"),
])
def test_watch_config_is_validated(key, value, words):
    with pytest.raises(ConfigError) as info:
        config.from_tables({"watch": {key: value}})
    assert words in info.value.message()


def test_watch_config_defaults_and_off():
    cfg = config.from_tables({})
    assert cfg.watch.min_free_disk_bytes == 2 * 2**30 and cfg.watch.interval == 3.0
    assert config.from_tables({"watch": {"min_free_disk": "0"}}).watch.min_free_disk_bytes == 0


# --- the command ---------------------------------------------------------------------------------

def test_watch_once_from_the_command_line(gsn, tmp_path):
    """One round of the real command: Docker does not answer (a socket that is not there), the
    node is in no swarm, so nothing is drained; the round is in STATE and the exit status says a
    fault was seen."""
    args = ("watch", "--once", "--set", "tmpfs.enabled=false", "--set", "watch.min_free_disk=0",
            "--set", "watch.fault_rounds=1")
    done = gsn(*args, env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert done.returncode == 1, done.stderr
    assert "watch: verdict ok; this round: the Docker daemon does not answer" in done.stdout
    assert "this node is in no swarm" in done.stderr and "Traceback" not in done.stderr
    state = json.loads((tmp_path / "host-state/var/lib/upper/gpuswarm-node/watch.json").read_text())
    assert state["observed"]["reason"] == "docker-down" and state["verdict"]["health"] == "ok"
    assert (tmp_path / "host-state/var/lib/upper/gpuswarm-node/watch.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("args, words", [
    (("--interval", "0"), "--interval must be from 1 to 600 seconds, got 0."),
    (("--set", "watch.clear_rounds=0"), "[watch] clear_rounds must be from 1 to 100 rounds"),
])
def test_watch_bad_usage_is_one_line(gsn, args, words):
    done = gsn("watch", "--once", *args)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


# --- containerd and the shares ----------------------------------------------------------------------

def test_containerd_and_share_faults_and_their_order():
    from gpuswarm_node.watch import judge

    obs = judge(None, (), None, None, 0, "no tmpfs", containerd_problem="containerd does not answer",
                share_problems=("the share fs-1:/ is not mounted at /home/shared",))
    assert [f.slug for f in obs.faults] == ["containerd-down", "tmpfs-missing", "share-missing"]
    # With Docker down, containerd is not judged apart: one fault, the one that says most.
    assert [f.slug for f in judge(None, (), "docker down", None, 0, None, containerd_problem="x").faults] == \
        ["docker-down"]


def test_a_share_not_mounted_or_not_answering_drains_the_node():
    node = Node()
    share = "/home/shared"
    w = watcher(node)
    w.cfg = config.from_tables({"watch": {"fault_rounds": 2, "clear_rounds": 2, "min_transition_interval": 10},
                                "shared": {"mounts": [{"source": "fs-1.efs.example:/", "path": share}]}})
    drained = rounds(w, node, 2)
    assert drained[1] is not None and drained[1].reason == "share-missing"
    assert "the share fs-1.efs.example:/ is not mounted at /home/shared" in node.logs[0]["detail"]
    # Mounted, but a statfs does not come back in time (a server gone): still a fault.
    node.files["/proc/self/mountinfo"] = MOUNTINFO + f"120 29 0:50 / {share} rw,nosuid,nodev - nfs4 fs-1:/ rw\n"
    w.seams.share_problem = lambda path: "stat: did not answer within 5 s"
    assert w.observe(0).summary() == "the share at /home/shared does not answer: stat: did not answer within 5 s"
    w.seams.share_problem = lambda path: None
    assert w.observe(0).healthy


def test_containerd_is_a_fault_only_when_its_socket_refuses(tmp_path):
    import socket

    from gpuswarm_node.watch import containerd_problem

    listening = tmp_path / "up.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(listening))
    server.listen(1)
    left = tmp_path / "left.sock"  # a socket file nobody listens on: the daemon died, its socket stayed
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(left))
    stale.close()
    try:
        assert containerd_problem((str(listening),)) is None
        assert containerd_problem((str(tmp_path / "missing.sock"), str(listening))) is None
        assert containerd_problem((str(tmp_path / "missing.sock"),)) is None  # a layout not known: no fault
        problem = containerd_problem((str(left), str(listening)))
        assert problem == f"containerd does not answer at {left} (Connection refused): Docker cannot start containers"
    finally:
        server.close()

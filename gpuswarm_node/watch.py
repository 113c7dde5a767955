"""`gpuswarm-node watch`: the node takes itself out of service when it cannot serve, and back in.

Each round (every watch.interval seconds) reads cheap health facts, judges them (`judge`, pure),
and feeds the observation to a verdict state machine with hysteresis (`decide`, pure): a fault must
be seen watch.fault_rounds rounds in a row before the node is drained, a clear watch.clear_rounds
rounds before it is made active again, and two transitions are at least
watch.min_transition_interval seconds apart, so the node never flaps.

A transition acts through the manager (through the hub's gate when it has one): a drain sets the
node's availability to drain and its `gpuswarm.health` label to the fault's slug; a clear sets the
label to `ok` and makes the node active again only when watch drained it itself: a node an operator
drained stays drained (STATE records who drained). Every transition goes to the run log; STATE
(root's, 0644, written atomically each round) holds the last verdict, which `status` shows.

The faults, in the order the label names the first of them:

| slug | fact |
|---|---|
| `nvml-down` | NVML does not initialise or answer (the driver stopped answering) |
| `gpu-lost` | NVML_ERROR_GPU_IS_LOST on a GPU (fell off the bus) |
| `gpu-missing` | a device of the slice map (/etc/gpuswarm-node/slices.json) that NVML no longer reports |
| `xid-N` | a critical Xid event N, other than the application ones (APPLICATION_XIDS), since watch began |
| `row-remap-failure` | nvmlDeviceGetRemappedRows: a row remapping failed (the GPU needs service) |
| `row-remap-pending` | a remapping waits for a GPU reset |
| `retired-pages-pending` | nvmlDeviceGetRetiredPagesPendingStatus: retired pages wait for a reboot |
| `docker-down` | the Engine API does not answer GET /_ping on its socket |
| `containerd-down` | containerd's socket is there and nobody answers on it (Docker cannot start a container) |
| `image-disk-full` | Docker's data-root has less free space than watch.min_free_disk |
| `tmpfs-missing` | the configured tmpfs is not mounted |
| `share-missing` | a [[shared.mounts]] share is not mounted, or does not answer a statfs within SHARE_TIMEOUT |
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable, ContextManager, Iterable

if TYPE_CHECKING:
    from .config import Config
    from .manager import ManagerSession
    from .notices import Notice
    from .probes.gpu_health import NvmlReading

HEALTH_LABEL = "gpuswarm.health"
STATE = "/var/lib/gpuswarm-node/watch.json"
DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_ROOT = "/var/lib/docker"  # dockerd's default data-root
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# containerd's socket: the system's (Debian's docker.io, docker-ce's containerd.io), then the one
# dockerd starts itself when it manages containerd (under its exec-root).
CONTAINERD_SOCKETS = ("/run/containerd/containerd.sock", "/var/run/docker/containerd/containerd.sock")
SHARE_TIMEOUT = 5.0  # seconds a share's statfs may take (in a child process: bounded.py says why)

# Xids an application causes on a healthy GPU: not a reason to drain. NVIDIA's device plugin skips
# the same (k8s-device-plugin, internal/rm/health.go, "Application errors: the GPU should still be
# healthy", after docs.nvidia.com/deploy/xid-errors): 13 Graphics Engine Exception, 31 GPU memory
# page fault, 43 GPU stopped processing, 45 Preemptive cleanup, 68 Video processor exception.
# Further: 69 Graphics Engine class error (a bad method of the application's channel) and 94
# Contained ECC error (only the application that touched the row is hit; the row's remapping then
# shows as row-remap-pending, which is judged on its own).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 69, 94})


@dataclass(frozen=True)
class Fault:
    slug: str  # the label's value: [a-z0-9-]
    detail: str  # one sentence for the log and status


@dataclass(frozen=True)
class Observation:
    """One round's judgement: the faults found (none: healthy)."""

    faults: tuple[Fault, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.faults

    @property
    def reason(self) -> str:
        return self.faults[0].slug if self.faults else "ok"

    def summary(self) -> str:
        return "; ".join(f.detail for f in self.faults) or "healthy"


# --- pure parsers ---------------------------------------------------------------------------

def slice_map_devices(text: str | None) -> frozenset[str]:
    """The devices (GPU-... and MIG-... uuids) behind the slices of a slice map's text (the JSON the
    docker-daemon step writes: {"slices": {slice id: device}}); empty when missing or unreadable."""
    try:
        data = json.loads(text or "")
    except ValueError:
        return frozenset()
    slices = data.get("slices") if isinstance(data, dict) else None
    if not isinstance(slices, dict):
        return frozenset()
    return frozenset(v for v in slices.values() if isinstance(v, str) and v)


def docker_root(daemon_json: str | None) -> str:
    """Docker's data-root as daemon.json sets it ("data-root"; the older "graph"), else the default."""
    try:
        data = json.loads(daemon_json or "{}")
    except ValueError:
        return DOCKER_ROOT
    if not isinstance(data, dict):
        return DOCKER_ROOT
    root = data.get("data-root") or data.get("graph")
    return root if isinstance(root, str) and root.startswith("/") else DOCKER_ROOT


def is_mounted(mountinfo: str | None, path: str, fstype: str = "") -> bool:
    """Whether /proc/self/mountinfo text has `path` as a mount point (of `fstype`, when given).
    Fields (proc(5)): id parent major:minor root mount-point options [optional...] - fstype source."""
    for line in (mountinfo or "").splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[4].replace("\\040", " ") != path:
            continue
        if not fstype:
            return True
        try:
            if fields[fields.index("-", 6) + 1] == fstype:
                return True
        except (ValueError, IndexError):
            continue
    return False


def size_text(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def judge(nvml, slice_devices: Iterable[str], docker_problem: str | None, free_bytes: int | None,
          min_free: int, tmpfs_problem: str | None, docker_root_path: str = DOCKER_ROOT,
          containerd_problem: str | None = None, share_problems: tuple[str, ...] = ()) -> Observation:
    """The faults in one round's facts: `nvml` (probes.gpu_health.NvmlReading, or None on a node
    without GPUs to watch), the slice map's devices, why Docker does not answer (or None), the
    image store's free bytes (None: unknown) against `min_free` (0: not checked), why the tmpfs
    is not there (or None), why containerd does not answer (or None), what is wrong with each
    share (none: all there and answering)."""
    faults: list[Fault] = []
    if nvml is not None:
        if nvml.problem:
            faults.append(Fault("nvml-down", f"{nvml.problem}: the GPUs cannot be used"))
        else:
            lost = [g for g in nvml.gpus if g.lost]
            if lost:
                faults.append(Fault("gpu-lost", "NVML reports GPU " + ", ".join(g.uuid or f"#{g.index}" for g in lost)
                                    + " lost (fallen off the bus)"))
            seen = {g.uuid for g in nvml.gpus if g.uuid and not g.lost}
            seen |= {m for g in nvml.gpus if not g.lost for m in g.mig_uuids}
            missing = sorted(set(slice_devices) - seen)
            if missing:
                faults.append(Fault("gpu-missing", f"the slice map advertises {', '.join(missing)}, which NVML does "
                                    f"not report ({len(nvml.gpus)} GPU(s) answer)"))
            critical = sorted({(uuid, xid) for uuid, xid in nvml.xids if xid not in APPLICATION_XIDS},
                              key=lambda item: (item[1], item[0]))
            if critical:
                faults.append(Fault(f"xid-{critical[0][1]}", "Xid " + ", ".join(
                    f"{xid} on {uuid or 'a GPU'}" for uuid, xid in critical) + " since watch began"))
            for attr, slug, what in (("remap_failure", "row-remap-failure", "a row remapping failed"),
                                     ("remap_pending", "row-remap-pending", "a row remapping waits for a GPU reset"),
                                     ("retired_pages_pending", "retired-pages-pending",
                                      "retired pages wait for a reboot")):
                hit = [g.uuid or f"#{g.index}" for g in nvml.gpus if getattr(g, attr)]
                if hit:
                    faults.append(Fault(slug, f"{what} on {', '.join(hit)}"))
    if docker_problem:
        faults.append(Fault("docker-down", docker_problem))
    if containerd_problem and not docker_problem:
        faults.append(Fault("containerd-down", containerd_problem))
    if min_free and free_bytes is not None and free_bytes < min_free:
        faults.append(Fault("image-disk-full", f"Docker's image store {docker_root_path} has {size_text(free_bytes)} "
                            f"free, less than watch.min_free_disk ({size_text(min_free)})"))
    if tmpfs_problem:
        faults.append(Fault("tmpfs-missing", tmpfs_problem))
    if share_problems:
        faults.append(Fault("share-missing", "; ".join(share_problems)))
    return Observation(tuple(faults))


# --- the verdict state machine ----------------------------------------------------------------

@dataclass(frozen=True)
class Rules:
    """watch's hysteresis: rounds to confirm a fault and a clear; seconds between transitions."""

    fault_rounds: int = 2
    clear_rounds: int = 6
    min_interval: float = 60.0

    @classmethod
    def of(cls, cfg) -> "Rules":
        return cls(cfg.fault_rounds, cfg.clear_rounds, cfg.min_transition_interval)


@dataclass(frozen=True)
class Verdict:
    """What watch holds about its node, as STATE keeps it.

    health: "ok" or "fault" (the node drained by watch's verdict); reason: the slug the label
    carries; since: when the last transition happened (epoch seconds, 0: never); streak: the
    rounds in a row whose observation disagreed with `health`; drained_by_watch: whether watch
    itself set the node to drain (False: an operator had drained it, so a clear leaves it)."""

    health: str = "ok"
    reason: str = "ok"
    since: float = 0.0
    streak: int = 0
    drained_by_watch: bool = False


@dataclass(frozen=True)
class Transition:
    kind: str  # "drain" or "activate"
    reason: str  # the label's value: a fault's slug, or "ok"


def decide(prev: Verdict, obs: Observation, now: float, rules: Rules) -> tuple[Verdict, Transition | None]:
    """The next verdict and the transition to carry out (None: none). Pure.

    A round that disagrees with the verdict lengthens the streak; one that agrees resets it. The
    verdict turns once the streak reaches the rule's count and min_interval has passed since the
    last transition (until then the streak keeps growing, so the turn comes at the first round
    allowed). The returned verdict is what holds once the transition is carried out; a caller
    whose action failed keeps `prev` with the streak (`hold`), and tries again next round."""
    disagrees = (prev.health == "ok") != obs.healthy
    streak = prev.streak + 1 if disagrees else 0
    if not disagrees:
        # Still faulty: the label names the first fault seen, not a new one each round.
        return replace(prev, streak=0), None
    need = rules.fault_rounds if prev.health == "ok" else rules.clear_rounds
    if streak < need or (prev.since and now - prev.since < rules.min_interval):
        return replace(prev, streak=streak), None
    if prev.health == "ok":
        return Verdict("fault", obs.reason, now, 0, prev.drained_by_watch), Transition("drain", obs.reason)
    # Who drained is kept until the activation is carried out (apply_transition reads it).
    return Verdict("ok", "ok", now, 0, prev.drained_by_watch), Transition("activate", "ok")


def hold(prev: Verdict, obs: Observation) -> Verdict:
    """The verdict after a round whose transition could not be carried out: unchanged, the streak
    counted, so the next round tries again."""
    disagrees = (prev.health == "ok") != obs.healthy
    return replace(prev, streak=prev.streak + 1 if disagrees else 0)


# --- STATE ------------------------------------------------------------------------------------

def state_text(verdict: Verdict, obs: Observation, checked_at: float, node_id: str = "",
               last: dict | None = None, paused: str = "", notice: dict | None = None) -> str:
    """STATE's content: the verdict, this round's observation (or why the round paused), the
    last transition, and the cloud's notice watch acts on (NoticeState.as_dict)."""
    data = {"verdict": asdict(verdict), "checked_at": round(checked_at, 3), "node_id": node_id,
            "observed": {"reason": obs.reason, "detail": obs.summary()}}
    if paused:
        data["observed"] = {"reason": "paused", "detail": f"{paused}: watch waits for it"}
    if last:
        data["last_transition"] = last
    if notice:
        data["notice"] = notice
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def parse_state(text: str | None) -> tuple[Verdict, dict]:
    """(the verdict, the whole record) from STATE's text; a fresh verdict when missing or damaged."""
    try:
        data = json.loads(text or "")
        raw = data["verdict"]
        verdict = Verdict(health=raw["health"] if raw["health"] in ("ok", "fault") else "ok",
                          reason=str(raw.get("reason", "ok")), since=float(raw.get("since", 0.0)),
                          streak=int(raw.get("streak", 0)), drained_by_watch=bool(raw.get("drained_by_watch")))
        return verdict, data
    except (ValueError, KeyError, TypeError, AttributeError):
        return Verdict(), {}


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --- actions through the manager ----------------------------------------------------------------

def apply_transition(session, node_id: str, transition: Transition, verdict: Verdict) -> tuple[Verdict, list[str]]:
    """Carry out `transition` on node `node_id` through a ManagerSession; the verdict as it holds
    after it (who drained recorded) and what was done, as sentences. Raises what the session raises."""
    done: list[str] = []
    if transition.kind == "drain":
        availability = session.node_availability(node_id)
        if availability == "drain":
            verdict = replace(verdict, drained_by_watch=False)
            done.append(f"node {node_id} was drained already (by an operator): left as it is")
        else:
            session.set_availability(node_id, "drain")
            verdict = replace(verdict, drained_by_watch=True)
            done.append(f"drained node {node_id}")
    else:
        if verdict.drained_by_watch:
            session.set_availability(node_id, "active")
            verdict = replace(verdict, drained_by_watch=False)
            done.append(f"made node {node_id} active again")
        else:
            done.append(f"node {node_id} stays as it is: watch did not drain it")
    labels = session.node_labels(node_id)
    if labels.get(HEALTH_LABEL) != transition.reason:
        session.set_labels(node_id, {**labels, HEALTH_LABEL: transition.reason})
        done.append(f"set {HEALTH_LABEL}={transition.reason}")
    return verdict, done


# --- the loop -----------------------------------------------------------------------------------

@dataclass
class Seams:
    """What a round reads and where it acts; real ones from `local_seams`, stand-ins in tests."""

    nvml: Callable[[int], NvmlReading] | None  # wait_ms -> the reading; None: no GPU to watch, ever
    read_text: Callable[[str], str | None]
    write_state: Callable[[str], None]
    docker_problem: Callable[[], str | None]
    free_bytes: Callable[[str], int | None]
    node_id: Callable[[], str | None]  # "" when the node is in no swarm (or a manager), None: Docker does not say
    manager_session: Callable[[], ContextManager[ManagerSession]]
    log: Callable[[dict], None]  # one run-log record
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.time
    busy: Callable[[], str | None] = lambda: None  # who holds the run lock (setup, leave, reset), or None
    containerd_problem: Callable[[], str | None] = lambda: None
    # A share's mount point -> why it does not answer (None: it answered), asked only of mounted shares.
    share_problem: Callable[[str], str | None] = lambda path: None
    # The cloud's spot and maintenance notices (notices.read_notices's answer); None: not read.
    notices: Callable[[float], tuple[list[Notice], str | None]] | None = None
    # Leave the swarm as `gpuswarm-node leave --timeout S` does: S -> (exit status, one line).
    leave: Callable[[float], tuple[int, str]] | None = None


@dataclass
class NoticeState:
    """What watch did about the cloud's notices, kept in STATE: `seen` the notice acted on (its
    fields), `paused` whether watch set the node's availability to pause for it, `left` whether
    the node left the swarm for it, `problem` why the last read failed."""

    seen: dict = field(default_factory=dict)
    paused: bool = False
    left: bool = False
    problem: str = ""

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def of(cls, data: object) -> "NoticeState":
        d = data if isinstance(data, dict) else {}
        seen = d.get("seen")
        return cls(seen=seen if isinstance(seen, dict) else {}, paused=bool(d.get("paused")),
                   left=bool(d.get("left")), problem=str(d.get("problem") or ""))


# A leave must be over before the instance goes: the drain gets the time up to the deadline less
# this (leaving and being forgotten by the manager take seconds), within these bounds.
LEAVE_MARGIN, MIN_LEAVE_TIMEOUT, MAX_LEAVE_TIMEOUT = 20.0, 10.0, 600.0
NOTICE_RETRY = 60.0  # seconds after a failed pause or activation for a notice before the next try


def leave_timeout(deadline: float | None, now: float) -> float:
    """Seconds the leave's drain may wait for the notebooks to move, for a notice due at `deadline`."""
    if deadline is None:
        return MAX_LEAVE_TIMEOUT
    return max(MIN_LEAVE_TIMEOUT, min(MAX_LEAVE_TIMEOUT, deadline - now - LEAVE_MARGIN))


@dataclass
class Watcher:
    cfg: Config
    seams: Seams
    verdict: Verdict = field(default_factory=Verdict)
    last: dict = field(default_factory=dict)
    node: str = ""  # the node id last asked for (on a transition), for STATE
    observed: Observation = field(default_factory=Observation)  # the last round's
    failing: str = ""  # why the last transition could not be carried out, until one is
    notice: NoticeState = field(default_factory=NoticeState)
    notice_retry_at: float = 0.0  # after a failed action on a notice, none before this (epoch seconds)

    def load(self) -> None:
        self.verdict, data = parse_state(self.seams.read_text(STATE))
        self.last = data.get("last_transition") or {}
        self.node = str(data.get("node_id") or "")
        self.notice = NoticeState.of(data.get("notice"))

    def act_on_notices(self, now: float) -> None:
        """The cloud's notices: LEAVE makes the node leave the swarm (once, bounded by the deadline);
        PAUSE sets its availability to pause while it is active and healthy, and back to active
        once the notice is gone, if watch paused it. A failed read changes nothing."""
        from . import notices as N

        s, st = self.seams, self.notice
        if s.notices is None:
            return
        found, problem = s.notices(now)
        st.problem = problem or ""
        if problem:
            return
        notice = N.first(found)
        if notice is not None and notice.action == N.LEAVE:
            if not st.left and self.node:
                self._leave(notice, now)
            return
        if st.left:
            # The notice that made the node leave is gone (an instance stopped and started again
            # keeps its disk): the next one is acted on.
            st.left, st.seen = False, {}
        if now < self.notice_retry_at:  # a pause or activation failed a moment ago; a leave never waits
            return
        if notice is not None and self.verdict.health == "ok" and self.node:
            if st.seen.get("reason") != notice.reason:  # a new notice: pause once, not every round
                self._through_manager(lambda session: self._pause(session, notice), now)
        elif st.seen:  # gone, or the node was drained for a fault meanwhile
            self._through_manager(self._unpause, now)

    def _leave(self, notice: Notice, now: float) -> None:
        s, st = self.seams, self.notice
        timeout = leave_timeout(notice.deadline, now)
        s.say(f"watch: {notice.detail}: leaving the swarm (the notebooks get {timeout:.0f} s to move)")
        status, summary = s.leave(timeout) if s.leave is not None else (1, "no way to leave")
        st.seen = {"action": notice.action, "reason": notice.reason, "detail": notice.detail,
                   "deadline": utc(notice.deadline) if notice.deadline else ""}
        st.left = status == 0
        s.log(self._notice_record(notice, ["left the swarm (gpuswarm-node leave)"] if st.left else [],
                                  None if st.left else f"leave exited {status}: {summary}"))
        if st.left:
            self.node = ""

    def _pause(self, session, notice: Notice) -> None:
        st, node = self.notice, self.node
        availability = session.node_availability(node)
        done = []
        if availability == "active":
            session.set_availability(node, "pause")
            session.set_labels(node, {**session.node_labels(node), HEALTH_LABEL: notice.reason})
            done = [f"paused node {node} (no new notebooks; the running ones stay)", f"set {HEALTH_LABEL}={notice.reason}"]
        st.paused = bool(done)
        st.seen = {"action": notice.action, "reason": notice.reason, "detail": notice.detail}
        self.seams.say(f"watch: {notice.detail}: " + "; ".join(done or [f"node {node} is {availability}: left so"]))
        self.seams.log(self._notice_record(notice, done or [f"node {node} is {availability}: left as it is"]))

    def _unpause(self, session) -> None:
        from .notices import PAUSE, Notice as NoticeOf

        st, node = self.notice, self.node
        done = []
        if st.paused and node and session.node_availability(node) == "pause":
            session.set_availability(node, "active")
            session.set_labels(node, {**session.node_labels(node), HEALTH_LABEL: "ok"})
            done = [f"made node {node} active again", f"set {HEALTH_LABEL}=ok"]
        gone = NoticeOf(PAUSE, "ok", None, f"the notice ({st.seen.get('detail', '')}) no longer holds")
        self.seams.log(self._notice_record(gone, done))
        st.paused, st.seen = False, {}

    def _through_manager(self, act: Callable[[ManagerSession], None], now: float) -> None:
        try:
            with self.seams.manager_session() as session:
                act(session)
        except Exception as exc:  # noqa: BLE001 - the service must outlive a failing manager
            # Not every round: a manager that refuses (a hub's gate without `pause`) would otherwise
            # get an SSH session every few seconds for as long as the notice holds.
            self.notice_retry_at = now + NOTICE_RETRY
            message = exc.message() if hasattr(exc, "message") else f"{type(exc).__name__}: {exc}"
            self.seams.say(f"watch: acting on the cloud's notice failed, tried again in {NOTICE_RETRY:.0f} s: {message}")

    def _notice_record(self, notice, done: list[str], error: str | None = None) -> dict:
        now = self.seams.clock()
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "mode": "watch",
                "step": "watch", "before": "ok", "after": notice.action if notice.reason != "ok" else "ok",
                "actions": done, "changed": bool(done) and error is None, "reason": notice.reason,
                "detail": notice.detail, "error": error}

    def observe(self, wait_ms: int) -> Observation:
        from .steps.docker_daemon import SLICE_MAP

        s, cfg = self.seams, self.cfg
        # The GPUs are watched once the node advertises slices (the slice map is there): a node
        # setup has not equipped yet has nothing to protect, and no driver to ask.
        slice_map = s.read_text(SLICE_MAP)
        watched = s.nvml is not None and slice_map is not None
        nvml = s.nvml(wait_ms) if s.nvml is not None and watched else None
        devices = slice_map_devices(slice_map) if watched else frozenset()
        docker_problem = s.docker_problem()
        root = docker_root(s.read_text(DAEMON_JSON))
        min_free = cfg.watch.min_free_disk_bytes
        free = s.free_bytes(root) if min_free else None
        mountinfo = s.read_text("/proc/self/mountinfo")
        tmpfs_problem = None
        if cfg.tmpfs.enabled and not is_mounted(mountinfo, cfg.tmpfs.path, "tmpfs"):
            tmpfs_problem = f"no tmpfs is mounted at {cfg.tmpfs.path} (setup mounts it: tmpfs.path)"
        shares = []
        for mount in cfg.shared.mounts:
            if not is_mounted(mountinfo, mount.path):
                shares.append(f"the share {mount.source} is not mounted at {mount.path}")
            elif (problem := s.share_problem(mount.path)) is not None:
                shares.append(f"the share at {mount.path} does not answer: {problem}")
        return judge(nvml, devices, docker_problem, free, min_free, tmpfs_problem, root,
                     s.containerd_problem() if docker_problem is None else None, tuple(shares))

    def round(self, wait_ms: int = 100) -> Transition | None:
        """One round: observe, decide, act, record. Returns the transition carried out, if any.

        While setup, leave or reset runs (they hold the run lock) the round only records that it
        paused: they restart Docker, install drivers and mount filesystems, so what watch would see
        meanwhile is their work, not a fault; the streak neither grows nor resets."""
        s = self.seams
        running = s.busy()
        if running:
            s.write_state(state_text(self.verdict, Observation(), s.clock(), self.node, self.last,
                                     paused=running))
            return None
        obs = self.observed = self.observe(wait_ms)
        now = s.clock()
        nxt, transition = decide(self.verdict, obs, now, Rules.of(self.cfg.watch))
        if not self.node or transition is not None:
            # Asked of the local Docker, and remembered for when it does not answer: a fault that
            # stops Docker must still be able to drain the node. A node that left has none.
            current = s.node_id()
            self.node = self.node if current is None else current
        node = self.node
        if transition is not None and not node:
            s.say(f"watch: {transition.kind} wanted ({obs.summary()}), but this node is in no swarm")
            nxt, transition = hold(self.verdict, obs), None
        elif transition is not None:
            try:
                with s.manager_session() as session:
                    nxt, done = apply_transition(session, node, transition, nxt)
            except Exception as exc:  # noqa: BLE001 - the service must outlive a failing manager
                message = exc.message() if hasattr(exc, "message") else f"{type(exc).__name__}: {exc}"
                s.say(f"watch: {transition.kind} of node {node} failed, tried again next round: {message}")
                if message != self.failing:  # once per cause in the run log, not every round
                    s.log(self._record(transition, obs, now, [], error=message))
                self.failing = message
                nxt, transition = hold(self.verdict, obs), None
            else:
                self.failing = ""
                self.last = {"kind": transition.kind, "reason": transition.reason, "at": utc(now),
                             "detail": obs.summary(), "actions": done}
                s.say(f"watch: {transition.kind} ({transition.reason}): {obs.summary()}; {'; '.join(done)}")
                s.log(self._record(transition, obs, now, done))
        self.verdict = nxt
        self.act_on_notices(now)
        s.write_state(state_text(nxt, obs, now, self.node, self.last, notice=self.notice.as_dict()))
        return transition

    def _record(self, transition: Transition, obs: Observation, now: float, done: list[str],
                error: str | None = None) -> dict:
        before, after = ("ok", "fault") if transition.kind == "drain" else ("fault", "ok")
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "mode": "watch",
                "step": "watch", "before": before, "after": after if error is None else before,
                "actions": done, "changed": error is None, "reason": transition.reason,
                "detail": obs.summary(), "error": error}


def local_seams(cfg, say: Callable[[str], None] = print, config_args: tuple[str, ...] = ()) -> Seams:
    """The real seams: NVML (opened once the node advertises slices), files, the Engine API's
    socket, statvfs, the manager over SSH, the run lock, the run log, the cloud's notices, and
    `leave` run with `config_args` (the --config and --set watch itself was given)."""
    import os

    from .host import LocalHost
    from .probes.docker import EngineSocket, docker_host, unix_socket_path

    host = LocalHost()
    socket_path = unix_socket_path(docker_host()) or "/var/run/docker.sock"
    nvml_watch = None

    def nvml(wait_ms: int):
        nonlocal nvml_watch
        if nvml_watch is None:
            from .probes.gpu_health import NvmlWatch

            try:
                nvml_watch = NvmlWatch()
            except ImportError:
                from .probes.gpu_health import NvmlReading

                return NvmlReading(problem="pynvml cannot be imported")
        return nvml_watch.read(wait_ms)

    def free_bytes(path: str) -> int | None:
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def node_id() -> str | None:
        try:
            info = EngineSocket(socket_path, timeout=5).get("/info")
        except Exception:  # noqa: BLE001 - Docker down is judged on its own
            return None
        swarm = (info or {}).get("Swarm") or {} if isinstance(info, dict) else {}
        if swarm.get("LocalNodeState") != "active" or swarm.get("ControlAvailable"):
            return ""
        return str(swarm.get("NodeID") or "")

    def manager_session():
        from .manager import ManagerSession

        return ManagerSession(cfg.swarm)

    def log(record: dict) -> None:
        from . import runlog

        try:
            runlog.append_records([record])
        except Exception as exc:  # noqa: BLE001 - a full or unsafe log must not stop the watch
            say(f"watch: the run log cannot be written: {exc}")

    def write_state(text: str) -> None:
        try:
            host.write_text(STATE, text, 0o644)
        except OSError as exc:
            say(f"watch: {STATE} cannot be written: {exc.strerror}")

    from .lock import running

    def share_problem(path: str) -> str | None:
        from .bounded import call

        done = call(["stat", "-f", "-c", "%T", path], SHARE_TIMEOUT)
        return None if done.returncode == 0 else (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]

    cloud = notices_cloud(cfg.watch.notices, host.read_text)
    read_cloud_notices = None
    if cloud is not None:
        from . import notices as N

        fetch = N.http_fetch(cfg.watch.metadata_url or N.DEFAULT_BASE)

        def read_cloud_notices(now: float):
            return N.read_notices(cloud, fetch, now)

    return Seams(busy=running, nvml=nvml, read_text=host.read_text, write_state=write_state,
                 docker_problem=lambda: EngineSocket(socket_path, timeout=2).unreachable_reason(),
                 free_bytes=free_bytes, node_id=node_id, manager_session=manager_session, log=log, say=say,
                 notices=read_cloud_notices, leave=lambda timeout: run_leave(timeout, config_args),
                 containerd_problem=containerd_problem, share_problem=share_problem)


def containerd_problem(sockets: tuple[str, ...] = CONTAINERD_SOCKETS) -> str | None:
    """Why containerd does not answer: its socket is there and a connection is refused (the daemon
    is gone, its socket left). None when one answers, and when none is there: a layout not known
    here is not taken for a fault."""
    import errno
    import socket as socket_mod

    for path in sockets:
        sock = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect(path)
            return None
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT) or isinstance(exc, TimeoutError):
                return f"containerd does not answer at {path} ({exc.strerror or 'timed out'}): Docker cannot start containers"
            continue
        finally:
            sock.close()
    return None


def notices_cloud(setting: str, read_text: Callable[[str], str | None]) -> str | None:
    """The cloud whose notices watch reads (watch.notices): the one named, or with "auto" the one
    the machine is on (clouds.detect) when notices.CLOUDS has it; None: none are read."""
    from . import clouds
    from .notices import CLOUDS

    if setting == "off":
        return None
    if setting != "auto":
        return setting
    dmi = {name: read_text(f"{clouds.DMI_DIR}/{name}") for name in clouds.DMI_FILES}
    cloud, _how = clouds.detect(read_text(clouds.CLOUD_ID), read_text(clouds.INSTANCE_DATA), dmi)
    return cloud if cloud in CLOUDS else None


def run_leave(timeout: float, config_args: tuple[str, ...] = ()) -> tuple[int, str]:
    """`gpuswarm-node leave --timeout S --json` by this interpreter, with watch's own configuration
    (`config_args`; none: the last setup's): the same plan, lock, journal and run log as an
    operator's leave. (exit status, its last line on stderr)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "gpuswarm_node.cli", "leave", "--timeout", f"{timeout:.0f}", "--json", *config_args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"gpuswarm-node leave could not run: {exc}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines[-1][:300] if lines else ""


def serve(cfg, interval: float, once: bool = False, seams: Seams | None = None,
          sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = print,
          config_args: tuple[str, ...] = ()) -> Watcher:
    """Run rounds every `interval` seconds until stopped (SIGTERM from systemd), or one round.
    `config_args`: the --config and --set watch was given, for the `leave` a notice runs."""
    watcher = Watcher(cfg, seams or local_seams(cfg, say, config_args))
    watcher.load()
    # Waiting for Xid events is part of the round: up to half the interval, at most a second.
    wait_ms = int(min(interval / 2, 1.0) * 1000)
    while True:
        started = time.monotonic()
        watcher.round(wait_ms)
        if once:
            return watcher
        sleep(max(0.0, interval - (time.monotonic() - started)))

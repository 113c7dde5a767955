"""State for unit tests: a host, a Docker daemon and an NVML answer that hold what a case says.

These stand in for the seams (gpuswarm_node.host.Host, probes.docker.DockerApi, the inventory
reader), not for library internals, so the step code under test is the code users run.
"""

from __future__ import annotations

import json
import platform
import time
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from gpuswarm_node.errors import CommandFailed, NvmlUnavailable
from gpuswarm_node.host import CommandResult, FileStatus, LockHolder, PathAnswer
from gpuswarm_node.probes.docker import SwarmMembership
from gpuswarm_node.probes.gpu import Gpu, Inventory, MigDevice
from gpuswarm_node.probes.cuda import CudaState


def _result(argv: list[str], spec: Mapping[str, Any]) -> CommandResult:
    return CommandResult(tuple(argv), spec.get("rc", 0), spec.get("stdout", ""), spec.get("stderr", ""))


@dataclass
class FakeHost:
    """Files, directories, facts and command answers given by the test; changes are recorded as
    actions ("run ...", "write ...", "download ...").

    `facts` states facts (gpuswarm_node.facts) by name instead of the files or commands they are
    read from: {"active_state": {"docker": "active"}, "package_installed": {"docker.io": true},
    "dpkg_architecture": "arm64"} (a fact without an argument is stated by its value); a Context
    on this host answers them (its `given_facts`). Step cases state facts only; `commands` (a
    command line's answer for `query`) is for tests of a fact's own parser. `downloads` maps a URL
    to the body `download` gets.

    `effects` maps a command line to the state it leaves behind: {"commands": {...}, "facts": {...},
    "files": {...}, "dirs": [...], "stats": {...}}, so that applying then checking can converge without a real
    machine. `stats` gives a path's owner and mode where they are not the default (root's; 0644,
    0755 for a program or a directory): {"uid": 1000, "gid": 0, "mode": "0666", "symlink": false},
    and "regular": false for a FIFO, a socket or a device.
    An effect's "fails_first": [{"rc": 100, "stderr": "..."}] are the command's answers to its first
    runs, in order, before it succeeds. `locks` are the fcntl locks other processes hold:
    {path: {"pid": 812, "command": "apt-get", "probes": 2}}, held for that many looks (default: always).
    `hung` are paths whose bounded reads do not answer (on an NFS share whose server is gone);
    `immutable` the directories that carry chattr's +i (an effect may add to both: "immutable").
    """

    files: dict[str, str | bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    commands: dict[str, dict] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    programs: dict[str, str] = field(default_factory=dict)
    mtimes: dict[str, float] = field(default_factory=dict)
    effects: dict[str, dict] = field(default_factory=dict)
    fstab_problem: str | None = None
    docker_config_problem: str | None = None
    stats: dict[str, FileStatus] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # symlink -> its target, for realpath
    docker_info: dict = field(default_factory=dict)  # shared with FakeDocker.daemon_info (an effect's "docker_info")
    locks: dict[str, dict] = field(default_factory=dict)
    downloads: dict[str, str] = field(default_factory=dict)  # URL -> body; another URL cannot be reached
    hung: set[str] = field(default_factory=set)
    immutable: set[str] = field(default_factory=set)
    # What a TLS server on this machine presents, by "host:port" ({"sha256": ...}); none answers elsewhere.
    served: dict[str, dict] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # the log file of each command run with one

    @classmethod
    def from_case(cls, spec: Mapping[str, Any]) -> "FakeHost":
        return cls(files=dict(spec.get("files", {})), dirs=set(spec.get("dirs", [])),
                   commands=dict(spec.get("commands", {})),
                   facts={name: dict(v) if isinstance(v, dict) else v for name, v in spec.get("facts", {}).items()},
                   programs=dict(spec.get("which", {})),
                   mtimes=dict(spec.get("mtimes", {})), effects=dict(spec.get("effects", {})),
                   fstab_problem=spec.get("fstab_problem"),
                   docker_config_problem=spec.get("docker_config_problem"),
                   stats=stats_from_case(spec.get("stats", {})),
                   locks={path: dict(lock) for path, lock in spec.get("locks", {}).items()},
                   downloads=dict(spec.get("downloads", {})), links=dict(spec.get("links", {})),
                   hung=set(spec.get("hung", [])), immutable=set(spec.get("immutable", [])))

    def query(self, argv: list[str]) -> CommandResult:
        line = shlex.join(argv)
        if line not in self.commands:
            raise AssertionError(f"the case does not say what `{line}` answers")
        return _result(argv, self.commands[line])

    def run(self, argv: list[str], env: Mapping[str, str] | None = None,
            timeout: float | None = None, log: str | None = None,
            apt_status: Callable[[str], None] | None = None) -> CommandResult:
        line = shlex.join(argv)
        if log is not None:
            self.logs.append(log)
        self.actions.append(f"run {line}")
        effect = self.effects.get(line, {})
        if effect.get("fails_first"):
            failure = effect["fails_first"].pop(0)
            raise CommandFailed(list(argv), failure["rc"], failure.get("stdout", "") + failure.get("stderr", ""))
        if effect.get("rc", 0) != 0:
            raise CommandFailed(list(argv), effect["rc"], effect.get("stderr", ""))
        self.commands.update(effect.get("commands", {}))
        for name, value in effect.get("facts", {}).items():
            if isinstance(value, dict):
                self.facts.setdefault(name, {}).update(value)
            else:
                self.facts[name] = value
        self.files.update(effect.get("files", {}))
        self.dirs.update(effect.get("dirs", []))
        self.programs.update(effect.get("which", {}))
        self.stats.update(stats_from_case(effect.get("stats", {})))
        self.immutable.update(effect.get("immutable", []))
        self.hung.difference_update(effect.get("answers", []))
        if "docker_info" in effect:  # what the Docker daemon answers GET /info with from now on
            self.docker_info.clear()
            self.docker_info.update(effect["docker_info"])
        return CommandResult(tuple(argv), 0, "", "")

    def read_text(self, path: str) -> str | None:
        content = self.files.get(path)
        if isinstance(content, bytes):
            raise AssertionError(f"{path} holds bytes, not text")
        return content

    def read_bytes(self, path: str) -> bytes | None:
        if path in self.dirs:
            raise IsADirectoryError(21, "Is a directory", path)
        content = self.files.get(path)
        return content.encode() if isinstance(content, str) else content

    def write_text(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        self.actions.append(f"write {path}")
        self.files[path] = content
        # As on LocalHost: the file is root's with this mode, whatever was there (a symlink too).
        self.stats[path] = FileStatus(0, 0, mode, False)
        if mode & 0o111:
            self.programs[path] = path
        else:
            self.programs.pop(path, None)

    def download(self, url: str, timeout: float = 60) -> bytes:
        self.actions.append(f"download {url}")
        if url not in self.downloads:
            raise OSError(f"the case gives no answer for {url}")
        return self.downloads[url].encode()

    def remove(self, path: str) -> None:
        self.actions.append(f"remove {path}")
        self.files.pop(path, None)
        self.stats.pop(path, None)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self.actions.append(f"mkdir {path}")
        self.dirs.add(path)
        if mode != 0o755:  # as LocalHost: the directory is root's with this mode
            self.stats[path] = FileStatus(0, 0, mode, False, is_dir=True, is_regular=False)

    def exists(self, path: str) -> bool:
        path = self.realpath(path)  # as os.path.exists, a symlink is followed
        return path in self.files or path in self.dirs

    def which(self, program: str) -> str | None:
        return self.programs.get(program)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in [*self.files, *self.dirs] if p.startswith(prefix)}
        return sorted(names)

    def mtime(self, path: str) -> float | None:
        return self.mtimes.get(path, 0.0 if path in self.files else None)

    def touch(self, path: str) -> None:
        if path in self.files:
            self.mtimes[path] = time.time()
            self.actions.append(f"touch {path}")

    def realpath(self, path: str) -> str:
        """`path` with the case's `links` ({link: target}) resolved, a prefix at a time."""
        for _ in range(40):
            for link, target in self.links.items():
                if path == link or path.startswith(link.rstrip("/") + "/"):
                    path = target + path[len(link):]
                    break
            else:
                return path
        return path

    def file_status(self, path: str) -> FileStatus | None:
        if path in self.stats:
            return self.stats[path]
        if path in self.files:
            return FileStatus(0, 0, 0o755 if path in self.programs else 0o644, False)
        prefix = path.rstrip("/") + "/"
        if path in self.dirs or any(p.startswith(prefix) for p in [*self.files, *self.dirs]):
            return FileStatus(0, 0, 0o755, False, is_dir=True, is_regular=False)
        return None

    def bounded_status(self, path: str, timeout: float) -> PathAnswer:
        if path in self.hung:
            return PathAnswer(None, problem=f"does not answer within {timeout:g} s")
        return PathAnswer(self.file_status(path), path in self.immutable)

    def os_release(self) -> dict[str, str]:
        # The parser platform.freedesktop_os_release() uses, over the case's files.
        text = self.files.get("/etc/os-release") or self.files.get("/usr/lib/os-release")
        return platform._parse_os_release(text.splitlines()) if text is not None else {}

    def memory_bytes(self) -> int:
        """The case's /proc/meminfo MemTotal: what sysconf reports on the machine it describes."""
        for line in (self.files.get("/proc/meminfo") or "").splitlines():
            if line.startswith("MemTotal:"):
                value, unit = line.split()[1:3]
                return int(value) * (1024 if unit == "kB" else 1)
        raise AssertionError("the case gives no /proc/meminfo MemTotal")

    def lock_holder(self, path: str) -> LockHolder | None:
        lock = self.locks.get(path)
        if lock is None or lock.get("probes", 1) <= 0:
            return None
        if "probes" in lock:
            lock["probes"] -= 1
        self.actions.append(f"look at {path}: held by {lock['pid']}")
        return LockHolder(int(lock["pid"]), lock.get("command", ""))

    def served_certificate(self, host: str, port: int) -> dict[str, str]:
        return self.served.get(f"{host}:{port}", {"problem": f"no TLS answer at {host}:{port} (Connection refused)"})

    def validate_docker_config(self, content: str) -> str | None:
        self.actions.append("validate daemon.json")
        return self.docker_config_problem

    def verify_fstab(self, entries: str) -> str | None:
        self.actions.append(f"verify fstab {entries.strip()}")
        return self.fstab_problem


class FakeClock:
    """Stands in for the `time` module where a step waits: sleeping moves the clock on at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def stats_from_case(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, FileStatus]:
    return {path: FileStatus(int(st.get("uid", 0)), int(st.get("gid", 0)), int(str(st.get("mode", "0644")), 8),
                             bool(st.get("symlink", False)), bool(st.get("dir", False)),
                             bool(st.get("regular", not st.get("symlink") and not st.get("dir"))))
            for path, st in spec.items()}


@dataclass
class FakeDocker:
    """`cluster_id`: the swarm this node is in as it can tell (its certificate's O=; "" when it
    cannot); a join moves it to `cluster_after_join`, the swarm whose token it joined with."""

    reachable: bool = True
    images: set[str] = field(default_factory=set)
    membership: SwarmMembership = field(default_factory=lambda: SwarmMembership("inactive"))
    manager_addr_after_join: str = ""
    cluster_id: str = ""
    cluster_after_join: str = ""
    containers: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    own_nodes: int = 1  # a manager's swarm: its nodes and services
    own_services: list[str] = field(default_factory=list)
    daemon_info: dict = field(default_factory=dict)  # GET /info's answer (the case's "info")

    @classmethod
    def from_case(cls, spec: Mapping[str, Any]) -> "FakeDocker":
        swarm = spec.get("swarm", {"state": "inactive"})
        return cls(reachable=spec.get("reachable", True), images=set(spec.get("images", [])),
                   membership=SwarmMembership(swarm.get("state", "inactive"), swarm.get("node_id", ""),
                                              swarm.get("is_manager", False),
                                              tuple(swarm.get("manager_addrs", ())), swarm.get("error", "")),
                   manager_addr_after_join=spec.get("manager_addr_after_join", ""),
                   cluster_id=swarm.get("cluster_id", ""),
                   containers=list(spec.get("containers", [])),
                   own_nodes=int(swarm.get("nodes", 1)), own_services=list(swarm.get("services", [])),
                   daemon_info=dict(spec.get("info", {})))

    def unreachable_reason(self) -> str | None:
        return None if self.reachable else "the Docker daemon does not answer at unix:///var/run/docker.sock"

    def info(self) -> dict:
        return dict(self.daemon_info)

    def image_present(self, name: str) -> bool:
        return name in self.images

    def pull(self, name: str, on_progress: Callable[[dict], None]) -> None:
        self.calls.append(f"pull {name}")
        on_progress({"id": "layer1", "status": "Downloading", "progressDetail": {"current": 5, "total": 10}})
        self.images.add(name)

    def swarm(self) -> SwarmMembership:
        return self.membership

    def node_cluster_id(self) -> str:
        return self.cluster_id

    def join(self, manager_addr: str, token: str, advertise_addr: str) -> None:
        if self.membership.state != "inactive":
            raise AssertionError(f"join while the node is {self.membership.state}: Docker refuses it")
        self.calls.append(f"join {manager_addr}")
        # Once joined, a node's manager list holds what its managers advertise, not the join address.
        self.membership = SwarmMembership("active", "node1", False,
                                          (self.manager_addr_after_join or manager_addr,))
        self.cluster_id = self.cluster_after_join

    def leave(self) -> None:
        self.calls.append("leave")
        self.membership = SwarmMembership("inactive")
        self.cluster_id = ""

    def running_containers(self) -> list[str]:
        return list(self.containers)

    def own_swarm_contents(self) -> tuple[int, list[str]]:
        if not self.membership.is_manager:
            raise AssertionError("only a manager can list its swarm's nodes and services")
        return self.own_nodes, list(self.own_services)

    def init(self, advertise_addr: str) -> None:
        self.calls.append("init")
        self.membership = SwarmMembership("active", "node1", True, ("127.0.0.1:2377",))
        self.cluster_id = "ownclusterid"


@dataclass
class FakeManager:
    """The manager at swarm.manager as SSH would find it, read through the same parser as the real
    answer. Case keys: "info" (what SWARM_INFO_COMMAND prints there), "nodes" (its node ids),
    "unreachable" (SSH fails: the reason), "token_error" (the join-token command fails), "token"."""

    spec: Mapping[str, Any] | None
    reads: list[str] = field(default_factory=list)  # one entry per SSH session: "info", "+nodes", "+token"
    availability: dict[str, str] = field(default_factory=dict)  # node id -> what set_availability set

    def read(self, cfg, token: bool, node_id: str):
        from dataclasses import replace

        from gpuswarm_node.errors import ManagerUnreachable
        from gpuswarm_node.manager import parse_swarm_info

        if self.spec is None:
            raise AssertionError("the case does not say what the manager answers")
        self.reads.append("info" + ("+nodes" if node_id else "") + ("+token" if token else ""))
        if self.spec.get("fails_first"):  # the network's failures, as manager._explain marks them
            error = ManagerUnreachable(f"cannot reach the manager at {cfg.ssh_user}@{cfg.manager}:{cfg.ssh_port}: "
                                       f"{self.spec['fails_first'].pop(0)}.",
                                       "Check swarm.manager, swarm.ssh_port and the network.")
            error.transient = True
            raise error
        if "unreachable" in self.spec:
            raise ManagerUnreachable(f"cannot reach the manager at {cfg.ssh_user}@{cfg.manager}:{cfg.ssh_port}: "
                                     f"{self.spec['unreachable']}.", "Check swarm.manager, swarm.ssh_port and the network.")
        answer = parse_swarm_info(json.dumps(self.spec["info"]), cfg.manager)
        if node_id:
            answer = replace(answer, node_known=node_id in self.spec.get("nodes", []))
        if token:
            if "token_error" in self.spec:
                raise ManagerUnreachable(self.spec["token_error"], "")
            answer = replace(answer, token=self.spec.get("token", "SWMTKN-1-abc123-def456"))
        return answer

    @property
    def cluster_id(self) -> str:
        return ((self.spec or {}).get("info") or {}).get("ClusterID", "")

    def session(self):
        """A stand-in ManagerSession: case keys "labels" (the node's gpuswarm.* labels) and "tasks"
        (the ids of the tasks running on the node until it is drained); a node asked about is down."""
        import contextlib

        from gpuswarm_node.errors import ManagerUnreachable

        fake = self

        class Session:
            def node_labels(self, node_id: str) -> dict[str, str]:
                fake.reads.append(f"labels {node_id}")
                return dict(fake.spec.get("labels", {}))

            def running_tasks(self, node_id: str) -> list[str]:
                fake.reads.append(f"tasks {node_id}")
                return [] if fake.availability.get(node_id) == "drain" else list(fake.spec.get("tasks", []))

            def set_availability(self, node_id: str, availability: str) -> None:
                fake.reads.append(f"availability {node_id} {availability}")
                fake.availability[node_id] = availability

            def set_labels(self, node_id: str, labels: dict[str, str]) -> None:
                fake.reads.append(f"set-labels {node_id}")
                fake.spec = {**fake.spec, "labels": dict(labels)}

            def node_availability(self, node_id: str) -> str:
                fake.reads.append(f"availability? {node_id}")
                return fake.availability.get(node_id, fake.spec.get("availability", "active"))

            def node_state(self, node_id: str) -> str:
                fake.reads.append(f"state {node_id}")
                return "down"  # a node that left, as the manager soon sees it

            def remove_node(self, node_id: str) -> None:
                fake.reads.append(f"remove {node_id}")

        @contextlib.contextmanager
        def session():
            if self.spec is None:
                raise AssertionError("the case does not say what the manager answers")
            if "unreachable" in self.spec:
                raise ManagerUnreachable(f"cannot reach the manager: {self.spec['unreachable']}.", "")
            yield Session()

        return session()


@dataclass
class FakePorts:
    """TCP connect tests: "host:port" -> why it fails; every other address answers."""

    closed: Mapping[str, str] = field(default_factory=dict)
    probed: list[str] = field(default_factory=list)

    def problem(self, host: str, port: int) -> str | None:
        from gpuswarm_node.manager import join_host_port

        address = join_host_port(host, port)
        self.probed.append(address)
        return self.closed.get(address)


def inventory_from_case(spec: Mapping[str, Any] | None) -> Callable[[], Inventory]:
    """`{"error": "..."}` for NVML failing, else {"driver": "...", "gpus": [{uuid, name, memory_gib, mig}]}."""

    def read() -> Inventory:
        if spec is None or "error" in spec:
            raise NvmlUnavailable((spec or {}).get("error", "libnvidia-ml.so.1 is not installed."), "")
        gpus = []
        for i, g in enumerate(spec.get("gpus", [])):
            migs = tuple(MigDevice(m["uuid"], int(m.get("memory_gib", 5) * 2**30)) for m in g.get("mig", []))
            gpus.append(Gpu(i, g["uuid"], g.get("name", "NVIDIA Test GPU"), int(g.get("memory_gib", 12) * 2**30),
                            mig_enabled=g.get("mig_enabled", bool(migs)), mig_devices=migs))
        return Inventory(spec.get("driver", "550.54.15"), tuple(gpus))

    return read


def cuda_from_case(spec: Mapping[str, Any] | None, gpus: Mapping[str, Any] | None = None) -> Callable[[], CudaState]:
    """What cuInit and cuDeviceGetCount answer: `{"error": 802}` (a CUresult), `{"missing": "why"}`
    (libcuda.so.1 not loadable), `{"devices": N}`; by default CUDA works and sees the case's GPUs."""

    def read() -> CudaState:
        from gpuswarm_node.probes.cuda import CAUSES

        if spec is None:
            return CudaState(devices=len((gpus or {}).get("gpus", [])))
        if "missing" in spec:
            return CudaState(error=-1, detail=spec["missing"])
        if "error" in spec:
            return CudaState(error=spec["error"], detail=CAUSES.get(spec["error"], ("",))[0])
        return CudaState(devices=spec.get("devices", 0))

    return read

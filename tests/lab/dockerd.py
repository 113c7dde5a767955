"""A private dockerd inside one lab netns (the manager, or a light worker).

Why it is started the way it is:
- ``nsenter --net`` (not ``ip netns exec``, which remounts /sys and breaks
  dockerd's cgroup detection), then ``unshare -m --propagation private`` so
  that every mount dockerd makes (overlay2, container netns, shm) lives in a
  namespace of its own and disappears with it; the host's mount table is
  never touched.
- dockerd reads registry trust only from the hard-coded
  ``/etc/docker/certs.d/<host:port>/ca.crt`` (and 20.10 writes
  ``/etc/docker/key.json``), so ``state_dir/etc-docker`` is bind-mounted over
  /etc/docker inside that namespace: each daemon gets its own trust and
  daemon.json and the host's /etc/docker stays as it was.
- A private tmpfs /run makes dockerd start its own containerd (it would use a
  host one found at /run/containerd/containerd.sock) and hides other daemons'
  sockets.  Before that, /run/netns is lazily unmounted in the private
  namespace: otherwise its copies of the lab's netns bind mounts would keep
  deleted namespaces (and their veths) alive for as long as this daemon runs.
- Left to itself dockerd puts docker0 on 172.17.0.0/16 and local networks
  (docker_gwbridge) in 172.x/192.168.x; the lab may only use 198.18.0.0/15,
  hence ``bip`` and ``default-address-pools`` defaults.
- Each daemon gets its own cgroup parent (``/gsn-lab-<netns>``) instead of
  the shared ``/docker``, so its empty cgroup dirs can be removed on stop
  without guessing whether another dockerd on the host still uses them.
- containerd shims double-fork away from dockerd, so after a crash they are
  found by their mount namespace (which only our processes share), and the
  containers as their descendants.
- The SDK must negotiate the API version: SDK 7.1 defaults to 1.44, dockerd
  20.10 speaks at most 1.41.
- ``engine`` picks the dockerd: by default the host's (Debian 12's 20.10), or a
  directory holding another ``dockerd`` and its ``docker-proxy`` (the manager's
  Debian 13 engine, engine.py), which then comes first on the daemon's PATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import docker

from .network import LabHost
from .util import processes

# Only 198.18.0.0/15.  198.18.0.0/24 is the lab bridge, 198.19.0.0/16 the swarm
# overlay pool; each daemon sits in its own netns, so daemons may share these.
DEFAULT_DAEMON_JSON = {
    "bip": "198.18.128.1/24",
    "default-address-pools": [{"base": "198.18.192.0/18", "size": 24}],
    # Test containers often run a shell or sleep as PID 1, which ignores
    # SIGTERM; don't wait dockerd's default 15 s for each on shutdown.
    "shutdown-timeout": 3,
}
CGROUP_PREFIX = "/gsn-lab-"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# Variables that would send dockerd's registry traffic out of the lab.
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}

# $1 is the /etc/docker replacement ("-" for none), the rest the command.
_NS_SCRIPT = """set -e
if [ "$1" != - ]; then mount --bind "$1" /etc/docker; fi
if mountpoint -q /run/netns; then umount -l /run/netns; fi
mount -t tmpfs -o mode=0755 gsn-lab-run /run
shift
exec "$@"
"""


def private_mount_ns_argv(host: LabHost, etc_docker: Path | None, argv: list[str]) -> list[str]:
    """argv running ``argv`` in ``host``'s netns and a private mount namespace.

    With ``etc_docker`` that dir replaces /etc/docker; /run is always a fresh
    tmpfs.  Everything on the way execs, so the Popen pid is ``argv``'s pid.
    """
    return [
        *host.nsenter_prefix(),
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", _NS_SCRIPT, "sh", str(etc_docker or "-"), *argv,
    ]


def lab_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, ppid, _name in processes():
        children.setdefault(ppid, []).append(pid)
    return children


def private_mnt_ns(pid: int) -> str | None:
    """``pid``'s mount namespace once it has left ours (None until then)."""
    ns = _mnt_ns(pid)
    return ns if ns and ns != _mnt_ns(os.getpid()) else None


def with_descendants(pids: list[int]) -> list[int]:
    children = _children_map()
    todo, seen = list(pids), set(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return sorted(seen)


def processes_in_mount_ns(mnt_ns: str) -> list[int]:
    """Pids whose mount namespace is ``mnt_ns``, plus all their descendants."""
    if mnt_ns == _mnt_ns(os.getpid()):
        raise ValueError("refusing to collect the processes of our own mount namespace")
    pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
    return with_descendants([p for p in pids if _mnt_ns(p) == mnt_ns])


def alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (which is as good as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_and_wait(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen, mnt_ns: str | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM ``proc``, SIGKILL after ``timeout``, then kill what it left in ``mnt_ns``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if mnt_ns:
        kill_and_wait(processes_in_mount_ns(mnt_ns))


def remove_cgroup_dirs(parent: str) -> None:
    """rmdir ``/gsn-lab-*`` cgroup ``parent`` (a glob is fine) in every hierarchy.

    Children go first; cgroups that still hold processes stay.
    """
    if not parent.startswith(CGROUP_PREFIX):
        return  # never touch a cgroup tree we did not name
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] not in ("cgroup", "cgroup2"):
            continue
        for top in Path(fields[4]).glob(parent.lstrip("/")):
            subdirs = [p for p in top.rglob("*") if p.is_dir()]
            for d in sorted(subdirs, key=lambda p: -len(p.parts)) + [top]:
                _rmdir_quiet(d)


def _rmdir_quiet(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LabDockerd:
    """dockerd in ``host``'s netns; everything it owns lives under ``state_dir``."""

    def __init__(self, host: LabHost, state_dir: Path, daemon_json: dict | None = None,
                 hostname: str | None = None, engine: Path | None = None) -> None:
        if not Path("/etc/docker").is_dir():
            # We bind-mount over it and must not create anything in the host's /etc.
            raise RuntimeError("/etc/docker must exist on the host (it is a mount point for the lab)")
        self.host = host
        # With a hostname, dockerd gets a UTS namespace of its own: the swarm knows a node by the
        # hostname its daemon reports (Description.Hostname), as it would a separate machine.
        self.hostname = hostname
        self.engine = engine
        self.state_dir = Path(state_dir)
        self.etc_docker = self.state_dir / "etc-docker"
        self.socket_path = self.state_dir / "docker.sock"
        self.pidfile = self.state_dir / "docker.pid"
        self.log_path = self.state_dir / "dockerd.log"
        self.data_root = self.state_dir / "data"
        self.exec_root = self.state_dir / "exec"
        self._proc: subprocess.Popen | None = None
        self._mnt_ns: str | None = None
        for d in (self.etc_docker, self.data_root, self.exec_root):
            d.mkdir(parents=True, exist_ok=True)
        config = self._read_config()
        config.update(daemon_json or {})
        self._write_config(config)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _config_path(self) -> Path:
        return self.etc_docker / "daemon.json"

    def _read_config(self) -> dict:
        path = self._config_path()
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_config(self, config: dict) -> None:
        self._config_path().write_text(json.dumps(config, indent=2) + "\n")

    @property
    def cgroup_parent(self) -> str:
        return f"{CGROUP_PREFIX}{self.host.name}"

    def start(self) -> None:
        if self._proc and self._proc.poll() is None:
            raise RuntimeError("dockerd already running")
        # Tests may have rewritten daemon.json; only fill in what keeps us in range.
        defaults = {**DEFAULT_DAEMON_JSON, "cgroup-parent": self.cgroup_parent}
        self._write_config({**defaults, **self._read_config()})
        env = lab_env()
        if self.engine:
            env["PATH"] = f"{self.engine}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        argv = [
            str(self.engine / "dockerd") if self.engine else "dockerd",
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.url,
        ]
        if self.hostname:
            argv = ["unshare", "--uts", "sh", "-c", 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"',
                    self.hostname, *argv]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                private_mount_ns_argv(self.host, self.etc_docker, argv),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._mnt_ns = self._mnt_ns or private_mnt_ns(self._proc.pid)
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd in {self.host.name} exited ({self._proc.returncode}):\n{tail(self.log_path)}"
                )
            if self.socket_path.exists():
                try:
                    client = self.client(timeout=5)
                    try:
                        client.ping()
                    finally:
                        client.close()
                    return
                except Exception as e:  # not up yet
                    last_error = e
            time.sleep(0.2)
        raise RuntimeError(
            f"dockerd in {self.host.name} not ready after {START_TIMEOUT}s ({last_error}):\n{tail(self.log_path)}"
        )

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, version="auto", timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc, self._mnt_ns)
        self._proc = None
        self._mnt_ns = None
        self._unmount_leftovers()
        remove_cgroup_dirs(self._read_config().get("cgroup-parent", self.cgroup_parent))

    def _unmount_leftovers(self) -> None:
        # Everything was mounted in the private namespace; this only matters if
        # something escaped it, and then it must go before state_dir is removed.
        prefix = str(self.state_dir.resolve()) + "/"
        mounts = [
            line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ]
        for mnt in reversed(mounts):
            if mnt.startswith(prefix):
                subprocess.run(["umount", "-l", mnt], capture_output=True)

    def __enter__(self) -> "LabDockerd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

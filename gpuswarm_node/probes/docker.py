"""The Docker daemon: its swarm membership, images, running containers, pulls and joins.

Reads (ping, /info, image lookups, containers) go straight to a local daemon's unix socket as
HTTP/1.0 GETs of the Engine API over the standard library's socket (EngineSocket): one request per
connection, the answer read to its end, so neither chunked bodies nor keep-alive arise, and the
status line and the body are all there is to read. http.client would do the same but imports the
email package and ssl (about 10 ms of status's start on the benchmark's node, measured). Changes (pull, join, init,
leave, image removal), and every read when DOCKER_HOST is not a unix socket, go through the
Docker SDK, imported on first use, so that commands that only read never pay for it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote
from typing import Callable, Protocol

from ..errors import StepFailed
from ..secrets import redact


PENDING_WAIT = 45.0


@dataclass(frozen=True)
class SwarmMembership:
    state: str  # Docker's LocalNodeState: inactive, pending, active, error, locked
    node_id: str = ""
    is_manager: bool = False
    manager_addrs: tuple[str, ...] = ()  # host:port of the managers this node knows
    error: str = ""


class DockerApi(Protocol):
    def unreachable_reason(self) -> str | None: ...

    def image_present(self, name: str) -> bool: ...

    def pull(self, name: str, on_progress: Callable[[dict], None]) -> None: ...

    def swarm(self) -> SwarmMembership: ...

    def node_cluster_id(self) -> str: ...

    def join(self, manager_addr: str, token: str, advertise_addr: str) -> None: ...

    def init(self, advertise_addr: str) -> None: ...

    def leave(self) -> None: ...

    def running_containers(self) -> list[str]: ...

    def remove_image(self, name: str) -> None: ...

    def info(self) -> dict: ...

    def own_swarm_contents(self) -> tuple[int, list[str]]: ...


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def unix_socket_path(host: str) -> str | None:
    return host[len("unix://"):] if host.startswith("unix://") else None


class EngineSocket:
    """Read-only GETs of the Engine API over its unix socket, with the standard library."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path, self.timeout = path, timeout

    def get(self, url: str, missing_ok: bool = False):
        """The answer to GET `url` (a path, already quoted): parsed JSON, or text; None for a 404
        when `missing_ok`. StepFailed when the daemon does not answer, or answers otherwise."""
        chunks = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise StepFailed(f"the Docker daemon does not answer at unix://{self.path} ({exc}).",
                             "Make sure docker is installed and running (setup --only docker).") from None
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        words = head.split(b"\r\n", 1)[0].split()
        status = int(words[1]) if len(words) > 1 and words[0].startswith(b"HTTP/") and words[1].isdigit() else 0
        if status == 404 and missing_ok:
            return None
        if status != 200:
            answer = f"{status} to GET {url}: {body.decode(errors='replace').strip()}" if status else \
                f"no HTTP to GET {url}: {head[:80].decode(errors='replace')!r}"
            raise StepFailed(f"the Docker daemon answered {answer}.", "Check the Docker daemon's log.")
        return json.loads(body) if body.strip().startswith((b"{", b"[")) else body.decode()

    def unreachable_reason(self) -> str | None:
        try:
            self.get("/_ping")
        except StepFailed:
            return f"the Docker daemon does not answer at unix://{self.path}"
        return None


class EarlyInfo:
    """GET /info begun on a thread before the program has loaded what asks for it.

    dockerd takes about 27 ms to answer /info on the benchmark's node (it asks its storage driver,
    its plugins and the swarm), far more than any other read of status; status's imports and its
    configuration take longer than that, so the answer is there, at no wait, when the first check
    asks. The answer is the daemon's at the moment it was asked, as any read's: it serves the first
    `info()` of an SdkDocker on the same socket, once; every later one asks the daemon again. Only
    for a command that changes nothing before it reads (status): what setup reads after an action
    must be read after it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._answer: dict = {}
        self._thread = threading.Thread(target=self._get, name="early GET /info", daemon=True)
        self._thread.start()

    def _get(self) -> None:
        try:
            self._answer["value"] = EngineSocket(self.path).get("/info")
        except BaseException as exc:  # raised where it is taken, as the read there would raise it
            self._answer["error"] = exc

    def take(self) -> dict:
        self._thread.join()
        if "error" in self._answer:
            raise self._answer["error"]
        return self._answer["value"]


_early_info: EarlyInfo | None = None
_early_lock = threading.Lock()  # status's checks run on threads: the early answer is taken once


def begin_info() -> None:
    """Begin GET /info now (EarlyInfo) when DOCKER_HOST is a unix socket; the first SdkDocker.info()
    of this process takes the answer."""
    global _early_info
    path = unix_socket_path(docker_host())
    if path is not None:
        _early_info = EarlyInfo(path)


def _take_early_info(path: str) -> dict | None:
    global _early_info
    with _early_lock:
        early, _early_info = _early_info, None
    return early.take() if early is not None and early.path == path else None


class SdkDocker:
    """The local daemon (DOCKER_HOST or the default socket): changes through the Docker SDK."""

    def __init__(self) -> None:
        self._client = None
        # Reads (ping, info, image lookups) go straight to a local socket: importing the SDK
        # (which pulls in paramiko for ssh:// hosts) costs more than all of status's checks.
        path = unix_socket_path(docker_host())
        self._engine = EngineSocket(path) if path else None

    @property
    def client(self):
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=60)
            except docker.errors.DockerException as exc:
                raise StepFailed(f"cannot reach the Docker daemon: {exc}.",
                                 "Make sure docker is installed and running (setup --only docker).") from None
        return self._client

    def unreachable_reason(self) -> str | None:
        if self._engine is not None:
            return self._engine.unreachable_reason()
        import docker

        try:
            self.client.ping()
        except (docker.errors.DockerException, StepFailed, OSError):
            return f"the Docker daemon does not answer at {docker_host()}"
        return None

    def info(self) -> dict:
        if self._engine is None:
            return self.client.info()
        early = _take_early_info(self._engine.path)
        return early if early is not None else self._engine.get("/info")

    def image_present(self, name: str) -> bool:
        if self._engine is not None:
            return self._engine.get(f"/images/{quote(name, safe='/:@')}/json", missing_ok=True) is not None
        import docker

        try:
            self.client.images.get(name)
        except docker.errors.ImageNotFound:
            return False
        return True

    def pull(self, name: str, on_progress: Callable[[dict], None]) -> None:
        import docker
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(name)
        try:
            for event in self.client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                if "error" in event:
                    raise StepFailed(f"pulling {name} failed: {event['error']}.",
                                     "Check the image name, the registry's trust (registry-trust) and the network.")
                on_progress(event)
        except docker.errors.APIError as exc:
            raise StepFailed(f"pulling {name} failed: {_short(exc)}.",
                             "Check the image name, the registry's trust (registry-trust) and the network.") from None

    def swarm(self) -> SwarmMembership:
        # Right after dockerd starts, a member is "pending" while it reconnects to its managers.
        deadline = time.monotonic() + PENDING_WAIT
        sw = self.info().get("Swarm", {})
        while sw.get("LocalNodeState") == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
            sw = self.info().get("Swarm", {})
        return SwarmMembership(
            state=sw.get("LocalNodeState", "inactive"),
            node_id=sw.get("NodeID", ""),
            is_manager=bool(sw.get("ControlAvailable")),
            manager_addrs=tuple(m.get("Addr", "") for m in sw.get("RemoteManagers") or ()),
            error=sw.get("Error", ""),
        )

    def node_cluster_id(self) -> str:
        """The id of the swarm (cluster) this node is in, or "" when it cannot be told.

        `docker info` has it (Swarm.Cluster.ID) on managers only (moby daemon/cluster/swarm.go).
        A worker learns it from its swarm node certificate, whose subject Organization is the
        cluster id: the swarm CA signs every node's certificate with org = its cluster id (swarmkit
        ca/server.go, signNodeCert), and a manager takes the cluster id from that same field
        (swarmkit manager/manager.go). The file is <DockerRootDir>/swarm/certificates/swarm-node.crt
        (moby daemon/cluster/cluster.go, swarmkit ca/config.go), on this machine only when the
        daemon is local (a unix socket)."""
        info = self.info()
        cluster = (info.get("Swarm") or {}).get("Cluster") or {}
        if cluster.get("ID"):
            return cluster["ID"]
        if self._engine is None:
            return ""
        root = info.get("DockerRootDir") or "/var/lib/docker"
        return certificate_organization(os.path.join(root, "swarm", "certificates", "swarm-node.crt"))

    def join(self, manager_addr: str, token: str, advertise_addr: str) -> None:
        import docker

        try:
            self.client.swarm.join(remote_addrs=[manager_addr], join_token=token,
                                   advertise_addr=advertise_addr or None)
        except docker.errors.APIError as exc:
            # The daemon's message may quote the request; never let the token through.
            raise StepFailed(f"joining the swarm at {manager_addr} failed: {redact(_short(exc), token)}.",
                             "Check that the manager's port 2377 is reachable from this node.") from None

    def init(self, advertise_addr: str) -> None:
        import docker

        try:
            self.client.swarm.init(advertise_addr=advertise_addr or None)
        except docker.errors.APIError as exc:
            raise StepFailed(f"initialising a swarm failed: {_short(exc)}.",
                             "Set swarm.advertise_addr to this node's address.") from None


    def leave(self) -> None:
        import docker

        try:
            self.client.swarm.leave(force=True)
        except docker.errors.APIError as exc:
            raise StepFailed(f"leaving the swarm failed: {_short(exc)}.", "Run `docker swarm leave --force`.") from None

    def own_swarm_contents(self) -> tuple[int, list[str]]:
        """(number of nodes, service names) of the swarm this node manages; asked of a manager only."""
        nodes = int((self.info().get("Swarm") or {}).get("Nodes") or 0)
        if self._engine is not None:
            services = self._engine.get("/services")
            return nodes, [(s.get("Spec") or {}).get("Name", s.get("ID", "")) for s in services]
        return nodes, [s.name for s in self.client.services.list()]

    def remove_image(self, name: str) -> None:
        self.client.images.remove(name)

    def running_containers(self) -> list[str]:
        """Names of running containers (swarm tasks show as <service>.<slot>.<task id>)."""
        if self._engine is not None:
            return [c["Names"][0].lstrip("/") for c in self._engine.get("/containers/json")]
        return [c.name for c in self.client.containers.list()]


def certificate_organization(path: str) -> str:
    """The subject Organization (O=) of the PEM certificate at `path`, or "" when there is none."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError:
        return ""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        subject = x509.load_pem_x509_certificate(pem).subject
    except ValueError:
        return ""
    orgs = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else ""


def _short(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip().rstrip(".")

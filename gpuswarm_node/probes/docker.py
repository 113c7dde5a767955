"""The Docker daemon through the Docker SDK: its swarm membership, images, pulls and joins.

The SDK is imported on first use, so commands that never talk to Docker do not pay for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
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

    def join(self, manager_addr: str, token: str, advertise_addr: str) -> None: ...

    def init(self, advertise_addr: str) -> None: ...

    def leave(self) -> None: ...

    def running_containers(self) -> list[str]: ...

    def remove_image(self, name: str) -> None: ...

    def info(self) -> dict: ...


class SdkDocker:
    """The local daemon (DOCKER_HOST or the default socket) through the Docker SDK."""

    def __init__(self) -> None:
        self._client = None

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
        import docker

        try:
            self.client.ping()
        except (docker.errors.DockerException, StepFailed, OSError):
            where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            return f"the Docker daemon does not answer at {where}"
        return None

    def info(self) -> dict:
        return self.client.info()

    def image_present(self, name: str) -> bool:
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
        sw = self.client.info().get("Swarm", {})
        while sw.get("LocalNodeState") == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
            sw = self.client.info().get("Swarm", {})
        return SwarmMembership(
            state=sw.get("LocalNodeState", "inactive"),
            node_id=sw.get("NodeID", ""),
            is_manager=bool(sw.get("ControlAvailable")),
            manager_addrs=tuple(m.get("Addr", "") for m in sw.get("RemoteManagers") or ()),
            error=sw.get("Error", ""),
        )

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

    def remove_image(self, name: str) -> None:
        self.client.images.remove(name)

    def running_containers(self) -> list[str]:
        """Names of running containers (swarm tasks show as <service>.<slot>.<task id>)."""
        return [c.name for c in self.client.containers.list()]


def _short(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip().rstrip(".")

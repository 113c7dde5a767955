"""What a run works with: the configuration, the machine seams and the reporter."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Protocol

from .config import Config
from .errors import NvmlUnavailable
from .host import Host, LocalHost
from .journal import Journal
from .probes.docker import DockerApi, SdkDocker
from .probes.gpu import Inventory, read_inventory

if TYPE_CHECKING:
    from .manager import ManagerSwarm


class Reporter(Protocol):
    def step_started(self, name: str, description: str) -> None: ...

    def step_finished(self, report) -> None: ...

    def action(self, step: str, description: str) -> None: ...

    def activity(self, label: str) -> ContextManager[None]: ...

    def pull_progress(self, image: str, event: dict) -> None: ...

    def debug_traceback(self, text: str) -> None: ...


class QuietReporter:
    def step_started(self, name: str, description: str) -> None:
        pass

    def step_finished(self, report) -> None:
        pass

    def action(self, step: str, description: str) -> None:
        pass

    @contextlib.contextmanager
    def activity(self, label: str) -> Iterator[None]:
        yield

    def pull_progress(self, image: str, event: dict) -> None:
        pass

    def debug_traceback(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """What the operator allows this run to do beyond converging quietly."""

    force_rejoin: bool = False  # leave another swarm to join the configured one
    allow_restart: bool = False  # restart Docker even though containers are running
    drain: bool = False  # drain the node through the manager around a Docker restart


@dataclass
class Context:
    config: Config
    options: RunOptions = field(default_factory=RunOptions)
    host: Host = field(default_factory=LocalHost)
    docker_factory: Callable[[], DockerApi] = SdkDocker
    inventory_reader: Callable[[], Inventory] = read_inventory
    # What the manager says (ManagerSwarm), over SSH unless a test stands in: (config, token, node_id).
    manager_reader: Callable[..., "ManagerSwarm"] | None = None
    # Why host:port cannot be reached over TCP from here, or None (a short connect test).
    port_prober: Callable[[str, int], str | None] | None = None
    # An SSH session to the manager (a context manager giving a ManagerSession), unless a test stands in.
    manager_session_factory: Callable[[], ContextManager] | None = None
    reporter: Reporter = field(default_factory=QuietReporter)
    journal: Journal | None = None  # set when the run may change the machine
    _docker: DockerApi | None = field(default=None, init=False)
    _inventory: Inventory | NvmlUnavailable | None = field(default=None, init=False)
    # The manager's answer, asked once a run (token dropped), and the node id it was asked about.
    _manager: "tuple[ManagerSwarm | None, str]" = field(default=(None, ""), init=False)
    swarm_joined_at: str = field(default="", init=False)  # set by swarm-join: where it joined and why

    @property
    def docker(self) -> DockerApi:
        if self._docker is None:
            self._docker = self.docker_factory()
        return self._docker

    def inventory(self) -> Inventory:
        """NVML's answer, asked once per run; raises NvmlUnavailable."""
        if self._inventory is None:
            try:
                self._inventory = self.inventory_reader()
            except NvmlUnavailable as exc:
                self._inventory = exc
        if isinstance(self._inventory, NvmlUnavailable):
            raise self._inventory
        return self._inventory

    def manager_swarm(self, token: bool = False, node_id: str = "") -> "ManagerSwarm":
        """The manager's swarm (cluster id, join address), read once per run over SSH. With `token`,
        a fresh read that also carries a worker join token (never cached); with `node_id`, also
        whether the manager's swarm has that node."""
        from dataclasses import replace

        cached, asked = self._manager
        if token or cached is None or (node_id and node_id != asked):
            if self.manager_reader is not None:
                answer = self.manager_reader(self.config.swarm, token, node_id)
            else:
                from .manager import read_manager_swarm

                answer = read_manager_swarm(self.config.swarm, token=token, node_id=node_id)
            self._manager = (replace(answer, token=""), node_id)
            return answer
        return cached

    def manager_session(self) -> ContextManager:
        """A verified SSH session to swarm.manager (manager.ManagerSession), as a context manager."""
        if self.manager_session_factory is not None:
            return self.manager_session_factory()
        from .manager import ManagerSession

        return ManagerSession(self.config.swarm)

    def port_problem(self, host: str, port: int) -> str | None:
        if self.port_prober is not None:
            return self.port_prober(host, port)
        from .manager import port_problem

        return port_problem(host, port)

"""What a run works with: the configuration, the machine seams and the reporter."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Protocol

from .config import Config, SwarmConfig
from .errors import NvmlUnavailable
from .host import Host, LocalHost
from .journal import Journal
from .probes.docker import DockerApi, SdkDocker
from .probes.gpu import Inventory, read_inventory


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
    token_fetcher: Callable[[SwarmConfig], str] | None = None
    reporter: Reporter = field(default_factory=QuietReporter)
    journal: Journal | None = None  # set when the run may change the machine
    _docker: DockerApi | None = field(default=None, init=False)
    _inventory: Inventory | NvmlUnavailable | None = field(default=None, init=False)

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

    def fetch_worker_token(self) -> str:
        if self.token_fetcher is not None:
            return self.token_fetcher(self.config.swarm)
        from .manager import fetch_worker_token

        return fetch_worker_token(self.config.swarm)

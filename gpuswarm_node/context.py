"""What a run works with: the configuration, the machine seams and the reporter."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Protocol, TypeVar

from .config import Config
from .errors import NvmlUnavailable
from .facts import DockerReads, Fact, Facts
from .host import LOG_DIR, Host, LocalHost
from .journal import Journal
from .probes.docker import DockerApi, SdkDocker
from .probes.cuda import CudaState, read_cuda
from .probes.gpu import Inventory, read_inventory

if TYPE_CHECKING:
    from .manager import ManagerSwarm

T = TypeVar("T")


class Reporter(Protocol):
    def step_started(self, name: str, description: str) -> None: ...

    def step_finished(self, report) -> None: ...

    def action(self, step: str, description: str) -> None: ...

    def activity(self, label: str) -> ContextManager[None]: ...

    def pull(self, image: str) -> ContextManager[Callable[[dict], None]]:
        """While an image is pulled: the function that takes each of Docker's pull events."""

    def apt(self, label: str) -> ContextManager[Callable[[str], None]]:
        """While apt-get runs: the function that takes each of its APT::Status-Fd lines."""

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

    @contextlib.contextmanager
    def pull(self, image: str) -> Iterator[Callable[[dict], None]]:
        yield lambda event: None

    @contextlib.contextmanager
    def apt(self, label: str) -> Iterator[Callable[[str], None]]:
        yield lambda line: None

    def debug_traceback(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """What the operator allows this run to do beyond converging quietly."""

    force_rejoin: bool = False  # leave another swarm to join the configured one
    allow_restart: bool = False  # restart Docker even though containers are running
    drain: bool = False  # drain the node through the manager around a Docker restart
    drain_timeout: float = 600.0  # seconds a drain waits for the node's tasks to move
    # A status run: it judges the node as it stands. What a setup records of its own run (the boot
    # configuration) is judged by whether it is usable, not by whether it equals this run's
    # configuration, which may come from another environment (cron, sudo without GPUSWARM_*).
    diagnose: bool = False


@dataclass
class Context:
    config: Config
    options: RunOptions = field(default_factory=RunOptions)
    host: Host = field(default_factory=LocalHost)
    docker_factory: Callable[[], DockerApi] = SdkDocker
    inventory_reader: Callable[[], Inventory] = read_inventory
    cuda_reader: Callable[[], CudaState] = read_cuda  # the CUDA driver API's answer (probes.cuda)
    # What the manager says (ManagerSwarm), over SSH unless a test stands in: (config, token, node_id).
    manager_reader: Callable[..., "ManagerSwarm"] | None = None
    # Why host:port cannot be reached over TCP from here, or None (a short connect test).
    port_prober: Callable[[str, int], str | None] | None = None
    # An SSH session to the manager (a context manager giving a ManagerSession), unless a test stands in.
    manager_session_factory: Callable[[], ContextManager] | None = None
    reporter: Reporter = field(default_factory=QuietReporter)
    journal: Journal | None = None  # set when the run may change the machine
    # Where the tool's logs go (the run log, apt's output): root's, 0755; tests give their own.
    log_dir: str = LOG_DIR
    logs: list[str] = field(default_factory=list)  # the logs this run wrote to, for the summary
    # Facts stated instead of read from the machine ({fact name: {argument: value}}): a test's;
    # by default those its host states (a fake host's `facts`), none for a real one.
    given_facts: dict | None = None
    # The clock and the sleep of network retries (gpuswarm_node.retry; None: the time module's).
    clock: Callable[[], float] | None = None
    sleep: Callable[[float], None] | None = None
    facts: Facts = field(init=False)
    _docker: DockerApi | None = field(default=None, init=False)
    _inventory: Inventory | NvmlUnavailable | None = field(default=None, init=False)
    _inventory_generation: int = field(default=0, init=False)
    _cuda: tuple[int, CudaState] | None = field(default=None, init=False)
    # The manager's answer, asked once a run (token dropped), and the node id it was asked about.
    _manager: "tuple[ManagerSwarm | None, str]" = field(default=(None, ""), init=False)
    swarm_joined_at: str = field(default="", init=False)  # set by swarm-join: where it joined and why
    # The run's own record, kept by the engine: the step whose actions run now, the actions it
    # carried out, and every file a file action wrote or removed (a dry run: would write or remove).
    step: str = field(default="", init=False)
    ran: list = field(default_factory=list, init=False)
    touched: set[str] = field(default_factory=set, init=False)
    # What this run's actions established that a later check reads (the node id drained, left).
    outcomes: dict[str, str] = field(default_factory=dict, init=False)
    # The tool's records a check found still true by asking their source again (the node labels
    # the manager holds): a run that may change the machine renews their time (Host.touch) at its
    # end, which is no change of the machine.
    confirmed: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        given = self.given_facts if self.given_facts is not None else getattr(self.host, "facts", None)
        self.facts = Facts(self.host, given, docker=self._docker_api)

    def fact(self, fact: Fact, arg: str = ""):
        """A fact about this machine (gpuswarm_node.facts), read once per run until an action runs."""
        return self.facts.get(fact, arg)

    def _docker_api(self) -> DockerApi:
        if self._docker is None:
            self._docker = self.docker_factory()
        return self._docker

    @property
    def docker(self) -> DockerApi:
        """The Docker daemon: its reads are facts (read once per run, again after a change)."""
        return DockerReads(self.facts)

    def inventory(self) -> Inventory:
        """NVML's answer, asked once per run and again after an action changed the machine (a
        driver installed: the re-check must not report the NVML error from before it); raises
        NvmlUnavailable."""
        if self._inventory is None or self._inventory_generation != self.facts.generation:
            self._inventory_generation = self.facts.generation
            try:
                self._inventory = self.inventory_reader()
            except NvmlUnavailable as exc:
                self._inventory = exc
        if isinstance(self._inventory, NvmlUnavailable):
            raise self._inventory
        return self._inventory

    def cuda(self) -> CudaState:
        """Whether CUDA works (cuInit, cuDeviceGetCount), asked once per run and again after an
        action changed the machine."""
        if self._cuda is None or self._cuda[0] != self.facts.generation:
            self._cuda = (self.facts.generation, self.cuda_reader())
        return self._cuda[1]

    def manager_swarm(self, token: bool = False, node_id: str = "") -> "ManagerSwarm":
        """The manager's swarm (cluster id, join address), read once per run over SSH. With `token`,
        a fresh read that also carries a worker join token (never cached); with `node_id`, also
        whether the manager's swarm has that node."""
        from dataclasses import replace

        cached, asked = self._manager
        if token or cached is None or (node_id and node_id != asked):
            if self.manager_reader is not None:
                reader = self.manager_reader
            else:
                from .manager import read_manager_swarm

                def reader(cfg, token, node_id):
                    return read_manager_swarm(cfg, token=token, node_id=node_id)
            answer = self.network(f"SSH to the manager {self.config.swarm.manager}",
                                  lambda: reader(self.config.swarm, token, node_id))
            self._manager = (replace(answer, token=""), node_id)
            return answer
        return cached

    @contextlib.contextmanager
    def manager_session(self) -> Iterator:
        """A verified SSH session to swarm.manager (manager.ManagerSession), as a context manager;
        opening it is retried like every network read (`network`)."""
        def make() -> ContextManager:
            if self.manager_session_factory is not None:
                return self.manager_session_factory()
            from .manager import ManagerSession

            return ManagerSession(self.config.swarm)

        def enter():
            opened = make()
            return opened, opened.__enter__()

        opened, session = self.network(f"SSH to the manager {self.config.swarm.manager}", enter)
        with contextlib.ExitStack() as stack:
            stack.push(opened.__exit__)
            yield session

    def network(self, what: str, attempt: Callable[[], "T"],
                transient: "Callable[[BaseException], bool] | None" = None) -> "T":
        """`attempt()`, retried after a transient failure for node.network_retry seconds, each retry
        said in one line (gpuswarm_node.retry). A status run (`diagnose`) reports the state as it
        is now, so it tries once."""
        from . import retry

        window = 0 if self.options.diagnose else self.config.node.network_retry
        if window <= 0:
            return attempt()
        return retry.retrying(what, attempt, window, lambda line: self.reporter.action(self.step or "network", line),
                              transient or retry.is_transient, self.clock, self.sleep)

    def port_problem(self, host: str, port: int) -> str | None:
        if self.port_prober is not None:
            return self.port_prober(host, port)
        from .manager import port_problem

        return port_problem(host, port)

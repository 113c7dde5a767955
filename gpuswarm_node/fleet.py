"""The fleet as the swarm manager sees it: each worker's state and slices, the servers on it, the
servers waiting for a slice and why, and the nodes that are down (`hub status`, `hub prune`).

Read from the manager's Engine API (GET /nodes, /tasks, /services: moby's api/types/swarm,
`Node`, `Task`, `Service`), then judged by pure functions (`fleet_from`), so that a test gives the
API's answers and checks the verdict. The shapes used:

- a node's slices are its `Description.Resources.GenericResources` of kind `gpu`, each a
  `NamedResourceSpec` (`{"Kind": "gpu", "Value": "GPU-…::1"}`) as the worker's daemon.json
  advertises them (`node-generic-resources`);
- a task holds the slices in `GenericResources` (same shape) from the moment the scheduler placed
  it: that is the Engine's JSON name (moby api/types/swarm/task.go, `Task.GenericResources`),
  where its swagger and swarmkit say `AssignedGenericResources` (read too); a task that asks for
  one has `Spec.Resources.Reservations.GenericResources` with a `DiscreteResourceSpec` of kind
  `gpu`;
- a task the scheduler cannot place stays `pending` with the reason in `Status.Err` ("no suitable
  node (insufficient resources on 2 nodes)", swarmkit's manager/scheduler/scheduler.go).
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from .errors import GpuswarmError, StepFailed

GPU_KIND = "gpu"
# Task states of a task that holds, or is on its way to hold, its node's resources (swarmkit's
# api/types.proto TaskState, from assigned to running).
HOLDING = ("assigned", "accepted", "preparing", "ready", "starting", "running")
# A worker that is down this long is taken for gone by `hub prune` (seconds).
PRUNE_AFTER = 600


class EngineReads(Protocol):
    """The manager's Engine API, as read by `hub status`: lists of the API's objects."""

    def nodes(self) -> list[dict]: ...

    def tasks(self) -> list[dict]: ...

    def services(self) -> list[dict]: ...


@dataclass(frozen=True)
class Worker:
    """One swarm node. state: Docker's NodeState (ready, down, unknown, disconnected);
    availability: active, pause or drain; slices_total / slices_used: GPU slices it advertises /
    that tasks hold; servers: the names of the services whose tasks hold its slices."""

    node_id: str
    hostname: str
    role: str
    state: str
    availability: str
    address: str
    labels: dict[str, str]
    slices_total: int
    slices_used: int
    servers: tuple[str, ...]
    updated_at: float | None  # when the manager last changed the node (seconds since 1970)

    @property
    def slices_free(self) -> int:
        return max(0, self.slices_total - self.slices_used)

    @property
    def serves(self) -> bool:
        """Whether Swarm places new servers here: ready, active, and not marked unhealthy."""
        return (self.state == "ready" and self.availability == "active"
                and self.labels.get("gpuswarm.health", "ok") == "ok")

    def as_json(self) -> dict:
        return {"id": self.node_id, "hostname": self.hostname, "role": self.role, "state": self.state,
                "availability": self.availability, "address": self.address,
                "gpu_model": self.labels.get("gpuswarm.gpu.model", ""),
                "health": self.labels.get("gpuswarm.health", ""),
                "version": self.labels.get("gpuswarm.version", ""),
                "slices": {"total": self.slices_total, "used": self.slices_used, "free": self.slices_free},
                "servers": list(self.servers),
                "labels": {k: v for k, v in sorted(self.labels.items()) if k.startswith("gpuswarm.")}}


@dataclass(frozen=True)
class Pending:
    """A server's task that waits: not placed (`reason` is Swarm's), or placed and not running."""

    service: str
    task_id: str
    state: str
    reason: str

    def as_json(self) -> dict:
        return {"service": self.service, "task": self.task_id, "state": self.state, "reason": self.reason}


@dataclass(frozen=True)
class Fleet:
    workers: list[Worker]
    pending: list[Pending] = field(default_factory=list)

    @property
    def free_slices(self) -> int:
        """Slices a new server can get now: free ones on nodes that serve."""
        return sum(w.slices_free for w in self.workers if w.serves)

    @property
    def can_take_a_user(self) -> bool:
        return self.free_slices > 0

    @property
    def down(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "down"]

    def as_json(self) -> dict:
        gpu_nodes = [w for w in self.workers if w.slices_total]
        return {"ok": self.can_take_a_user, "free_slices": self.free_slices,
                "slices": {"total": sum(w.slices_total for w in gpu_nodes),
                           "used": sum(w.slices_used for w in gpu_nodes)},
                "workers": [w.as_json() for w in self.workers],
                "pending": [p.as_json() for p in self.pending],
                "down": [w.node_id for w in self.down]}


def _gpu_values(resources: Iterable[dict] | None) -> list[str]:
    return [r["NamedResourceSpec"].get("Value", "") for r in resources or ()
            if (r.get("NamedResourceSpec") or {}).get("Kind") == GPU_KIND]


def _asks_for_gpu(task: dict) -> bool:
    wanted = (((task.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}).get("GenericResources")
    return any((r.get("DiscreteResourceSpec") or {}).get("Kind") == GPU_KIND
               or (r.get("NamedResourceSpec") or {}).get("Kind") == GPU_KIND for r in wanted or ())


def api_time(text: str | None) -> float | None:
    """The Engine API's RFC 3339 time ("2026-12-07T21:04:05.123456789Z") in seconds since 1970."""
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def fleet_from(nodes: list[dict], tasks: list[dict], services: list[dict]) -> Fleet:
    """The fleet from the manager's answers to GET /nodes, /tasks and /services."""
    names = {s.get("ID", ""): (s.get("Spec") or {}).get("Name", "") for s in services}
    used: dict[str, int] = {}
    servers: dict[str, list[str]] = {}
    pending = []
    for task in tasks:
        if task.get("DesiredState") != "running":
            continue  # being shut down, or history
        state = (task.get("Status") or {}).get("State", "")
        service = names.get(task.get("ServiceID", ""), task.get("ServiceID", ""))
        held = _gpu_values(task.get("GenericResources") or task.get("AssignedGenericResources"))
        if held and state in HOLDING and task.get("NodeID"):
            used[task["NodeID"]] = used.get(task["NodeID"], 0) + len(held)
            servers.setdefault(task["NodeID"], []).append(service)
        if state in ("new", "pending") and _asks_for_gpu(task):
            status = task.get("Status") or {}
            pending.append(Pending(service, task.get("ID", ""), state,
                                   status.get("Err") or status.get("Message") or "waiting to be scheduled"))
    workers = []
    for node in nodes:
        spec, description, status = node.get("Spec") or {}, node.get("Description") or {}, node.get("Status") or {}
        node_id = node.get("ID", "")
        workers.append(Worker(
            node_id=node_id, hostname=description.get("Hostname", ""), role=spec.get("Role", ""),
            state=status.get("State", "unknown"), availability=spec.get("Availability", ""),
            address=status.get("Addr", ""), labels=dict(spec.get("Labels") or {}),
            slices_total=len(_gpu_values((description.get("Resources") or {}).get("GenericResources"))),
            slices_used=used.get(node_id, 0), servers=tuple(sorted(servers.get(node_id, ()))),
            updated_at=api_time(node.get("UpdatedAt"))))
    workers.sort(key=lambda w: (w.role != "worker", w.hostname, w.node_id))
    return Fleet(workers, sorted(pending, key=lambda p: (p.service, p.task_id)))


def prune_candidates(fleet: Fleet, now: float, after: float = PRUNE_AFTER) -> list[Worker]:
    """Workers down for at least `after` seconds: their instance is taken for gone. Managers never
    (removing one is a change of the swarm's quorum, not a clean-up)."""
    return [w for w in fleet.down
            if w.role == "worker" and w.updated_at is not None and now - w.updated_at >= after]


# --- reading the manager ---------------------------------------------------------------------------

class DockerManager:
    """The local Docker, which must be a swarm manager, through the Docker SDK's API client
    (DOCKER_HOST is honoured as the docker CLI does)."""

    def __init__(self) -> None:
        import docker
        from docker.errors import DockerException

        try:
            self.client = docker.from_env(timeout=30).api
            info = self.client.info()
        except DockerException as exc:
            raise StepFailed(f"Docker does not answer here ({exc}).",
                             "Run hub commands on the swarm manager, where Docker runs (or set DOCKER_HOST).") from None
        swarm = info.get("Swarm") or {}
        if not swarm.get("ControlAvailable"):
            raise StepFailed(f"this Docker is not a swarm manager (swarm state {swarm.get('LocalNodeState') or 'inactive'}).",
                             "Run hub commands on the swarm's manager.")

    def nodes(self) -> list[dict]:
        return self.client.nodes()

    def tasks(self) -> list[dict]:
        return self.client.tasks(filters={"desired-state": "running"})

    def services(self) -> list[dict]:
        return self.client.services()

    def remove_node(self, node_id: str) -> None:
        self.client.remove_node(node_id)


def read_fleet(api: EngineReads) -> Fleet:
    try:
        return fleet_from(api.nodes(), api.tasks(), api.services())
    except GpuswarmError:
        raise
    except Exception as exc:  # the SDK's APIError and connection errors
        raise StepFailed(f"the manager's Docker did not answer: {exc}.", "Check `docker node ls` on the manager.") from None


# --- rendering -------------------------------------------------------------------------------------

def summary_line(fleet: Fleet) -> str:
    serving = [w for w in fleet.workers if w.serves and w.slices_total]
    total = sum(w.slices_total for w in fleet.workers)
    used = sum(w.slices_used for w in fleet.workers)
    line = (f"{len(serving)} worker(s) serving, {used} of {total} slice(s) in use, {fleet.free_slices} free for a "
            f"new server; {len(fleet.pending)} server(s) waiting; {len(fleet.down)} node(s) down")
    return line + (": the fleet can take a new user." if fleet.can_take_a_user else ": a new user would wait.")


def prometheus(fleet: Fleet, now: float | None = None) -> str:
    """node-exporter textfile metrics of the fleet."""
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = ["# HELP gpuswarm_fleet_node_slices GPU slices of a node, by use.",
             "# TYPE gpuswarm_fleet_node_slices gauge"]
    for w in fleet.workers:
        node = f'node="{esc(w.node_id)}",hostname="{esc(w.hostname)}"'
        for use, value in (("total", w.slices_total), ("used", w.slices_used), ("free", w.slices_free)):
            lines.append(f'gpuswarm_fleet_node_slices{{{node},use="{use}"}} {value}')
    lines += ["# HELP gpuswarm_fleet_node_serving 1 when the node is ready, active and healthy.",
              "# TYPE gpuswarm_fleet_node_serving gauge"]
    for w in fleet.workers:
        lines.append(f'gpuswarm_fleet_node_serving{{node="{esc(w.node_id)}",hostname="{esc(w.hostname)}",'
                     f'state="{esc(w.state)}",availability="{esc(w.availability)}"}} {int(w.serves)}')
    lines += ["# HELP gpuswarm_fleet_free_slices Slices a new server can get now.",
              "# TYPE gpuswarm_fleet_free_slices gauge", f"gpuswarm_fleet_free_slices {fleet.free_slices}",
              "# HELP gpuswarm_fleet_pending_servers Servers waiting for a slice.",
              "# TYPE gpuswarm_fleet_pending_servers gauge", f"gpuswarm_fleet_pending_servers {len(fleet.pending)}",
              "# HELP gpuswarm_fleet_nodes_down Nodes the manager sees down.",
              "# TYPE gpuswarm_fleet_nodes_down gauge", f"gpuswarm_fleet_nodes_down {len(fleet.down)}",
              "# HELP gpuswarm_fleet_status_timestamp_seconds When this status was taken.",
              "# TYPE gpuswarm_fleet_status_timestamp_seconds gauge",
              f"gpuswarm_fleet_status_timestamp_seconds {now if now is not None else time.time():.3f}"]
    return "\n".join(lines) + "\n"


def table_rows(fleet: Fleet) -> list[tuple[str, ...]]:
    """(node, state, GPU model, slices used/total, servers) per node, for the table."""
    rows: list[tuple[str, ...]] = []
    for w in fleet.workers:
        state = w.state if w.availability == "active" else f"{w.state}, {w.availability}"
        health = w.labels.get("gpuswarm.health", "ok")
        if health != "ok":
            state += f", unhealthy: {health}"
        rows.append((w.hostname or w.node_id[:12], state, w.labels.get("gpuswarm.gpu.model", "-"),
                     f"{w.slices_used}/{w.slices_total}", ", ".join(w.servers) or "-"))
    return rows

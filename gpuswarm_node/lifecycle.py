"""Taking a worker out of service: drain through the manager, wait for its tasks to move, leave.

For throwing away an expensive worker without killing notebooks mid-flight: the manager stops
scheduling on it and reschedules its tasks elsewhere before the node leaves.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from .errors import StepFailed
from .manager import ManagerSession
from .context import Context


@dataclass
class LeaveReport:
    node_id: str = ""
    drained: bool = False
    tasks_moved: int = 0
    left: bool = False
    removed_from_manager: bool = False
    notes: list[str] = field(default_factory=list)


def running_tasks(session: ManagerSession, node_id: str) -> list[str]:
    out = session.docker(f"docker node ps {shlex.quote(node_id)} --filter desired-state=running "
                         "--format '{{.ID}}'")
    return [line for line in out.split() if line]


def leave(ctx: Context, timeout: float = 600.0, poll: float = 2.0) -> LeaveReport:
    report = LeaveReport()
    membership = ctx.docker.swarm()
    if membership.state == "inactive":
        report.notes.append("this node is not in a swarm; nothing to do")
        return report
    report.node_id = membership.node_id
    if membership.is_manager:
        raise StepFailed("this node is a swarm manager; leaving would take the swarm's control plane with it.",
                         "Leave it by hand with `docker swarm leave --force` if that is really meant.")
    cfg = ctx.config.swarm
    if not cfg.manager:
        raise StepFailed("swarm.manager is not configured, so the node cannot be drained first.",
                         "Set swarm.manager (and its SSH key and known_hosts) and run leave again.")
    with ManagerSession(cfg) as session:
        node = shlex.quote(membership.node_id)
        before = running_tasks(session, membership.node_id)
        with ctx.reporter.activity(f"draining {membership.node_id} ({len(before)} task(s))"):
            session.docker(f"docker node update --availability drain {node}")
            report.drained = True
            deadline = time.monotonic() + timeout
            while (left := running_tasks(session, membership.node_id)):
                if time.monotonic() > deadline:
                    raise StepFailed(f"{len(left)} task(s) still run on this node {timeout:.0f} s after draining; "
                                     "the node was drained but did not leave.",
                                     "Look at `docker node ps` on the manager, then run leave again.")
                time.sleep(poll)
        report.tasks_moved = len(before)
        ctx.docker.leave()
        report.left = True
        # The manager keeps a leaving worker as "down"; remove it so the node list stays true.
        deadline = time.monotonic() + 60
        while session.run(f"docker node inspect {node} --format '{{{{.Status.State}}}}'")[1].strip() != "down":
            if time.monotonic() > deadline:
                report.notes.append(f"the manager still lists {membership.node_id}; remove it with docker node rm")
                return report
            time.sleep(poll)
        session.docker(f"docker node rm {node}")
        report.removed_from_manager = True
    return report

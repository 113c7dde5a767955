"""Taking a worker out of service: drain through the manager, wait for its tasks to move, leave.

For throwing away an expensive worker without killing notebooks mid-flight: the manager stops
scheduling on it and reschedules its tasks elsewhere before the node leaves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import StepFailed
from .manager import ManagerSession
from .system import Context


@dataclass
class LeaveReport:
    node_id: str = ""
    drained: bool = False
    tasks_moved: int = 0
    left: bool = False
    removed_from_manager: bool = False
    notes: list[str] = field(default_factory=list)


def running_tasks(session: ManagerSession, node_id: str) -> list[str]:
    return session.running_tasks(node_id)


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
        node = membership.node_id
        before = running_tasks(session, membership.node_id)
        with ctx.reporter.activity(f"draining {membership.node_id} ({len(before)} task(s))"):
            session.set_availability(node, "drain")
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
        while session.node_state(node) != "down":
            if time.monotonic() > deadline:
                report.notes.append(f"the manager still lists {membership.node_id}; remove it with docker node rm")
                return report
            time.sleep(poll)
        session.remove_node(node)
        report.removed_from_manager = True
    return report


def then_argv(command: str) -> list[str]:
    """The argv of `leave --then CMD`: split like sh would, run without a shell. ConfigError (exit
    2, before anything changes) when it is empty, unbalanced, holds a control character, or its
    program is not found: a typo must not be found out after the node has left."""
    import os
    import shlex
    import shutil

    from .errors import ConfigError

    fix = "Give --then the command to run once the node is out of the swarm, e.g. --then 'poweroff'."
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in command):
        raise ConfigError("--then holds a control character (a newline, a tab, ...).", fix)
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"--then cannot be split into words: {exc}.", fix) from None
    if not argv:
        raise ConfigError("--then is empty.", fix)
    program = argv[0]
    found = (os.path.isfile(program) and os.access(program, os.X_OK)) if "/" in program else shutil.which(program)
    if not found:
        raise ConfigError(f"--then: {program} is not an executable program here.", fix)
    return argv


def run_then(argv: list[str]) -> int:
    """Run the --then command with the tool's own stdout and stderr; its exit status (127 when it
    could not start)."""
    import subprocess

    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
    except OSError:
        return 127

"""Taking a worker out of service and back: drain through the manager and wait for its tasks to
move, make it active again, leave the swarm. `leave` is a plan of the engine (engine.Plan), with a
dry run, the journal, the run log and the lock as setup has them.

For throwing away an expensive worker without killing notebooks mid-flight: the manager stops
scheduling on it and reschedules its tasks elsewhere before the node leaves. The same drain is
what setup and reset do around a Docker restart with --drain.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .context import Context
from .engine import Action, Call, Check, Plan, Preflight, blocked, needs_change, ok, skipped
from .errors import StepFailed

if TYPE_CHECKING:  # the manager's SSH code loads when a session is opened, not with every step
    from .manager import ManagerSession

POLL_SECONDS = 2.0


def running_tasks(session: ManagerSession, node_id: str) -> list[str]:
    """The ids of the tasks the manager wants running on `node_id`."""
    return session.running_tasks(node_id)


def drain_and_wait(ctx: Context) -> int:
    """Drain this node through the manager and wait, up to ctx.options.drain_timeout seconds, until
    none of its tasks runs here any more; returns how many moved. StepFailed when they do not."""
    node = ctx.docker.swarm().node_id
    timeout = ctx.options.drain_timeout
    with ctx.manager_session() as session:
        before = running_tasks(session, node)
        with ctx.reporter.activity(f"draining {node} ({len(before)} task(s))"):
            session.set_availability(node, "drain")
            deadline = time.monotonic() + timeout
            while (left := running_tasks(session, node)):
                if time.monotonic() > deadline:
                    raise StepFailed(f"{len(left)} task(s) still run on this node {timeout:.0f} s after draining it.",
                                     "Look at `docker node ps` on the manager, then run the command again.")
                time.sleep(POLL_SECONDS)
    ctx.outcomes["drained"] = node
    ctx.outcomes["tasks moved"] = str(len(before))
    return len(before)


def activate(ctx: Context) -> None:
    """Make this node active again through the manager: the closing half of a drain."""
    with ctx.manager_session() as session:
        session.set_availability(ctx.outcomes["drained"], "active")
    ctx.outcomes["activated"] = ctx.outcomes["drained"]


def drain_action() -> Action:
    return Call("drain this node through the manager and wait for its tasks to move", drain_and_wait)


def activate_action() -> Action:
    def closing(ctx: Context) -> None:
        # Only a node that is still a member can be made active (a reset may have left the swarm).
        if "drained" in ctx.outcomes and ctx.docker.unreachable_reason() is None \
                and ctx.docker.swarm().state == "active":
            activate(ctx)

    return Call("make this node active again through the manager (when it is still in the swarm)", closing)


def can_drain(ctx: Context) -> str | None:
    """Why this node cannot be drained through the manager, or None."""
    if not ctx.config.swarm.manager:
        return "swarm.manager is not set"
    if ctx.docker.unreachable_reason() is not None or ctx.docker.swarm().state != "active":
        return "this node is not in a swarm"
    return None


class DrainStep:
    name = "drain"
    description = "no task runs on this node: drained through the manager"

    def check(self, ctx: Context) -> Check:
        if "drained" in ctx.outcomes:
            return ok(f"drained {ctx.outcomes['drained']}; {ctx.outcomes['tasks moved']} task(s) moved")
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason)
        membership = ctx.docker.swarm()
        if membership.state == "inactive":
            return ok("this node is not in a swarm; nothing to drain")
        return needs_change(f"node {membership.node_id} takes tasks", drain_action())

    def files(self, ctx: Context) -> list:
        return []


class ActivateStep:
    """The closing half of a drain (engine.Bracket): applied whenever the drain was."""

    name = "activate"
    description = "the node drained by this run takes tasks again"

    def check(self, ctx: Context) -> Check:
        if "activated" in ctx.outcomes:
            return ok(f"node {ctx.outcomes['activated']} is active again")
        if "drained" not in ctx.outcomes:
            return skipped("this run drained nothing")
        if ctx.docker.unreachable_reason() is not None or ctx.docker.swarm().state != "active":
            return ok("this node left the swarm: nothing to make active")
        return needs_change("this run drained the node", activate_action())

    def planned(self, ctx: Context) -> Check:
        """What this step does in a dry run, where the drain before it has not happened."""
        return needs_change("once the steps between are done, if the node is still in the swarm",
                            activate_action())

    def files(self, ctx: Context) -> list:
        return []


def _leave(ctx: Context) -> None:
    node = ctx.docker.swarm().node_id
    ctx.docker.leave()
    ctx.outcomes["left"] = node


class LeaveSwarmStep:
    name = "leave-swarm"
    description = "the node is in no swarm"

    def check(self, ctx: Context) -> Check:
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason)
        membership = ctx.docker.swarm()
        if membership.state == "inactive":
            left = ctx.outcomes.get("left")
            return ok(f"node {left} left the swarm" if left else "this node is not in a swarm")
        return needs_change(f"node {membership.node_id} is a swarm {'manager' if membership.is_manager else 'worker'}",
                            Call("leave the swarm", _leave))

    def files(self, ctx: Context) -> list:
        return []


def _remove_from_manager(ctx: Context) -> None:
    node = ctx.outcomes["left"]
    with ctx.manager_session() as session:
        # The manager keeps a leaving worker as "down" for a while.
        deadline = time.monotonic() + 60
        while session.node_state(node) != "down":
            if time.monotonic() > deadline:
                ctx.outcomes["still listed"] = node
                return
            time.sleep(POLL_SECONDS)
        session.remove_node(node)
    ctx.outcomes["removed"] = node


class ManagerNodeListStep:
    name = "manager-node-list"
    description = "the manager no longer lists the node that left"

    def check(self, ctx: Context) -> Check:
        if "removed" in ctx.outcomes:
            return ok(f"the manager no longer lists {ctx.outcomes['removed']}")
        if "still listed" in ctx.outcomes:
            return ok(f"the manager still lists {ctx.outcomes['still listed']} as not down after 60 s; remove it "
                      "with `docker node rm` there")
        action = Call("wait until the manager sees the node down, then remove it from the manager's node list",
                      _remove_from_manager)
        if "left" in ctx.outcomes:
            return needs_change(f"the manager lists node {ctx.outcomes['left']}, which left", action)
        if ctx.docker.unreachable_reason() is None and ctx.docker.swarm().state != "inactive":
            return needs_change("once the node has left", action)
        return skipped("this run left no swarm")

    def files(self, ctx: Context) -> list:
        return []


def _leave_problem(ctx: Context) -> str | None:
    if ctx.docker.unreachable_reason() is not None or ctx.docker.swarm().state == "inactive":
        return None  # the steps say so
    if ctx.docker.swarm().is_manager:
        return ("this node is a swarm manager; leaving would take the swarm's control plane with it: leave it by "
                "hand with `docker swarm leave --force` if that is really meant")
    if not ctx.config.swarm.manager:
        return ("swarm.manager is not configured, so the node cannot be drained first: set swarm.manager (and its "
                "SSH key and known_hosts) and run leave again")
    return None


def leave_plan() -> Plan:
    """Drain, wait for the tasks to move, leave, and have the manager forget the node."""
    return Plan("leave", (DrainStep(), LeaveSwarmStep(), ManagerNodeListStep()),
                (Preflight("leave-drainable", _leave_problem),))


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

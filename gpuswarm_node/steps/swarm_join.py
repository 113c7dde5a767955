"""swarm-join: the node is an active worker of the manager's swarm (or, with no manager, a swarm of
its own). The join token comes over SSH with a verified host key and is never printed.

A swarm is its cluster id, not an address. swarm.manager is where SSH reaches the manager; the
manager may advertise another address (a private one behind an elastic IP or a DNS name), and a
node's list of managers holds only advertised addresses. So a node whose managers include an
address of swarm.manager is in its swarm; any other node is compared by cluster id, the
manager's read over SSH and the node's from its swarm certificate (ctx.docker.node_cluster_id).
"""

from __future__ import annotations

from .. import swarm_compat
from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok
from ..errors import ManagerUnreachable, StepFailed
from ..manager import ManagerSwarm, join_host_port, old_enforcer_problem, resolve_addresses, split_host_port
from ..probes.docker import SwarmMembership
from ..context import Context
from ..journal import Undo


def managed_by(addrs: tuple[str, ...], manager: str) -> bool:
    """Whether one of the node's managers (`addrs`, host:port as Docker lists them) is `manager`
    or one of the addresses its name resolves to. The name is resolved only when no address is
    spelled as it is (the usual case: swarm.manager is the address the node joined)."""
    hosts = [split_host_port(addr)[0] for addr in addrs]
    if manager in hosts:
        return True
    known = resolve_addresses(manager)
    return any(host in known for host in hosts)


def choose_join_address(ctx: Context, swarm: ManagerSwarm) -> tuple[str, str]:
    """(address, why): the address the manager advertises for joining, or swarm.manager at the same
    port when that one does not answer a TCP connect from here. StepFailed when neither does."""
    cfg = ctx.config.swarm
    advertised = swarm.join_addr
    host, port = split_host_port(advertised)
    problem = ctx.port_problem(host, port)
    if problem is None:
        return advertised, "the address the manager advertises"
    fallback = join_host_port(cfg.manager, port)
    fallback_problem = problem if fallback == advertised else ctx.port_problem(cfg.manager, port)
    if fallback_problem is None:
        # Once joined, a node dials its managers only at the addresses they advertise (swarmkit's
        # agent drops the join address from its list), so this join holds only while the current
        # connection does.
        return fallback, (f"swarm.manager, because the address the manager advertises, {advertised}, does not "
                          f"answer from here ({problem}); the node reconnects to its managers only at their "
                          f"advertised addresses, so make {advertised} reachable from this node")
    if fallback == advertised:
        cause = f"the manager's swarm port does not answer at {advertised} ({problem})"
    else:
        cause = (f"the manager's swarm port answers neither at {advertised}, the address it advertises ({problem}), "
                 f"nor at {fallback}, swarm.manager ({fallback_problem})")
    raise StepFailed(f"{cause}; this node was left as it was.",
                     f"Let this node reach TCP port {port} of the manager (firewall, security group), then run "
                     "setup again.")


def settings_refusal(ctx: Context) -> str | None:
    """Why Docker would refuse to init or join a swarm with the settings dockerd is given now
    (daemon.json and its flags, swarm_compat.REFUSED), or None. What the docker-daemon step takes
    out of daemon.json itself (live-restore) is left out: it runs before this step. A daemon.json
    that cannot be read is the docker-daemon step's to report."""
    from .docker_daemon import read_daemon_json, swarm_refusals
    from ..probes.dockerd import docker_unit

    try:
        _text, settings = read_daemon_json(ctx.facts.files)
    except StepFailed:
        return None
    removed = {rule.key for rule, where, _i in swarm_compat.refused(settings, {}, None)
               if rule.removed and where == "daemon.json"}
    args, _origin = docker_unit(ctx.facts).dockerd_args()
    problems = swarm_refusals({k: v for k, v in settings.items() if k not in removed}, args,
                              swarm_compat.docker_version(ctx.facts))
    if not problems:
        return None
    return "Docker would refuse the swarm: " + "; ".join(problems) + "; then run setup again"


def join_action(ctx: Context, leave: str = "") -> Call:
    """Fetch the token, cluster id and join address in one SSH session, pick the address, and only
    then (with `leave`) leave the current swarm: a manager that cannot be reached or a swarm port
    that does not answer leaves the node where it was."""
    cfg = ctx.config.swarm

    def join(ctx: Context) -> None:
        swarm = ctx.manager_swarm(token=True)
        problem = old_enforcer_problem(swarm, cfg.manager)
        if problem:  # the manager changed between check and apply; the node is left as it was
            raise StepFailed(f"{problem}.")
        address, why = choose_join_address(ctx, swarm)
        if leave:
            ctx.docker.leave()
        ctx.docker.join(address, swarm.token, cfg.advertise_addr)
        ctx.swarm_joined_at = (f"left {leave}; " if leave else "") + f"joined at {address}, {why}"

    fetch = f"fetch a worker join token and the swarm's cluster id over SSH from {cfg.ssh_user}@{cfg.manager}"
    where = f"join at the address the manager advertises (at {cfg.manager} when that one does not answer)"
    return Call(f"{fetch}, then leave {leave} and {where}" if leave else f"{fetch} and {where}", join,
                Undo("leave-swarm"))


class SwarmJoinStep:
    name = "swarm-join"
    description = "the node is an active worker of the manager's swarm"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        cfg = ctx.config.swarm
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        membership = ctx.docker.swarm()
        if not cfg.manager:
            if membership.state == "active":
                role = "manager" if membership.is_manager else "worker"
                return ok(f"this node is a swarm {role} (no swarm.manager configured)")
            if membership.state != "inactive":
                return blocked(f"swarm state is {membership.state} {membership.error}".strip())
            refusal = settings_refusal(ctx)
            if refusal:
                return blocked(refusal)
            return needs_change("not in a swarm; no swarm.manager configured, so this node starts its own",
                                Call("initialise a single-node swarm",
                                     lambda ctx: ctx.docker.init(cfg.advertise_addr), Undo("leave-swarm")))
        if membership.state == "active":
            return self.check_member(ctx, membership)
        if membership.state == "locked":
            return blocked("the swarm is locked; unlock it with `docker swarm unlock` and the unlock key")
        if membership.state != "inactive":
            state = f"{membership.state} {membership.error}".strip()
            return blocked(f"swarm state is {state}; run `docker swarm leave --force` and setup again")
        try:
            problem = old_enforcer_problem(ctx.manager_swarm(), cfg.manager)
        except ManagerUnreachable:
            problem = None  # the join says why, with the token read
        if problem:
            return blocked(problem)
        refusal = settings_refusal(ctx)
        if refusal:
            return blocked(refusal)
        return needs_change(f"not in a swarm; join the swarm managed at {cfg.manager}", join_action(ctx))

    @staticmethod
    def lone_swarm(ctx: Context, membership: SwarmMembership, cluster: str) -> str:
        """"its own single-node swarm (...)" when this node manages a swarm whose only node is itself
        and which runs no service, else ""."""
        if not membership.is_manager:
            return ""
        nodes, services = ctx.docker.own_swarm_contents()
        if nodes != 1 or services:
            return ""
        return f"its own single-node swarm (cluster {cluster or 'unknown'}: no other node, no service)"

    def check_member(self, ctx: Context, membership: SwarmMembership) -> Check:
        cfg = ctx.config.swarm
        role = "manager" if membership.is_manager else "worker"
        managers = ", ".join(membership.manager_addrs) or "unknown"
        joined = f"; {ctx.swarm_joined_at}" if ctx.swarm_joined_at else ""
        if managed_by(membership.manager_addrs, cfg.manager):
            # One of the swarm's own managers is at swarm.manager: no need to ask anyone.
            return ok(f"{role} of the swarm managed at {cfg.manager}{joined}")
        local = ctx.docker.node_cluster_id()
        try:
            # Without the node's cluster id (a daemon that is not local), the manager's node list decides.
            swarm = ctx.manager_swarm(node_id="" if local else membership.node_id)
        except ManagerUnreachable as exc:
            return blocked(f"this node is in a swarm (cluster {local or 'unknown'}) whose managers ({managers}) are "
                           f"not at {cfg.manager}, and the manager cannot be asked which swarm it runs: "
                           f"{exc.message()}")
        problem = old_enforcer_problem(swarm, cfg.manager)
        if problem:
            return blocked(problem)
        same = local == swarm.cluster_id if local else bool(swarm.node_known)
        if same:
            return ok(f"{role} of swarm {swarm.cluster_id} managed at {cfg.manager} (its managers advertise "
                      f"{managers}){joined}")
        theirs = f"cluster {local}, managers: {managers}" if local else f"managers: {managers}"
        lone = self.lone_swarm(ctx, membership, local)
        refusal = settings_refusal(ctx) if lone or ctx.options.force_rejoin else None
        if refusal:
            return blocked(refusal)
        if lone:
            # The embedded default (no manager: a swarm of its own) must not trap a box that is
            # later given a manager: leaving a swarm that holds nothing but this node loses nothing.
            return needs_change(f"in {lone}; leave it and join swarm {swarm.cluster_id} of {cfg.manager}",
                                join_action(ctx, leave=lone))
        if not ctx.options.force_rejoin:
            return blocked(f"this node is in another swarm ({theirs}), not swarm {swarm.cluster_id} of "
                           f"{cfg.manager}; leaving it would stop its tasks: run setup --force-rejoin to leave it "
                           "and join this one")
        return needs_change(f"in another swarm ({theirs}); --force-rejoin: leave it and join swarm "
                            f"{swarm.cluster_id} of {cfg.manager}",
                            join_action(ctx, leave="the other swarm"))

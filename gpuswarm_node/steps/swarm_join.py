"""swarm-join: the node is an active worker of the manager's swarm (or, with no manager, a swarm of
its own). The join token comes over SSH with a verified host key and is never printed."""

from __future__ import annotations

from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok
from ..manager import manager_join_address, resolve_addresses
from ..system import Context


def managed_by(addrs: tuple[str, ...], manager: str) -> bool:
    known = resolve_addresses(manager)
    return any(addr.rpartition(":")[0].strip("[]") in known for addr in addrs)


class SwarmJoinStep:
    name = "swarm-join"
    description = "the node is an active worker of the manager's swarm"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        cfg = ctx.config.swarm
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason)
        membership = ctx.docker.swarm()
        if not cfg.manager:
            if membership.state == "active":
                role = "manager" if membership.is_manager else "worker"
                return ok(f"this node is a swarm {role} (no swarm.manager configured)")
            if membership.state != "inactive":
                return blocked(f"swarm state is {membership.state} {membership.error}".strip())
            return needs_change("not in a swarm; no swarm.manager configured, so this node starts its own",
                                Call("initialise a single-node swarm",
                                     lambda ctx: ctx.docker.init(cfg.advertise_addr)))
        address = manager_join_address(cfg)

        def join(ctx: Context) -> None:
            token = ctx.fetch_worker_token()
            ctx.docker.join(address, token, cfg.advertise_addr)

        join_action = Call(f"fetch a worker join token over SSH from {cfg.ssh_user}@{cfg.manager} and "
                           f"join {address}", join)
        if membership.state == "active":
            if managed_by(membership.manager_addrs, cfg.manager):
                return ok(f"worker of the swarm managed at {cfg.manager}")
            others = ", ".join(membership.manager_addrs) or "unknown"
            if not ctx.options.force_rejoin:
                return blocked(f"this node is in another swarm (managers: {others}); leaving it would stop its "
                               "tasks: run setup --force-rejoin to leave it and join this one")
            return needs_change(f"in another swarm (managers: {others}); --force-rejoin: leave it and join {address}",
                                Call("leave the other swarm", lambda ctx: ctx.docker.leave()), join_action)
        if membership.state == "locked":
            return blocked("the swarm is locked; unlock it with `docker swarm unlock` and the unlock key")
        if membership.state != "inactive":
            state = f"{membership.state} {membership.error}".strip()
            return blocked(f"swarm state is {state}; run `docker swarm leave --force` and setup again")
        return needs_change(f"not in a swarm; join the manager at {address}", join_action)

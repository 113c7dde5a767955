"""hub-swarm and hub-network: the hub manages a swarm, and has the attachable overlay network its
JupyterHub and the notebook servers share."""

from __future__ import annotations

from .. import facts as F
from ..context import Context
from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok, run_command
from ..journal import Undo
from ..manager import FIXED_ENFORCER, engine_version_tuple
from .swarm_join import settings_refusal


def old_docker(version: str, what: str = "", fix: str = "") -> str | None:
    """Why a manager running Docker `version` would reject notebooks, or None (also for a version
    that cannot be read): the constraint enforcer of Docker before 23.0.2 (moby/moby#44378, fixed
    by moby/swarmkit#3082) rejects every task that reserves a generic resource whenever its node's
    record changes. `what` names the Docker in the sentence, `fix` what to do (defaults: the one
    this machine runs, and an upgrade)."""
    found = engine_version_tuple(version)
    if found is None or found >= FIXED_ENFORCER:
        return None
    fixed = ".".join(map(str, FIXED_ENFORCER))
    what = what or f"this machine runs Docker {version}"
    fix = fix or f"upgrade Docker to {fixed} or later (docker.source = \"docker-ce\" installs Docker's own packages)"
    return (f"{what}, and a swarm manager before Docker {fixed} rejects every notebook task that reserves a GPU slice "
            f"whenever its node's record changes (moby/moby#44378): {fix}, then run hub init again")


class HubSwarmStep:
    name = "hub-swarm"
    description = "this node manages a swarm (swarm init at swarm.advertise_addr)"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        problem = old_docker(str(ctx.docker.info().get("ServerVersion", "")))
        if problem:
            return blocked(problem)
        membership = ctx.docker.swarm()
        advertise = ctx.config.swarm.advertise_addr
        if membership.state == "active":
            if not membership.is_manager:
                managers = ", ".join(membership.manager_addrs) or "unknown"
                return blocked(f"this node is a worker of another swarm (managers: {managers}); a hub manages its own: "
                               "run hub init on that swarm's manager, or leave it (`docker swarm leave`) and run hub "
                               "init again")
            cluster = ctx.docker.node_cluster_id() or "unknown"
            node_addr = str(((ctx.docker.info().get("Swarm") or {}).get("NodeAddr")) or "")
            at = f" at {node_addr}" if node_addr else ""
            if advertise and node_addr and advertise != node_addr:
                return ok(f"this node manages swarm {cluster}{at} (not at swarm.advertise_addr {advertise}, which only "
                          "a new swarm would take)")
            return ok(f"this node manages swarm {cluster}{at}")
        if membership.state == "locked":
            return blocked("the swarm is locked; unlock it with `docker swarm unlock` and the unlock key")
        if membership.state != "inactive":
            return blocked(f"swarm state is {f'{membership.state} {membership.error}'.strip()}; fix it or leave the "
                           "swarm (`docker swarm leave --force`), then run hub init again")
        refusal = settings_refusal(ctx)
        if refusal:
            return blocked(refusal.replace("run setup again", "run hub init again"))
        where = f"advertising {advertise}" if advertise else "at the address Docker chooses (swarm.advertise_addr is empty)"
        return needs_change("this node is in no swarm",
                            Call(f"initialise a swarm {where}", lambda ctx: ctx.docker.init(advertise),
                                 Undo("leave-swarm")))


def _network(result, _arg: str) -> dict | None:
    found = F.command_json(result)
    return found if isinstance(found, dict) else None


# `docker network inspect NAME`'s object ({"Driver", "Attachable", "Scope", ...}), or None when
# there is no such network (the command fails) or Docker does not answer.
NETWORK = F.fact("docker_network", F.COMMAND,
                 lambda name: ["docker", "network", "inspect", "--format", "{{json .}}", "--", name], _network)


class HubNetworkStep:
    name = "hub-network"
    description = "the attachable overlay network of the hub and the notebook servers"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        name = ctx.config.hub.network
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        membership = ctx.docker.swarm()
        if membership.state != "active" or not membership.is_manager:
            return blocked("this node manages no swarm, and an overlay network needs one", waits_for=("hub-swarm",))
        network = ctx.fact(NETWORK, name)
        if network is None:
            return needs_change(f"no network {name}",
                                run_command("docker", "network", "create", "--driver", "overlay", "--attachable",
                                            "--", name, undo=Undo("remove-network", network=name)))
        driver, attachable = network.get("Driver", ""), bool(network.get("Attachable"))
        if driver != "overlay" or not attachable:
            what = f"a {driver or 'unknown'} network" + ("" if attachable else " that containers cannot attach to")
            return blocked(f"network {name} is {what}; the hub and the servers need an attachable overlay network: "
                           f"remove it (`docker network rm {name}`) or set hub.network to another name")
        return ok(f"overlay network {name} is attachable")

"""metadata-guard: containers on this node cannot reach the cloud metadata service; the host can.

A cloud's metadata service (EC2: 169.254.169.254 and fd00:ec2::254) serves the instance's
credentials and user-data; a notebook user is root in their container, and a container on
Docker's bridge reaches it through the host's forwarding. zero-to-jupyterhub blocks notebook pods
from it by default, and so does this step: one REJECT rule per address (clouds.py: the addresses
of the cloud this machine is found on, plus `docker.metadata_addresses`) at the head of Docker's
`DOCKER-USER` chain, which FORWARD jumps to first (iptables and ip6tables; docs.docker.com,
"Packet filtering and firewalls"; Docker never flushes it). The host's own requests are not
forwarded, so they pass.

The check judges the rules by their effect: `iptables -S` is walked (iptables.py) for a
forwarded packet to each address, which must meet the guard's REJECT before any rule that
accepts or returns it, in FORWARD or a chain it jumps to.

Rules live in the kernel and are gone after a reboot, so a oneshot unit, wanted by docker.service
and ordered after it (PartOf: restarted with it), runs the same script at every Docker start.
"""

from __future__ import annotations

import time

from .. import facts as F
from .. import iptables
from ..clouds import Guard, guards_for, parse_addresses, UNKNOWN
from ..engine import Check, PlannedFile, blocked, needs_change, ok, run_command, skipped, write_wanted
from ..journal import Undo
from ..render import render
from ..context import Context

SCRIPT = "/usr/local/lib/gpuswarm-node/metadata-guard"
UNIT_NAME = "gpuswarm-metadata-guard.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
COMMENT = "gpuswarm-node-metadata-guard"
# A rule whose chain FORWARD does not jump to is read again this often, this many seconds apart
# (missing_rules): Docker's own re-insertion of the jump takes two iptables commands.
REREADS, PAUSE = 3, 0.05


def guards(ctx: Context) -> tuple[Guard, ...]:
    """The addresses this machine guards: its cloud's (UNKNOWN's when not found) and the config's."""
    cloud, _how = ctx.fact(F.METADATA_CLOUD)
    return guards_for(cloud, parse_addresses(ctx.config.docker.metadata_addresses))


def script_text(rules: tuple[Guard, ...] = UNKNOWN) -> str:
    return render("metadata-guard.sh.j2", rules=[(g.program, " ".join(rule_args(g))) for g in rules],
                  comment=COMMENT, unit=UNIT_NAME)


def unit_text() -> str:
    return render("metadata-guard.service.j2", script=SCRIPT)


def rule_args(guard: Guard | str) -> list[str]:
    """The guard's rule in DOCKER-USER, as the script inserts it (after the chain) and as
    `iptables -S` prints it back (before the REJECT's own options)."""
    if isinstance(guard, str):
        guard = Guard(guard.split("/")[0])
    ports = ["-p", "tcp", "-m", "multiport", "--dports", ",".join(map(str, guard.ports))] if guard.ports else []
    return ["-d", guard.network, *ports, "-m", "comment", "--comment", COMMENT, "-j", "REJECT"]


def is_guard_rule(rule: iptables.Rule) -> bool:
    return rule.target == "REJECT" and (rule.value("--comment") or ("",))[0] == COMMENT


def rule_in(listing: str, guard: Guard | str) -> bool:
    """Whether an `iptables -S` listing holds the guard's rule for `guard` in DOCKER-USER."""
    want = ["-A", "DOCKER-USER", *rule_args(guard)]
    return any(line.split()[:len(want)] == want for line in listing.splitlines())


def guard_rules(listing: str) -> list[list[str]]:
    """Every rule of the guard in DOCKER-USER (its comment), as words after `-A DOCKER-USER`:
    what reset deletes, whichever addresses an earlier run guarded."""
    table = iptables.parse(listing)
    return [line.split()[2:] for line in (r.line for r in table.chains.get("DOCKER-USER", []))
            if f"--comment {COMMENT}" in line]


def guard_lines(listing: str, guard: Guard) -> list[str]:
    """The lines of DOCKER-USER with the guard's comment whose destination holds `guard`'s address."""
    rules = iptables.parse(listing).chains.get("DOCKER-USER", [])
    return [r.line for r in rules if f"--comment {COMMENT}" in r.line
            and iptables.matches(r, iptables.Probe(guard.address)) != iptables.NONE]


def jumps_to_user_chain(listing: str | None) -> bool:
    return ["-A", "FORWARD", "-j", "DOCKER-USER"] in F.chain_rules(listing, "FORWARD")


def verdict(listing: str, guard: Guard) -> iptables.Verdict:
    """Whether every forwarded packet to `guard` (to its ports) meets the guard's REJECT."""
    probe = iptables.Probe(guard.address, "tcp" if guard.ports else None, guard.ports or None)

    def is_target(rule: iptables.Rule) -> bool:
        return is_guard_rule(rule) and iptables.matches(rule, probe) == iptables.ALL

    return iptables.walk(iptables.parse(listing), probe, is_target)


def missing_rules(ctx: Context) -> dict[str, str]:
    """The addresses whose packets do not all meet the guard's REJECT, each with why: `iptables -S`
    failing, or the first rule or policy that lets some through (an ACCEPT or RETURN before it,
    the jump to DOCKER-USER missing or behind FORWARD's accepts, the REJECT narrowed).

    Docker keeps its jump to DOCKER-USER first in FORWARD by deleting it and inserting it again
    whenever it sets up a network (libnetwork: arrangeUserFilterRule, IPTable.EnsureJumpRule),
    which it does for a while after the node joins a swarm: a listing taken between the two has
    the rule and no jump. So a rule without its jump is looked at again, REREADS times, PAUSE
    seconds apart, before it is called not in force."""
    missing = {}
    for guard in guards(ctx):
        program = guard.program
        if program == "ip6tables" and not ctx.fact(F.EXISTS, "/proc/net/if_inet6"):
            continue  # no IPv6 on this machine: nothing to reach the address with
        listing = ctx.fact(F.IPTABLES_RULES, program)  # every chain of the filter table, one process
        for again in range(1, REREADS + 1):
            if listing is None or jumps_to_user_chain(listing) or not rule_in(listing, guard):
                break
            time.sleep(PAUSE)
            listing = ctx.fact(F.IPTABLES_RULES_AGAIN, f"{program} {again}")
        if listing is None:
            missing[guard.shown()] = f"`{program} -S` failed"
            continue
        judged = verdict(listing, guard)
        if judged.hit:
            continue
        narrowed = [line for line in guard_lines(listing, guard) if not rule_in(line, guard)]
        if narrowed and not rule_in(listing, guard):
            missing[guard.shown()] = f"its rule `{narrowed[0]}` takes only some of the packets; {judged.why}"
        elif not rule_in(listing, guard):
            missing[guard.shown()] = "no rule in DOCKER-USER"
        elif not jumps_to_user_chain(listing):
            missing[guard.shown()] = f"{program}'s FORWARD does not jump to DOCKER-USER"
        else:
            missing[guard.shown()] = judged.why
    return missing


class MetadataGuardStep:
    name = "metadata-guard"
    description = "containers cannot reach the cloud metadata service (the addresses of the cloud it runs on)"

    def files(self, ctx: Context) -> list[PlannedFile]:
        if not ctx.config.docker.metadata_guard:
            return []
        return [PlannedFile(SCRIPT, script_text(guards(ctx)), 0o755), PlannedFile(UNIT, unit_text())]

    def check(self, ctx: Context) -> Check:
        if not ctx.config.docker.metadata_guard:
            return skipped("docker.metadata_guard is false: containers can reach the cloud metadata service "
                           "(a guard an earlier run installed stays until reset)")
        if ctx.fact(F.ON_PATH, "iptables") is None:
            return blocked("iptables is not installed (Docker's package depends on it); run setup --only docker",
                           waits_for=("docker",))
        writes = [w for w in map(lambda f: write_wanted(ctx, f), self.files(ctx)) if w is not None]
        actions: list = list(writes)
        if any(w.path == UNIT for w in writes):
            actions.append(run_command("systemctl", "daemon-reload"))
        enabled = ctx.fact(F.UNIT_FILE_STATE, UNIT_NAME) == "enabled"
        if not enabled:
            actions.append(run_command("systemctl", "enable", UNIT_NAME, undo=Undo("disable-unit", unit=UNIT_NAME)))
        missing = missing_rules(ctx)
        if missing or actions:
            # Restarting the unit runs the script now and leaves the unit active, so that Docker's
            # next restart restarts it too.
            actions.append(run_command("systemctl", "restart", UNIT_NAME, undo=Undo("unguard")))
        if not actions:
            return ok(f"containers' packets to {', '.join(g.shown() for g in guards(ctx))} are rejected in "
                      f"DOCKER-USER, re-applied at every Docker start by {UNIT_NAME}; {self._whose(ctx)}")
        reasons = []
        if missing:
            reasons.append("no rule in force rejects containers' packets to "
                           + ", ".join(f"{address} ({why})" for address, why in missing.items()))
        if writes:
            reasons.append(f"{SCRIPT} or {UNIT} is not as setup writes it")
        elif not enabled:
            reasons.append(f"{UNIT_NAME} is not enabled, so Docker's next start would not re-apply the rules")
        reasons.append(f"guarded: {', '.join(g.shown() for g in guards(ctx))}, {self._whose(ctx)}")
        return needs_change("; ".join(reasons), *actions)

    @staticmethod
    def _whose(ctx: Context) -> str:
        cloud, how = ctx.fact(F.METADATA_CLOUD)
        extra = parse_addresses(ctx.config.docker.metadata_addresses)
        added = f", and docker.metadata_addresses {', '.join(extra)}" if extra else ""
        if cloud is None:
            return (f"cloud unknown ({how}), so only the addresses most clouds serve{added}; another cloud's "
                    "metadata addresses are guarded once listed in docker.metadata_addresses")
        return f"the addresses of cloud {cloud} (found by {how}){added}"

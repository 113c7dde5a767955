"""metadata-guard: containers on this node cannot reach the cloud metadata service; the host can.

On EC2 (and most clouds) 169.254.169.254 (EC2's IPv6 endpoint: fd00:ec2::254) serves the
instance's credentials and user-data; a notebook user is root in their container, and a container
on Docker's bridge reaches it through the host's forwarding. zero-to-jupyterhub blocks notebook
pods from it by default, and so does this step: one REJECT rule per address in Docker's
`DOCKER-USER` chain (iptables and ip6tables), the chain Docker evaluates first for forwarded
packets and never flushes (docs.docker.com, "Packet filtering and firewalls"). The host's own
requests are not forwarded, so they pass.

Rules live in the kernel and are gone after a reboot, so a oneshot unit, wanted by docker.service
and ordered after it (PartOf: restarted with it), runs the same script at every Docker start.
"""

from __future__ import annotations

import time

from .. import facts as F
from ..engine import Check, PlannedFile, blocked, needs_change, ok, run_command, skipped, write_wanted
from ..journal import Undo
from ..render import render
from ..context import Context

SCRIPT = "/usr/local/lib/gpuswarm-node/metadata-guard"
UNIT_NAME = "gpuswarm-metadata-guard.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
COMMENT = "gpuswarm-node-metadata-guard"
# (iptables program, address): the metadata endpoints (EC2's documentation, "Instance metadata
# service"; Azure, GCP and OpenStack use the same IPv4 address).
RULES = (("iptables", "169.254.169.254/32"), ("ip6tables", "fd00:ec2::254/128"))
# A rule whose chain FORWARD does not jump to is read again this often, this many seconds apart
# (missing_rules): Docker's own re-insertion of the jump takes two iptables commands.
REREADS, PAUSE = 3, 0.05


def script_text() -> str:
    return render("metadata-guard.sh.j2", rules=RULES, comment=COMMENT, unit=UNIT_NAME)


def unit_text() -> str:
    return render("metadata-guard.service.j2", script=SCRIPT)


def rule_args(address: str) -> list[str]:
    """The guard's rule for `address` in DOCKER-USER, as the script inserts it (after the chain)."""
    return ["-d", address, "-m", "comment", "--comment", COMMENT, "-j", "REJECT"]


def rule_in(listing: str, address: str) -> bool:
    """Whether an `iptables -S` listing holds the guard's rule for `address`."""
    for line in listing.splitlines():
        words = line.split()
        if (words[:2] == ["-A", "DOCKER-USER"] and "-d" in words and words[words.index("-d") + 1] == address
                and COMMENT in words and "-j" in words and words[words.index("-j") + 1:][:1] == ["REJECT"]):
            return True
    return False


def jumps_to_user_chain(listing: str | None) -> bool:
    return ["-A", "FORWARD", "-j", "DOCKER-USER"] in F.chain_rules(listing, "FORWARD")


def missing_rules(ctx: Context) -> dict[str, str]:
    """The addresses whose rule is not in force, each with why: no rule for it in DOCKER-USER,
    FORWARD not jumping to DOCKER-USER, or `iptables -S` failing.

    Docker keeps its jump to DOCKER-USER first in FORWARD by deleting it and inserting it again
    whenever it sets up a network (libnetwork: arrangeUserFilterRule, IPTable.EnsureJumpRule),
    which it does for a while after the node joins a swarm: a listing taken between the two has
    the rule and no jump. So a rule without its jump is looked at again, REREADS times, PAUSE
    seconds apart, before it is called not in force."""
    missing = {}
    for program, address in RULES:
        if program == "ip6tables" and not ctx.fact(F.EXISTS, "/proc/net/if_inet6"):
            continue  # no IPv6 on this machine: nothing to reach the address with
        listing = ctx.fact(F.IPTABLES_RULES, program)  # every chain of the filter table, one process
        for again in range(1, REREADS + 1):
            if listing is None or jumps_to_user_chain(listing) or not rule_in(listing, address):
                break
            time.sleep(PAUSE)
            listing = ctx.fact(F.IPTABLES_RULES_AGAIN, f"{program} {again}")
        if listing is None:
            missing[address] = f"`{program} -S` failed"
        elif not rule_in(listing, address):
            missing[address] = "no rule in DOCKER-USER"
        elif not jumps_to_user_chain(listing):
            missing[address] = f"{program}'s FORWARD does not jump to DOCKER-USER"
    return missing


class MetadataGuardStep:
    name = "metadata-guard"
    description = "containers cannot reach the cloud metadata service (169.254.169.254, fd00:ec2::254)"

    def files(self, ctx: Context) -> list[PlannedFile]:
        if not ctx.config.docker.metadata_guard:
            return []
        return [PlannedFile(SCRIPT, script_text(), 0o755), PlannedFile(UNIT, unit_text())]

    def check(self, ctx: Context) -> Check:
        if not ctx.config.docker.metadata_guard:
            return skipped("docker.metadata_guard is false: containers can reach the cloud metadata service "
                           "(a guard an earlier run installed stays until reset)")
        if ctx.fact(F.ON_PATH, "iptables") is None:
            return blocked("iptables is not installed (Docker's package depends on it); run setup --only docker")
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
            return ok(f"containers' packets to {', '.join(a for _p, a in RULES)} are rejected in DOCKER-USER, "
                      f"re-applied at every Docker start by {UNIT_NAME}")
        reasons = []
        if missing:
            reasons.append("no rule in force rejects containers' packets to "
                           + ", ".join(f"{address} ({why})" for address, why in missing.items()))
        if writes:
            reasons.append(f"{SCRIPT} or {UNIT} is not as setup writes it")
        elif not enabled:
            reasons.append(f"{UNIT_NAME} is not enabled, so Docker's next start would not re-apply the rules")
        return needs_change("; ".join(reasons), *actions)

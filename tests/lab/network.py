"""The lab's network: one bridge in the host namespace, one netns per machine.

Every lab machine lives in its own network namespace ``gsn-*`` with a veth
into the bridge ``gsnbr0`` (198.18.0.0/24, the host is 198.18.0.254).  Only
198.18.0.0/15 is used, so nothing here can collide with a real network.

Things learned the hard way:
- Run daemons with ``nsenter --net=/var/run/netns/NAME``; ``ip netns exec``
  remounts /sys, after which dockerd fails with "Devices cgroup isn't mounted".
- br_netfilter is loaded on these hosts (bridge-nf-call-iptables=1), so even
  traffic *between two lab machines on the bridge* passes the host's FORWARD
  chain.  A host dockerd sets that chain's policy to DROP, which would cut the
  lab in two; hence the always-on bridge-to-bridge ACCEPT rule.
- Deleting a netns does not free it while another mount namespace still holds
  a copy of its bind mount; the veth would then survive.  ``close`` deletes the
  host-side veth explicitly, which destroys both ends regardless.
- The host namespace owns 198.18.0.254 on the bridge, so it *can* reach every
  lab machine directly; only the lab machines' own daemons are isolated.
- After a crash the lab's daemons keep running inside their (now unnamed)
  namespaces; ``cleanup_stale`` finds them by netns and kills them by pid.
- The host's uplink may have a smaller MTU (1400 here) than the veths (1500);
  outbound NAT relies on path-MTU discovery working through the host.
- A lab machine's own daemons (its dockerd, the tool's guard) write iptables
  rules in its netns; a fault the lab injects (``PortBlock``) lives in the
  *server's* netns, so the machine under test sees only what a real network
  would show it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .util import Started

BRIDGE = "gsnbr0"
BRIDGE_ADDRESS = "198.18.0.254"
SUBNET = "198.18.0.0/24"
PREFIX_LEN = 24
NETNS_PREFIX = "gsn-"
VETH_PREFIX = "gv-"  # host side of each veth; the netns side is "eth0"
RULE_COMMENT = "gpuswarm-node-lab"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Remembers ip_forward's value from before enable_outbound_nat, so that
# cleanup_stale can restore it after a crashed run.
IP_FORWARD_SAVED = Path("/run/gpuswarm-node-lab.ip_forward")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _link_exists(name: str) -> bool:
    return _run("ip", "link", "show", "dev", name, check=False).returncode == 0


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def nsenter_prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}"]


def _tagged_rules(table: str, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Delete-commands for every rule of ours in ``table`` (of the netns ``prefix`` enters, or the
    host's)."""
    out = _run(*prefix, "iptables", "-w", "-t", table, "-S", check=False).stdout
    rules = []
    for line in out.splitlines():
        argv = shlex.split(line)
        if argv[:1] == ["-A"] and RULE_COMMENT in argv:
            rules.append([*prefix, "iptables", "-w", "-t", table, "-D", *argv[1:]])
    return rules


def _remove_tagged_rules(prefix: tuple[str, ...] = ()) -> None:
    for table in ("filter", "nat"):
        for argv in _tagged_rules(table, prefix):
            _run(*argv, check=False)


def _restore_ip_forward() -> None:
    if IP_FORWARD_SAVED.exists():
        IP_FORWARD.write_text(IP_FORWARD_SAVED.read_text().strip() + "\n")
        IP_FORWARD_SAVED.unlink()


def _delete_host(name: str) -> None:
    if _link_exists(VETH_PREFIX + name):
        _run("ip", "link", "del", VETH_PREFIX + name, check=False)
    if Path(f"/var/run/netns/{name}").exists():
        _run("ip", "netns", "del", name, check=False)


def _kill_netns_processes(netns_file: Path) -> None:
    """Kill what lives in the netns bound at ``netns_file``, with descendants."""
    from .dockerd import kill_and_wait, with_descendants  # dockerd imports this module

    target = f"net:[{netns_file.stat().st_ino}]"
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "ns" / "net") == target:
                found.append(int(entry.name))
        except OSError:
            continue
    kill_and_wait([p for p in with_descendants(found) if p != os.getpid()])


def cleanup_stale() -> None:
    """Remove whatever an earlier, crashed run left behind.

    Daemons of that run (dockerd, containerd, shims, containers, sshd,
    registry) still live in its ``gsn-*`` namespaces and would keep them
    alive; they are killed first, found by their netns.
    """
    _remove_tagged_rules()
    _restore_ip_forward()
    netns_dir = Path("/var/run/netns")
    names = sorted(p.name for p in netns_dir.iterdir()) if netns_dir.is_dir() else []
    for name in names:
        if name.startswith(NETNS_PREFIX):
            # A PortBlock left in place (its netns goes below too, unless something still holds it).
            _remove_tagged_rules(("nsenter", f"--net={netns_dir / name}"))
            _kill_netns_processes(netns_dir / name)
            _delete_host(name)
    # veths whose netns vanished some other way
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if ifname.startswith(VETH_PREFIX + NETNS_PREFIX):
            _run("ip", "link", "del", ifname, check=False)
    if _link_exists(BRIDGE):
        _run("ip", "link", "del", BRIDGE, check=False)
    from .dockerd import CGROUP_PREFIX, remove_cgroup_dirs  # dockerd imports this module

    remove_cgroup_dirs(CGROUP_PREFIX + "*")


class LabNetwork(Started):
    """Context manager owning the bridge, the lab netns and our iptables rules."""

    def __init__(self) -> None:
        self.hosts: dict[str, LabHost] = {}
        self._bridge_created = False

    def start(self) -> "LabNetwork":
        if _link_exists(BRIDGE):
            raise RuntimeError(f"{BRIDGE} already exists; run network.cleanup_stale() first")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        self._bridge_created = True
        _run("ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        self._insert_rule("filter", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
        return self

    def add_host(self, name: str, address: str) -> LabHost:
        if not name.startswith(NETNS_PREFIX) or len(VETH_PREFIX + name) > 15:
            raise ValueError(f"bad lab host name {name!r} (gsn-*, at most 12 characters)")
        if name in self.hosts:
            raise ValueError(f"{name} already added")
        host = LabHost(name, address)
        # Registered first so that close() cleans up a half-made host too.
        self.hosts[name] = host
        veth = VETH_PREFIX + name
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _run("ip", "link", "set", veth, "master", BRIDGE)
        _run("ip", "link", "set", veth, "up")
        ns = ["ip", "-n", name]
        _run(*ns, "link", "set", "lo", "up")
        _run(*ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        _run(*ns, "link", "set", "eth0", "up")
        _run(*ns, "route", "add", "default", "via", BRIDGE_ADDRESS)
        return host

    def remove_host(self, name: str) -> None:
        self.hosts.pop(name, None)
        _delete_host(name)

    def enable_outbound_nat(self) -> None:
        """Let lab machines reach the outside (apt) through the host. Idempotent."""
        if getattr(self, "_nat_enabled", False):
            return
        self._nat_enabled = True
        if not IP_FORWARD_SAVED.exists():
            IP_FORWARD_SAVED.write_text(IP_FORWARD.read_text())
        IP_FORWARD.write_text("1\n")
        self._insert_rule("nat", "POSTROUTING", "-s", SUBNET, "!", "-o", BRIDGE, "-j", "MASQUERADE")
        self._insert_rule("filter", "FORWARD", "-s", SUBNET, "-j", "ACCEPT")
        self._insert_rule("filter", "FORWARD", "-d", SUBNET, "-j", "ACCEPT")

    def _insert_rule(self, table: str, chain: str, *spec: str) -> None:
        tag = ["-m", "comment", "--comment", RULE_COMMENT]
        _run("iptables", "-t", table, "-I", chain, "1", *spec, *tag)

    def close(self) -> None:
        """Undo everything; safe to call twice or after a partial start."""
        for name in list(self.hosts):
            self.remove_host(name)
        _remove_tagged_rules()
        _restore_ip_forward()
        if self._bridge_created and _link_exists(BRIDGE):
            _run("ip", "link", "del", BRIDGE, check=False)
        self._bridge_created = False


class PortBlock(Started):
    """TCP port ``port`` of lab host ``server`` refusing connections from lab host ``client``, as a
    server whose daemon is down (sshd restarting, the hub rebooting) does: an iptables rule in the
    server's netns, INPUT chain, first, that answers the client's SYN with a TCP reset (the client
    sees ECONNREFUSED at once, as from a closed port; REJECT --reject-with tcp-reset, iptables-
    extensions(8)). Every other host, and every other port of the server, is untouched.

    ``start`` adds the rule, ``close`` removes it (safe to call twice); the rule is tagged
    RULE_COMMENT, so ``cleanup_stale`` removes one a crashed run left. ``refused`` counts the
    connection attempts it answered.
    """

    def __init__(self, server: LabHost, client: LabHost, port: int) -> None:
        self.server, self.client, self.port = server, client, port
        self.spec = ["-s", f"{client.address}/32", "-p", "tcp", "-m", "tcp", "--dport", str(port),
                     "-m", "comment", "--comment", RULE_COMMENT, "-j", "REJECT", "--reject-with", "tcp-reset"]
        self.blocked = False

    def _iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*self.server.nsenter_prefix(), "iptables", "-w", *args, check=check)

    def start(self) -> "PortBlock":
        self.blocked = True  # first: close() removes a rule whose insert failed half-way too
        self._iptables("-I", "INPUT", "1", *self.spec)
        return self

    def refused(self) -> int:
        """How many packets (the client's SYNs) the rule has answered with a reset so far."""
        for line in self._iptables("-S", "INPUT", "-v").stdout.splitlines():
            argv = shlex.split(line)
            if "-c" not in argv:
                continue
            at = argv.index("-c")  # "-c PACKETS BYTES", where -v puts it among the matches
            if argv[:at] + argv[at + 3:] == ["-A", "INPUT", *self.spec]:
                return int(argv[at + 1])
        return 0

    def close(self) -> None:
        if self.blocked:
            while self._iptables("-D", "INPUT", *self.spec, check=False).returncode == 0:
                pass  # one rule each start; a second would be a bug of the test, gone as well
            self.blocked = False

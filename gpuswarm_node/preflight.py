"""setup's plan: its steps, and the preflight checks (kubeadm's model) that run before its first
action, so that a run never installs Docker and pulls a 14 GB image only to fail at the join.

Each check has a stable name, shown in the output and in the JSON (`preflight`), and looks only
at what the selected steps need:

- `config`: the keys a selected step needs together are set together (swarm.manager with an SSH
  key and a way to verify the manager's host key; registry.address with registry.ca_cert).
- `ssh-key`: swarm.ssh_key exists, is root's and readable by root only.
- `known-hosts`: swarm.known_hosts exists and only root can change it (or a fingerprint is pinned).
- `manager-host-key`: the manager answers SSH with the expected host key, takes the key, and runs
  a swarm (asked once; the swarm-join step reuses the answer).
- `registry-ca`: registry.ca_cert exists and holds a PEM certificate.
- `node-name`: this machine's host name is swarm.node_name, the node the hub authorised the key
  for (`hub bundle` writes it): the hub's gate acts only on the node whose host name that is, so
  a worker under another name would join and then be refused its labels, drain and leave.

The SSH checks are left out where the node is already a member of the manager's swarm (the join
has nothing to do) and where no manager is configured.
"""

from __future__ import annotations

import os
from typing import Sequence

from .context import Context
from .engine import Plan, Preflight, Step
from .errors import GpuswarmError
from . import facts as F
from .manager import open_trust_file, resolve_addresses, split_host_port


def _joins(ctx: Context, names: set[str]) -> bool:
    """Whether swarm-join is selected and may have to reach the manager."""
    if "swarm-join" not in names or not ctx.config.swarm.manager:
        return False
    if ctx.docker.unreachable_reason() is not None:
        return True  # Docker is not there yet (a fresh machine): the join comes later in this run
    membership = ctx.docker.swarm()
    known = resolve_addresses(ctx.config.swarm.manager)
    return not (membership.state == "active"
                and any(split_host_port(a)[0] in known for a in membership.manager_addrs))


def config_problem(ctx: Context, names: set[str]) -> str | None:
    cfg = ctx.config
    problems = []
    if "swarm-join" in names and cfg.swarm.manager:
        if not cfg.swarm.ssh_key:
            problems.append("swarm.manager is set but swarm.ssh_key is empty: set the key that logs in to it")
        if not cfg.swarm.known_hosts and not cfg.swarm.host_key_fingerprint:
            problems.append("swarm.manager is set but neither swarm.known_hosts nor swarm.host_key_fingerprint is, "
                            "so its host key cannot be verified: set one")
    if "registry-trust" in names and cfg.registry.address and not cfg.registry.ca_cert:
        problems.append("registry.address is set but registry.ca_cert is empty: set the hub registry's CA file")
    return "; ".join(problems) or None


def _trust_file(path: str, key: str, secret: bool) -> str | None:
    os.close(open_trust_file(path, key, secret))  # raises ManagerUnreachable, naming the problem
    return None


def ssh_key_problem(ctx: Context, names: set[str]) -> str | None:
    """swarm.ssh_key is root's, readable by root only, and an unencrypted private key (the boot
    unit runs setup with nobody to type a passphrase)."""
    if not _joins(ctx, names) or not ctx.config.swarm.ssh_key:
        return None
    from .keyfiles import private_key_problem

    path = ctx.config.swarm.ssh_key
    fd = open_trust_file(path, "swarm.ssh_key", secret=True)  # raises ManagerUnreachable, naming the problem
    try:
        with os.fdopen(fd, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")  # a key is a few KiB
    except OSError as exc:
        return f"swarm.ssh_key {path} cannot be read: {exc.strerror}"
    problem = private_key_problem(text)
    return f"swarm.ssh_key {path} {problem}" if problem else None


def known_hosts_problem(ctx: Context, names: set[str]) -> str | None:
    cfg = ctx.config.swarm
    if not _joins(ctx, names) or not cfg.known_hosts:
        return None
    if cfg.host_key_fingerprint and not os.path.lexists(cfg.known_hosts):
        return None  # the pinned fingerprint verifies the manager instead
    return _trust_file(cfg.known_hosts, "swarm.known_hosts", secret=False)


def manager_problem(ctx: Context, names: set[str]) -> str | None:
    if not _joins(ctx, names):
        return None
    try:
        if ssh_key_problem(ctx, names) or known_hosts_problem(ctx, names):
            return None  # moot, as below
    except GpuswarmError:
        return None  # moot: ssh-key or known-hosts names the cause, and no SSH is tried without them
    ctx.manager_swarm()  # raises ManagerUnreachable with the cause (host key, SSH key, network)
    return None


def registry_ca_problem(ctx: Context, names: set[str]) -> str | None:
    cfg = ctx.config.registry
    if "registry-trust" not in names or not cfg.address or not cfg.ca_cert:
        return None
    pem, problem = ctx.fact(F.CERTIFICATE, cfg.ca_cert)
    if pem is not None:
        return None
    fix = "give the hub's CA certificate" if problem == "holds no PEM certificate" else \
        "copy the hub's CA certificate there"
    return f"registry.ca_cert {cfg.ca_cert} {problem}: {fix}"


HOSTNAME = "/proc/sys/kernel/hostname"  # the kernel's host name: what Docker reports as the node's


def node_name_problem(ctx: Context, names: set[str]) -> str | None:
    want = ctx.config.swarm.node_name
    if not want or not _joins(ctx, names):
        return None
    have = (ctx.fact(F.FILE_TEXT, HOSTNAME) or "").strip()
    if have == want:
        return None
    return (f"this machine's host name is {have or 'unknown'}, but swarm.ssh_key is authorised for node {want} "
            f"(swarm.node_name), and the hub's gate acts only on the node of that name: set the host name "
            f"(`hostnamectl set-hostname {want}`; `hub bundle --cloud-init` user-data sets it at boot), or make a "
            f"bundle for {have or 'this machine'} on the hub (`hub bundle --node {have or 'NAME'}`)")


CHECKS = (("config", config_problem), ("ssh-key", ssh_key_problem), ("known-hosts", known_hosts_problem),
          ("manager-host-key", manager_problem), ("registry-ca", registry_ca_problem),
          ("node-name", node_name_problem))


def setup_plan(steps: Sequence[Step]) -> Plan:
    names = {s.name for s in steps}
    checks = [Preflight(name, (lambda fn: lambda ctx: fn(ctx, names))(fn)) for name, fn in CHECKS]
    from .steps import ALONGSIDE

    return Plan("setup", tuple(steps), tuple(checks), alongside=ALONGSIDE, regardless=("boot",))

"""Talking to the swarm manager over SSH (paramiko) to get a worker join token.

The SSH host key is the root of trust: the token says which swarm CA to trust, so a token from an
impostor would hand this node to the impostor's swarm. Unknown or changed host keys are refused.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .config import SwarmConfig
from .errors import ManagerUnreachable, StepFailed
from .gate import SWARM_INFO_FORMAT
from .secrets import looks_like_join_token, redact

if TYPE_CHECKING:
    import paramiko

JOIN_TOKEN_COMMAND = "docker swarm join-token -q worker"


class FingerprintMismatch(Exception):
    def __init__(self, seen: str) -> None:
        super().__init__(f"host key fingerprint {seen} is not the pinned one")
        self.seen = seen


class PinnedFingerprint:
    """paramiko MissingHostKeyPolicy: accept a key absent from known_hosts only if it is the pinned one."""

    def __init__(self, pinned: str) -> None:
        self.pinned = pinned

    def missing_host_key(self, client, hostname, key) -> None:
        import hmac  # here, not with the module: it loads OpenSSL, which a status does not need

        seen = key.fingerprint  # paramiko's PKey (3.2+): SHA256:<base64>, as `ssh-keygen -lf` prints it
        if not hmac.compare_digest(seen, self.pinned):
            raise FingerprintMismatch(seen)


def _transient(exc: ManagerUnreachable) -> ManagerUnreachable:
    """Mark a failure as the network's, which a retry may get past (gpuswarm_node.retry); refused
    keys and unknown or changed host keys are never marked: trying them again changes nothing."""
    exc.transient = True
    return exc


def quiet_paramiko() -> None:
    """paramiko logs what it hits in its transport thread ("Exception (client): Error reading SSH
    protocol banner" and the traceback) through `logging`; with no handler configured, Python's
    last-resort handler prints that to stderr. The tool says the cause itself (ManagerUnreachable),
    so paramiko's loggers are given a handler that drops everything, and do not propagate."""
    import logging

    logger = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


def connect_reason(exc: BaseException) -> str:
    """Why a connection failed, in the C library's words ("Connection refused", "No route to host",
    "timed out", "Temporary failure in name resolution"). paramiko's SSHClient.connect tries every
    address of the name and, when each one refused or had no route, raises NoValidConnectionsError
    (paramiko/client.py, ssh_exception.py): its own text is a fixed "Unable to connect to port P on
    A" and its errno None, the real errors are in `errors` ({(address, port, ...): OSError}). Each
    distinct reason is said; the addresses too where they differ ("192.0.2.1: Connection refused,
    2001:db8::1: No route to host")."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict) and errors:
        reasons = {str(addr[0] if isinstance(addr, tuple) else addr): connect_reason(error)
                   for addr, error in errors.items()}
        if len(set(reasons.values())) == 1:
            return next(iter(reasons.values()))
        return ", ".join(f"{address}: {reason}" for address, reason in reasons.items())
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class ManagerSession:
    """One verified SSH connection to the manager, for running docker commands there."""

    def __init__(self, cfg: SwarmConfig, timeout: float = 15.0) -> None:
        self.cfg, self.timeout = cfg, timeout
        self.where = f"{cfg.ssh_user}@{cfg.manager}:{cfg.ssh_port}"
        self.client: paramiko.SSHClient | None = None  # connected by __enter__
        self._gated: bool | None = None

    def __enter__(self) -> "ManagerSession":
        import paramiko

        quiet_paramiko()
        cfg = self.cfg
        pinned = cfg.host_key_fingerprint
        # Both files are opened and checked before anything is sent, and paramiko reads the checked
        # open files (through /proc/self/fd), so neither can be swapped between check and use.
        key_fd = open_trust_file(cfg.ssh_key, "swarm.ssh_key", secret=True)
        known_fd = None
        try:
            if cfg.known_hosts and os.path.lexists(cfg.known_hosts):
                known_fd = open_trust_file(cfg.known_hosts, "swarm.known_hosts", secret=False)
            elif not pinned:
                raise ManagerUnreachable(f"swarm.known_hosts {cfg.known_hosts} does not exist, so the manager's host "
                                         "key cannot be verified.",
                                         "Put the manager's host key there (ssh-keyscan it and check its "
                                         "fingerprint), or pin it with swarm.host_key_fingerprint.")
            client = paramiko.SSHClient()
            if known_fd is not None:
                try:
                    client.load_host_keys(_fd_path(known_fd))
                except (OSError, paramiko.SSHException) as exc:
                    raise ManagerUnreachable(f"swarm.known_hosts {cfg.known_hosts} cannot be read: {exc}.",
                                             "Fix the file: one 'host keytype key' line per host.") from None
            # Never auto-add: a key is accepted from known_hosts, or when it has the pinned fingerprint.
            client.set_missing_host_key_policy(PinnedFingerprint(pinned) if pinned else paramiko.RejectPolicy())
            try:
                client.connect(cfg.manager, port=cfg.ssh_port, username=cfg.ssh_user, key_filename=_fd_path(key_fd),
                               look_for_keys=False, allow_agent=False, timeout=self.timeout,
                               banner_timeout=self.timeout, auth_timeout=self.timeout)
            except Exception as exc:
                client.close()
                raise self._explain(exc) from None
        finally:
            os.close(key_fd)
            if known_fd is not None:
                os.close(known_fd)
        self.client = client
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()

    def _explain(self, exc: Exception) -> ManagerUnreachable:
        import paramiko

        cfg = self.cfg
        if isinstance(exc, paramiko.BadHostKeyException):
            return ManagerUnreachable(f"the manager {cfg.manager} presented a host key that differs from the one in "
                                      f"{cfg.known_hosts}; refusing to trust it.",
                                      "If the manager was really re-installed, verify and replace its key there.")
        if isinstance(exc, paramiko.AuthenticationException):
            return ManagerUnreachable(f"the manager refused the SSH key {cfg.ssh_key} for {self.where}.",
                                      "Add the key's public half to the manager's authorized_keys.")
        if isinstance(exc, FingerprintMismatch):
            return ManagerUnreachable(f"the manager {cfg.manager} presented a host key with fingerprint "
                                      f"{exc.seen}, not the pinned {cfg.host_key_fingerprint}; refusing to trust it.",
                                      "If the manager was really re-installed, check and update "
                                      "swarm.host_key_fingerprint.")
        if isinstance(exc, paramiko.SSHException):
            if "not found in known_hosts" in str(exc):
                return ManagerUnreachable(f"the manager {cfg.manager} is not in {cfg.known_hosts}; refusing an "
                                          "unknown host key.",
                                          "Add its host key there after checking the fingerprint.")
            # The SSH server is not answering as one yet (no banner: sshd starting, MaxStartups).
            return _transient(ManagerUnreachable(f"SSH to {self.where} failed: {exc}.",
                                                 "Check the manager's SSH server."))
        if isinstance(exc, (OSError, socket.timeout, EOFError)):
            # Refused, reset, timed out, no route, a name that does not resolve (yet): the network's.
            return _transient(ManagerUnreachable(f"cannot reach the manager at {self.where}: {connect_reason(exc)}.",
                                                 "Check swarm.manager, swarm.ssh_port and the network."))
        return ManagerUnreachable(f"SSH to {self.where} failed: {type(exc).__name__}: {exc}.",
                                  "Check the manager's SSH server.")

    def run(self, command: str) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of a command on the manager."""
        import paramiko

        assert self.client is not None, "run inside `with ManagerSession(...)`"
        try:
            _stdin, stdout, stderr = self.client.exec_command(command, timeout=self.timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            return stdout.channel.recv_exit_status(), out, err
        except (paramiko.SSHException, OSError, socket.timeout) as exc:
            raise self._explain(exc) from None

    @property
    def gated(self) -> bool:
        """Whether the hub answers through the gate (`gpuswarm-node hub gate`, gate.py): asked once
        a session. Without the gate the SSH user runs docker itself (a full login on the hub)."""
        if self._gated is None:
            from .gate import WORD

            status, out, _err = self.run(f"{WORD} hello")
            self._gated = status == 0 and out.startswith(f"{WORD} ")
        return self._gated

    def gate(self, verb: str, *args: str) -> str:
        """stdout of one gate request; ManagerUnreachable with the gate's own line when it refuses."""
        from .gate import REFUSED, WORD

        status, out, err = self.run(" ".join([WORD, verb, *args]))
        if status != 0:
            what = "refused" if status == REFUSED else f"failed (exit {status})"
            raise ManagerUnreachable(f"the hub's gate {what} `{verb}`: {redact(err.strip(), out.strip()) or 'no output'}.",
                                     "Check the key's node name (`hub authorize --node`, this node's host name) "
                                     "and that the hub is a swarm manager.")
        return out

    # What a worker asks the manager, through the gate when the hub has one, else as docker commands.

    def swarm_info(self) -> "ManagerSwarm":
        text = self.gate("swarm-info") if self.gated else self.docker(SWARM_INFO_COMMAND)
        return parse_swarm_info(text, self.cfg.manager)

    def join_token(self) -> str:
        """A worker join token, checked for its form; never printed."""
        token = (self.gate("join-token") if self.gated else self.docker(JOIN_TOKEN_COMMAND)).strip()
        if not looks_like_join_token(token):
            raise ManagerUnreachable("the manager answered with something that is not a swarm join token.",
                                     "Check that the manager runs Docker in swarm mode.")
        return token

    def node_known(self, node_id: str) -> bool:
        if self.gated:
            return self.gate("node-known", node_id).strip() == "yes"
        return node_id in self.docker(NODE_IDS_COMMAND).split()

    def running_tasks(self, node_id: str) -> list[str]:
        if self.gated:
            out = self.gate("tasks", node_id)
        else:
            out = self.docker(f"docker node ps {shlex.quote(node_id)} --filter desired-state=running "
                              "--format '{{.ID}}'")
        return [line for line in out.split() if line]

    def set_availability(self, node_id: str, availability: str) -> None:
        if self.gated:
            self.gate({"drain": "drain", "pause": "pause", "active": "activate"}[availability], node_id)
        else:
            self.docker(f"docker node update --availability {shlex.quote(availability)} {shlex.quote(node_id)}")

    def node_state(self, node_id: str) -> str:
        """The node's state as the manager sees it (ready, down, ...), or "" when it cannot tell."""
        if self.gated:
            try:
                return json.loads(self.gate("node", node_id)).get("State", "")
            except (ManagerUnreachable, ValueError):
                return ""
        return self.run(f"docker node inspect {shlex.quote(node_id)} --format '{{{{.Status.State}}}}'")[1].strip()

    def node_availability(self, node_id: str) -> str:
        """The node's availability on the manager (active, pause, drain)."""
        if self.gated:
            try:
                return str(json.loads(self.gate("node", node_id)).get("Availability", ""))
            except ValueError:
                raise ManagerUnreachable("the hub's gate answered `node` with something that is not JSON.",
                                         "Check gpuswarm-node on the hub.") from None
        return self.docker(f"docker node inspect {shlex.quote(node_id)} --format '{{{{.Spec.Availability}}}}'").strip()

    def remove_node(self, node_id: str) -> None:
        if self.gated:
            self.gate("remove", node_id)
        else:
            self.docker(f"docker node rm {shlex.quote(node_id)}")

    def node_labels(self, node_id: str) -> dict[str, str]:
        """The node's gpuswarm.* labels on the manager."""
        from .gate import node_labels

        if self.gated:
            text = self.gate("node", node_id)
            try:
                return node_labels(json.loads(text).get("Labels"))
            except ValueError:
                raise ManagerUnreachable("the hub's gate answered `node` with something that is not JSON.",
                                         "Check gpuswarm-node on the hub.") from None
        text = self.docker(f"docker node inspect {shlex.quote(node_id)} --format '{{{{json .Spec.Labels}}}}'")
        try:
            return node_labels(json.loads(text))
        except ValueError:
            raise ManagerUnreachable("the manager answered `docker node inspect` with something that is not JSON.",
                                     "Check the Docker CLI on the manager.") from None

    def set_labels(self, node_id: str, labels: dict[str, str]) -> None:
        """Make the node's gpuswarm.* labels exactly `labels` (keys and values as gate.parse_labels allows)."""
        items = [f"{k}={v}" for k, v in sorted(labels.items())]
        if self.gated:
            self.gate("labels", node_id, *items)
            return
        from .gate import Refused, parse_labels

        try:
            parse_labels(items)  # the same rules with or without the gate
        except Refused as exc:
            raise StepFailed(f"a node label cannot be set: {exc}.", "This is a bug in gpuswarm-node.") from None
        have = self.node_labels(node_id)
        argv = ["docker", "node", "update"]
        for key in sorted(set(have) - set(labels)):
            argv += ["--label-rm", key]
        for item in items:
            argv += ["--label-add", item]
        self.docker(" ".join(shlex.quote(a) for a in [*argv, node_id]))

    def docker(self, command: str) -> str:
        """stdout of a docker command on the manager; a failure names the command, never a secret."""
        status, out, err = self.run(command)
        if status != 0:
            raise ManagerUnreachable(f"`{command}` failed on the manager (exit {status}): "
                                     f"{redact(err.strip(), out.strip()) or 'no output'}.",
                                     f"Make sure {self.cfg.ssh_user} can run docker there and the node is a "
                                     "swarm manager.")
        return out


# What the manager says about its swarm: only the fields needed, as one JSON object. `.Swarm.Cluster`
# is set only on a manager (moby daemon/cluster/swarm.go, Cluster.Info), hence the guard: a bare
# `{{.Swarm.Cluster.ID}}` fails with a template error on any other host.
SWARM_INFO_COMMAND = "docker info --format " + shlex.quote(SWARM_INFO_FORMAT)
NODE_IDS_COMMAND = "docker node ls --quiet"
SWARM_PORT = 2377


@dataclass(frozen=True)
class ManagerSwarm:
    """The swarm of the manager at swarm.manager, as that manager reports it over SSH."""

    cluster_id: str
    join_addr: str  # host:port the manager advertises for joining (what its workers will dial)
    token: str = field(default="", repr=False)  # a worker join token, only when asked for
    node_known: bool | None = None  # whether the asked-for node id is one of the swarm's nodes
    engine_version: str = ""  # the manager's Docker Engine version (`docker info`'s ServerVersion)


def read_manager_swarm(cfg: SwarmConfig, token: bool = False, node_id: str = "",
                       timeout: float = 15.0) -> ManagerSwarm:
    """The manager's cluster id and join address, and (when asked) a worker join token and whether
    it knows `node_id`: all over one verified SSH session."""
    with ManagerSession(cfg, timeout) as session:
        answer = session.swarm_info()
        if node_id:
            answer = replace(answer, node_known=session.node_known(node_id))
        if token:
            answer = replace(answer, token=session.join_token())
    return answer


def parse_swarm_info(text: str, manager: str) -> ManagerSwarm:
    """ManagerSwarm from SWARM_INFO_COMMAND's output; ManagerUnreachable when it is no manager."""
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise ManagerUnreachable(f"the manager at {manager} answered `docker info` with something that is not "
                                 "the expected JSON.", "Check the Docker CLI on the manager.")
    if not info.get("ControlAvailable") or not info.get("ClusterID"):
        state = info.get("LocalNodeState") or "unknown"
        raise ManagerUnreachable(f"{manager} is not a swarm manager (its swarm state is {state}).",
                                 "Point swarm.manager at a manager of the swarm (`docker node ls` works there).")
    # The manager's own entry in its manager list carries the address and port it advertises;
    # NodeAddr is the same address without the port (moby daemon/cluster/cluster.go).
    own = [m.get("Addr", "") for m in info.get("RemoteManagers") or () if m.get("NodeID") == info.get("NodeID")]
    if own and own[0]:
        join_addr = own[0]
    else:
        join_addr = join_host_port(info.get("NodeAddr") or manager, SWARM_PORT)
    version = info.get("ServerVersion")
    return ManagerSwarm(cluster_id=info["ClusterID"], join_addr=join_addr,
                        engine_version=version if isinstance(version, str) else "")


# The first Docker Engine whose swarmkit keeps tasks that hold a generic resource when their node's
# record changes: before it, the constraint enforcer's test was inverted
# (manager/orchestrator/constraintenforcer/constraint_enforcer.go; moby/moby#44378, fixed by
# moby/swarmkit#3082, vendored into moby v23.0.2; v23.0.0 and v23.0.1 still carry the bug).
FIXED_ENFORCER = (23, 0, 2)


def engine_version_tuple(version: str) -> tuple[int, ...] | None:
    """(major, minor, patch) of a Docker Engine version ("20.10.24+dfsg1", "24.0.7", "17.06.2-ce"),
    or None when it does not start with numbers."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


def old_enforcer_problem(swarm: ManagerSwarm, manager: str) -> str | None:
    """Why this manager would reject the node's notebook tasks, or None (also for a version it did
    not tell)."""
    found = engine_version_tuple(swarm.engine_version)
    if found is None or found >= FIXED_ENFORCER:
        return None
    fixed = ".".join(map(str, FIXED_ENFORCER))
    return (f"the manager {manager} runs Docker {swarm.engine_version}, whose swarm constraint enforcer rejects "
            "every task that reserves a generic resource (each notebook's GPU slice) whenever its node's record "
            f"changes, so notebooks would fail to start here; upgrade the manager's Docker Engine to {fixed} or "
            "later, then run setup again")


def split_host_port(address: str) -> tuple[str, int]:
    """("2001:db8::1", 2377) from "[2001:db8::1]:2377"; a bare host gets the swarm port."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # a host name, an IPv4 address or a bare IPv6 address
        host, port = address, ""
    return host, int(port) if port.isdigit() else SWARM_PORT


def join_host_port(host: str, port: int) -> str:
    # An IPv6 literal needs brackets, or Docker cannot tell its colons from the port's.
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_problem(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to host:port cannot be made from here, or None when it can."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def resolve_addresses(host: str) -> set[str]:
    """Every address a host name stands for (an address stands for itself)."""
    try:
        # str(): an AF_INET or AF_INET6 address is one already (typeshed allows AF_PACKET's int).
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)} | {host}
    except OSError:
        return {host}


# What each trusted file may be, and how to make it so. The key is a secret: root alone may read
# it. known_hosts is public but decides whom the token goes to: root alone may change it.
TRUST_FILES = {
    "swarm.ssh_key": ("use it", "Install the key file itself (not a link), owned by root with mode 0600 "
                                "(chown root:root; chmod 600)."),
    "swarm.known_hosts": ("trust the host keys in it", "Install the file itself (not a link), owned by root and "
                                                       "writable only by root (chown root:root; chmod 644)."),
}


def _fd_path(fd: int) -> str:
    """A path that opens the very file behind `fd`, for libraries that take a file name."""
    return f"/proc/self/fd/{fd}"


def _trust_problem(path: str, secret: bool) -> tuple[int | None, str | None]:
    """(an open fd, None) when the file is safe to trust, else (None, why not): trust.open_checked,
    the one rule of every trust file."""
    from .trust import open_checked

    return open_checked(path, secret)


def open_trust_file(path: str, key: str, secret: bool) -> int:
    """A read-only fd of the file `key` names, checked with fstat; ManagerUnreachable when it is
    missing, a link, not owned by root, or open to others (to read, for a secret; else to write)."""
    fd, problem = _trust_problem(path, secret)
    if fd is None:  # refused: problem says why
        refused, fix = TRUST_FILES[key]
        raise ManagerUnreachable(f"{key} {path} {problem}; refusing to {refused}.", fix)
    return fd

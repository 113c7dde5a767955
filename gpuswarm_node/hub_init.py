"""`hub init`: the hub as a plan of the same engine as `setup` (engine.Plan): preflight checks,
then its steps, each checked, applied and checked again, every change in the hub's own journal for
`hub reset`.

The steps, in order (their names are part of the interface, as setup's are):

- `docker`: Docker Engine, the worker's own step (steps/docker.py); the manager needs 23.0.2 or
  later, which `hub-swarm` checks once Docker runs (and the `docker-version` preflight check before
  anything is installed, where apt already knows the candidate).
- `hub-swarm`: this node manages a swarm, initialised at swarm.advertise_addr.
- `hub-network`: the attachable overlay network (hub.network) of the hub and the servers.
- `hub-ca`: the hub's own CA (unless the operator gives a certificate: hub.tls_*).
- `hub-certificate`: the registry's server certificate for the hub's names and addresses.
- `hub-registry`: Debian's docker-registry, configured by the tool, run by systemd.
- `hub-registry-trust`: the hub's own Docker trusts its registry (the CA `hub bundle` ships).
- `hub-notebook-image`: the notebook image, built from hub.notebook_base with the GPU slice hook,
  pushed to the registry.
- `hub-jupyterhub-image`: JupyterHub's image, built from PyPI and npm, pushed to the registry.
- `hub-gate`: the gate that workers' keys are forced to run is where `hub authorize` names it.
- `hub-jupyterhub`: JupyterHub as a Swarm service on this manager: hub-config's configuration, the
  authenticator chosen in [hub], the idle culler, TLS.

Preflight checks, by stable name: `hub-name` (the name the certificate carries), `docker-version`,
`swarm-role` (not a worker of another swarm), `registry-port` (free, or the registry's own),
`tls-files` (the operator's certificate, key and CA follow the trust-file rule), `authenticator`
(its secret file is there, a secret's, and not empty), `hub-port` (free, or the hub's own).
"""

from __future__ import annotations

import ipaddress
import posixpath

from . import facts as F
from .config import HUB_DIR, Config, certificate_name_problem, hub_addresses
from .context import Context

PRIVATE_DIR = f"{HUB_DIR}/private"  # root's, 0700: the keys
CA_CERT = f"{HUB_DIR}/ca.crt"  # what every worker trusts (registry.ca_cert; `hub bundle --registry-ca`)
CA_KEY = f"{PRIVATE_DIR}/ca.key"
REGISTRY_CERT = f"{HUB_DIR}/registry.crt"
REGISTRY_KEY = f"{PRIVATE_DIR}/registry.key"
REGISTRY_CONFIG = f"{HUB_DIR}/registry.yml"
REGISTRY_UNIT = "docker-registry.service"  # Debian's docker-registry package
REGISTRY_PACKAGE = "docker-registry"
REGISTRY_DROPIN = "/etc/systemd/system/docker-registry.service.d/gpuswarm-node.conf"
# Where `reset` finds what `hub init` changed: a journal of the hub's own, so that a worker's
# `reset` on the same machine never undoes the hub, nor `hub reset` the worker.
HUB_JOURNAL = "/var/lib/gpuswarm-node/hub-changes.jsonl"
HOSTNAME = "/proc/sys/kernel/hostname"


def hub_name(ctx: Context) -> str:
    """hub.name, else this machine's host name (the kernel's)."""
    return ctx.config.hub.name or (ctx.fact(F.FILE_TEXT, HOSTNAME) or "").strip()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def certificate_names(ctx: Context) -> list[str]:
    """The names and addresses the registry's certificate carries, the hub's name first: hub.name
    (or the host name), hub.addresses, and swarm.advertise_addr when it is an IP address."""
    names = [hub_name(ctx), *hub_addresses(ctx.config.hub)]
    advertise = ctx.config.swarm.advertise_addr
    if advertise and _is_ip(advertise):
        names.append(advertise)
    return [n for n in dict.fromkeys(names) if n]


def registry_address(ctx: Context) -> str:
    """host:port of the registry as image names spell it (an IPv6 address in brackets)."""
    name = hub_name(ctx)
    host = f"[{name}]" if ":" in name else name
    return f"{host}:{ctx.config.hub.registry_port}"


def own_tls(cfg: Config) -> bool:
    """Whether the hub's own CA issues the registry's certificate (no hub.tls_* given)."""
    return not cfg.hub.tls_cert


def tls_paths(cfg: Config) -> tuple[str, str, str]:
    """(certificate, key, CA) the registry serves and workers trust."""
    if own_tls(cfg):
        return REGISTRY_CERT, REGISTRY_KEY, CA_CERT
    return cfg.hub.tls_cert, cfg.hub.tls_key, cfg.hub.tls_ca


def _summary(facts, arg: str):
    from .hub_tls import summary

    cert, key, ca = (arg.split(" ") + ["", ""])[:3]
    return summary(facts.get(F.FILE_TEXT, cert), facts.get(F.FILE_BYTES, key) if key else None,
                   facts.get(F.FILE_TEXT, ca) if ca else None)


# A certificate and its key as `hub_tls.summary` describes them (None: neither file is there); the
# argument is "CERT KEY [CA]" (paths have no spaces: config validates hub.tls_*).
CERTIFICATE_SUMMARY = F.fact("certificate_summary", F.DERIVED, parse=_summary)
# What the TLS server at "host:port" presents: {"sha256": fingerprint} or {"problem": why}.
SERVED_CERTIFICATE = F.fact("served_certificate", F.HOST, lambda arg: lambda host: _served(host, arg))


def _served(host, arg: str) -> dict:
    address, _, port = arg.rpartition(":")
    return host.served_certificate(address.strip("[]"), int(port))


def _manifest(arg: str):
    from .hub_tls import manifest_digest

    address, repository, tag, cafile = arg.split(" ")
    return lambda host: manifest_digest(address, repository, tag, cafile)


# What the hub's registry holds under a tag, asked over TLS with the CA workers trust:
# "ADDRESS REPOSITORY TAG CAFILE" -> {"digest": ...}, {"missing": ...} or {"problem": ...}.
REGISTRY_MANIFEST = F.fact("registry_manifest", F.HOST, _manifest)


def hub_steps():
    """The steps of `hub init`, in order."""
    from .steps.docker import DockerStep
    from .steps.hub_registry import HubRegistryStep, HubRegistryTrustStep
    from .steps.hub_swarm import HubNetworkStep, HubSwarmStep
    from .steps.hub_gate import HubGateStep
    from .steps.hub_jupyterhub import HubJupyterhubStep
    from .steps.hub_notebook import HubJupyterhubImageStep, HubNotebookImageStep
    from .steps.hub_tls import HubCaStep, HubCertificateStep

    return (DockerStep(), HubSwarmStep(), HubNetworkStep(), HubCaStep(), HubCertificateStep(), HubRegistryStep(),
            HubRegistryTrustStep(), HubNotebookImageStep(), HubJupyterhubImageStep(), HubGateStep(), HubJupyterhubStep())


HUB_STEP_NAMES = ("docker", "hub-swarm", "hub-network", "hub-ca", "hub-certificate", "hub-registry",
                  "hub-registry-trust", "hub-notebook-image", "hub-jupyterhub-image", "hub-gate", "hub-jupyterhub")


def private_dir_commands(ctx: Context, path: str = PRIVATE_DIR) -> tuple[list, list[str], str | None]:
    """(actions, reasons, refusal) that make `path` a directory root alone may enter (0700): a
    directory of another owner or mode is repaired; a symlink or a file there is refused."""
    from .engine import Call

    status = ctx.fact(F.FILE_STATUS, path)
    if status is None:
        return [Call(f"create directory {path} (root's, mode 0700)",
                     lambda ctx: ctx.host.makedirs(path, 0o700))], [f"{path} is missing"], None
    if status.is_symlink or not status.is_dir:
        return [], [], (f"{path} is {'a symlink' if status.is_symlink else 'not a directory'}, so the hub's private "
                        f"keys cannot be kept there safely; move it aside")
    return (*root_with_mode(path, status, 0o700), None)


def root_with_mode(path: str, status, mode: int) -> tuple[list, list[str]]:
    """(actions, reasons) that make an existing file or directory owned by root:root with exactly
    `mode`: none when it is so already."""
    from .engine import run_command

    actions = []
    if status.uid != 0 or status.gid != 0:
        actions.append(run_command("chown", "root:root", path))
    if status.mode & 0o7777 != mode:
        actions.append(run_command("chmod", f"{mode:04o}", path))
    reasons = [f"{path} is not root's with mode {mode:04o} (owner uid {status.uid}, mode {status.mode:04o})"] \
        if actions else []
    return actions, reasons


def key_file_commands(ctx: Context, path: str) -> tuple[list, list[str], str | None]:
    """(actions, reasons, refusal) that make a private key root's with mode 0600."""
    status = ctx.fact(F.FILE_STATUS, path)
    if status is None:
        return [], [], None
    if status.is_symlink or not status.is_regular:
        return [], [], f"{path} is {'a symlink' if status.is_symlink else 'not a regular file'}; move it aside"
    return (*root_with_mode(path, status, 0o600), None)


def public_file_commands(ctx: Context, path: str) -> tuple[list, list[str], str | None]:
    """(actions, reasons, refusal) that make a certificate root's and writable by root only (0644)."""
    from .engine import run_command
    from .host import unsafe

    status = ctx.fact(F.FILE_STATUS, path)
    if status is None:
        return [], [], None
    if status.is_symlink or not status.is_regular:
        return [], [], f"{path} is {'a symlink' if status.is_symlink else 'not a regular file'}; move it aside"
    problem = unsafe(status)
    if problem is None and not status.mode & 0o7133:
        return [], [], None
    actions = [run_command("chown", "root:root", path)] if status.uid != 0 else []
    actions.append(run_command("chmod", "0644", path))
    return actions, [f"{path} {problem or f'has mode {status.mode:04o}, not 0644'}"], None


def hub_dir_commands(ctx: Context) -> tuple[list, list[str], str | None]:
    """The hub's directory (and /etc/gpuswarm-node above it) root's and writable by root only."""
    from .engine import run_command
    from .host import dir_repair_commands, unsafe

    actions, reasons = [], []
    for directory in (posixpath.dirname(HUB_DIR), HUB_DIR):
        status = ctx.fact(F.FILE_STATUS, directory)
        if status is not None and status.is_symlink:
            return [], [], (f"directory {directory} is a symlink, so whoever controls its target could change the "
                            "CA every worker trusts; make it a directory owned by root")
        problem = unsafe(status)
        if problem:
            actions += [run_command(*argv) for argv in dir_repair_commands(directory, status)]
            reasons.append(f"directory {directory} {problem}")
    return actions, reasons, None


# --- preflight -------------------------------------------------------------------------------------

def _listening(facts, _arg: str) -> set[int]:
    """The TCP ports something listens on, IPv4 and IPv6 (/proc/net/tcp, tcp6: state 0A is
    LISTEN; the local address is hex ADDRESS:PORT; proc(5))."""
    ports: set[int] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (facts.get(F.FILE_TEXT, path) or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                try:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
                except ValueError:
                    continue
    return ports


LISTENING_PORTS = F.fact("listening_ports", F.DERIVED, parse=_listening, takes_arg=False)  # set[int]


def _candidate(result, _arg: str) -> str:
    for line in result.stdout.splitlines() if result.ok else []:
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            value = value.strip()
            return "" if value == "(none)" else value
    return ""


# The version apt would install of a package ("" when its lists have none): `apt-cache policy`.
APT_CANDIDATE = F.fact("apt_candidate", F.COMMAND, lambda package: ["apt-cache", "policy", package], _candidate)


def hub_name_problem(ctx: Context) -> str | None:
    name = hub_name(ctx)
    if ctx.config.hub.name:
        return None  # validated with the configuration
    problem = certificate_name_problem(name) if name else "it is unknown"
    if problem is None:
        return None
    return (f"hub.name is empty, so the registry's certificate would carry this machine's host name {name!r}, but "
            f"{problem}: set hub.name to the DNS name (or IP address) workers and browsers reach the hub at")


def docker_version_problem(ctx: Context) -> str | None:
    """Docker 23.0.2 or later, as far as it can be told before anything is installed: the running
    daemon's version, else the installed package's, else the version apt would install."""
    from .steps.hub_swarm import old_docker

    def bare(version: str) -> str:  # Debian's versions may carry an epoch ("5:28.5.2-1~debian.12~bookworm")
        return version.partition(":")[2] if ":" in version.split(".")[0] else version

    if ctx.docker.unreachable_reason() is None:
        version = str(ctx.docker.info().get("ServerVersion", ""))
        return old_docker(version, f"the running Docker is {version}")
    installed = [p for p in ("docker-ce", "docker.io") if ctx.fact(F.PACKAGE_INSTALLED, p)]
    if installed:
        package = installed[0]
        version = bare(ctx.fact(F.PACKAGE_VERSION, package))
        fix = ("remove docker.io (`apt-get purge docker.io`) and set docker.source = \"docker-ce\" (Docker's own "
               "packages)" if package == "docker.io" else "upgrade it (`apt-get install --only-upgrade docker-ce`)")
        return old_docker(version, f"the installed {package} is Docker {version}", fix)
    if ctx.config.docker.source == "distro":
        version = bare(ctx.fact(APT_CANDIDATE, "docker.io"))
        return old_docker(version, f"apt would install the distribution's docker.io {version}",
                          'set docker.source = "docker-ce" (Docker\'s own packages)')
    return None  # docker-ce: Docker's current release


def swarm_role_problem(ctx: Context) -> str | None:
    if ctx.docker.unreachable_reason() is not None:
        return None
    membership = ctx.docker.swarm()
    if membership.state == "active" and not membership.is_manager:
        managers = ", ".join(membership.manager_addrs) or "unknown"
        return (f"this node is a worker of another swarm (managers: {managers}); a hub manages its own: run hub init "
                "on that swarm's manager, or leave it (`docker swarm leave`) first")
    return None


def registry_port_problem(ctx: Context) -> str | None:
    port = ctx.config.hub.registry_port
    if port not in ctx.fact(LISTENING_PORTS):
        return None
    if ctx.fact(F.UNIT_ACTIVE, REGISTRY_UNIT):
        return None  # the registry itself (hub init converges its configuration)
    return (f"TCP port {port} is in use by another program (`ss -ltnp 'sport = :{port}'` names it): stop it, or set "
            "hub.registry_port to a free port")


TLS_KEYS = (("hub.tls_cert", "tls_cert", False), ("hub.tls_key", "tls_key", True), ("hub.tls_ca", "tls_ca", False))


def open_hub_file(path: str, key: str, secret: bool) -> int:
    """An open read-only descriptor of one of the operator's files the hub uses (hub.tls_cert,
    tls_key, tls_ca, secret_file), which must follow the trust-file rule (trust.problem; a key or
    secret readable by root only); raises ConfigError naming the key, the problem and the fix."""
    from . import trust
    from .errors import ConfigError

    fd, why = trust.open_checked(path, secret=secret)
    if fd is None:
        fix = "readable by root only" if secret else "writable only by root"
        raise ConfigError(f"{key} {path} {why}; refusing to trust it.", f"Make it a file of root's, {fix}, not a link.")
    return fd


def tls_files_problem(ctx: Context) -> str | None:
    """The operator's certificate, key and CA follow the trust-file rule (the key as a secret)."""
    import os

    if own_tls(ctx.config):
        return None
    for key, name, secret in TLS_KEYS:
        os.close(open_hub_file(getattr(ctx.config.hub, name), key, secret))  # ConfigError: the preflight's problem
    return None


def authenticator_problem(ctx: Context) -> str | None:
    """The authenticator's secret file (dummy: the shared password; github: the OAuth client
    secret) follows the trust-file rule as a secret and holds something; read here, never shown."""
    import os

    hub = ctx.config.hub
    if hub.authenticator == "native" or not hub.jupyterhub_base:
        return None
    what = "the shared password" if hub.authenticator == "dummy" else "the GitHub OAuth app's client secret"
    fd = open_hub_file(hub.secret_file, "hub.secret_file", secret=True)  # ConfigError: the preflight's problem
    with os.fdopen(fd, "rb") as secret:
        held = secret.read(1 << 16).strip()
    if not held:
        return (f"hub.secret_file {hub.secret_file} is empty, but the {hub.authenticator} authenticator needs {what} "
                "there: write it into the file")
    return None


def hub_port_problem(ctx: Context) -> str | None:
    from .steps.hub_jupyterhub import SERVICE, SERVICE_INSPECT

    port = ctx.config.hub.port
    if not ctx.config.hub.jupyterhub_base or port not in ctx.fact(LISTENING_PORTS):
        return None
    if ctx.docker.unreachable_reason() is None and ctx.fact(SERVICE_INSPECT, SERVICE) is not None:
        return None  # the hub's own service publishes it
    return (f"TCP port {port} is in use by another program (`ss -ltnp 'sport = :{port}'` names it): stop it, or set "
            "hub.port to a free port")


def _trust_problem(arg: str):
    from . import trust

    kind, _, path = arg.partition(" ")
    return lambda host: trust.problem(host.file_status(path), secret=kind == "secret")


# Why a file named by the configuration must not be trusted (trust.problem), or None; the argument
# is "secret PATH" or "public PATH".
TRUST_PROBLEM = F.fact("trust_problem", F.HOST, _trust_problem)


PREFLIGHT = (("hub-name", hub_name_problem), ("docker-version", docker_version_problem),
             ("swarm-role", swarm_role_problem), ("registry-port", registry_port_problem),
             ("tls-files", tls_files_problem), ("authenticator", authenticator_problem),
             ("hub-port", hub_port_problem))


def init_plan(steps=None):
    """The plan of `hub init`: its preflight checks, then its steps (hub_steps)."""
    from .engine import Plan, Preflight

    return Plan("hub init", tuple(steps if steps is not None else hub_steps()),
                tuple(Preflight(name, fn) for name, fn in PREFLIGHT))

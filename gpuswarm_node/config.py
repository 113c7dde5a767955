"""The configuration: a TOML file, overridden by GPUSWARM_<SECTION>_<KEY> environment variables,
overridden by `--set section.key=value` flags; validated once into frozen dataclasses.

Every key is declared exactly once, in the dataclasses below (type, default and the one-line help
that docs/reference.md is checked against). An unknown section or key in the file or a --set
is an error; a GPUSWARM_* environment variable that names no key is ignored with a warning (other
programs' settings and a shell's leftovers should not stop every command).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import posixpath
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Debian 12 and Ubuntu 22.04+ ship 3.11/3.10
    import tomli as tomllib

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/gpuswarm-node/config.toml")
# The effective configuration of the last setup run, which its boot unit runs setup with
# (steps/boot.py writes it): what `status`, `setup` and `leave` use when no file is named.
LAST_SETUP_CONFIG = Path("/var/lib/gpuswarm-node/boot-config.toml")
ENV_PREFIX = "GPUSWARM_"
# Environment variables with our prefix that are not configuration keys.
# GPUSWARM_PREFIX: setup.sh's install dir; GPUSWARM_INSTALLING: set by setup.sh's dry run (steps/boot.py).
ENV_RESERVED = {"GPUSWARM_CONFIG", "GPUSWARM_PREFIX", "GPUSWARM_INSTALLING"}

NVIDIA_TOOLKIT_SOURCE = (
    "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.asc] "
    "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /"
)


SIZE_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_size(text: str) -> int:
    """Bytes in "4GiB", "1.5 GiB", "512MiB" or "4294967296"; raises ValueError.

    Only binary units: GPU memory is sized in powers of two, and a decimal "GB" next to NVML's
    MiB figures would silently give one slice fewer than the user counted on.
    """
    stripped = text.strip()
    number = stripped.rstrip("BKMGTib ")
    unit = stripped[len(number):].strip()
    if unit not in SIZE_UNITS or not number or any(c not in "0123456789." for c in number):
        raise ValueError(text)
    value = float(number) * SIZE_UNITS[unit] if "." in number else int(number) * SIZE_UNITS[unit]
    if value < 1:
        raise ValueError(text)
    return int(value)


# Bounds on slices. Swarm advertises every slice as one named generic resource in the node's
# description, which the managers keep in their Raft store and walk on every placement; the tool
# writes each into daemon.json and the slice map too. 64 users of one GPU each get 1/64 of its
# compute, well past the point where sharing it is useful (MIG splits a GPU 7 ways at most), and an
# 8-GPU node stays at a few hundred entries. 256 MiB is less than the CUDA context each program
# creates before anything else takes on current GPUs, so a smaller slice could run nothing; a
# value that small is a forgotten unit ("1" is one byte, and would make billions of slices).
MAX_SLICES_PER_GPU = 64
MIN_SLICE_MEMORY = 256 * 2**20
MIN_SLICE_MEMORY_TEXT = "256MiB"

# apt.lock_timeout: first boot's cloud-init and unattended-upgrades hold apt's locks for minutes,
# not hours; a longer wait hides a lock nobody will release (a hung dpkg) behind a setup that
# seems to hang.
MAX_APT_LOCK_TIMEOUT = 3600
# node.network_retry: a first boot rides out a hub, registry or mirror that is back within minutes
# (a reboot, a DNS record that is not out yet); longer hides an outage behind a setup that seems to hang.
MAX_NETWORK_RETRY = 1800
# swarm.labels_recheck: labels someone removed on the manager keep notebooks off the node until
# setup repairs them; longer than a week is no longer a repair.
MAX_LABELS_RECHECK = 7 * 24 * 3600
# watch: a round every 1 s to 10 min; confirmations and the hold between transitions bounded so a
# typo cannot leave a broken node in service for days.
MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL = 1, 600
# watch.metadata_url: plain HTTP (the metadata services are link-local HTTP), a host and a port.
METADATA_URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:[0-9]{1,5})?")
MAX_WATCH_ROUNDS = 100
MAX_WATCH_HOLD = 24 * 3600

# tmpfs.path may not be one of these, nor below SYSTEM_TREES: a tmpfs there hides the system's own
# files (mounted over /etc, it hides the configuration of every program until it is unmounted).
# Any other existing directory that holds files is refused when setup looks at it (steps/tmpfs.py).
SYSTEM_DIRS = frozenset({
    "/", "/efi", "/home", "/lost+found", "/media", "/mnt", "/opt", "/root", "/snap", "/srv", "/tmp", "/var",
    "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail", "/var/opt", "/var/run",
    "/var/spool", "/var/tmp",
})
# The system's and the package manager's own trees (/bin, /lib* and /sbin are /usr's on merged-/usr
# systems); the tool's own records (the journal reset works from, the backups) are hidden too.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                "/sys", "/usr", "/var/backups", "/var/lib/containerd", "/var/lib/docker", "/var/lib/dpkg",
                "/var/lib/gpuswarm-node")


def normal_path(path: str) -> str:
    """An absolute path as mountinfo names it: '//' and '.' collapsed, '..' applied to the text,
    no trailing '/' ("/mnt//tmpfs/" is "/mnt/tmpfs")."""
    norm = posixpath.normpath(path)
    # POSIX leaves a leading "//" to the implementation, so normpath keeps it; Linux does not.
    return "/" + norm.lstrip("/") if norm.startswith("/") else norm


def system_dir(path: str) -> bool:
    """Whether a normalised absolute path is a system directory or lies in a system tree."""
    return path in SYSTEM_DIRS or any(path == tree or path.startswith(tree + "/") for tree in SYSTEM_TREES)


# Characters no value may hold, whatever its key: every string lands in a file (fstab, sources.list,
# certs.d, daemon.json) or a command line, where a line break starts a new entry (a second, trusted
# apt source). Cc: C0 and C1 controls and DEL; Zl/Zp: U+2028/U+2029, line ends to some parsers;
# Cf: invisible format characters (bidi overrides) that make a value read otherwise than it is;
# Cs: lone surrogates, which stand for undecodable bytes in the environment.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# Debian adduser's default NAME_REGEX, with upper case, which useradd accepts: never an option
# (leading '-') nor a number (usermod and getent would take it for a uid).
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\$?")
USER_NAME_MAX = 32

# One DNS label: letters, digits and inner '-' (RFC 1123); '_' only where the key allows it.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LABEL_UNDERSCORE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")

# Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest].
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = (r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                 r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
IMAGE_REFERENCE = re.compile(
    rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*"
    r"(?::\w[\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?",
    re.ASCII)

# A one-line sources.list entry: deb [options] URI suite [component...].
APT_SOURCE_LINE = re.compile(r"deb +(?:\[[^\[\]]*\] +)?[A-Za-z][A-Za-z0-9+.-]*:\S+ +\S+(?: +\S+)* *")


def forbidden_char(text: str) -> tuple[int, str] | None:
    """(position, character) of the first character no value may hold, or None."""
    for i, c in enumerate(text):
        if unicodedata.category(c) in FORBIDDEN_CATEGORIES:
            return i, c
    return None


def valid_user_name(name: str) -> bool:
    return len(name) <= USER_NAME_MAX and USER_NAME.fullmatch(name) is not None


# Linux's limit on a machine's host name (HOST_NAME_MAX, uname's nodename field: 64 bytes).
HOST_NAME_MAX = 64


def host_name_problem(host: str, underscore: bool = False) -> str | None:
    """Why `host` is not a DNS name or an IPv4 address, or None."""
    if not host:
        return "the host is empty"
    if len(host) > 253:
        return "the host name is longer than 253 characters"
    labels = host.split(".")
    if labels[-1].isdigit():
        # All-numeric last label: only an IPv4 address reads like that (and 010.0.0.1 is ambiguous).
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv4 address"
        return None
    label = _LABEL_UNDERSCORE if underscore else _LABEL
    for part in labels:
        if not part:
            return f"{host!r} has an empty label (a leading, trailing or doubled '.')"
        if not label.fullmatch(part):
            allowed = "letters, digits, '-' and '_'" if underscore else "letters, digits and '-'"
            return f"label {part!r} must be 1-63 {allowed}, not starting or ending with '-'"
    return None


def registry_address_problem(address: str) -> str | None:
    """Why `address` is not host[:port] as image names spell a registry, or None."""
    if address.startswith("["):
        inside, bracket, rest = address[1:].partition("]")
        if not bracket:
            return "the '[' of an IPv6 address is not closed"
        try:
            ip = ipaddress.IPv6Address(inside)
        except ValueError:
            return f"{inside!r} between brackets is not an IPv6 address"
        if ip.scope_id:
            return "an IPv6 zone (%...) is not part of an image name"
        if rest and not rest.startswith(":"):
            return "only ':port' may follow the IPv6 address"
        port = rest[1:] if rest else None
    else:
        if "://" in address or address.startswith(("http:", "https:")):
            return "it is host[:port] as image names spell it, without a scheme such as https://"
        if address.count(":") > 1:
            return "an IPv6 address must be in brackets, e.g. [2001:db8::1]:5000"
        host, colon, port = address.partition(":")
        port = port if colon else None
        problem = host_name_problem(host)
        if problem:
            return problem
    if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        return f"the port {port!r} is not a number from 1 to 65535"
    return None


def key(default: Any, help: str, choices: tuple[str, ...] = (), trust: str = "") -> Any:
    """A configuration key. trust: "secret" or "public" for a file the tool reads as root and
    trusts (trust.py's rule applies to it; a secret is also readable by root only)."""
    return field(default=default, metadata={"help": help, "choices": choices, "trust": trust})


@dataclass(frozen=True)
class NodeConfig:
    user: str = key("", "User added to the docker group; empty means $SUDO_USER.")
    reboot: str = key("off", "Whether setup may reboot the machine by itself, once, when the NVIDIA driver it "
                             "installed needs a reboot (auto), or only says so (off).", choices=("off", "auto"))
    network_retry: int = key(120, "Seconds setup keeps retrying, with backoff, what it reaches over the network (the "
                                  "manager over SSH, the registry's image pull, the apt mirrors) after a transient "
                                  f"failure, per operation (0 to {MAX_NETWORK_RETRY}; 0: no retry).")


@dataclass(frozen=True)
class TmpfsConfig:
    enabled: bool = key(True, "Whether setup keeps a tmpfs at all; false skips the tmpfs step (an entry it added "
                              "before stays until `reset`).")
    path: str = key("/mnt/tmpfs", "Mount point of the tmpfs, an absolute path (/mnt//tmpfs/ is read as /mnt/tmpfs); "
                                  "not / or a system directory (/etc, /usr, /var, ...), nor a directory holding files.")
    fraction: float = key(0.5, "Size of the tmpfs as a fraction of physical RAM (0 < f <= 1); at least 1 MiB.")


@dataclass(frozen=True)
class SharedMount:
    """One NFS mount of the shared filesystem: `source` "host:/export" (AWS EFS: the file system's
    DNS name and "/"), `path` the absolute mount point, `options` extra mount options after the
    ones the step always sets (e.g. "ro")."""

    source: str
    path: str
    options: str = ""

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


@dataclass(frozen=True)
class SharedConfig:
    mounts: tuple = key((), "NFS mounts (AWS EFS is NFS 4.1) every worker keeps, as [[shared.mounts]] tables in the "
                            "file: source = \"host:/export\", path = an absolute mount point, options = extra mount "
                            "options (\"ro\"; never suid, dev or defaults: shares are always nosuid,nodev); "
                            "none means the shared-fs step is skipped.")


@dataclass(frozen=True)
class DockerConfig:
    source: str = key("distro", "Where Docker comes from: the distro's docker.io or Docker's docker-ce repository.",
                      choices=("distro", "docker-ce"))
    metadata_guard: bool = key(True, "Whether containers are kept from the cloud metadata service (169.254.169.254, "
                                     "fd00:ec2::254) by rules in Docker's DOCKER-USER chain; the host still reaches it.")
    metadata_addresses: str = key("", "More addresses the metadata guard rejects containers' packets to, comma-separated "
                                      "IP addresses (no names, no prefixes), beside those of the cloud the machine is "
                                      "found on (cloud-init's cloud id, else DMI).")
    accept_advisories: str = key("", "Container-escape advisories (CVE ids, comma-separated) the operator accepts for "
                                     "runc and nvidia-container-toolkit where no fixed package can be installed: "
                                     "those steps are then ok, naming each accepted advisory, instead of failing.")


@dataclass(frozen=True)
class NvidiaConfig:
    toolkit_apt_source: str = key(NVIDIA_TOOLKIT_SOURCE,
                                  "sources.list line for nvidia-container-toolkit (default: NVIDIA's repository).")


@dataclass(frozen=True)
class AptConfig:
    lock_timeout: int = key(600, "Seconds each apt or dpkg command waits for the locks it needs (package lists, "
                                 f"downloads, dpkg) while another program holds them, before failing (0 to "
                                 f"{MAX_APT_LOCK_TIMEOUT}).")


@dataclass(frozen=True)
class GpuConfig:
    resource: str = key("gpu", "Swarm generic resource kind the slices are advertised as.")
    slices_per_gpu: int = key(3, f"Slices (Swarm named resources) advertised per physical GPU (1 to "
                                 f"{MAX_SLICES_PER_GPU}).")
    slice_memory: str = key("", f"Memory per slice, at least {MIN_SLICE_MEMORY_TEXT}, e.g. \"4GiB\": each GPU gets "
                                f"as many slices as fit, at most {MAX_SLICES_PER_GPU}; empty means slices_per_gpu.")

    @property
    def slice_memory_bytes(self) -> int:
        """0 when slices_per_gpu decides; validated when the configuration was built."""
        return parse_size(self.slice_memory) if self.slice_memory else 0


@dataclass(frozen=True)
class RegistryConfig:
    address: str = key("", "host:port of the hub's private TLS registry; empty means none.")
    ca_cert: str = key("", "Path of the PEM CA certificate that signed the registry's certificate.", trust="public")


@dataclass(frozen=True)
class ImageConfig:
    name: str = key("", "Notebook image pulled before joining; empty means none.")


@dataclass(frozen=True)
class SwarmConfig:
    manager: str = key("", "SSH host of the swarm manager (the join goes to the address the manager advertises, "
                           "here only when that one does not answer); empty means a single-node swarm of this "
                           "node's own.")
    ssh_user: str = key("root", "SSH user on the manager; it must be allowed to run docker.")
    ssh_port: int = key(22, "SSH port of the manager.")
    ssh_key: str = key("/etc/gpuswarm-node/id_ed25519", "Private key used for SSH to the manager.", trust="secret")
    known_hosts: str = key("/etc/gpuswarm-node/known_hosts",
                           "known_hosts file holding the manager's host key; unknown keys are refused.",
                           trust="public")
    host_key_fingerprint: str = key("", "Pinned SHA256 fingerprint of the manager's host key (as ssh-keygen -lf "
                                        "prints it), instead of known_hosts.")
    advertise_addr: str = key("", "Address other nodes reach this node on; empty lets Docker choose.")
    labels_recheck: int = key(3600, "Seconds setup trusts the node labels it last found right on the manager "
                                    "(/var/lib/gpuswarm-node/node-labels.json) before it asks the manager again "
                                    "(an SSH session); 0 asks at every run.")
    node_name: str = key("", "The node name the hub authorised swarm.ssh_key for (hub bundle writes it): the "
                             "manager's gate acts only on the node whose host name it is, so setup refuses to join "
                             "while this machine's host name differs; empty: not checked.")


@dataclass(frozen=True)
class WatchConfig:
    interval: float = key(3.0, f"Seconds between two rounds of `gpuswarm-node watch`'s health checks ({MIN_WATCH_INTERVAL} "
                               f"to {MAX_WATCH_INTERVAL}).")
    fault_rounds: int = key(2, "Consecutive rounds a fault must be seen before watch drains the node (1 to "
                               f"{MAX_WATCH_ROUNDS}).")
    clear_rounds: int = key(6, "Consecutive rounds without a fault before watch makes the node it drained active "
                               f"again (1 to {MAX_WATCH_ROUNDS}).")
    min_transition_interval: float = key(60.0, "Seconds at least between two of watch's transitions (drain, "
                                               f"activate), so a node never flaps (0 to {MAX_WATCH_HOLD}).")
    min_free_disk: str = key("2GiB", "Free space Docker's image store (its data-root) must keep, e.g. \"2GiB\"; "
                                     "less is a fault; 0 turns the check off.")
    notices: str = key("auto", "Spot and maintenance notices watch reads from the instance metadata service: "
                               "\"auto\" (those of the cloud the machine is on, when it is aws, gce or azure), "
                               "\"off\", or one of aws, gce, azure.")
    metadata_url: str = key("", "Where watch reads the notices: http://HOST[:PORT], no path; empty means the "
                                "cloud's own service (http://169.254.169.254).")

    @property
    def min_free_disk_bytes(self) -> int:
        """0 when the check is off; validated when the configuration was built."""
        return 0 if self.min_free_disk.strip() in ("", "0") else parse_size(self.min_free_disk)


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    tmpfs: TmpfsConfig = field(default_factory=TmpfsConfig)
    shared: SharedConfig = field(default_factory=SharedConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    nvidia: NvidiaConfig = field(default_factory=NvidiaConfig)
    apt: AptConfig = field(default_factory=AptConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    # Where the values came from, for messages; not a key.
    source: str = field(default="defaults", compare=False)
    # "section.key" -> where its value came from ("file PATH", "environment VAR", "flag --set"),
    # for the keys that did not keep their default; not a key.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def node_user(self) -> str:
        return self.node.user or os.environ.get("SUDO_USER", "")


SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else globals()[f.type]
                             for f in dataclasses.fields(Config) if f.name not in ("source", "origins")}


def reference() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, help) for every key, in declaration order: docs/reference.md's table."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((section, f.name, f.default, f.metadata["help"]))
    return rows


# How messages name each type: "must be an integer", never "must be a int".
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
# What the environment and --set may write for a boolean (TOML has true and false of its own).
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def env_name(section: str, name: str) -> str:
    return f"{ENV_PREFIX}{section}_{name}".upper()


def _suggest(word: str, choices: list[str]) -> str:
    """" Did you mean X?" for the closest choice, or ""."""
    import difflib  # only to name a near miss in an error

    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]}?" if close else ""


def _coerce(section: str, name: str, raw: Any, origin: str) -> Any:
    cls = SECTIONS[section]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    want = type(f.default)
    where = f"[{section}] {name} ({origin})"
    if want is tuple:
        return _coerce_mounts(raw, where)
    try:
        if want is bool:
            if isinstance(raw, str) and raw.strip().lower() in BOOL_WORDS:
                raw = BOOL_WORDS[raw.strip().lower()]
            if not isinstance(raw, bool):
                raise TypeError
            value: Any = raw
        elif isinstance(raw, bool):
            raise TypeError
        elif want is int:
            if isinstance(raw, float) or (isinstance(raw, str) and not raw.strip().lstrip("-").isdigit()):
                raise ValueError
            value = int(raw)
        elif want is float:
            value = float(raw)
        else:
            if not isinstance(raw, str):
                raise TypeError
            value = raw
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {TYPE_NAMES[want]}, got {raw!r}.",
                          "Fix the value and run again.") from None
    found = forbidden_char(raw) if isinstance(raw, str) else None
    if found:
        raise ConfigError(f"{where} holds the control character {found[1]!r} at position {found[0]}, which would "
                          "split or disguise the line it is written to.",
                          "Write the value on one line of printable characters and run again.")
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {value!r}.",
                          "Fix the value and run again.")
    return value


MOUNT_KEYS = ("source", "path", "options")
# host:/export, the host a DNS name, an IPv4 address or a bracketed IPv6 address; the export an
# absolute path of printable characters without spaces (fstab separates fields by them).
NFS_SOURCE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(/[!-~]*)")
MOUNT_OPTION = re.compile(r"[a-z][a-z0-9_]*(=[A-Za-z0-9._:/-]+)?")
# Options that would undo the nosuid,nodev every share gets (mount(8): defaults is
# rw,suid,dev,exec,auto,nouser,async).
SHARE_OPTIONS_REFUSED = ("suid", "dev", "defaults")


def _coerce_mounts(raw: Any, where: str) -> tuple:
    if isinstance(raw, str):
        raise ConfigError(f"{where} can only be given as [[shared.mounts]] tables in the config file, got {raw!r}.",
                          "Write each mount as a [[shared.mounts]] table with source, path and options.")
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{where} must be a list of [[shared.mounts]] tables, got {raw!r}.",
                          "Write each mount as a [[shared.mounts]] table with source, path and options.")
    mounts = []
    for i, table in enumerate(raw, 1):
        at = f"[[shared.mounts]] number {i} ({where.split('(', 1)[-1].rstrip(')')})"
        unknown = [k for k in table if k not in MOUNT_KEYS]
        if unknown:
            raise ConfigError(f"{at} has the unknown key {unknown[0]!r}.", f"Valid keys: {', '.join(MOUNT_KEYS)}.")
        for name in MOUNT_KEYS:
            value = table.get(name, "")
            if not isinstance(value, str):
                raise ConfigError(f"{at} {name} must be a string, got {value!r}.", "Fix the value and run again.")
        source, path, options = (table.get(k, "") for k in MOUNT_KEYS)
        if not NFS_SOURCE.fullmatch(source):
            raise ConfigError(f"{at} source must be host:/export (an NFS server and an absolute export path, no "
                              f"spaces), got {source!r}.", "Write it as EFS shows it, e.g. "
                              "fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com:/, and run again.")
        if not path.startswith("/") or not all(c.isprintable() and not c.isspace() for c in path) \
                or ".." in path.split("/"):
            raise ConfigError(f"{at} path must be an absolute path without spaces or '..', got {path!r}.",
                              "Fix the value and run again.")
        if system_dir(normal_path(path)):
            raise ConfigError(f"{at} path must not be / or a system directory (a mount there hides what the system "
                              f"keeps in it), got {path!r}.", "Choose a directory of its own, such as /mnt/shared.")
        if options and not all(MOUNT_OPTION.fullmatch(o) for o in options.split(",")):
            raise ConfigError(f"{at} options must be comma-separated mount options such as ro or actimeo=30, got "
                              f"{options!r}.", "Fix the value and run again.")
        reopened = [o for o in options.split(",") if o in SHARE_OPTIONS_REFUSED]
        if reopened:
            raise ConfigError(f"{at} options must not contain {reopened[0]!r}: shares are always mounted nosuid,nodev, "
                              "so that a setuid file or device node written from a notebook gives nothing on a worker.",
                              f"Remove {reopened[0]!r} from the options and run again.")
        mounts.append(SharedMount(source, normal_path(path), options))
    paths = [m.path for m in mounts]
    for m in mounts:
        inside = [p for p in paths if p != m.path and (p + "/").startswith(m.path + "/")]
        if paths.count(m.path) > 1 or inside:
            raise ConfigError(f"{where}: {m.path} is the mount point of more than one mount, or holds another "
                              f"({', '.join(inside) or m.path}).", "Give each mount a mount point of its own.")
    return tuple(mounts)


def _validate(cfg: Config) -> None:
    def bad(section: str, name: str, why: str, fix: str = "Fix the value and run again.") -> ConfigError:
        return ConfigError(f"[{section}] {name} {why}.", fix)

    if not 0 < cfg.tmpfs.fraction <= 1:
        raise bad("tmpfs", "fraction", f"must be greater than 0 and at most 1, got {cfg.tmpfs.fraction}")
    _validate_paths(cfg, bad)
    for m in cfg.shared.mounts:
        if normal_path(m.path) == normal_path(cfg.tmpfs.path) and cfg.tmpfs.enabled:
            raise bad("shared", "mounts", f"must not use the tmpfs's mount point {m.path}")
    if not 1 <= cfg.gpu.slices_per_gpu <= MAX_SLICES_PER_GPU:
        raise bad("gpu", "slices_per_gpu", f"must be from 1 to {MAX_SLICES_PER_GPU} (each slice is a resource "
                  f"in the node's Swarm description), got {cfg.gpu.slices_per_gpu}")
    if cfg.gpu.slice_memory:
        try:
            size = parse_size(cfg.gpu.slice_memory)
        except ValueError:
            raise bad("gpu", "slice_memory", "must be a size such as \"4GiB\", \"512MiB\" or a number of bytes "
                      f"(units KiB, MiB, GiB, TiB), got {cfg.gpu.slice_memory!r}") from None
        if size < MIN_SLICE_MEMORY:
            raise bad("gpu", "slice_memory", f"must be at least {MIN_SLICE_MEMORY_TEXT} (less cannot hold a CUDA "
                      f"context), got {cfg.gpu.slice_memory!r} = {size} bytes",
                      "Write the size with its unit, e.g. \"4GiB\", and run again.")
    kind = cfg.gpu.resource
    # ASCII only: the runtime reads DOCKER_RESOURCE_<KIND upper-cased>, and Go's and Python's
    # upper-casing differ outside ASCII.
    if not kind or not all((c.isascii() and c.isalnum()) or c in "-_" for c in kind):
        raise bad("gpu", "resource", f"must be letters, digits, '-' or '_', got {kind!r}")
    if not 0 <= cfg.apt.lock_timeout <= MAX_APT_LOCK_TIMEOUT:
        raise bad("apt", "lock_timeout", f"must be from 0 to {MAX_APT_LOCK_TIMEOUT} seconds, got {cfg.apt.lock_timeout}",
                  "Find out what holds the apt lock for longer, or set a value within the range, and run again.")
    if not 0 <= cfg.node.network_retry <= MAX_NETWORK_RETRY:
        raise bad("node", "network_retry", f"must be from 0 to {MAX_NETWORK_RETRY} seconds, got {cfg.node.network_retry}",
                  "Set a value within the range and run again.")
    if cfg.node.user and not valid_user_name(cfg.node.user):
        # usermod and getent take "-..." for an option and a number for a uid.
        raise bad("node", "user", f"must be a user name (a letter or '_', then letters, digits, '_' or '-', at most "
                  f"{USER_NAME_MAX} characters), got {cfg.node.user!r}", "Name an existing user and run again.")
    if bool(cfg.registry.address) != bool(cfg.registry.ca_cert):
        missing, given = ("ca_cert", "address") if cfg.registry.address else ("address", "ca_cert")
        raise bad("registry", missing, f"must be set when registry.{given} is (the registry's address and its CA "
                  "go together)", f"Set registry.{missing} too, or leave both empty, and run again.")
    if cfg.registry.address:
        # The CA lands at /etc/docker/certs.d/<address>/ca.crt: anything but a host name and port
        # could put it elsewhere ("..").
        problem = registry_address_problem(cfg.registry.address)
        if problem:
            raise bad("registry", "address", f"must be host[:port] (a DNS name, an IPv4 address or a bracketed IPv6 "
                      f"address, port 1-65535), got {cfg.registry.address!r}: {problem}",
                      "Write it as image names spell the registry, e.g. hub.example.org:5000, and run again.")
    if cfg.image.name and not IMAGE_REFERENCE.fullmatch(cfg.image.name):
        raise bad("image", "name", f"must be a Docker image reference such as hub.example.org:5000/notebook:tag "
                  f"(lower-case repository, no spaces, not starting with '-'), got {cfg.image.name!r}")
    _validate_swarm(cfg.swarm, bad)
    try:
        from .clouds import parse_addresses

        parse_addresses(cfg.docker.metadata_addresses)
    except ValueError as exc:
        raise bad("docker", "metadata_addresses", f"must be IP addresses separated by commas, got {str(exc)!r}",
                  "Write each address as digits (169.254.169.254, fd00:ec2::254), not a name or a network, "
                  "and run again.") from None
    from .floors import ADVISORIES, accepted

    unknown = [a for a in accepted(cfg.docker.accept_advisories) if a not in ADVISORIES]
    if unknown:
        raise bad("docker", "accept_advisories", f"names {', '.join(unknown)}, which no minimum version of this tool "
                  f"closes (known: {', '.join(sorted(ADVISORIES))})",
                  "Name only the advisories a step reports as lacking, as it spells them, and run again.")
    _validate_watch(cfg.watch, bad)
    source = cfg.nvidia.toolkit_apt_source
    if not APT_SOURCE_LINE.fullmatch(source):
        raise bad("nvidia", "toolkit_apt_source", "must be one sources.list line: 'deb [options] URI suite "
                  f"[components]', got {source!r}")


def _validate_paths(cfg: Config, bad) -> None:
    path = cfg.tmpfs.path
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise bad("tmpfs", "path", f"must be an absolute path without spaces, got {path!r}")
    # fstab and mountinfo name the mount point by its normal form (_build stores that): "/mnt//x/"
    # written as given would never be seen mounted, and be mounted again on every run.
    norm = normal_path(path)
    if system_dir(norm):
        named = repr(path) if norm == path else f"{path!r}, which is {norm}"
        raise bad("tmpfs", "path", f"must not be / or a system directory (a tmpfs mounted there hides what the system "
                  f"keeps in it), got {named}", "Choose a directory of its own, such as /mnt/tmpfs, and run again.")
    # The kernel applies ".." after following a symlink, the text before it: the two can differ.
    if ".." in path.split("/"):
        raise bad("tmpfs", "path", f"must not hold '..' components, got {path!r}")
    # A relative path would be read from whatever directory root ran the tool in.
    for section, name, value in (("registry", "ca_cert", cfg.registry.ca_cert),
                                 ("swarm", "ssh_key", cfg.swarm.ssh_key),
                                 ("swarm", "known_hosts", cfg.swarm.known_hosts)):
        if value and not value.startswith("/"):
            raise bad(section, name, f"must be an absolute path, got {value!r}")


def _validate_watch(watch: WatchConfig, bad) -> None:
    if not MIN_WATCH_INTERVAL <= watch.interval <= MAX_WATCH_INTERVAL:
        raise bad("watch", "interval", f"must be from {MIN_WATCH_INTERVAL} to {MAX_WATCH_INTERVAL} seconds, "
                  f"got {watch.interval}")
    for name in ("fault_rounds", "clear_rounds"):
        if not 1 <= getattr(watch, name) <= MAX_WATCH_ROUNDS:
            raise bad("watch", name, f"must be from 1 to {MAX_WATCH_ROUNDS} rounds, got {getattr(watch, name)}")
    if not 0 <= watch.min_transition_interval <= MAX_WATCH_HOLD:
        raise bad("watch", "min_transition_interval", f"must be from 0 to {MAX_WATCH_HOLD} seconds (a day), "
                  f"got {watch.min_transition_interval}")
    if watch.notices not in ("auto", "off", "aws", "gce", "azure"):
        raise bad("watch", "notices", f"must be auto, off, aws, gce or azure, got {watch.notices!r}")
    if watch.metadata_url and not METADATA_URL.fullmatch(watch.metadata_url):
        raise bad("watch", "metadata_url", "must be http://HOST or http://HOST:PORT (an IP address, [an IPv6 "
                  f"address] or a host name; no path), got {watch.metadata_url!r}")
    try:
        watch.min_free_disk_bytes
    except ValueError:
        raise bad("watch", "min_free_disk", "must be a size such as \"2GiB\", \"512MiB\" or a number of bytes "
                  f"(units KiB, MiB, GiB, TiB), got {watch.min_free_disk!r}") from None


def _validate_swarm(swarm: SwarmConfig, bad) -> None:
    if not 1 <= swarm.ssh_port <= 65535:
        raise bad("swarm", "ssh_port", f"must be a TCP port (1-65535), got {swarm.ssh_port}")
    if not 0 <= swarm.labels_recheck <= MAX_LABELS_RECHECK:
        raise bad("swarm", "labels_recheck", f"must be from 0 to {MAX_LABELS_RECHECK} seconds (a week), "
                  f"got {swarm.labels_recheck}")
    if swarm.manager:
        if swarm.manager.startswith("["):
            raise bad("swarm", "manager", f"must be an IPv6 address without brackets, got {swarm.manager!r}")
        if "://" in swarm.manager or "@" in swarm.manager:
            raise bad("swarm", "manager", f"must be a host name or an IP address alone, got {swarm.manager!r}",
                      "Put the SSH user in swarm.ssh_user and write the host without a scheme, then run again.")
        host, colon, port = swarm.manager.rpartition(":")
        if colon and port.isdigit() and ":" not in host:
            raise bad("swarm", "manager", f"must be a host name or an IP address without a port, got "
                      f"{swarm.manager!r}", f"Write swarm.manager = {host!r} and swarm.ssh_port = {port}, then run again.")
        try:
            ipaddress.ip_address(swarm.manager)
        except ValueError:
            # A trailing dot is an absolute DNS name, which SSH resolves like any other.
            problem = host_name_problem(swarm.manager.removesuffix("."), underscore=True)
            if problem:
                raise bad("swarm", "manager", f"must be a host name or an IP address, got {swarm.manager!r}: "
                          f"{problem}") from None
        if not swarm.ssh_key:
            raise bad("swarm", "ssh_key", "must name the private key for SSH to swarm.manager")
        if not swarm.known_hosts and not swarm.host_key_fingerprint:
            raise bad("swarm", "known_hosts", "must name the file with the manager's host key, or "
                      "swarm.host_key_fingerprint must pin it")
    for name in ("ssh_user", "advertise_addr"):
        value = getattr(swarm, name)
        if value.startswith("-") or any(c.isspace() for c in value):
            raise bad("swarm", name, f"must not start with '-' or hold spaces, got {value!r}")
    if not swarm.ssh_user:
        raise bad("swarm", "ssh_user", "must name the SSH user on the manager")
    if swarm.node_name:
        problem = host_name_problem(swarm.node_name)
        if problem or len(swarm.node_name) > HOST_NAME_MAX:
            raise bad("swarm", "node_name", f"must be a host name of at most {HOST_NAME_MAX} characters, got "
                      f"{swarm.node_name[:80]!r}" + (f": {problem}" if problem else ""))
    if swarm.host_key_fingerprint and not swarm.host_key_fingerprint.startswith("SHA256:"):
        raise bad("swarm", "host_key_fingerprint", "must be a SHA256:... fingerprint as ssh-keygen -lf prints it")


def tables(cfg: Config, every_key: bool = False) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} of `cfg`: the keys that differ from their defaults, or every key."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if every_key or value != f.default:
                if isinstance(value, tuple):  # tables of their own ([[shared.mounts]])
                    value = [dataclasses.asdict(item) for item in value]
                out.setdefault(section, {})[f.name] = value
    return out


def to_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text of {section: {key: value}} (strings, booleans, integers, floats, and lists of
    tables, written as [[section.key]] arrays of tables): what `load` reads back as the same tables.
    Strings are written as JSON writes them, which TOML's basic strings read alike (its escapes are
    JSON's, `\\uXXXX` included)."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(str(v))

    blocks = []
    for section, table in data.items():
        lines = [f"[{section}]"] + [f"{name} = {value(v)}" for name, v in table.items() if not isinstance(v, list)]
        for name, items in table.items():
            if isinstance(items, list):
                for item in items:
                    lines += ["", f"[[{section}.{name}]]"] + [f"{k} = {value(v)}" for k, v in item.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def key_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def _unknown_section(section: str, origin: str) -> ConfigError:
    return ConfigError(f"Unknown section [{section}] in {origin}.{_suggest(section, list(SECTIONS))}",
                       f"Valid sections: {', '.join(SECTIONS)}.")


def _merge(values: dict[str, dict[str, Any]], section: str, name: str, raw: Any, origin: str) -> None:
    if section not in SECTIONS:
        raise _unknown_section(section, origin)
    names = key_names(section)
    if name not in names:
        raise ConfigError(f"Unknown key [{section}] {name} in {origin}.{_suggest(name, names)}",
                          f"Valid keys of [{section}]: {', '.join(names)}.")
    values.setdefault(section, {})[name] = _coerce(section, name, raw, origin)


def _merge_tables(values: dict[str, dict[str, Any]], data: Mapping[str, Any], origin: str) -> None:
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"Top-level key {section!r} in {origin} is not a [section].",
                              f"Put keys inside one of: {', '.join(f'[{s}]' for s in SECTIONS)}.")
        if section not in SECTIONS:
            raise _unknown_section(section, origin)
        for name, raw in table.items():
            _merge(values, section, name, raw, origin)


def from_tables(data: Mapping[str, Any], origin: str = "test data") -> Config:
    """A validated Config from already-parsed TOML tables."""
    values: dict[str, dict[str, Any]] = {}
    _merge_tables(values, data, origin)
    return _build(values, origin)


def _build(values: dict[str, dict[str, Any]], source: str, origins: Mapping[str, str] | None = None) -> Config:
    cfg = Config(**{s: SECTIONS[s](**values.get(s, {})) for s in SECTIONS}, source=source,
                 origins=dict(origins or {}))
    _validate(cfg)
    # One spelling of the mount point everywhere: fstab, mountinfo and messages.
    return dataclasses.replace(cfg, tmpfs=dataclasses.replace(cfg.tmpfs, path=normal_path(cfg.tmpfs.path)))


def _env_key(var: str) -> tuple[str, str] | None:
    """(section, key) a GPUSWARM_* variable names, or None when it names no key."""
    section, name = _split_env_name(var)
    return (section, name) if section in SECTIONS and name in key_names(section) else None


def _unknown_env_warning(var: str) -> str:
    # Compared without the prefix they all share, which would make every name look close.
    known = [env_name(section, name)[len(ENV_PREFIX):] for section in SECTIONS for name in key_names(section)]
    import difflib  # only to name a near miss in a warning

    close = difflib.get_close_matches(var[len(ENV_PREFIX):].upper(), known, n=1)
    hint = f" Did you mean {ENV_PREFIX}{close[0]}?" if close else ""
    return (f"ignoring environment variable {var}: it is not a configuration key.{hint}"
            f" (`gpuswarm-node config` lists the keys.)")


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _split_env_name(var: str) -> tuple[str, str]:
    rest = var[len(ENV_PREFIX):].lower()
    for section in SECTIONS:
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1:]
    return rest.partition("_")[0], rest.partition("_")[2]


def _read_config_file(path: Path) -> str:
    """The configuration's text, read as a trust file (trust.read: root's, not writable by others,
    not a link), so that no one but root chooses what setup does as root; /dev/null reads empty.
    FileNotFoundError when it does not exist."""
    from . import trust

    if os.path.abspath(path) == os.devnull:
        return ""
    fd, why = trust.open_checked(path)
    if why == "does not exist":
        raise FileNotFoundError(path)
    if fd is None:
        raise ConfigError(f"Config file {path} {why}; refusing to trust it.",
                          "Make it root's and writable only by root (chown root:root; chmod 644), not a link.")
    with os.fdopen(fd, "rb") as handle:
        return handle.read().decode("utf-8")


def remembered_path(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """LAST_SETUP_CONFIG when it is the file to read: nothing names one (no `path`, no
    GPUSWARM_CONFIG), the default file is absent and a setup recorded its configuration; else None.
    So a node checked or repaired after `setup --config FILE` keeps FILE's values, never the
    built-in defaults."""
    if path is not None or env.get("GPUSWARM_CONFIG") or DEFAULT_CONFIG_PATH.exists():
        return None
    return LAST_SETUP_CONFIG if LAST_SETUP_CONFIG.exists() else None


def remembered_note(cfg: "Config") -> str | None:
    """The line to print when `cfg` was read from LAST_SETUP_CONFIG (load(remember=True)), else None."""
    if cfg.source != str(LAST_SETUP_CONFIG):
        return None
    return (f"using the configuration of the last setup ({LAST_SETUP_CONFIG}): no --config given; "
            f"give --config FILE to use another")


def load(path: Path | None = None, env: Mapping[str, str] | None = None,
         overrides: Sequence[str] = (), warn: Callable[[str], None] = _warn_stderr, remember: bool = False) -> Config:
    """Build the configuration. `path` None means GPUSWARM_CONFIG or the default path; the default
    path may be absent (defaults are used), an explicitly named file must exist. `remember`: where
    nothing names a file and the default is absent, read LAST_SETUP_CONFIG (remembered_path;
    remembered_note says so). `warn` gets one line per GPUSWARM_* environment variable that names
    no key (ignored)."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("GPUSWARM_CONFIG"))
    named_by = "--config" if path is not None else "GPUSWARM_CONFIG"
    if remember and not explicit:
        path = remembered_path(path, env)
        named_by = "the last setup"
    path = path or Path(env.get("GPUSWARM_CONFIG") or DEFAULT_CONFIG_PATH)
    values: dict[str, dict[str, Any]] = {}
    source = "defaults"
    try:
        text = _read_config_file(path)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {exc.start}): TOML files are UTF-8.",
                          "Save it as UTF-8 and run again.") from None
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"Config file {path} (named by {named_by}) does not exist.",
                              f"Name an existing file with {named_by}, or create it.") from None
        text = None
    except OSError as exc:
        raise ConfigError(f"Config file {path} cannot be read: {exc.strerror}.",
                          "Check the path and its permissions.") from None
    if text is not None:
        source = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Config file {path} is not valid TOML: {exc}.",
                              "Fix the syntax and run again.") from None
        _merge_tables(values, data, str(path))
    origins = {f"{section}.{name}": f"file {path}" for section, table in values.items() for name in table}
    for var in sorted(env):
        if var.startswith(ENV_PREFIX) and var not in ENV_RESERVED:
            found = _env_key(var)
            if found is None:
                warn(_unknown_env_warning(var))
                continue
            section, name = found
            _merge(values, section, name, env[var], f"environment variable {var}")
            origins[f"{section}.{name}"] = f"environment {var}"
    for item in overrides:
        dotted, eq, raw = item.partition("=")
        section, dot, name = dotted.partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {item!r} is not of the form section.key=value.",
                              "Write it like --set swarm.manager=hub.example.org.")
        _merge(values, section, name, raw, f"--set {dotted}")
        origins[f"{section}.{name}"] = f"flag --set {dotted}"
    return _build(values, source, origins)

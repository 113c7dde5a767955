"""Facts: every read of the machine a step makes, by name, read once per run.

A fact says what it reads (a command, a file, a file's status, a directory, PATH, the Docker
daemon's socket, or another fact) and parses it with a pure function; `Facts.get` reads it through the host seam and keeps
the answer for the run (pyinfra's model: a fact is a command or file plus a parser, cached per
host). After an action changes the machine the engine forgets every answer (`Facts.forget`), so
a re-check reads the machine again.

A fact takes at most one argument, a string (a unit, a package, a path). Tests may state a fact
instead of the machine it is read from (`given`: {fact name: {argument: value}}, or {fact name:
value} for a fact without an argument); a stated fact wins over reading.

Where a file says the same as a command, the file is read (no process to start): dpkg's status
database instead of dpkg-query, /etc/group and /etc/passwd before getent, and one `systemctl show`
for every property of a unit that a step looks at.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .host import CommandResult, Host

# The kinds of read a fact makes through the host seam.
COMMAND = "command"    # source(arg) -> argv; the parser gets the CommandResult
FILE = "file"          # source(arg) -> path; the parser gets its text or None
STAT = "stat"          # source(arg) -> path; the parser gets its FileStatus or None
LISTDIR = "listdir"    # source(arg) -> path; the parser gets its entries' names
WHICH = "which"        # source(arg) -> program; the parser gets its path on PATH or None
HOST = "host"          # source(arg) -> a function of the host (a seam of its own: os-release, sysconf)
DOCKER = "docker"      # source(arg) -> a function of the Docker API (GETs over the Engine API's socket)
DERIVED = "derived"    # parse(facts, arg): made of other facts


def _same(value: Any, _arg: str) -> Any:
    return value


@dataclass(frozen=True)
class Fact:
    """One named read of the machine and its parser. `name` is stable: cases state facts by it."""

    name: str
    kind: str
    source: Callable[[str], Any] | None
    parse: Callable[..., Any] = _same
    takes_arg: bool = True


class Facts:
    """The run's facts about one host: each read once, the answer kept until `forget`.

    Thread-safe: status checks run concurrently and may ask the same fact at once; it is read once."""

    def __init__(self, host: Host, given: Mapping[str, Any] | None = None,
                 docker: Callable[[], Any] | None = None) -> None:
        self.host = host
        self.docker = docker  # the Docker API (probes.docker.DockerApi), made on first use
        self.given = given if given is not None else {}
        self._answers: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        # How many times the answers were dropped: what is kept beside the facts (NVML's answer,
        # on the context) is asked again once this moves.
        self.generation = 0

    def get(self, fact: Fact, arg: str = "") -> Any:
        key = (fact.name, arg)
        if fact.name in self.given:
            stated = self.given[fact.name]
            if not fact.takes_arg:
                return stated
            if arg in stated:
                return stated[arg]
        with self._guard:
            if key in self._answers:
                return self._answers[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._answers:
                    return self._answers[key]
            value = self._read(fact, arg)
            with self._guard:
                self._answers[key] = value
            return value

    def docker_api(self) -> Any:
        """The Docker API these facts read (probes.docker.DockerApi); ValueError for facts made
        without one (they answer Docker facts only from `given`)."""
        if self.docker is None:
            raise ValueError("these facts were made without a Docker API")
        return self.docker()

    def _read(self, fact: Fact, arg: str) -> Any:
        if fact.kind == DERIVED:
            return fact.parse(self, arg)
        if fact.source is None:
            raise ValueError(f"fact {fact.name}: a {fact.kind} fact needs a source")
        source = fact.source(arg)
        host = self.host
        if fact.kind == COMMAND:
            raw: Any = host.query(list(source))
        elif fact.kind == FILE:
            raw = host.read_text(source)
        elif fact.kind == STAT:
            raw = host.file_status(source)
        elif fact.kind == LISTDIR:
            raw = host.listdir(source)
        elif fact.kind == WHICH:
            raw = host.which(source)
        elif fact.kind == HOST:
            raw = source(host)
        elif fact.kind == DOCKER:
            raw = source(self.docker_api())
        else:
            raise ValueError(f"fact {fact.name}: unknown kind {fact.kind}")
        return fact.parse(raw, arg)

    @property
    def files(self) -> "FileReads":
        """The file reads of the host seam, each through its fact (for parsers that read several)."""
        return FileReads(self)

    def forget(self) -> None:
        """Drop every answer: the machine may have changed."""
        with self._guard:
            self._answers.clear()
            self.generation += 1


def _age(mtime: float | None) -> float | None:
    import time

    return None if mtime is None else time.time() - mtime


def fact(name: str, kind: str, source: Callable[[str], Any] | None = None,
         parse: Callable[..., Any] = _same, takes_arg: bool = True) -> Fact:
    return Fact(name, kind, source, parse, takes_arg)


# --- files and paths ----------------------------------------------------------------------------

FILE_TEXT = fact("file", FILE, lambda path: path)              # str | None
FILE_BYTES = fact("file_bytes", HOST, lambda path: lambda host: host.read_bytes(path))  # bytes | None
MTIME = fact("mtime", HOST, lambda path: lambda host: host.mtime(path))  # float | None
# Seconds since the file was last modified, by this machine's clock (negative: modified "in the
# future", a clock set back); None when it does not exist.
AGE = fact("age", HOST, lambda path: lambda host: _age(host.mtime(path)))  # float | None
FILE_STATUS = fact("file_status", STAT, lambda path: path)     # FileStatus | None
DIR_ENTRIES = fact("dir_entries", LISTDIR, lambda path: path)  # list[str], sorted
ON_PATH = fact("which", WHICH, lambda program: program)        # str | None


def _certificate(path: str) -> Callable[[Host], tuple[str | None, str]]:
    def read(host: Host) -> tuple[str | None, str]:
        from . import trust

        # A trust file: Docker trusts whatever CA it holds for the registry (trust.problem),
        # checked before it is opened (a FIFO would hang the read).
        status = host.file_status(path)
        if status is not None and (why := trust.problem(status)):
            return None, f"{why}; refusing to trust it"
        try:
            data = host.read_bytes(path)
        except OSError as exc:  # a directory, no permission
            return None, f"cannot be read ({exc.strerror})"
        if data is None:
            return None, "cannot be read (No such file or directory)"
        try:
            text = data.decode()
        except UnicodeDecodeError:  # binary, e.g. a DER certificate
            text = ""
        pem = trust.certificates(text)
        if not pem:
            return None, "holds no PEM certificate"
        return pem, ""
    return read


# A PEM certificate file an operator names (registry.ca_cert): (its certificates alone, never a
# private key or anything else it holds, "") or (None, why not).
CERTIFICATE = fact("certificate", HOST, _certificate)


def _host_exists(path: str) -> Callable[[Host], bool]:
    return lambda host: host.exists(path)


EXISTS = fact("exists", HOST, _host_exists)  # bool: a file or directory is there


def _trusted_path(facts: "Facts", path: str) -> str | None:
    from .host import trusted_path_problem

    return trusted_path_problem(path, facts.get(REALPATH, path), lambda p: facts.get(FILE_STATUS, p))


REALPATH = fact("realpath", HOST, lambda path: lambda host: host.realpath(path))  # str: symlinks resolved
# Why a program root runs could be replaced by another user (host.trusted_path_problem), or None.
TRUSTED_PATH_PROBLEM = fact("trusted_path_problem", DERIVED, parse=_trusted_path)


# --- the operating system -----------------------------------------------------------------------

OS_RELEASE = fact("os_release", HOST, lambda _a: lambda host: host.os_release(), takes_arg=False)  # dict
MEMORY_BYTES = fact("memory_bytes", HOST, lambda _a: lambda host: host.memory_bytes(), takes_arg=False)  # int
# sd_booted(3): systemd is PID 1 exactly when this directory exists.
SYSTEMD_RUNNING = fact("systemd_running", HOST, lambda _a: _host_exists("/run/systemd/system"), takes_arg=False)


def _mounts(text: str | None, _arg: str) -> list:
    from .probes.osfacts import parse_mountinfo

    return parse_mountinfo(text or "")


MOUNTS = fact("mounts", FILE, lambda _a: "/proc/self/mountinfo", _mounts, takes_arg=False)  # list[Mount]
DPKG_ARCHITECTURE = fact("dpkg_architecture", COMMAND, lambda _a: ["dpkg", "--print-architecture"],
                         lambda r, _a: r.stdout.strip() or "amd64", takes_arg=False)


# --- packages: dpkg's status database (what dpkg-query reads) --------------------------------------

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_DATABASE = fact("dpkg_database", FILE, lambda _a: DPKG_STATUS, lambda text, _a: text or "", takes_arg=False)


def parse_dpkg_entry(database: str, package: str) -> dict[str, str] | None:
    """The fields of `package`'s stanza in dpkg's status file (deb-control(5) lines "Name: value";
    continuation lines dropped), or None when dpkg has no record of it. Of two stanzas (one per
    architecture) the first counts, as for dpkg-query -W with one name."""
    needle = f"Package: {package}\n"
    # A substring search (no regex over the whole file): a package dpkg does not know costs one
    # pass of str.find over the database.
    start = 0 if database.startswith(needle) else database.find("\n" + needle) + 1
    if start == 0 and not database.startswith(needle):
        return None
    end = database.find("\n\n", start)
    stanza = database[start + len(needle):end if end >= 0 else len(database)]
    fields = {"Package": package}
    for line in stanza.splitlines():
        if line and not line[0].isspace():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def _package_installed(facts: Facts, package: str) -> bool:
    entry = parse_dpkg_entry(facts.get(DPKG_DATABASE), package)
    # Status is "want flag status"; a held package is "hold ok installed".
    return entry is not None and entry.get("Status", "").split()[1:] == ["ok", "installed"]


def _package_version(facts: Facts, package: str) -> str:
    entry = parse_dpkg_entry(facts.get(DPKG_DATABASE), package)
    return entry.get("Version", "") if entry is not None else ""


PACKAGE_INSTALLED = fact("package_installed", DERIVED, parse=_package_installed)  # bool
PACKAGE_VERSION = fact("package_version", DERIVED, parse=_package_version)  # str, "" when dpkg knows none


# --- systemd units: one `systemctl show` for the units the steps look at --------------------------

UNIT_PROPERTIES = ("LoadState", "ActiveState", "UnitFileState", "MainPID", "FragmentPath", "DropInPaths",
                   "ExecStart", "Environment", "EnvironmentFiles")


def command_json(result: CommandResult) -> Any:
    """A command's stdout read as JSON when it exited 0 (`docker ... inspect`); None when it
    failed or printed something else."""
    import json

    if not result.ok:
        return None
    try:
        return json.loads(result.stdout)
    except ValueError:
        return None


def _unit_show(result: CommandResult, _arg: str) -> str:
    return result.stdout if result.ok else ""


# The units the steps look at (docker, boot, metadata-guard, watch), shown by one process: `systemctl show`
# prints one block of properties per unit, in the order given, with an empty line between blocks.
SHOWN_TOGETHER = ("docker", "gpuswarm-node-boot.service", "gpuswarm-metadata-guard.service",
                  "gpuswarm-node-watch.service")


def _units_show(result: CommandResult, _arg: str) -> dict[str, str]:
    blocks = result.stdout.split("\n\n") if result.ok else []
    return dict(zip(SHOWN_TOGETHER, blocks)) if len(blocks) >= len(SHOWN_TOGETHER) else {}


UNITS_SHOW = fact("units_show", COMMAND,
                  lambda _: ["systemctl", "show", f"--property={','.join(UNIT_PROPERTIES)}", *SHOWN_TOGETHER],
                  _units_show, takes_arg=False)
ONE_UNIT_SHOW = fact("one_unit_show", COMMAND,
                     lambda unit: ["systemctl", "show", f"--property={','.join(UNIT_PROPERTIES)}", unit], _unit_show)


def _unit_show_of(facts: "Facts", unit: str) -> str:
    together = facts.get(UNITS_SHOW) if unit in SHOWN_TOGETHER else {}
    return together[unit] if unit in together else facts.get(ONE_UNIT_SHOW, unit)


# The unit's `systemctl show` block ("" without systemd).
UNIT_SHOW = fact("unit_show", DERIVED, parse=_unit_show_of)


def unit_property(text: str, name: str) -> str:
    """The first `Name=value` line's value in `systemctl show` output, or ""."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key == name:
            return value.strip()
    return ""


# systemctl is-active's word (active, inactive, failed, activating, ...; "" without systemd).
ACTIVE_STATE = fact("active_state", DERIVED,
                    parse=lambda facts, unit: unit_property(facts.get(UNIT_SHOW, unit), "ActiveState"))
UNIT_ACTIVE = fact("unit_active", DERIVED, parse=lambda facts, unit: facts.get(ACTIVE_STATE, unit) == "active")
# systemctl is-enabled's word (enabled, static, disabled, masked, ...; "" for a unit it does not know).
UNIT_FILE_STATE = fact("unit_file_state", DERIVED,
                       parse=lambda facts, unit: unit_property(facts.get(UNIT_SHOW, unit), "UnitFileState"))
UNIT_ENABLED = fact("unit_enabled", DERIVED, parse=lambda facts, unit: facts.get(UNIT_FILE_STATE, unit)
                    in ("enabled", "enabled-runtime", "static"))
UNIT_LOADED = fact("unit_loaded", DERIVED,
                   parse=lambda facts, unit: unit_property(facts.get(UNIT_SHOW, unit), "LoadState") == "loaded")


def _main_pid(facts: Facts, unit: str) -> int:
    pid = unit_property(facts.get(UNIT_SHOW, unit), "MainPID")
    return int(pid) if pid.isdigit() else 0


MAIN_PID = fact("main_pid", DERIVED, parse=_main_pid)  # int, 0 when not running
# The unit's last five log lines (what a failed restart said), stripped.
UNIT_LOG = fact("unit_log", COMMAND, lambda unit: ["journalctl", "-u", unit, "-n", "5", "--no-pager", "-o", "cat"],
                lambda r, _a: r.stdout.strip())


# --- users and groups: the files first, NSS (getent) for a name they do not hold ---------------------

def parse_group_line(line: str) -> tuple[str, list[str]] | None:
    """An /etc/group (or `getent group`) line: (name, members), or None for an empty line."""
    line = line.strip()
    if not line:
        return None
    name, _pw, _gid, members = (line.split(":") + ["", "", ""])[:4]
    return name, [m for m in members.split(",") if m]


# "--": a name is never read as an option.
GETENT_GROUP = fact("getent_group", COMMAND, lambda group: ["getent", "group", "--", group],
                    lambda r, _a: r.stdout if r.ok else "")
GETENT_PASSWD = fact("getent_passwd", COMMAND, lambda user: ["getent", "passwd", "--", user],
                     lambda r, _a: r.stdout if r.ok else "")


def _group_members(facts: Facts, group: str) -> list[str] | None:
    for line in (facts.get(FILE_TEXT, "/etc/group") or "").splitlines():
        parsed = parse_group_line(line)
        if parsed and parsed[0] == group:
            return parsed[1]
    # getent looks a number up as a gid: the answer counts only when it is the group asked for.
    parsed = parse_group_line(facts.get(GETENT_GROUP, group).partition("\n")[0])
    return parsed[1] if parsed and parsed[0] == group else None


def _user_exists(facts: Facts, user: str) -> bool:
    names = {line.partition(":")[0] for line in (facts.get(FILE_TEXT, "/etc/passwd") or "").splitlines()}
    # getent answers a number with the user of that uid: only an entry of this name counts.
    return user in names or facts.get(GETENT_PASSWD, user).partition(":")[0] == user


GROUP_MEMBERS = fact("group_members", DERIVED, parse=_group_members)  # list[str] | None (no such group)
USER_EXISTS = fact("user_exists", DERIVED, parse=_user_exists)  # bool


# --- apt, iptables, the NVIDIA toolkit ----------------------------------------------------------

APT_SHOWS = fact("apt_shows", COMMAND, lambda package: ["apt-cache", "show", "--no-all-versions", package],
                 lambda r, _a: r.ok and bool(r.stdout.strip()))  # bool: apt's lists have the package


def _rules(result: CommandResult, _arg: str) -> str | None:
    return result.stdout if result.ok else None


# `iptables -S` (filter table, every chain) in one process per family; None when it fails.
IPTABLES_RULES = fact("iptables_rules", COMMAND, lambda program: [program, "-w", "-S"], _rules)
# The same listing read again, the n-th time ("iptables 1"): for a check that must tell a state
# another program passes through for a moment from one that stays (steps/metadata_guard.py).
IPTABLES_RULES_AGAIN = fact("iptables_rules_again", COMMAND, lambda arg: [arg.split()[0], "-w", "-S"], _rules)


def _metadata_cloud(facts: Facts, _arg: str) -> tuple[str | None, str]:
    from . import clouds

    dmi = {name: facts.get(FILE_TEXT, f"{clouds.DMI_DIR}/{name}") for name in clouds.DMI_FILES}
    return clouds.detect(facts.get(FILE_TEXT, clouds.CLOUD_ID), facts.get(FILE_TEXT, clouds.INSTANCE_DATA), dmi)


# The cloud this machine runs on and how that was found (clouds.detect: cloud-init's cloud id,
# its instance data, the DMI strings); (None, what was looked at) when unknown.
METADATA_CLOUD = fact("metadata_cloud", DERIVED, parse=_metadata_cloud, takes_arg=False)


def chain_rules(listing: str | None, chain: str) -> list[list[str]]:
    """The `-A CHAIN ...` lines of an `iptables -S` listing, split into words."""
    return [line.split() for line in (listing or "").splitlines() if line.split()[:2] == ["-A", chain]]





# --- the Docker daemon (reads; probes.docker) -------------------------------------------------------

def _docker(method: str, takes_arg: bool = False) -> Fact:
    if takes_arg:
        return fact(f"docker_{method}", DOCKER, lambda arg: lambda api: getattr(api, method)(arg))
    return fact(f"docker_{method}", DOCKER, lambda _a: lambda api: getattr(api, method)(), takes_arg=False)


DOCKER_UNREACHABLE = _docker("unreachable_reason")  # str | None
DOCKER_INFO = _docker("info")                       # dict: GET /info
DOCKER_SWARM = _docker("swarm")                     # SwarmMembership
DOCKER_CLUSTER_ID = _docker("node_cluster_id")      # str
DOCKER_CONTAINERS = _docker("running_containers")   # list[str]
DOCKER_SWARM_CONTENTS = _docker("own_swarm_contents")  # (nodes, service names)
DOCKER_IMAGE_PRESENT = _docker("image_present", takes_arg=True)  # bool, by image name


class DockerReads:
    """The Docker API as steps use it (ctx.docker): every read a fact, read once per run; every
    change passed to the daemon, after which the answers are forgotten (the daemon changed)."""

    def __init__(self, facts: Facts) -> None:
        self._facts = facts

    def unreachable_reason(self) -> str | None:
        return self._facts.get(DOCKER_UNREACHABLE)

    def info(self) -> dict:
        return self._facts.get(DOCKER_INFO)

    def swarm(self):
        return self._facts.get(DOCKER_SWARM)

    def node_cluster_id(self) -> str:
        return self._facts.get(DOCKER_CLUSTER_ID)

    def running_containers(self) -> list[str]:
        return self._facts.get(DOCKER_CONTAINERS)

    def own_swarm_contents(self) -> tuple[int, list[str]]:
        return self._facts.get(DOCKER_SWARM_CONTENTS)

    def image_present(self, name: str) -> bool:
        return self._facts.get(DOCKER_IMAGE_PRESENT, name)

    def _change(self, method: str, *args):
        try:
            return getattr(self._facts.docker_api(), method)(*args)
        finally:
            self._facts.forget()

    def pull(self, name: str, on_progress) -> None:
        self._change("pull", name, on_progress)

    def join(self, manager_addr: str, token: str, advertise_addr: str) -> None:
        self._change("join", manager_addr, token, advertise_addr)

    def init(self, advertise_addr: str) -> None:
        self._change("init", advertise_addr)

    def leave(self) -> None:
        self._change("leave")

    def remove_image(self, name: str) -> None:
        self._change("remove_image", name)


class FileReads:
    """The host seam's file reads (read_text, read_bytes, file_status, which, listdir, exists,
    mtime), each answered by its fact: a probe that reads several files takes this instead of the
    host, and reads nothing twice in a run."""

    def __init__(self, facts: Facts) -> None:
        self.facts = facts

    def read_text(self, path: str) -> str | None:
        return self.facts.get(FILE_TEXT, path)

    def read_bytes(self, path: str) -> bytes | None:
        return self.facts.get(FILE_BYTES, path)

    def file_status(self, path: str):
        return self.facts.get(FILE_STATUS, path)

    def which(self, program: str) -> str | None:
        return self.facts.get(ON_PATH, program)

    def listdir(self, path: str) -> list[str]:
        return self.facts.get(DIR_ENTRIES, path)

    def exists(self, path: str) -> bool:
        return self.facts.get(EXISTS, path)

    def mtime(self, path: str) -> float | None:
        return self.facts.get(MTIME, path)

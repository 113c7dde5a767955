"""docker-daemon: daemon.json advertises the GPU slices and makes the slice-aware runtime the default.

The runtime is a small wrapper around nvidia-container-runtime that gives each container exactly
the devices behind its slices, using the slice map: an sh front (templates/gpuswarm-runtime.sh.j2)
that Docker runs for every runtime call, and the Python program it starts only for `create`
(templates/gpuswarm-runtime.j2). Keys of daemon.json the tool does not own are kept. Docker is
restarted only when what it reads changed, or when the running dockerd started before daemon.json
last changed (someone edited it by hand); the wrapper and the slice map are read per container
start, so changing them needs no restart.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
from typing import Callable

from ..engine import (Check, Paired, PlannedFile, RemoveFile, WriteFile, blocked, needs_change, ok,
                      run_command, write_wanted)
from ..errors import NvmlUnavailable, StepFailed
from ..host import FileStatus, Host, dir_repair_commands, unsafe
from .. import facts as F
from ..probes.dockerd import Arg, DockerUnit, docker_unit
from ..probes.gpu import Inventory
from .. import restart, swarm_compat
from ..lifecycle import activate_action, can_drain, drain_action
from ..nvidia_hook import TOOLKIT_CONFIGS, wrapper_policy
from ..render import render
from ..slices import (device_of, env_variable, for_config, generic_resources, known_devices, notes,
                      parse_generic_resource, slice_map_text, slices_of)
from ..context import Context
from ..unitfile import Command

DAEMON_JSON = "/etc/docker/daemon.json"
DROPIN = "/etc/systemd/system/docker.service.d/gpuswarm-node.conf"
WRAPPER = "/usr/local/lib/gpuswarm-node/gpuswarm-runtime"
WRAPPER_PROGRAM = "/usr/local/lib/gpuswarm-node/gpuswarm-runtime.py"
# The program's bytecode where Python's import looks for it (PEP 3147), for this interpreter's
# version: the front imports the program instead of running it as a script, so the ~3 ms of
# compiling it is not paid on every `create`. Hash-checked (PEP 552): Python uses it only while it
# matches the program's text, and compiles the program itself otherwise (another Python version,
# a program rewritten since), so a stale or foreign file costs time, never behaviour.
WRAPPER_BYTECODE = (f"{posixpath.dirname(WRAPPER_PROGRAM)}/__pycache__/"
                    f"gpuswarm-runtime.{sys.implementation.cache_tag}.pyc")
# The distribution's Python, not the tool's venv: the wrapper must keep working whatever happens
# to /opt/gpuswarm-node, and needs nothing beyond the standard library.
WRAPPER_PYTHON = "/usr/bin/python3"
SLICE_MAP = "/etc/gpuswarm-node/slices.json"
DOCKER_SOCKET = "/var/run/docker.sock"
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}
# Registered under its own name: `docker run --runtime nvidia --gpus ...` still reaches the
# unwrapped NVIDIA runtime for an administrator's checks.
RUNTIME_NAME = "gpuswarm"
SLICE_RUNTIME = {"path": WRAPPER}
# daemon.json keys the tool sets whatever was there.
TOOL_KEYS = ("runtimes", "default-runtime", "node-generic-resources")
# dockerd may start a little before its start time as computed from whole-second btime.
START_TIME_SLACK = 2.0


def read_daemon_json(host: Host) -> tuple[str | None, dict]:
    text = host.read_text(DAEMON_JSON)
    if text is None or not text.strip():
        return text, {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepFailed(f"{DAEMON_JSON} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         "nothing was written.", "Fix or remove the file, then run setup again.") from None
    if not isinstance(data, dict):
        raise StepFailed(f"{DAEMON_JSON} holds a JSON {type(data).__name__}, not an object; nothing was written.",
                         "Fix or remove the file, then run setup again.")
    return text, data


def _json_type(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


# The keys the tool reads or writes, and the JSON dockerd (and the tool) needs in each.
KEY_TYPES = {
    "runtimes": (lambda v: isinstance(v, dict) and all(isinstance(r, dict) for r in v.values()),
                 'an object of runtimes by name, e.g. {"nvidia": {"path": "nvidia-container-runtime"}}'),
    "node-generic-resources": (lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v),
                               'an array of "kind=value" strings'),
    "hosts": (lambda v: isinstance(v, list) and all(isinstance(h, str) for h in v),
              'an array of strings such as "unix:///var/run/docker.sock"'),
    "default-runtime": (lambda v: isinstance(v, str), "a string"),
    "live-restore": (lambda v: isinstance(v, bool), "true or false"),
    "cluster-store": (lambda v: isinstance(v, str), "a string"),
    "cluster-advertise": (lambda v: isinstance(v, str), "a string"),
    "firewall-backend": (lambda v: isinstance(v, str), 'a string ("iptables" or "nftables")'),
    "iptables": (lambda v: isinstance(v, bool), "true or false"),
    "features": (lambda v: isinstance(v, dict) and all(isinstance(f, bool) for f in v.values()),
                 'an object of true/false by feature name, e.g. {"containerd-snapshotter": true}'),
}


def daemon_json_problems(existing: dict, kind: str, devices: set[str] = frozenset()) -> list[str]:
    """What in daemon.json stops the tool from merging its keys, or dockerd from starting as a
    swarm worker with them; each names the key. Checked before anything is written."""
    problems = []
    for key, (valid, want) in KEY_TYPES.items():
        if key in existing and not valid(existing[key]):
            problems.append(f"{DAEMON_JSON}: {key!r} is {_json_type(existing[key])}; it must be {want}")
    if problems:
        return problems
    if "runc" in existing.get("runtimes", {}):
        problems.append(f"{DAEMON_JSON} defines the runtime 'runc' in 'runtimes', a name dockerd reserves "
                        "(it refuses to start); remove it")
    values: dict[str, list[str]] = {}
    for entry in existing.get("node-generic-resources", []):
        other, _, value = entry.partition("=")
        if other == kind or device_of(value) in devices:
            continue  # replaced by the tool's own entries
        if entry.count("=") != 1 or not other.strip():
            problems.append(f"{DAEMON_JSON}: 'node-generic-resources' entry {entry!r} is not \"kind=value\" "
                            "(dockerd refuses to start); fix or remove it")
        else:
            values.setdefault(other.strip(), []).append(value.strip())
    for other, entries in values.items():
        numbers = [v for v in entries if re.fullmatch(r"[+-]?[0-9]+", v)]
        if numbers and len(entries) > 1:
            problems.append(f"{DAEMON_JSON}: 'node-generic-resources' gives kind {other!r} both a count and named "
                            f"values ({', '.join(entries)}), which dockerd refuses; keep one form")
        elif numbers and int(numbers[0]) < 0:
            problems.append(f"{DAEMON_JSON}: 'node-generic-resources' gives kind {other!r} a negative count")
    return problems


def merge_settings(existing: dict, kind: str, slices: list[str], devices: set[str] = frozenset()) -> dict:
    """existing daemon.json settings with the tool's keys set; everything else kept as it was.

    Entries of another kind whose value is one of this node's devices or slices are GPU slices
    advertised under a kind the runtime does not read (left from an earlier gpu.resource): a
    service reserving them would get no GPU, so they go. So do the settings swarm mode refuses
    that the tool may take away (swarm_compat.REFUSED, `removed`: live-restore): the tool always
    makes the node a swarm member. The caller has checked the types (daemon_json_problems).
    """
    merged = dict(existing)
    merged["runtimes"] = {**existing.get("runtimes", {}), "nvidia": NVIDIA_RUNTIME, RUNTIME_NAME: SLICE_RUNTIME}
    merged["default-runtime"] = RUNTIME_NAME
    # Resources of other kinds belong to the operator; ours are replaced as a whole.
    others = [r for r in existing.get("node-generic-resources", [])
              if parse_generic_resource(r)[0] != kind and device_of(parse_generic_resource(r)[1]) not in devices]
    merged["node-generic-resources"] = others + generic_resources(kind, slices)
    for rule, where, _index in swarm_compat.refused(existing, {}, None):
        if rule.removed and where == "daemon.json":
            del merged[rule.key]
    return merged


def advertised(settings: dict) -> list[tuple[str, str]]:
    """(kind, value) of every node-generic-resources entry."""
    return [parse_generic_resource(r) for r in settings.get("node-generic-resources", []) if isinstance(r, str)]


def wrapper_loader(program: str = WRAPPER_PROGRAM) -> str:
    """The `python3 -c` code by which the front runs the program: imported from its directory,
    appended to sys.path after the standard library (so nothing there can shadow a standard
    module), so that Python uses the program's bytecode in __pycache__ when it is current."""
    directory, name = posixpath.split(program)
    # JSON string literals are Python's too, and their double quotes read well inside sh's single.
    return (f"import sys; sys.path.append({json.dumps(directory)}); "
            f"__import__({json.dumps(name.removesuffix('.py'))}).main(sys.argv)")


def wrapper_text(program: str = WRAPPER_PROGRAM, python: str = WRAPPER_PYTHON) -> str:
    """The sh front Docker runs (daemon.json names it)."""
    return render("gpuswarm-runtime.sh.j2", python=python, loader=wrapper_loader(program),
                  runtime=NVIDIA_RUNTIME["path"])


def bytecode_header(program_text: str) -> bytes:
    """The 16-byte header of the program's hash-checked bytecode for this interpreter (PEP 552:
    magic number, flags 0b11 = hash-based and checked, the source's hash). Python compares it with
    the program's text before each use."""
    import importlib.util

    return (importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")
            + importlib.util.source_hash(program_text.encode()))


def wrapper_bytecode(program_text: str, program: str = WRAPPER_PROGRAM) -> bytes:
    """The program compiled as Python's import would cache it (py_compile with CHECKED_HASH)."""
    import marshal

    code = compile(program_text.encode(), program, "exec", dont_inherit=True)
    return bytecode_header(program_text) + marshal.dumps(code)


def bytecode_current(data: bytes | None, program_text: str) -> bool:
    """Whether `data` is the program's own bytecode: what `wrapper_bytecode` compiles from this
    program text, byte for byte (its SHA-256), or else a code object equal to it (marshal's
    output can differ in its reference flags while the code is the same). A header alone proves
    nothing: its source hash is public, so anyone who could write the file could put any code
    behind a valid one, and Python runs it without reading the program."""
    import hashlib
    import marshal

    if data is None or data[:16] != bytecode_header(program_text):
        return False
    own = wrapper_bytecode(program_text)
    if hashlib.sha256(data).digest() == hashlib.sha256(own).digest():
        return True
    try:
        return marshal.loads(data[16:]) == marshal.loads(own[16:])
    except (EOFError, ValueError, TypeError):
        return False


def loaded_runtime_problem(ctx: Context) -> str | None:
    """Why the running dockerd does not use the wrapper as its default runtime, by its own
    answer (GET /info: DefaultRuntime, Runtimes), or None (also when it cannot be asked: then the
    start-time check above is all there is)."""
    if ctx.docker.unreachable_reason():
        return None
    info = ctx.docker.info() or {}
    default, runtimes = info.get("DefaultRuntime"), info.get("Runtimes")
    if default is not None and default != RUNTIME_NAME:
        return f"dockerd runs with default runtime {default}, not {RUNTIME_NAME} (it has not loaded daemon.json)"
    if isinstance(runtimes, dict) and RUNTIME_NAME not in runtimes:
        return f"dockerd knows no runtime {RUNTIME_NAME} (it has not loaded daemon.json)"
    return None


def engine_socket(settings: dict) -> str:
    """The unix socket dockerd serves its API on: the first unix:// entry of daemon.json's
    "hosts", else Docker's default. The wrapper asks it which image a container runs."""
    hosts = settings.get("hosts")
    for host in hosts if isinstance(hosts, list) else []:
        if isinstance(host, str) and host.startswith("unix://") and host[len("unix://"):].startswith("/"):
            return host[len("unix://"):]
    return DOCKER_SOCKET


def wrapper_program_text(docker_socket: str = DOCKER_SOCKET, slice_map: str = SLICE_MAP,
                         toolkit_configs: tuple[str, ...] = TOOLKIT_CONFIGS) -> str:
    """The Python program the front starts for `create` (`slice_map`, `toolkit_configs`: other
    paths, for a check that runs it outside a node, tests/gpu/check.py)."""
    return render("gpuswarm-runtime.j2", slice_map=slice_map, runtime=NVIDIA_RUNTIME["path"],
                  docker_socket=docker_socket, toolkit_configs=toolkit_configs,
                  hook_policy=wrapper_policy())


def read_slice_map(host: Host) -> tuple[str | None, dict]:
    """The slice map's text and content ({} when missing or not a JSON object)."""
    text = host.read_text(SLICE_MAP)
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        data = {}
    return text, data if isinstance(data, dict) else {}


def _is_symlink(status: FileStatus | None) -> bool:
    return status is not None and status.is_symlink


def without_host_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-H", "--host"):
            skip = True
        elif not arg.startswith(("-H=", "--host=")) and not (arg.startswith("-H") and len(arg) > 2):
            out.append(arg)
    return out


def _shown(args: list[Arg]) -> Callable[[Arg], str]:
    """How an argument is quoted in a message: with its value when that is the next word (dockerd
    takes no positional arguments, so a word after a flag without "=" is its value)."""
    following = {id(arg): nxt.text for arg, nxt in zip(args, args[1:])}

    def shown(arg: Arg) -> str:
        value = following.get(id(arg), "")
        with_value = "=" not in arg.text and value and not value.startswith("-")
        return f"`{arg.text} {value}`" if with_value else f"`{arg.text}`"
    return shown


def swarm_refusals(settings: dict, args: list[Arg], version: swarm_compat.Version | None = None) -> list[str]:
    """What in these daemon.json settings and dockerd arguments swarm mode refuses (Docker
    `version`, (major, minor), None when unknown): one sentence each, naming the key or the flag
    and the file it is in, with the fix (swarm_compat.REFUSED)."""
    shown = _shown(args)
    problems = []
    flags = swarm_compat.flag_settings([arg.text for arg in args])
    for rule, where, index in swarm_compat.refused(settings, flags, version):
        if where == "daemon.json":
            problems.append(f"{DAEMON_JSON} sets {rule.key!r}: {swarm_compat.why(rule)}; {rule.fix}")
            continue
        arg = args[index]
        problems.append(f"docker.service starts dockerd with {shown(arg)} ({arg.where}): {swarm_compat.why(rule)}; "
                        f"{_remove(arg)}")
    return problems


def flag_refusal(settings: dict, args: list[Arg], version: swarm_compat.Version | None = None) -> str | None:
    """Why dockerd would not start as a swarm worker with these arguments and daemon.json
    settings (Docker `version`, (major, minor), None when unknown), naming each flag and the file
    it is in, or the daemon.json key; None when it would."""
    shown = _shown(args)
    problems = swarm_refusals(settings, args, version)
    by_key: dict[str, list[Arg]] = {}
    for key, arg in restart.conflicting_args(settings, args):
        by_key.setdefault(key, []).append(arg)
    for key, flags in by_key.items():
        setter = f"gpuswarm-node sets {key} in {DAEMON_JSON}" if key in TOOL_KEYS else f"{DAEMON_JSON} sets {key}"
        where = " and ".join(f"{shown(arg)} in {arg.where}" for arg in flags)
        fixes = sorted({_remove(arg) for arg in flags})
        problems.append(f"{setter}, which docker.service also sets as a flag ({where}): dockerd refuses to start "
                        "like that; " + ("; ".join(fixes) if key in TOOL_KEYS else "remove one of the two"))
    return "; ".join(problems) or None


def _remove(arg: Arg) -> str:
    if not arg.in_unit:
        return f"remove it from {arg.variable} in {arg.file}"
    return f"remove it from {arg.file}, then run `systemctl daemon-reload`"


def parse_process_start(stat_text: str, proc_stat_text: str, clock_ticks: int = 100) -> float:
    """Epoch seconds a process started, from /proc/PID/stat and /proc/stat (btime)."""
    fields = stat_text.rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22 of proc(5); fields here start at field 3
    btime = next(int(line.split()[1]) for line in proc_stat_text.splitlines() if line.startswith("btime "))
    return btime + start_ticks / clock_ticks


def dockerd_start_time(facts: F.Facts) -> float | None:
    """Epoch seconds dockerd (docker.service's main process) started, or None when it runs not."""
    pid = facts.get(F.MAIN_PID, "docker")
    if not pid:
        return None
    stat, proc_stat = facts.get(F.FILE_TEXT, f"/proc/{pid}/stat"), facts.get(F.FILE_TEXT, "/proc/stat")
    if not stat or not proc_stat:
        return None
    return parse_process_start(stat, proc_stat)


class DockerDaemonStep:
    name = "docker-daemon"
    description = "daemon.json: slice-aware default runtime and one generic resource per GPU slice"

    def _settings(self, ctx: Context) -> tuple[Inventory, list[str], str | None, dict, dict, list[str]]:
        """The inventory, its slices, daemon.json as it is (text, settings), as the tool wants it,
        and what in it stops the merge (then the wanted settings are the existing ones)."""
        inventory = ctx.inventory()
        slices = for_config(inventory.gpus, ctx.config.gpu)
        text, existing = read_daemon_json(ctx.facts.files)
        devices = known_devices(inventory.gpus)
        problems = daemon_json_problems(existing, ctx.config.gpu.resource, devices)
        merged = existing if problems else merge_settings(existing, ctx.config.gpu.resource, slices, devices)
        return inventory, slices, text, existing, merged, problems

    def _dropin(self, unit: DockerUnit, merged: dict) -> str | None:
        """The drop-in that starts dockerd without -H when daemon.json sets "hosts": the command
        the unit has without this drop-in, its -H words removed, quoted by systemd's rules. An -H
        that a variable brings in stays (and is reported as a conflict)."""
        if "hosts" not in merged:
            return None
        command, _origin = unit.replaced(DROPIN, None).exec_start()
        if command is None:
            return None
        stripped = without_host_flags(list(command.argv))
        if stripped == list(command.argv):
            return None
        ours = Command(command.prefix, command.path, tuple(stripped))
        return render("docker-dropin.conf.j2", exec_start=ours.render())

    def files(self, ctx: Context) -> list[PlannedFile]:
        _inventory, slices, _text, _existing, merged, problems = self._settings(ctx)
        if problems:
            raise StepFailed("; ".join(problems) + ".", "Fix /etc/docker/daemon.json, then run setup again.")
        return list(self._wanted(ctx, slices, merged).values())

    def _wanted(self, ctx: Context, slices: list[str], merged: dict,
                bytecode: bool = True) -> dict[str, PlannedFile]:
        """Every file of the step as it wants it, by path: the one statement of its files. Without
        `bytecode`, the program is not compiled (a check whose bytecode is current needs none)."""
        # 0644, not executable: only the front runs the program, through python3. Nothing in it
        # is secret (it is the template's text), and a root-only file would make a non-root
        # `status` fail to compare it; the front and the slice map are world-readable too.
        program = wrapper_program_text(engine_socket(merged))
        files = [PlannedFile(WRAPPER_PROGRAM, program, 0o644),
                 *([PlannedFile(WRAPPER_BYTECODE, wrapper_bytecode(program), 0o644)] if bytecode else []),
                 PlannedFile(WRAPPER, wrapper_text(), 0o755),
                 PlannedFile(SLICE_MAP, slice_map_text(ctx.config.gpu.resource, slices), 0o644),
                 PlannedFile(DAEMON_JSON, render("daemon.json.j2", settings=merged), 0o644)]
        dropin = self._dropin(docker_unit(ctx.facts), merged)
        if dropin:
            files.append(PlannedFile(DROPIN, dropin, 0o644))
        return {f.path: f for f in files}

    def _runtime_actions(self, ctx: Context, wanted: dict[str, PlannedFile],
                         devices: set[str]) -> tuple[list, list[str]]:
        """The wrapper and its slice map: read per container start, so no restart follows."""
        host, kind = ctx.facts.files, ctx.config.gpu.resource
        actions: list = []
        reasons: list[str] = []
        # The program goes before the front that starts it: upgrading from the one-file wrapper,
        # a front written first would fail every `create` until the program is there.
        if write := write_wanted(ctx, wanted[WRAPPER_PROGRAM]):
            actions.append(write)
            reasons.append(f"runtime wrapper program {WRAPPER_PROGRAM} "
                           f"{'is missing' if write.before is None else 'differs'}")
        # After the program (its hash is of the program's new text) and before the front that
        # imports it; until then Python compiles the program as before.
        if WRAPPER_BYTECODE in wanted:  # compiled only where the bytecode there is not current
            have_bytecode = host.read_bytes(WRAPPER_BYTECODE)
            actions.append(write_wanted(ctx, wanted[WRAPPER_BYTECODE], force=True))
            reasons.append(f"runtime wrapper bytecode {WRAPPER_BYTECODE} "
                           f"{'is missing' if have_bytecode is None else 'is not the program compiled'}")
        have = host.read_text(WRAPPER)
        if write := write_wanted(ctx, wanted[WRAPPER]):
            actions.append(write)
            reasons.append(f"runtime wrapper {WRAPPER} {'is missing' if have is None else 'differs'}")
        if have is not None and host.which(WRAPPER) is None and not _is_symlink(host.file_status(WRAPPER)):
            # chmod would follow a symlink: one is replaced instead (_ownership_actions).
            actions.append(run_command("chmod", "0755", WRAPPER))
            reasons.append(f"runtime wrapper {WRAPPER} is not executable")
        have_map, current = read_slice_map(host)
        if write := write_wanted(ctx, wanted[SLICE_MAP]):
            actions.append(write)
            variable = current.get("variable")
            mapped = current.get("slices") if isinstance(current.get("slices"), dict) else {}
            gone = sorted({d for d in mapped.values() if isinstance(d, str)} - devices)
            if have_map is None:
                reasons.append(f"slice map {SLICE_MAP} is missing")
            elif variable != env_variable(kind):
                reasons.append(f"the runtime reads {variable or 'nothing'} but the slices are advertised as "
                               f"{kind} (in {env_variable(kind)})")
            elif gone:
                reasons.append(f"slice map names {', '.join(gone)}, which NVML no longer reports")
            else:
                reasons.append(f"slice map {SLICE_MAP} differs from the advertised slices")
        return actions, reasons

    def _ownership_actions(self, ctx: Context, dropin: str | None,
                           planned: list) -> tuple[list, list, list[str], str | None]:
        """What root trusts here, checked for who could change it: the wrapper Docker runs as
        root, its program and slice map, daemon.json, the drop-in, and the directories they are
        in. A file whose content is right but which is a symlink, not root's, or writable by group
        or others is written again with the same content (root's, with its mode; unchanged content
        keeps its modification time, so dockerd is not restarted for it). A file `planned` already
        writes or removes is fixed by that. A directory gets chown/chmod (the first value; file
        rewrites are the second); one that is a symlink is refused (the fourth value), as it
        cannot be repaired in place."""
        host = ctx.facts.files
        written = {a.path for a in planned if isinstance(a, (WriteFile, RemoveFile))}
        files = [("runtime wrapper program ", WRAPPER_PROGRAM, 0o644), ("runtime wrapper ", WRAPPER, 0o755),
                 ("runtime wrapper bytecode ", WRAPPER_BYTECODE, 0o644),
                 ("slice map ", SLICE_MAP, 0o644), ("", DAEMON_JSON, 0o644)]
        directories = [posixpath.dirname(WRAPPER), posixpath.dirname(WRAPPER_BYTECODE), posixpath.dirname(SLICE_MAP)]
        if dropin:
            files.append(("drop-in ", DROPIN, 0o644))
            directories.append(posixpath.dirname(DROPIN))
        dir_fixes: list = []
        file_fixes: list = []
        reasons: list[str] = []
        for directory in directories:
            status = host.file_status(directory)
            if _is_symlink(status):
                return [], [], [], (f"directory {directory} is a symlink, so whoever controls its target "
                                    "could replace what Docker runs as root; make it a directory owned by root")
            problem = unsafe(status)
            if problem:
                dir_fixes += [run_command(*argv) for argv in dir_repair_commands(directory, status)]
                reasons.append(f"directory {directory} {problem}")
        for label, path, mode in files:
            problem = unsafe(host.file_status(path))
            if problem is None or path in written:
                continue
            text = host.read_bytes(path) if path == WRAPPER_BYTECODE else host.read_text(path)
            if text is None:  # a dangling symlink: the content checks planned the file already
                continue
            file_fixes.append(WriteFile(path, text, text, mode=mode))
            reasons.append(f"{label}{path} {problem}")
        return dir_fixes, file_fixes, reasons, None

    def _daemon_reasons(self, existing: dict, merged: dict, kind: str, devices: set[str],
                        text: str | None) -> list[str]:
        reasons = [f"{DAEMON_JSON} {'is missing' if text is None else 'differs'}"]
        ours = [v for k, v in advertised(existing) if k == kind]
        gone = sorted({device_of(v) for v in ours} - devices)
        if gone:
            reasons.append(f"it advertises slices of {', '.join(gone)}, which NVML no longer reports "
                           "(a GPU vanished or changed UUID)")
        stray = sorted({k for k, v in advertised(existing) if k != kind and device_of(v) in devices})
        if stray:
            reasons.append(f"it advertises GPU slices as {', '.join(stray)}, but the runtime reads "
                           f"{env_variable(kind)} (gpu.resource = {kind})")
        if existing and existing.get("default-runtime") != RUNTIME_NAME:
            reasons.append(f"default runtime is {existing.get('default-runtime', 'runc')}, not {RUNTIME_NAME}")
        for name in ("nvidia", RUNTIME_NAME):
            have = existing.get("runtimes", {}).get(name)
            if have is not None and have != merged["runtimes"][name]:
                reasons.append(f"runtime {name} is {json.dumps(have)}; gpuswarm-node owns that name and sets it to "
                               f"{json.dumps(merged['runtimes'][name])}")
        for rule, where, _index in swarm_compat.refused(existing, {}, None):
            if rule.removed and where == "daemon.json" and rule.key not in merged:
                reasons.append(f"{DAEMON_JSON} sets {rule.key!r}: {swarm_compat.why(rule)}; it is removed "
                               "from daemon.json" + (", so containers stop when Docker restarts"
                                                     if rule.key == "live-restore" else ""))
        return reasons

    def check(self, ctx: Context) -> Check:
        try:
            inventory, slices, text, existing, merged, problems = self._settings(ctx)
        except NvmlUnavailable as exc:
            return blocked(f"cannot discover GPUs to advertise: {exc.reason}", waits_for=("nvidia-driver",))
        if problems:
            return blocked("; ".join(problems))
        kind = ctx.config.gpu.resource
        if not inventory.gpus:
            return blocked("NVML reports no GPU, so there are no slices to advertise")
        why_not = notes(inventory.gpus, ctx.config.gpu)
        if not slices:
            return blocked("no GPU yields a slice: " + "; ".join(why_not))
        devices = known_devices(inventory.gpus)
        program = wrapper_program_text(engine_socket(merged))
        compiled = bytecode_current(ctx.fact(F.FILE_BYTES, WRAPPER_BYTECODE), program)
        wanted = self._wanted(ctx, slices, merged, bytecode=not compiled)
        actions, reasons = self._runtime_actions(ctx, wanted, devices)
        # Only what dockerd reads (daemon.json, its unit) needs the restart below.
        restart_for: list = []
        previous: dict[str, str | None] = {}
        unit = docker_unit(ctx.facts)
        want_dropin = wanted[DROPIN].content if DROPIN in wanted else None
        have_dropin = ctx.fact(F.FILE_TEXT, DROPIN)
        if want_dropin != have_dropin and not unit.matches_loaded():
            return blocked(f"docker.service's files ({', '.join(p for p, _ in unit.files)}) give another command "
                           f"than the one systemd has loaded ({unit.loaded.argv}); run `systemctl daemon-reload` "
                           "(or undo the edit), then setup again")
        # dockerd as it will start once this is applied: refused here, before anything changes.
        args, _origin = (unit.replaced(DROPIN, want_dropin) if want_dropin != have_dropin else unit).dockerd_args()
        refusal = flag_refusal(merged, args, swarm_compat.docker_version(ctx.facts))
        if refusal:
            return blocked(refusal)
        # Compared as settings, not text: a hand-formatted daemon.json that says the same stays.
        if existing != merged:
            daemon_json = wanted[DAEMON_JSON]
            restart_for += [restart.validate_action(daemon_json.content),
                            WriteFile(DAEMON_JSON, daemon_json.content, text, daemon_json.mode)]
            previous[DAEMON_JSON] = text
            reasons += self._daemon_reasons(existing, merged, kind, devices, text)
        if want_dropin != have_dropin:
            restart_for.append(write_wanted(ctx, wanted[DROPIN]) if want_dropin else RemoveFile(DROPIN))
            restart_for.append(run_command("systemctl", "daemon-reload"))
            previous[DROPIN] = have_dropin
            reasons.append(f"drop-in {DROPIN} {'needed' if want_dropin else 'no longer needed'}")
        dir_fixes, file_fixes, owner_reasons, refusal = self._ownership_actions(ctx, want_dropin or have_dropin,
                                                                                actions + restart_for)
        if refusal:
            return blocked(refusal)
        # Directories first: nothing is written into one that someone else can still change.
        actions = [*dir_fixes, *actions, *file_fixes]
        reasons += owner_reasons
        docker_running = ctx.fact(F.SYSTEMD_RUNNING) and ctx.fact(F.UNIT_ACTIVE, "docker")
        if docker_running:
            restart_needed = bool(restart_for)
            if not restart_needed:
                started, changed = dockerd_start_time(ctx.facts), ctx.fact(F.MTIME, DAEMON_JSON)
                if started is not None and changed is not None and started + START_TIME_SLACK < changed:
                    reasons.append("dockerd started before daemon.json last changed")
                    restart_needed = True
            if not restart_needed:
                # What dockerd runs with, not what its file says (GET /info: DefaultRuntime,
                # Runtimes): a file dockerd never loaded gives containers no wrapper.
                loaded = loaded_runtime_problem(ctx)
                if loaded:
                    reasons.append(loaded)
                    restart_needed = True
            if restart_needed:
                refusal = restart.restart_refusal(ctx)
                if refusal:
                    return blocked("; ".join(reasons + [refusal]))
                restart_for.append(restart.restart_action(previous, reload=DROPIN in previous))
                if ctx.options.drain and can_drain(ctx) is None:
                    # The node is made active again whatever happens between.
                    restart_for = [Paired(drain_action(), tuple(restart_for), activate_action())]
        # The wrapper and its map go first: once dockerd reads the new daemon.json, every
        # container start runs the wrapper.
        actions += restart_for
        if actions:
            return needs_change("; ".join(reasons + why_not), *actions)
        gpus = sum(1 for gpu in inventory.gpus if slices_of(gpu, ctx.config.gpu.slices_per_gpu,
                                                            ctx.config.gpu.slice_memory_bytes))
        return ok("; ".join([f"{len(slices)} slice(s) advertised as {kind} on {gpus} GPU(s); default runtime "
                             f"{RUNTIME_NAME} gives each container the devices of its {env_variable(kind)}"]
                            + why_not))

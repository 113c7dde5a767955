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
import shlex

from ..engine import (Check, PlannedFile, RemoveFile, WriteFile, blocked, needs_change, ok,
                      run_command)
from ..errors import NvmlUnavailable, StepFailed
from ..host import FileStatus, Host, dir_repair_commands, unsafe
from ..probes import system
from ..probes.gpu import Inventory, slices_of
from .. import restart
from ..nvidia_hook import TOOLKIT_CONFIGS
from ..render import render
from ..slices import device_of, env_variable, for_config, known_devices, notes, slice_map_text
from ..system import Context

DAEMON_JSON = "/etc/docker/daemon.json"
DROPIN = "/etc/systemd/system/docker.service.d/gpuswarm-node.conf"
# In systemd's order of precedence: a unit in /etc/systemd/system overrides the packaged one.
DOCKER_UNITS = ("/etc/systemd/system/docker.service", "/lib/systemd/system/docker.service",
                "/usr/lib/systemd/system/docker.service")
WRAPPER = "/usr/local/lib/gpuswarm-node/gpuswarm-runtime"
WRAPPER_PROGRAM = "/usr/local/lib/gpuswarm-node/gpuswarm-runtime.py"
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


def merge_settings(existing: dict, kind: str, slices: list[str], devices: set[str] = frozenset()) -> dict:
    """existing daemon.json settings with the tool's keys set; everything else kept as it was.

    Entries of another kind whose value is one of this node's devices or slices are GPU slices
    advertised under a kind the runtime does not read (left from an earlier gpu.resource): a
    service reserving them would get no GPU, so they go.
    """
    merged = dict(existing)
    merged["runtimes"] = {**existing.get("runtimes", {}), "nvidia": NVIDIA_RUNTIME, RUNTIME_NAME: SLICE_RUNTIME}
    merged["default-runtime"] = RUNTIME_NAME
    # Resources of other kinds belong to the operator; ours are replaced as a whole.
    others = [r for r in existing.get("node-generic-resources", [])
              if r.partition("=")[0] != kind and device_of(r.partition("=")[2]) not in devices]
    merged["node-generic-resources"] = others + [f"{kind}={s}" for s in slices]
    return merged


def advertised(settings: dict) -> list[tuple[str, str]]:
    """(kind, value) of every node-generic-resources entry."""
    return [(r.partition("=")[0], r.partition("=")[2]) for r in settings.get("node-generic-resources", [])
            if isinstance(r, str)]


def wrapper_text() -> str:
    """The sh front Docker runs (daemon.json names it)."""
    return render("gpuswarm-runtime.sh.j2", python=WRAPPER_PYTHON, program=WRAPPER_PROGRAM,
                  runtime=NVIDIA_RUNTIME["path"])


def engine_socket(settings: dict) -> str:
    """The unix socket dockerd serves its API on: the first unix:// entry of daemon.json's
    "hosts", else Docker's default. The wrapper asks it which image a container runs."""
    hosts = settings.get("hosts")
    for host in hosts if isinstance(hosts, list) else []:
        if isinstance(host, str) and host.startswith("unix://") and host[len("unix://"):].startswith("/"):
            return host[len("unix://"):]
    return DOCKER_SOCKET


def wrapper_program_text(docker_socket: str = DOCKER_SOCKET) -> str:
    """The Python program the front starts for `create`."""
    return render("gpuswarm-runtime.j2", slice_map=SLICE_MAP, runtime=NVIDIA_RUNTIME["path"],
                  docker_socket=docker_socket, toolkit_configs=TOOLKIT_CONFIGS)


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


def dockerd_exec_start(unit_text: str) -> list[str]:
    for line in unit_text.splitlines():
        if line.strip().startswith("ExecStart=") and line.strip() != "ExecStart=":
            return shlex.split(line.strip()[len("ExecStart="):])
    return []


def unit_exec_start(host: Host) -> list[str]:
    """dockerd's command line in the docker unit systemd uses (/etc overrides /lib)."""
    return dockerd_exec_start(next((t for t in map(host.read_text, DOCKER_UNITS) if t), ""))


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


def parse_process_start(stat_text: str, proc_stat_text: str, clock_ticks: int = 100) -> float:
    """Epoch seconds a process started, from /proc/PID/stat and /proc/stat (btime)."""
    fields = stat_text.rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22 of proc(5); fields here start at field 3
    btime = next(int(line.split()[1]) for line in proc_stat_text.splitlines() if line.startswith("btime "))
    return btime + start_ticks / clock_ticks


def dockerd_start_time(host: Host) -> float | None:
    pid = host.query(["systemctl", "show", "--property=MainPID", "--value", "docker"]).stdout.strip()
    if not pid.isdigit() or pid == "0":
        return None
    stat, proc_stat = host.read_text(f"/proc/{pid}/stat"), host.read_text("/proc/stat")
    if not stat or not proc_stat:
        return None
    return parse_process_start(stat, proc_stat)


class DockerDaemonStep:
    name = "docker-daemon"
    description = "daemon.json: slice-aware default runtime and one generic resource per GPU slice"

    def _settings(self, ctx: Context) -> tuple[Inventory, list[str], str | None, dict, dict]:
        inventory = ctx.inventory()
        slices = for_config(inventory.gpus, ctx.config.gpu)
        text, existing = read_daemon_json(ctx.host)
        merged = merge_settings(existing, ctx.config.gpu.resource, slices, known_devices(inventory.gpus))
        return inventory, slices, text, existing, merged

    def _dropin(self, ctx: Context, merged: dict) -> str | None:
        if "hosts" not in merged:
            return None
        argv = unit_exec_start(ctx.host)
        if not argv or without_host_flags(argv) == argv:
            return None
        stripped = without_host_flags(argv)
        return render("docker-dropin.conf.j2", dockerd=stripped[0], args=stripped[1:])

    def files(self, ctx: Context) -> list[PlannedFile]:
        _inventory, slices, _text, _existing, merged = self._settings(ctx)
        files = [PlannedFile(WRAPPER_PROGRAM, wrapper_program_text(engine_socket(merged))),
                 PlannedFile(WRAPPER, wrapper_text()),
                 PlannedFile(SLICE_MAP, slice_map_text(ctx.config.gpu.resource, slices)),
                 PlannedFile(DAEMON_JSON, render("daemon.json.j2", settings=merged))]
        dropin = self._dropin(ctx, merged)
        if dropin:
            files.append(PlannedFile(DROPIN, dropin))
        return files

    def _runtime_actions(self, ctx: Context, slices: list[str], devices: set[str],
                         socket: str) -> tuple[list, list[str]]:
        """The wrapper and its slice map: read per container start, so no restart follows."""
        host, kind = ctx.host, ctx.config.gpu.resource
        actions: list = []
        reasons: list[str] = []
        # The program goes before the front that starts it: upgrading from the one-file wrapper,
        # a front written first would fail every `create` until the program is there.
        # 0644, not executable: only the front runs it, through python3. Nothing in it is secret
        # (it is the template's text), and a root-only file would make a non-root `status`
        # fail to compare it; the front and the slice map are world-readable too.
        want_program, have_program = wrapper_program_text(socket), host.read_text(WRAPPER_PROGRAM)
        if have_program != want_program:
            actions.append(WriteFile(WRAPPER_PROGRAM, want_program, have_program, mode=0o644))
            reasons.append(f"runtime wrapper program {WRAPPER_PROGRAM} "
                           f"{'is missing' if have_program is None else 'differs'}")
        want, have = wrapper_text(), host.read_text(WRAPPER)
        if have != want:
            actions.append(WriteFile(WRAPPER, want, have, mode=0o755))
            reasons.append(f"runtime wrapper {WRAPPER} {'is missing' if have is None else 'differs'}")
        if have is not None and host.which(WRAPPER) is None and not _is_symlink(host.file_status(WRAPPER)):
            # chmod would follow a symlink: one is replaced instead (_ownership_actions).
            actions.append(run_command("chmod", "0755", WRAPPER))
            reasons.append(f"runtime wrapper {WRAPPER} is not executable")
        want_map = slice_map_text(kind, slices)
        have_map, current = read_slice_map(host)
        if have_map != want_map:
            actions.append(WriteFile(SLICE_MAP, want_map, have_map))
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
        host = ctx.host
        written = {a.path for a in planned if isinstance(a, (WriteFile, RemoveFile))}
        files = [("runtime wrapper program ", WRAPPER_PROGRAM, 0o644), ("runtime wrapper ", WRAPPER, 0o755),
                 ("slice map ", SLICE_MAP, 0o644), ("", DAEMON_JSON, 0o644)]
        directories = [posixpath.dirname(WRAPPER), posixpath.dirname(SLICE_MAP)]
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
            text = host.read_text(path)
            if text is None:  # a dangling symlink: the content checks planned the file already
                continue
            file_fixes.append(WriteFile(path, text, text, mode=mode))
            reasons.append(f"{label}{path} {problem}")
        return dir_fixes, file_fixes, reasons, None

    def _daemon_reasons(self, existing: dict, kind: str, devices: set[str], text: str | None) -> list[str]:
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
        return reasons

    def check(self, ctx: Context) -> Check:
        try:
            inventory, slices, text, existing, merged = self._settings(ctx)
        except NvmlUnavailable as exc:
            return blocked(f"cannot discover GPUs to advertise: {exc.reason}")
        kind = ctx.config.gpu.resource
        if not inventory.gpus:
            return blocked("NVML reports no GPU, so there are no slices to advertise")
        why_not = notes(inventory.gpus, ctx.config.gpu)
        if not slices:
            return blocked("no GPU yields a slice: " + "; ".join(why_not))
        devices = known_devices(inventory.gpus)
        actions, reasons = self._runtime_actions(ctx, slices, devices, engine_socket(merged))
        # Only what dockerd reads (daemon.json, its unit) needs the restart below.
        restart_for: list = []
        want_dropin, have_dropin = self._dropin(ctx, merged), ctx.host.read_text(DROPIN)
        exec_start = unit_exec_start(ctx.host)
        if want_dropin:
            exec_start = without_host_flags(exec_start)
        conflicts = restart.conflicting_keys(merged, exec_start)
        if conflicts:
            return blocked(f"{DAEMON_JSON} sets {', '.join(conflicts)}, which docker.service also sets as a "
                           "flag: dockerd refuses to start like that; remove one of the two")
        if existing != merged:
            content = render("daemon.json.j2", settings=merged)
            restart_for += [restart.validate_action(content), WriteFile(DAEMON_JSON, content, text)]
            reasons += self._daemon_reasons(existing, kind, devices, text)
        if want_dropin != have_dropin:
            restart_for.append(WriteFile(DROPIN, want_dropin, have_dropin) if want_dropin else RemoveFile(DROPIN))
            restart_for.append(run_command("systemctl", "daemon-reload"))
            reasons.append(f"drop-in {DROPIN} {'needed' if want_dropin else 'no longer needed'}")
        dir_fixes, file_fixes, owner_reasons, refusal = self._ownership_actions(ctx, want_dropin or have_dropin,
                                                                                actions + restart_for)
        if refusal:
            return blocked(refusal)
        # Directories first: nothing is written into one that someone else can still change.
        actions = [*dir_fixes, *actions, *file_fixes]
        reasons += owner_reasons
        docker_running = system.systemd_running(ctx.host) and system.unit_active(ctx.host, "docker")
        if docker_running:
            restart_needed = bool(restart_for)
            if not restart_needed:
                started, changed = dockerd_start_time(ctx.host), ctx.host.mtime(DAEMON_JSON)
                if started is not None and changed is not None and started + START_TIME_SLACK < changed:
                    reasons.append("dockerd started before daemon.json last changed")
                    restart_needed = True
            if restart_needed:
                refusal = restart.restart_refusal(ctx, merged)
                if refusal:
                    return blocked("; ".join(reasons + [refusal]))
                restart_for.append(restart.restart_action(DAEMON_JSON, text))
                if ctx.options.drain and restart.can_drain(ctx) is None:
                    restart_for = [restart.drain_action(), *restart_for, restart.activate_action()]
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

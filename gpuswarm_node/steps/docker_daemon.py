"""docker-daemon: daemon.json advertises the GPU slices and makes the nvidia runtime the default.

Keys the tool does not own are kept. Docker is restarted only when what it reads changed, or when
the running dockerd started before daemon.json last changed (someone edited it by hand).
"""

from __future__ import annotations

import json
import shlex

from ..engine import (Check, PlannedFile, RemoveFile, WriteFile, blocked, needs_change, ok,
                      run_command)
from ..errors import NvmlUnavailable, StepFailed
from ..host import Host
from ..probes import system
from ..probes.gpu import compute_slices
from ..render import render
from ..system import Context

DAEMON_JSON = "/etc/docker/daemon.json"
DROPIN = "/etc/systemd/system/docker.service.d/gpuswarm-node.conf"
# In systemd's order of precedence: a unit in /etc/systemd/system overrides the packaged one.
DOCKER_UNITS = ("/etc/systemd/system/docker.service", "/lib/systemd/system/docker.service",
                "/usr/lib/systemd/system/docker.service")
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}
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


def merge_settings(existing: dict, kind: str, slices: list[str]) -> dict:
    """existing daemon.json settings with the tool's keys set; everything else kept as it was."""
    merged = dict(existing)
    merged["runtimes"] = {**existing.get("runtimes", {}), "nvidia": NVIDIA_RUNTIME}
    merged["default-runtime"] = "nvidia"
    # Resources of other kinds belong to the operator; ours are replaced as a whole.
    others = [r for r in existing.get("node-generic-resources", []) if r.partition("=")[0] != kind]
    merged["node-generic-resources"] = others + [f"{kind}={s}" for s in slices]
    return merged


def dockerd_exec_start(unit_text: str) -> list[str]:
    for line in unit_text.splitlines():
        if line.strip().startswith("ExecStart=") and line.strip() != "ExecStart=":
            return shlex.split(line.strip()[len("ExecStart="):])
    return []


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
    description = "daemon.json: nvidia default runtime and one generic resource per GPU slice"

    def _settings(self, ctx: Context) -> tuple[str | None, dict, dict]:
        inventory = ctx.inventory()
        slices = compute_slices(inventory.gpus, ctx.config.gpu.slices_per_gpu)
        text, existing = read_daemon_json(ctx.host)
        return text, existing, merge_settings(existing, ctx.config.gpu.resource, slices)

    def _dropin(self, ctx: Context, merged: dict) -> str | None:
        if "hosts" not in merged:
            return None
        unit = next((t for t in map(ctx.host.read_text, DOCKER_UNITS) if t), "")
        argv = dockerd_exec_start(unit)
        if not argv or without_host_flags(argv) == argv:
            return None
        stripped = without_host_flags(argv)
        return render("docker-dropin.conf.j2", dockerd=stripped[0], args=stripped[1:])

    def files(self, ctx: Context) -> list[PlannedFile]:
        _text, _existing, merged = self._settings(ctx)
        files = [PlannedFile(DAEMON_JSON, render("daemon.json.j2", settings=merged))]
        dropin = self._dropin(ctx, merged)
        if dropin:
            files.append(PlannedFile(DROPIN, dropin))
        return files

    def check(self, ctx: Context) -> Check:
        try:
            text, existing, merged = self._settings(ctx)
        except NvmlUnavailable as exc:
            return blocked(f"cannot discover GPUs to advertise: {exc.reason}")
        kind = ctx.config.gpu.resource
        slices = sum(1 for r in merged["node-generic-resources"] if r.partition("=")[0] == kind)
        if not ctx.inventory().gpus:
            return blocked("NVML reports no GPU, so there are no slices to advertise")
        actions: list = []
        reasons = []
        if existing != merged:
            actions.append(WriteFile(DAEMON_JSON, render("daemon.json.j2", settings=merged), text))
            reasons.append(f"{DAEMON_JSON} {'is missing' if text is None else 'differs'}")
        want_dropin, have_dropin = self._dropin(ctx, merged), ctx.host.read_text(DROPIN)
        if want_dropin != have_dropin:
            actions.append(WriteFile(DROPIN, want_dropin, have_dropin) if want_dropin else RemoveFile(DROPIN))
            actions.append(run_command("systemctl", "daemon-reload"))
            reasons.append(f"drop-in {DROPIN} {'needed' if want_dropin else 'no longer needed'}")
        docker_running = system.systemd_running(ctx.host) and system.unit_active(ctx.host, "docker")
        if docker_running:
            if actions:
                actions.append(run_command("systemctl", "restart", "docker", timeout=300,
                                           progress="restarting docker"))
            else:
                started, changed = dockerd_start_time(ctx.host), ctx.host.mtime(DAEMON_JSON)
                if started is not None and changed is not None and started + START_TIME_SLACK < changed:
                    reasons.append("dockerd started before daemon.json last changed")
                    actions.append(run_command("systemctl", "restart", "docker", timeout=300,
                                               progress="restarting docker"))
        if actions:
            return needs_change("; ".join(reasons), *actions)
        return ok(f"{slices} slice(s) advertised as {kind}, default runtime nvidia")

"""Best-effort revert of what setup changed, as a plan of the engine (engine.Plan) built from the
tool's own journal (journal.py).

`plan` is pure: journal entries in, undo records out, newest first, read from each entry's `undo`
object and never from an action's wording. Each record becomes a step whose check says whether it
is still to be undone, so a reset that stopped half-way can run again. Packages are left installed
(other software may depend on them) and said so; everything else is undone.

A reset that restarts Docker (it restores daemon.json) obeys setup's restart rules, as a preflight
check: refused while containers run, unless the operator allows the restart or has the node
drained first (then drain, undo, and make the node active again if it is still in the swarm).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import restart
from .context import Context
from .engine import (Bracket, Call, Check, Plan, Preflight, RemoveFile, Step, blocked, needs_change, ok,
                     run_command, skipped)
from .journal import Undo, keep
from .lifecycle import ActivateStep, DrainStep, can_drain
from . import facts as F
from .probes import osfacts
from .steps import metadata_guard

DAEMON_JSON = "/etc/docker/daemon.json"
# Files dockerd reads: restoring one takes a Docker restart to count.
DOCKER_FILES = (DAEMON_JSON, "/etc/systemd/system/docker.service.d/")
FILE_OPS = ("restore", "remove")
UNIT_DIR = "/etc/systemd/system/"


def undo_of(entry: dict) -> Undo | None:
    """The undo record of a journal entry; entries of versions before undo records were written
    are read from their structured fields (path, backup, argv)."""
    if isinstance(entry.get("undo"), dict):
        return Undo.from_record(entry["undo"])
    kind = entry.get("kind")
    if kind in ("write", "remove"):
        return Undo("restore", entry["path"], entry["backup"]) if entry.get("backup") else \
            Undo("remove", entry["path"]) if kind == "write" else None
    if kind == "mkdir":
        return Undo("rmdir", entry["path"])
    if kind == "run":
        return _legacy_command(entry.get("argv", []))
    if kind == "call" and entry.get("step") in ("swarm-join", "image"):
        return keep(f"{entry.get('action', 'a change')} ({entry['step']}): recorded by an older version without "
                    "what reverses it; undo it by hand")
    return None


def _rmdir(ctx: Context, path: str) -> None:
    """rmdir, clearing the immutable attribute the shared-fs step gives an unmounted mount point
    (chattr +i; rmdir(2) fails with EPERM while it is set)."""
    try:
        os.rmdir(path)
    except PermissionError:
        ctx.host.run(["chattr", "-i", path])
        os.rmdir(path)


def _legacy_command(argv: list[str]) -> Undo | None:
    if argv[:1] == ["mount"]:
        return Undo("umount", argv[-1])
    if argv[:3] == ["usermod", "--append", "--groups"] and len(argv) in (5, 6) and argv[4:-1] in ([], ["--"]):
        return Undo("leave-group", user=argv[-1], group=argv[3])
    if argv[:1] == ["apt-get"] and "install" in argv:
        packages = [a for a in argv[argv.index("install") + 1:] if not a.startswith("-")]
        return keep(f"packages left installed: {' '.join(packages)} (remove with apt-get purge)")
    if argv[:1] == ["groupadd"]:
        return keep(f"group {argv[-1]} left in place (the docker package uses it)")
    if argv[:2] == ["systemctl", "enable"]:
        return keep(f"{argv[-1]} left enabled and running")
    return None


def plan(entries: list[dict]) -> list[Undo]:
    """The undo records, newest first, each once. A file is put back as it was before the tool's
    first change to it (its oldest record), at the place of its newest."""
    oldest: dict[str, Undo] = {}
    for entry in entries:
        undo = undo_of(entry)
        if undo is not None and undo.op in FILE_OPS:
            oldest.setdefault(undo.path, undo)
    out: list[Undo] = []
    for entry in reversed(entries):
        undo = undo_of(entry)
        if undo is None:
            continue
        if undo.op in FILE_OPS:
            undo = oldest[undo.path]
        if undo not in out:  # a repair repeats what setup did
            out.append(undo)
    return out


def describe(undo: Undo, by: str = "setup") -> str:
    return {
        "restore": f"restore {undo.path} from {undo.backup}",
        "remove": f"remove {undo.path} ({by} created it)",
        "rmdir": f"remove directory {undo.path} if empty",
        "umount": f"unmount {undo.path}",
        "leave-group": f"take {undo.user} out of group {undo.group}",
        "remove-image": f"remove image {undo.image}",
        "leave-swarm": "leave the swarm",
        "disable-unit": f"disable {undo.unit}",
        "stop-unit": f"stop {undo.unit}",
        "unguard": "delete the metadata guard's firewall rules",
        "remove-network": f"remove Docker network {undo.network}",
        "remove-service": f"remove Swarm service {undo.service}",
        "keep": undo.note,
    }[undo.op]


def reads_docker(path: str) -> bool:
    return path == DAEMON_JSON or path.startswith(DOCKER_FILES[1])


def restarts_docker(ctx: Context, undo: list[Undo]) -> bool:
    """Whether doing `undo` restarts Docker: a file dockerd reads comes back, and docker runs."""
    return (any(u.op in FILE_OPS and reads_docker(u.path) for u in undo)
            and ctx.fact(F.UNIT_ACTIVE, "docker"))


def refusal(ctx: Context, undo: list[Undo]) -> str | None:
    """Why this reset must not run now, or None: setup's restart rules (restart.restart_refusal)."""
    if not restarts_docker(ctx, undo):
        return None
    return restart.restart_refusal(ctx, command="reset --yes", change="reset restores Docker's settings and")


def _restore(undo: Undo):
    def restore(ctx: Context) -> None:
        source = Path(undo.backup)
        # Bytes: the backup may be bytecode (the runtime wrapper's), not text.
        ctx.host.write_text(undo.path, source.read_bytes(), source.stat().st_mode & 0o7777)
        ctx.touched.add(undo.path)

    return restore


class UndoStep:
    """One undo record as a step: its check says whether the change is still there."""

    def __init__(self, undo: Undo, by: str = "setup") -> None:
        self.undo, self.by = undo, by  # by: the command whose change it reverts (setup, hub init)
        self.name = "kept" if undo.op == "keep" else undo.op
        self.description = describe(undo, by)

    def files(self, ctx: Context) -> list:
        return []

    def check(self, ctx: Context) -> Check:
        u, host, what, by = self.undo, ctx.facts.files, describe(self.undo, self.by), self.by
        if u.op == "keep":
            return skipped(u.note)
        if u.op == "restore":
            backup = Path(u.backup)
            if not backup.is_file():
                return blocked(f"the backup {u.backup} of {u.path} is gone; restore it by hand")
            if host.read_bytes(u.path) == backup.read_bytes():
                return ok(f"{u.path} is as it was before {by}")
            return needs_change(f"{u.path} differs from its backup", Call(what, _restore(u)))
        if u.op == "remove":
            if host.read_bytes(u.path) is None and host.file_status(u.path) is None:
                return ok(f"{u.path} is gone")
            return needs_change(f"{by} created {u.path}", RemoveFile(u.path))
        if u.op == "rmdir":
            status = ctx.fact(F.FILE_STATUS, u.path)
            if status is None or not status.is_dir or status.is_symlink:
                return ok(f"{u.path} is gone")
            if ctx.fact(F.DIR_ENTRIES, u.path):
                return skipped(f"{u.path} holds files now, so it stays")
            return needs_change(f"{by} created {u.path}", Call(what, lambda ctx: _rmdir(ctx, u.path)))
        if u.op == "umount":
            if osfacts.mount_at(ctx.fact(F.MOUNTS), u.path) is None:
                return ok(f"nothing mounted at {u.path}")
            return needs_change(f"{by} mounted {u.path}", run_command("umount", u.path))
        if u.op == "leave-group":
            if u.user not in (ctx.fact(F.GROUP_MEMBERS, u.group) or []):
                return ok(f"{u.user} is not in group {u.group}")
            return needs_change(f"{by} added {u.user} to group {u.group}",
                                run_command("gpasswd", "--delete", u.user, "--", u.group))
        if u.op == "disable-unit":
            if ctx.fact(F.UNIT_FILE_STATE, u.unit) != "enabled":
                return ok(f"{u.unit} is not enabled")
            return needs_change(f"{by} enabled {u.unit}", run_command("systemctl", "disable", u.unit))
        if u.op == "stop-unit":
            # A service setup started (watch) would otherwise run on after its unit file is gone.
            if ctx.fact(F.ACTIVE_STATE, u.unit) not in ("active", "activating", "reloading"):
                return ok(f"{u.unit} is not running")
            return needs_change(f"{by} started {u.unit}", run_command("systemctl", "stop", u.unit))
        if u.op == "unguard":
            # Every rule with the guard's comment, whichever addresses the run that made it guarded.
            deletes = [run_command(program, "-w", "-D", "DOCKER-USER", *words)
                       for program in ("iptables", "ip6tables")
                       for words in metadata_guard.guard_rules(ctx.fact(F.IPTABLES_RULES, program) or "")]
            if not deletes:
                return ok("no metadata guard rule is in DOCKER-USER")
            return needs_change("the metadata guard's rules are in DOCKER-USER", *deletes)
        reason = ctx.docker.unreachable_reason()
        if reason:
            return skipped(f"{reason}, so there is nothing to {what}")
        if u.op == "remove-network":
            from .steps.hub_swarm import NETWORK

            if ctx.fact(NETWORK, u.network) is None:
                return ok(f"network {u.network} is gone")
            return needs_change(f"hub init created network {u.network}",
                                run_command("docker", "network", "rm", "--", u.network))
        if u.op == "remove-service":
            from .steps.hub_jupyterhub import SERVICE_INSPECT

            if ctx.fact(SERVICE_INSPECT, u.service) is None:
                return ok(f"service {u.service} is gone")
            return needs_change(f"{by} created service {u.service}",
                                run_command("docker", "service", "rm", "--", u.service))
        if u.op == "remove-image":
            if not ctx.docker.image_present(u.image):
                return ok(f"image {u.image} is gone")
            return needs_change(f"{by} pulled {u.image}", Call(what, lambda ctx: ctx.docker.remove_image(u.image)))
        if ctx.docker.swarm().state == "inactive":  # leave-swarm
            return ok("this node is in no swarm")
        return needs_change(f"{by} joined this node to a swarm", Call(what, lambda ctx: ctx.docker.leave()))


def _restart(ctx: Context) -> None:
    if ctx.fact(F.UNIT_ACTIVE, "docker"):
        ctx.host.run(["systemctl", "restart", "docker"], timeout=300)
    ctx.outcomes["docker restarted"] = "yes"


class DockerRestartStep:
    name = "restart-docker"
    description = "Docker runs on the files reset restored"

    def files(self, ctx: Context) -> list:
        return []

    def check(self, ctx: Context) -> Check:
        changed = sorted(p for p in ctx.touched if reads_docker(p))
        if not changed:
            return ok("no file Docker reads came back")
        if "docker restarted" in ctx.outcomes:
            return ok(f"systemd reloaded and Docker restarted (if it ran) on {', '.join(changed)}")
        return needs_change(f"{', '.join(changed)} came back",
                            run_command("systemctl", "daemon-reload"),
                            Call("restart docker, if it runs", _restart))


class SystemdReloadStep:
    name = "systemd-reload"
    description = "systemd forgets the unit files reset removed or restored"

    def files(self, ctx: Context) -> list:
        return []

    def check(self, ctx: Context) -> Check:
        changed = sorted(p for p in ctx.touched if p.startswith(UNIT_DIR) and not reads_docker(p))
        if not changed:
            return ok("no unit file came back or went")
        if "systemd reloaded" in ctx.outcomes:
            return ok(f"systemd reloaded on {', '.join(changed)}")
        return needs_change(f"{', '.join(changed)} changed",
                            Call("systemctl daemon-reload", _daemon_reload))


def _daemon_reload(ctx: Context) -> None:
    ctx.host.run(["systemctl", "daemon-reload"])
    ctx.outcomes["systemd reloaded"] = "yes"


def reset_plan(ctx: Context, undo: list[Undo], by: str = "setup") -> Plan:
    """`by`: the command whose journal `undo` comes from (setup; hub init for `hub reset`)."""
    steps: list[Step] = [UndoStep(u, by) for u in undo]
    if any(u.op in FILE_OPS and u.path.startswith(UNIT_DIR) and not reads_docker(u.path) for u in undo):
        steps.append(SystemdReloadStep())
    if any(u.op in FILE_OPS and reads_docker(u.path) for u in undo):
        steps.append(DockerRestartStep())
    items: tuple = tuple(steps)
    if ctx.options.drain and restarts_docker(ctx, undo) and can_drain(ctx) is None:
        items = (Bracket(DrainStep(), tuple(steps), ActivateStep()),)
    return Plan("reset", items, (Preflight("docker-restart", lambda ctx: refusal(ctx, undo)),), best_effort=True)

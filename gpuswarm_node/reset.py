"""Best-effort revert of what setup changed, read from the tool's own journal (journal.py).

`plan` is pure: journal entries in, undo actions out, so the policy is testable as data. Packages
are left installed (other software may depend on them) and said so; everything else is undone.

A reset that restarts Docker (it restores daemon.json) obeys setup's rules: refused while
containers run, unless the operator allows the restart or has the node drained first.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import restart
from .errors import GpuswarmError
from .journal import Journal
from .system import Context

DAEMON_JSON = "/etc/docker/daemon.json"


@dataclass(frozen=True)
class Undo:
    kind: str  # restore, remove, rmdir, umount, run, leave-swarm, remove-image, restart-docker, note
    target: str = ""
    source: str = ""  # backup to restore from
    argv: tuple[str, ...] = ()

    def describe(self) -> str:
        return {
            "restore": f"restore {self.target} from {self.source}",
            "remove": f"remove {self.target} (setup created it)",
            "rmdir": f"remove directory {self.target} if empty",
            "umount": f"unmount {self.target}",
            "run": "run " + " ".join(self.argv),
            "leave-swarm": "leave the swarm",
            "remove-image": f"remove image {self.target}",
            "restart-docker": "reload systemd and restart docker",
            "note": self.target,
        }[self.kind]


@dataclass
class ResetReport:
    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # left in place on purpose
    failed: list[str] = field(default_factory=list)  # tried and could not revert
    notes: list[str] = field(default_factory=list)


def plan(entries: list[dict]) -> list[Undo]:
    undo: list[Undo] = []
    seen_paths: set[str] = set()
    restarts = False
    for entry in reversed(entries):
        kind = entry.get("kind")
        if kind in ("write", "remove"):
            path = entry["path"]
            # The oldest record of a path knows what was there before the tool came; later ones
            # only know the tool's own earlier versions.
            first = next(e for e in entries if e.get("path") == path and e.get("kind") in ("write", "remove"))
            if path in seen_paths:
                continue
            seen_paths.add(path)
            if first.get("backup"):
                undo.append(Undo("restore", path, first["backup"]))
            elif first["kind"] == "write":
                undo.append(Undo("remove", path))
            restarts = restarts or path.startswith((DAEMON_JSON, "/etc/systemd/system/docker"))
        elif kind == "mkdir":
            undo.append(Undo("rmdir", entry["path"]))
        elif kind == "run":
            undo += _undo_command(entry.get("argv", []))
        elif kind == "call":
            undo += _undo_call(entry.get("step", ""), entry.get("action", ""))
    # A repair repeats what setup did; each undo happens once.
    undo = list(dict.fromkeys(undo))
    # Unmount before the mount point goes; leave the swarm before docker restarts with old settings.
    order = {"leave-swarm": 0, "remove-image": 1, "umount": 2}
    undo.sort(key=lambda u: order.get(u.kind, 3))
    if restarts:
        undo.append(Undo("restart-docker"))
    return undo


def restarts_docker(ctx: Context, undo: list[Undo]) -> bool:
    """Whether doing `undo` restarts Docker: only a running docker is restarted (see _apply)."""
    return (any(u.kind == "restart-docker" for u in undo)
            and ctx.host.query(["systemctl", "is-active", "docker"]).stdout.strip() == "active")


def refusal(ctx: Context, undo: list[Undo]) -> str | None:
    """Why this reset must not run now, or None: setup's restart rules (restart.restart_refusal)."""
    if not restarts_docker(ctx, undo):
        return None
    return restart.restart_refusal(ctx, command="reset --yes", change="reset restores Docker's settings and")


def _undo_command(argv: list[str]) -> list[Undo]:
    if argv[:1] == ["mount"]:
        return [Undo("umount", argv[-1])]
    if argv[:3] == ["usermod", "--append", "--groups"] and len(argv) in (5, 6) and argv[4:-1] in ([], ["--"]):
        # Journals of older versions lack the "--" before the user name.
        group, user = argv[3], argv[-1]
        return [Undo("run", argv=("gpasswd", "--delete", user, "--", group))]
    if argv[:1] == ["apt-get"] and "install" in argv:
        packages = [a for a in argv[argv.index("install") + 1:] if not a.startswith("-")]
        return [Undo("note", f"packages left installed: {' '.join(packages)} (remove with apt-get purge)")]
    if argv[:1] == ["groupadd"]:
        return [Undo("note", f"group {argv[-1]} left in place (the docker package uses it)")]
    if argv[:2] == ["systemctl", "enable"]:
        return [Undo("note", f"{argv[-1]} left enabled and running")]
    return []  # restarts and reloads have nothing to undo


def _undo_call(step: str, action: str) -> list[Undo]:
    if step == "swarm-join" and not action.startswith("leave"):
        return [Undo("leave-swarm")]
    if step == "image" and action.startswith("pull "):
        return [Undo("remove-image", action[len("pull "):])]
    return []


def execute(ctx: Context, journal: Journal) -> ResetReport:
    """Undo what the journal records. With --drain, a reset that restarts Docker first drains the
    node through the manager (as setup does) and waits for its tasks to move; a failed drain stops
    the reset before anything is undone."""
    report = ResetReport()
    undo = plan(journal.entries())
    drained = False
    if ctx.options.drain and restarts_docker(ctx, undo):
        why_not = restart.can_drain(ctx)
        if why_not:
            report.notes.append(f"not drained: {why_not}")
        else:
            restart.set_availability(ctx, "drain", wait_for_tasks=True)
            report.notes.append("drained this node through the manager; its tasks moved before Docker restarted")
            drained = True
    for item in undo:
        if item.kind == "note":
            report.kept.append(item.target)
            continue
        try:
            _apply(ctx, item)
            report.done.append(item.describe())
        except (GpuswarmError, OSError) as exc:
            reason = exc.message() if isinstance(exc, GpuswarmError) else str(exc)
            report.failed.append(f"{item.describe()}: {reason}")
    if drained and ctx.docker.unreachable_reason() is None and ctx.docker.swarm().state == "active":
        # Still a member (the journal recorded no join to undo): back in service, as after setup.
        try:
            restart.set_availability(ctx, "active", wait_for_tasks=False)
            report.notes.append("made this node active again through the manager")
        except GpuswarmError as exc:
            report.failed.append(f"make this node active again through the manager: {exc.message()}")
    journal.archive()
    return report


def _apply(ctx: Context, undo: Undo) -> None:
    host = ctx.host
    if undo.kind == "restore":
        host.write_text(undo.target, Path(undo.source).read_bytes())  # text or bytecode, as it was
        shutil.copystat(undo.source, undo.target)
    elif undo.kind == "remove":
        host.remove(undo.target)
    elif undo.kind == "rmdir":
        if os.path.isdir(undo.target) and not os.listdir(undo.target):
            os.rmdir(undo.target)
    elif undo.kind == "umount":
        if os.path.ismount(undo.target):
            host.run(["umount", undo.target])
    elif undo.kind == "run":
        host.run(list(undo.argv))
    elif undo.kind == "leave-swarm":
        if ctx.docker.unreachable_reason() is None and ctx.docker.swarm().state != "inactive":
            ctx.docker.leave()
    elif undo.kind == "remove-image":
        if ctx.docker.unreachable_reason() is None and ctx.docker.image_present(undo.target):
            ctx.docker.remove_image(undo.target)
    elif undo.kind == "restart-docker":
        host.run(["systemctl", "daemon-reload"])
        if host.query(["systemctl", "is-active", "docker"]).stdout.strip() == "active":
            host.run(["systemctl", "restart", "docker"], timeout=300)

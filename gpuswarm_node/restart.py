"""Restarting Docker on a live node: validate first, restart only when allowed, roll back when the
new configuration does not come up healthy.

A restart stops every container on the node (live-restore cannot be used in swarm mode, so the
tool never leaves it on), so it is refused while containers run unless the operator allows it, or
asks to drain the node first. What would keep dockerd from starting (a setting given both as a
flag and in daemon.json, a flag swarm mode refuses) is refused before anything is written.
"""

from __future__ import annotations

import posixpath
import time

from . import facts as F
from .engine import Action, Call
from .errors import StepFailed
from .context import Context
from .lifecycle import can_drain

HEALTHY_WITHIN = 60.0

# dockerd flags whose daemon.json key has another name.
FLAG_KEYS = {"-H": "hosts", "--host": "hosts", "-D": "debug", "-l": "log-level", "-G": "group",
             "-p": "pidfile", "-g": "data-root", "--graph": "data-root", "--add-runtime": "runtimes",
             "--label": "labels", "--dns": "dns", "--registry-mirror": "registry-mirrors",
             "--insecure-registry": "insecure-registries", "--log-opt": "log-opts",
             "--storage-opt": "storage-opts", "--exec-opt": "exec-opts",
             "--default-ulimit": "default-ulimits", "--node-generic-resource": "node-generic-resources"}
# Keys dockerd merges from both places instead of refusing (skipDuplicates in moby's daemon/config).
MERGED_KEYS = frozenset({"runtimes"})
def flag_key(arg: str) -> str | None:
    """The daemon.json key a dockerd argument sets, or None when it is not a flag."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
    return FLAG_KEYS.get(name, name.lstrip("-"))


def conflicting_args(settings: dict, args: list) -> list[tuple[str, object]]:
    """(key, argument) for every argument (with `.text`) that sets a key daemon.json sets too."""
    out = []
    for arg in args:
        key = flag_key(arg.text)
        if key in settings and key not in MERGED_KEYS:
            out.append((key, arg))
    return out


def swarm_incompatible_args(args: list, daemon_json: dict | None = None,
                            version: tuple[int, int] | None = None) -> list[tuple[str, object]]:
    """(why, argument) for every argument (with `.text`) that keeps this node out of swarm mode,
    with daemon.json's settings (`daemon_json`) read together with the flags, as dockerd does
    (swarm_compat.REFUSED holds what each Docker version refuses)."""
    from . import swarm_compat

    flags = swarm_compat.flag_settings([arg.text for arg in args])
    return [(swarm_compat.why(rule), args[index]) for rule, where, index in
            swarm_compat.refused(daemon_json or {}, flags, version) if where == "flag"]


def validate(ctx: Context, content: str) -> None:
    problem = ctx.host.validate_docker_config(content)
    if problem:
        raise StepFailed(f"dockerd rejects the new daemon.json: {problem}; nothing was written.",
                         "Fix the keys it names in /etc/docker/daemon.json, then run setup again.")


def validate_action(content: str) -> Action:
    return Call("validate the new daemon.json with dockerd --validate (where the engine has it)",
                lambda ctx: validate(ctx, content))


def healthy(ctx: Context, within: float = HEALTHY_WITHIN) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ctx.facts.forget()  # each look reads systemd again
        state = ctx.fact(F.ACTIVE_STATE, "docker")
        if state == "active" and ctx.docker.unreachable_reason() is None:
            return True
        if state in ("failed", "inactive"):
            return False  # systemd gave up (or never started it): waiting changes nothing
        time.sleep(1)
    return False


def restart_docker(ctx: Context, units_changed: bool = False) -> None:
    """Restart docker.service; with `units_changed` (its drop-in was written or removed) also
    docker.socket, in the same transaction. A dockerd started without `-H fd://` (the tool's
    drop-in, when daemon.json sets "hosts") makes its own /var/run/docker.sock and removes it when
    it stops, leaving docker.socket listening on a socket no path leads to: a dockerd given that
    socket again (`-H fd://`, the drop-in gone) would answer no one."""
    # docker.service allows 3 starts a minute; a deliberate restart must not be refused because
    # earlier ones (a repair, a rollback) used them up.
    try:
        ctx.host.run(["systemctl", "reset-failed", "docker"], timeout=60)
    except StepFailed:
        pass  # nothing to reset (a unit systemd does not know): the restart says what is wrong
    units = ["docker"]
    if units_changed and ctx.fact(F.UNIT_LOADED, "docker.socket"):
        units = ["docker.socket", "docker"]
    try:
        ctx.host.run(["systemctl", "restart", *units], timeout=300)
    except StepFailed:
        pass  # judged by health afterwards, which also covers a restart that "succeeded" and then died


def restart_with_rollback(ctx: Context, previous: dict[str, str | None], reload: bool = False,
                          within: float = HEALTHY_WITHIN) -> None:
    """Restart Docker; when it does not come up healthy, put back every file in `previous` (its
    content before this run, None: it did not exist), reload systemd when a unit file was among
    them (`reload`), and restart again."""
    restart_docker(ctx, units_changed=reload)
    if healthy(ctx, within):
        return
    ctx.facts.forget()
    log = ctx.fact(F.UNIT_LOG, "docker")
    cause = log.splitlines()[-1] if log else "no log"
    for path, text in previous.items():
        if text is None:
            ctx.host.remove(path)
        else:
            ctx.host.write_text(path, text)
    if reload:
        ctx.host.run(["systemctl", "daemon-reload"])
    restart_docker(ctx, units_changed=reload)
    if not previous:  # nothing of ours changed (dockerd had not read a hand-edited daemon.json)
        back = "a second restart brought it back" if healthy(ctx, within) else "a second restart did not either"
        raise StepFailed(f"Docker did not come up healthy after a restart ({cause}); {back}.",
                         "Check `journalctl -u docker`, fix daemon.json, run setup again.")
    noun = "file" if len(previous) == 1 else "files"
    back = f"Docker is running again on the previous {noun}" if healthy(ctx, within) else \
        f"Docker did not come back on the previous {noun} either"
    raise StepFailed(f"Docker did not come up healthy with the new {' and '.join(previous)} ({cause}); the "
                     f"previous {noun} {'was' if len(previous) == 1 else 'were'} restored"
                     f"{' (and systemd reloaded)' if reload else ''} and {back}.",
                     "Check `journalctl -u docker`, fix daemon.json, run setup again.")


def _label(path: str) -> str:
    return "/".join(path.split("/")[-2:]) if ".service.d/" in path else posixpath.basename(path)


def restart_action(previous: dict[str, str | None], reload: bool = False) -> Action:
    if not previous:
        return Call("restart docker, and report it if it does not come up healthy",
                    lambda ctx: restart_with_rollback(ctx, previous, reload))
    what = " and ".join(map(_label, previous)) + (" (and reload systemd)" if reload else "")
    return Call(f"restart docker, and restore the previous {what} if it does not come up healthy",
                lambda ctx: restart_with_rollback(ctx, previous, reload))


def restart_refusal(ctx: Context, command: str = "setup", change: str = "applying this",
                    effect: str = "restarts Docker, which would stop", verb: str = "restart") -> str | None:
    """Why Docker must not be restarted now, or None. `command` is what the operator runs again
    with --drain or --allow-restart; `change` what restarts Docker, `effect` what it does to the
    containers, `verb` what --allow-restart lets happen (a reboot stops them the same way).
    --drain permits it only where the node can be drained: otherwise the containers would stop
    all the same. (live-restore cannot keep them: setup removes it, since Swarm refuses it.)"""
    if ctx.docker.unreachable_reason() is not None:
        return None
    running = ctx.docker.running_containers()
    if not running or ctx.options.allow_restart:
        return None
    cannot_drain = can_drain(ctx) if ctx.options.drain else None
    if ctx.options.drain and cannot_drain is None:
        return None
    shown = ", ".join(running[:5]) + (f" and {len(running) - 5} more" if len(running) > 5 else "")
    stop = f"{change} {effect} {len(running)} running container(s): {shown}"
    if cannot_drain:
        return f"{stop}; --drain cannot move them ({cannot_drain}): run {command} --allow-restart to {verb} anyway"
    return f"{stop}; run {command} --drain to move swarm tasks off first, or --allow-restart to {verb} anyway"

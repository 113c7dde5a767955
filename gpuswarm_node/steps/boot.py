"""boot: setup runs again at every boot, and, where the config allows, reboots once by itself.

A cloud worker is made by its user-data and thrown away: nobody logs in to run setup after the
NVIDIA driver's reboot, nor to repair what a reboot undid. So setup installs
`gpuswarm-node-boot.service`, enabled, which runs `gpuswarm-node setup` after the network is online
and after Docker (when there is one) at every boot, with the configuration of the last setup run:
its effective values (file, GPUSWARM_* environment, --set, and node.user resolved from SUDO_USER),
written to BOOT_CONFIG, root's, 0600. The unit is `Type=exec`, so the boot does not wait for it.

When a run ends with a reboot required (nvidia-driver installed a driver) and `node.reboot` is
`auto`, `reboot_if_allowed` reboots the machine, once: it writes REBOOT_MARKER first, and while the
marker is there no run reboots again; a run that converges removes it. So a driver that
still does not load after its reboot stops there, blocked, instead of rebooting in a loop.

A reboot stops every container as a Docker restart does, so it obeys the same rules
(restart.restart_refusal): while containers (notebooks) run on the node it is refused, unless
setup was given --allow-restart, or --drain where the node can be drained: then the node is
drained through the manager first, the marker records it, and the run that converges after the
reboot makes the node active again. A node that does not converge stays drained: it cannot serve.
"""

from __future__ import annotations

import os
import re
import time

from ..config import LAST_SETUP_CONFIG, from_tables, tables, to_toml, tomllib
from ..context import Context
from .. import facts as F
from ..engine import Action, Check, PlannedFile, blocked, needs_change, ok, run_command, write_wanted
from ..journal import Undo
from ..render import render

PROGRAM = "/usr/local/bin/gpuswarm-node"  # setup.sh's link: it stays across upgrades
# Set by setup.sh's dry run, which runs a temporary copy of the tool before PROGRAM exists.
INSTALLING_ENV = "GPUSWARM_INSTALLING"
UNIT_NAME = "gpuswarm-node-boot.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
STATE_DIR = "/var/lib/gpuswarm-node"
BOOT_CONFIG = str(LAST_SETUP_CONFIG)  # status, setup and leave read it where no config is named
REBOOT_MARKER = f"{STATE_DIR}/auto-reboot"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def unit_text() -> str:
    return render("gpuswarm-node-boot.service.j2", program=PROGRAM, config=BOOT_CONFIG, unit=UNIT_NAME)


def recorded_user(ctx: Context) -> str:
    """node.user in the boot config an earlier run wrote, or ""."""
    try:
        return str(tomllib.loads(ctx.fact(F.FILE_TEXT, BOOT_CONFIG) or "").get("node", {}).get("user", ""))
    except tomllib.TOMLDecodeError:
        return ""


def boot_config_text(ctx: Context) -> str:
    """The run's effective configuration as TOML (keys that differ from their defaults), with the
    node's user resolved: there is no SUDO_USER at boot. A run that knows no user (root's own
    `status`, cloud-init) keeps the one the boot config holds, so it neither finds the node
    unconverged nor drops the user the boot runs need."""
    data = tables(ctx.config)
    user = ctx.config.node_user or recorded_user(ctx)
    if user:
        data.setdefault("node", {})["user"] = user
        # In the configuration's own order (its sections, then each section's keys), as a run
        # that loads this file writes it: the boot runs then find it unchanged.
        data = tables(from_tables(data, origin=BOOT_CONFIG))
    header = (f"# Written by gpuswarm-node setup: the configuration of its last run, which {UNIT_NAME}\n"
              "# runs setup with at every boot. Run setup with your config to change it; edits here are undone.\n")
    return header + to_toml(data)


def recorded_config_problem(recorded: str, wanted: str) -> tuple[str | None, list[str]]:
    """Whether a boot config an earlier setup wrote (`recorded`, TOML text) can drive the boot
    runs: (why not, or None; the `section.key` names in which it differs from `wanted`, this
    run's boot config text). A config that parses and validates is usable whatever its values."""
    from ..errors import GpuswarmError

    try:
        data = tomllib.loads(recorded)
        from_tables(data, origin=BOOT_CONFIG)
    except tomllib.TOMLDecodeError as exc:
        return f"is not valid TOML ({exc}): run setup to write it again", []
    except GpuswarmError as exc:
        return f"is not a valid configuration ({exc}): run setup to write it again", []
    mine = tomllib.loads(wanted)
    names = sorted({f"{section}.{key}" for section in set(data) | set(mine)
                    for key in set(data.get(section, {})) | set(mine.get(section, {}))
                    if data.get(section, {}).get(key) != mine.get(section, {}).get(key)})
    return None, names


def untrusted_program(ctx: Context, runs: str) -> str | None:
    """Why a unit must not run PROGRAM as root (`runs`: when it would, e.g. "at every boot"), with
    the fix; None when PROGRAM and every directory above what it resolves to are root's alone."""
    problem = ctx.fact(F.TRUSTED_PATH_PROBLEM, PROGRAM)
    if not problem:
        return None
    return (f"{problem}, so whoever can change it would run code as root {runs}; make it and the directories above "
            "it root's and writable by root alone (or reinstall with setup.sh under a root-owned prefix), then run "
            "setup again")


class BootStep:
    name = "boot"
    description = f"setup runs again at every boot ({UNIT_NAME})"

    def files(self, ctx: Context) -> list[PlannedFile]:
        # The configuration first: the unit names it.
        return [PlannedFile(BOOT_CONFIG, boot_config_text(ctx), 0o600), PlannedFile(UNIT, unit_text())]

    def check(self, ctx: Context) -> Check:
        actions: list[Action] = []
        reasons: list[str] = []
        notes: list[str] = []
        if not ctx.fact(F.EXISTS, PROGRAM):
            if not os.environ.get(INSTALLING_ENV):
                return blocked(f"{PROGRAM} is missing, so a unit could not run setup at boot: install the tool "
                               "with setup.sh (it links it there), then run setup again")
            # setup.sh's dry run, from a temporary copy: its real run links the tool there first.
            reasons.append(f"setup.sh links {PROGRAM} before setup runs")
        else:
            # The unit runs the program as root at every boot: present is not enough, it must be
            # something only root can change (the file it resolves to and every directory above).
            untrusted = untrusted_program(ctx, "at every boot")
            if untrusted:
                return blocked(untrusted)
        for write in filter(None, (write_wanted(ctx, f) for f in self.files(ctx))):
            # The boot config is text, so what it held is text (None: no file).
            if write.path == BOOT_CONFIG and isinstance(write.before, str) and ctx.options.diagnose:
                # status: the boot runs use the recorded configuration, so it only has to be usable.
                problem, differs = recorded_config_problem(write.before, boot_config_text(ctx))
                if problem is None:
                    if differs:
                        notes.append(f"{BOOT_CONFIG} differs from this run's configuration in {', '.join(differs)}; "
                                     "a setup with this configuration would record it")
                    continue
                actions.append(write)
                reasons.append(f"{BOOT_CONFIG} {problem}")
                continue
            actions.append(write)
            if write.path == UNIT:
                actions.append(run_command("systemctl", "daemon-reload"))
            what = "does not hold this run's configuration" if write.path == BOOT_CONFIG else "is not as setup writes it"
            reasons.append(f"{write.path} {what}" if write.before is not None else f"no {write.path}")
        if ctx.fact(F.UNIT_FILE_STATE, UNIT_NAME) != "enabled":
            # Enabled, not started: started now it would run a second setup beside this one.
            actions.append(run_command("systemctl", "enable", UNIT_NAME, undo=Undo("disable-unit", unit=UNIT_NAME)))
            reasons.append(f"{UNIT_NAME} is not enabled")
        if actions:
            return needs_change("; ".join(reasons), *actions)
        return ok(f"{UNIT_NAME} runs setup at every boot with the configuration of the last run ({BOOT_CONFIG})"
                  + "".join(f"; {note}" for note in notes))


def reboot_if_allowed(report, ctx: Context) -> str | None:
    """After a setup run (`report`, engine.RunReport): reboot the machine when a step requires it,
    node.reboot is "auto", the boot unit will resume setup, no earlier run rebooted for the
    same cause (REBOOT_MARKER), and no container runs here (or --allow-restart, or --drain and the
    node was drained first). Removes the marker when the run converged, making a node the reboot
    drained active again. Returns the line to print, or None when there is nothing to say."""
    host = ctx.host
    marker = host.read_text(REBOOT_MARKER)
    if not report.reboot_required:
        if marker is not None and report.ok:  # converged: the reboot did its work
            line = _activate_after_reboot(ctx, marker)
            host.remove(REBOOT_MARKER)
            return line
        return None
    if ctx.config.node.reboot != "auto":
        return None
    if marker is not None:
        return (f"not rebooting again: setup rebooted this machine once already for this ({marker.strip()}) and a "
                f"reboot is still required; see the steps' details, fix the cause, then remove {REBOOT_MARKER} "
                "to allow one more automatic reboot")
    boot = next((s for s in report.steps if s.name == "boot"), None)
    if boot is None or boot.state.value != "ok":
        return (f"not rebooting by itself: {UNIT_NAME} is not in place to resume setup after the reboot "
                "(the boot step is not ok); reboot, then run setup again")
    from .. import restart
    from ..errors import GpuswarmError
    from ..lifecycle import activate, drain_and_wait

    refusal = restart.restart_refusal(ctx, "setup", "the automatic reboot (node.reboot = auto)", "would stop",
                                      "reboot")
    if refusal:
        return f"not rebooting by itself: {refusal}"
    drained = ""
    if ctx.options.drain and not ctx.options.allow_restart and ctx.docker.unreachable_reason() is None \
            and ctx.docker.running_containers():
        try:
            drain_and_wait(ctx)
        except GpuswarmError as exc:
            try:
                activate(ctx)  # a drain that timed out leaves the node drained: undo it, nothing rebooted
            except (GpuswarmError, KeyError):
                pass
            return f"not rebooting by itself: draining this node first failed: {exc.message()}"
        drained = f", drained {ctx.outcomes['drained']}"
    boot_id = (host.read_text(BOOT_ID) or "").strip()
    host.write_text(REBOOT_MARKER, f"boot {boot_id or 'unknown'}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                    f"{drained}\n", mode=0o600)
    host.run(["systemctl", "reboot"])
    return (f"rebooting now (node.reboot = auto) for {', '.join(s.name for s in report.steps if s.reboot_required)}; "
            f"{UNIT_NAME} runs setup again after the reboot"
            + (" and makes this node active again once it converges" if drained else ""))


def _activate_after_reboot(ctx: Context, marker: str) -> str | None:
    """Make the node an automatic reboot drained (REBOOT_MARKER's "drained NODE_ID") active again;
    the line to print, or None when it was not drained."""
    match = re.search(r", drained (\S+)", marker)
    if not match:
        return None
    from ..errors import GpuswarmError
    from ..lifecycle import activate

    ctx.outcomes["drained"] = match.group(1)
    try:
        activate(ctx)
    except GpuswarmError as exc:
        return (f"could not make node {match.group(1)} active again after the automatic reboot: {exc.message()} "
                f"Run `docker node update --availability active {match.group(1)}` on the manager.")
    return f"node {match.group(1)} is active again: the automatic reboot that drained it is done"

"""watch: `gpuswarm-node watch` runs as a service (gpuswarm-node-watch.service), so a node that
cannot serve takes itself out of the swarm's placement and comes back by itself (watch.py).

The unit runs watch with the configuration of the last setup run (the boot step's BOOT_CONFIG),
`Type=simple`, restarted always, after Docker. Setup installs it, enables it and starts it (unlike
the boot unit, nothing else runs it); a changed unit is restarted. `status` shows the unit and
watch's last verdict from watch.STATE, a small JSON file: no NVML, no manager.
"""

from __future__ import annotations

from .. import facts as F
from ..context import Context
from ..engine import Action, Check, PlannedFile, blocked, needs_change, ok, run_command, skipped, write_wanted
from ..journal import Undo
from ..render import render
from ..watch import STATE, parse_state, utc
from .boot import BOOT_CONFIG, PROGRAM, untrusted_program

UNIT_NAME = "gpuswarm-node-watch.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"


def unit_text() -> str:
    return render("gpuswarm-node-watch.service.j2", program=PROGRAM, config=BOOT_CONFIG)


def verdict_line(text: str | None) -> tuple[str, dict]:
    """watch's last verdict from STATE's text, for a person and for --json: ("", {}) when watch
    has written none yet."""
    verdict, data = parse_state(text)
    if not data:
        return "", {}
    checked = utc(float(data.get("checked_at") or 0))
    observed = data.get("observed") or {}
    if verdict.health == "fault":
        who = "by watch" if verdict.drained_by_watch else "by an operator, left so"
        line = (f"last verdict fault ({verdict.reason}) since {utc(verdict.since)}, node drained {who}; "
                f"at {checked}: {observed.get('detail', '')}")
    else:
        line = f"last verdict ok at {checked}"
        if observed.get("reason") not in (None, "ok"):
            line += f" (seen: {observed.get('detail', '')})"
    out = {"watch_verdict": verdict.health, "watch_reason": verdict.reason, "watch_checked_at": checked}
    # The cloud's notice watch acts on (watch.NoticeState), and why notices could not be read.
    raw = data.get("notice")
    notice: dict = raw if isinstance(raw, dict) else {}
    seen: dict = notice["seen"] if isinstance(notice.get("seen"), dict) else {}
    if seen:
        done = "the node left the swarm" if notice.get("left") else "node paused" if notice.get("paused") else "noted"
        line += f"; cloud notice: {seen.get('detail', '')} ({done})"
        out["watch_notice"] = str(seen.get("reason", ""))
    if notice.get("problem"):
        line += f"; cloud notices not read: {notice['problem']}"
    return line, out


class WatchStep:
    name = "watch"
    description = f"the node drains itself while it cannot serve ({UNIT_NAME})"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return [PlannedFile(UNIT, unit_text())] if ctx.config.swarm.manager else []

    def check(self, ctx: Context) -> Check:
        if not ctx.config.swarm.manager:
            return skipped("no swarm.manager: there is no manager to drain this node through")
        if not ctx.fact(F.EXISTS, PROGRAM):
            return blocked(f"{PROGRAM} is missing, so the unit could not run watch: install the tool with "
                           "setup.sh (it links it there), then run setup again")
        # The unit runs the program as root, restarted always: as for the boot unit, it must be
        # something only root can change (the file it resolves to and every directory above).
        untrusted = untrusted_program(ctx, f"in {UNIT_NAME}")
        if untrusted:
            return blocked(untrusted)
        actions: list[Action] = []
        reasons: list[str] = []
        write = write_wanted(ctx, self.files(ctx)[0])
        if write is not None:
            actions += [write, run_command("systemctl", "daemon-reload")]
            reasons.append(f"{UNIT} is not as setup writes it" if write.before is not None else f"no {UNIT}")
        if ctx.fact(F.UNIT_FILE_STATE, UNIT_NAME) != "enabled":
            actions.append(run_command("systemctl", "enable", UNIT_NAME, undo=Undo("disable-unit", unit=UNIT_NAME)))
            reasons.append(f"{UNIT_NAME} is not enabled")
        active = ctx.fact(F.ACTIVE_STATE, UNIT_NAME) == "active"
        if write is not None or not active:
            # A changed unit runs its new command only once restarted.
            actions.append(run_command("systemctl", "restart", UNIT_NAME, undo=Undo("stop-unit", unit=UNIT_NAME)))
            if not active:
                reasons.append(f"{UNIT_NAME} is not running")
        line, data = verdict_line(ctx.fact(F.FILE_TEXT, STATE))
        if actions:
            return needs_change("; ".join(reasons), *actions)
        return ok(f"{UNIT_NAME} runs; " + (line or f"no verdict yet ({STATE})"), data=data)

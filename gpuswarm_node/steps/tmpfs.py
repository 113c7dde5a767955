"""tmpfs: a RAM-backed scratch filesystem of a fraction of physical memory, kept across reboots."""

from __future__ import annotations

from ..engine import Call, Check, MakeDir, PlannedFile, WriteFile, blocked, needs_change, ok, run_command
from ..errors import StepFailed
from ..probes import system
from ..render import render
from ..system import Context

FSTAB = "/etc/fstab"


def human(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def size_mib(ctx: Context) -> int:
    return int(system.mem_total_bytes(ctx.host) * ctx.config.tmpfs.fraction) // 2**20


def fstab_mount_point(line: str) -> str | None:
    fields = line.split()
    if not fields or fields[0].startswith("#") or len(fields) < 2:
        return None
    return fields[1].replace("\\040", " ").rstrip("/") or "/"


def desired_fstab(current: str, entry: str, path: str) -> str:
    """The current fstab with every entry for `path` replaced by exactly one `entry`."""
    out, placed = [], False
    for line in current.splitlines():
        if fstab_mount_point(line) == path.rstrip("/"):
            if not placed:
                out.append(entry)
                placed = True
            continue
        out.append(line)
    if not placed:
        out.append(entry)
    return "\n".join(out) + "\n"


def _verify(ctx: Context, entry: str) -> None:
    problem = ctx.host.verify_fstab(entry + "\n")
    if problem:
        raise StepFailed(f"the new {FSTAB} entry `{entry}` does not verify: {problem}; {FSTAB} was not changed.",
                         "Check tmpfs.path and tmpfs.fraction.")


class TmpfsStep:
    name = "tmpfs"
    description = "tmpfs of a fraction of RAM mounted and in /etc/fstab"

    def _entry(self, ctx: Context, mib: int) -> str:
        # nofail: a broken entry must never drop the machine into emergency mode at boot.
        options = f"size={mib}m,mode=1777,nofail"
        return render("fstab-tmpfs.j2", path=ctx.config.tmpfs.path, options=options).rstrip("\n")

    def files(self, ctx: Context) -> list[PlannedFile]:
        current = ctx.host.read_text(FSTAB) or ""
        entry = self._entry(ctx, size_mib(ctx))
        return [PlannedFile(FSTAB, desired_fstab(current, entry, ctx.config.tmpfs.path))]

    def check(self, ctx: Context) -> Check:
        path = ctx.config.tmpfs.path
        want_mib = size_mib(ctx)
        entry = self._entry(ctx, want_mib)
        current = ctx.host.read_text(FSTAB)
        wanted = desired_fstab(current or "", entry, path)
        mounted = system.mount_at(ctx.host, path)
        if mounted and mounted.fstype != "tmpfs":
            return blocked(f"{path} already holds a {mounted.fstype} filesystem; set tmpfs.path to a free mount point")

        actions, reasons = [], []
        if not ctx.host.exists(path):
            actions.append(MakeDir(path))
        if (current or "") != wanted:
            # Checked before it is written: a bad line in fstab can stop the next boot.
            actions.append(Call(f"verify the new {FSTAB} entry with findmnt --verify",
                                lambda ctx: _verify(ctx, entry)))
            actions.append(WriteFile(FSTAB, wanted, current))
            reasons.append(f"{FSTAB} lacks the entry" if current is None or path not in current
                           else f"{FSTAB} entry for {path} differs")
            if system.systemd_running(ctx.host):
                actions.append(run_command("systemctl", "daemon-reload"))
        if mounted is None:
            actions.append(run_command("mount", path))
            reasons.append(f"nothing mounted at {path}")
        elif mounted.options.get("size") != f"{want_mib * 1024}k":
            actions.append(run_command("mount", "-o", f"remount,size={want_mib}m", path))
            reasons.append(f"mounted size is {mounted.options.get('size', 'unknown')}, want {want_mib * 1024}k")
        if actions:
            return needs_change("; ".join(reasons) or f"{path} is missing", *actions)
        return ok(f"{human(want_mib * 2**20)} tmpfs at {path}, in {FSTAB}")

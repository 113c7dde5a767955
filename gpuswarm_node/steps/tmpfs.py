"""tmpfs: a RAM-backed scratch filesystem of a fraction of physical memory, kept across reboots."""

from __future__ import annotations

from ..engine import Action, Call, Check, MakeDir, PlannedFile, WriteFile, blocked, needs_change, ok, run_command, skipped
from ..errors import StepFailed
from .. import facts as F
from ..probes import osfacts
from ..render import render
from ..context import Context
from ..fstab import FSTAB, desired_fstab, has_entry
from ..journal import Undo

# A size=0 tmpfs has no limit at all (tmpfs(5)): never render less than this.
MIN_MIB = 1


def human(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def size_bytes(ctx: Context) -> int:
    return int(ctx.fact(F.MEMORY_BYTES) * ctx.config.tmpfs.fraction)


def size_mib(ctx: Context) -> int:
    return size_bytes(ctx) // 2**20


def _verify(ctx: Context, entry: str) -> None:
    problem = ctx.host.verify_fstab(entry + "\n")
    if problem:
        raise StepFailed(f"the new {FSTAB} entry `{entry}` does not verify: {problem}; {FSTAB} was not changed.",
                         "Check tmpfs.path and tmpfs.fraction.")


def mount_point_problem(ctx: Context, path: str, mounted: bool) -> str | None:
    """Why a tmpfs must not be mounted at `path`, or None. mount(8) follows symlinks, so a link on
    the way could put the tmpfs anywhere (over /etc), and mountinfo would name another path, never
    this one: mounted again on every run. A directory that holds files would have them hidden."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:depth])
        status = ctx.fact(F.FILE_STATUS, prefix)
        if status is None:
            return None  # the rest is created by the step, as plain directories
        if status.is_symlink:
            return (f"{prefix} is a symlink, and mount would follow it to another directory; set tmpfs.path to the "
                    "directory it points to")
        if not status.is_dir:
            return f"{prefix} is not a directory; set tmpfs.path to a directory of its own"
    if not mounted:
        held = ctx.fact(F.DIR_ENTRIES, path)
        if held:
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            return (f"{path} is a directory that holds files ({shown}), and a tmpfs mounted over it would hide them; "
                    "set tmpfs.path to an empty or new directory, or move the files away")
    return None


class TmpfsStep:
    name = "tmpfs"
    description = "tmpfs of a fraction of RAM mounted and in /etc/fstab"

    def _entry(self, ctx: Context, mib: int) -> str:
        # nofail: a broken entry must never drop the machine into emergency mode at boot.
        options = f"size={mib}m,mode=1777,nofail"
        return render("fstab-tmpfs.j2", path=ctx.config.tmpfs.path, options=options).rstrip("\n")

    def files(self, ctx: Context) -> list[PlannedFile]:
        if not ctx.config.tmpfs.enabled:
            return []
        mib = size_mib(ctx)
        if mib < MIN_MIB:
            return []  # the step is blocked: setup writes nothing (a size=0m line would be unlimited)
        current = ctx.fact(F.FILE_TEXT, FSTAB) or ""
        entry = self._entry(ctx, mib)
        return [PlannedFile(FSTAB, desired_fstab(current, entry, ctx.config.tmpfs.path), 0o644)]

    def check(self, ctx: Context) -> Check:
        path = ctx.config.tmpfs.path
        if not ctx.config.tmpfs.enabled:
            # Turning it off changes nothing on the machine: what an earlier run set up is reset's to undo.
            return skipped(f"tmpfs.enabled is false, so no tmpfs is kept (an {FSTAB} entry or mount an earlier "
                           "run made stays until `gpuswarm-node reset`)")
        want_mib = size_mib(ctx)
        if want_mib < MIN_MIB:
            return blocked(f"tmpfs.fraction {ctx.config.tmpfs.fraction} of {human(ctx.fact(F.MEMORY_BYTES))} "
                           f"RAM is {size_bytes(ctx)} bytes, under the {MIN_MIB} MiB minimum (a size=0m tmpfs would "
                           "have no limit at all); raise tmpfs.fraction")
        entry = self._entry(ctx, want_mib)
        current = ctx.fact(F.FILE_TEXT, FSTAB)
        mounted = osfacts.mount_at(ctx.fact(F.MOUNTS), path)
        if mounted and mounted.fstype != "tmpfs":
            return blocked(f"{path} already holds a {mounted.fstype} filesystem; set tmpfs.path to a free mount point")
        problem = mount_point_problem(ctx, path, mounted is not None)
        if problem:
            return blocked(problem)

        actions: list[Action] = []
        reasons: list[str] = []
        if not ctx.fact(F.EXISTS, path):
            actions.append(MakeDir(path))
        fstab = self.files(ctx)[0]
        if (current or "") != fstab.content:
            # Checked before it is written: a bad line in fstab can stop the next boot.
            actions.append(Call(f"verify the new {FSTAB} entry with findmnt --verify",
                                lambda ctx: _verify(ctx, entry)))
            actions.append(WriteFile(FSTAB, fstab.content, current, fstab.mode))
            reasons.append(f"{FSTAB} entry for {path} differs" if has_entry(current or "", path)
                           else f"{FSTAB} lacks the entry")
            if ctx.fact(F.SYSTEMD_RUNNING):
                actions.append(run_command("systemctl", "daemon-reload"))
        if mounted is None:
            actions.append(run_command("mount", path, undo=Undo("umount", path=path)))
            reasons.append(f"nothing mounted at {path}")
        elif mounted.options.get("size") != f"{want_mib * 1024}k":
            actions.append(run_command("mount", "-o", f"remount,size={want_mib}m", path))
            reasons.append(f"mounted size is {mounted.options.get('size', 'unknown')}, want {want_mib * 1024}k")
        if actions:
            return needs_change("; ".join(reasons) or f"{path} is missing", *actions)
        return ok(f"{human(want_mib * 2**20)} tmpfs at {path}, in {FSTAB}")

"""shared-fs: the shared filesystem every worker mounts (NFS; AWS EFS serves NFS 4.1), kept across
reboots. Notebook servers bind its directories (hub-config's `volumes`), and a worker without them
refuses their tasks, so it runs before the node joins the swarm.

The options are the ones AWS documents for mounting EFS with the NFS client ("Mounting EFS file
systems using the NFS client", recommended NFS mount options): nfsvers=4.1, rsize=1048576,
wsize=1048576, hard, timeo=600, retrans=2, noresvport; plus nofail and _netdev, so that a share that
does not answer at boot never stops the boot, and systemd mounts it after the network is up.

Every share is mounted nosuid,nodev, whatever the config adds (config.py refuses suid, dev and
defaults): any notebook's root can write a setuid-root file or a device node onto the share, and
without these flags any local user of any worker could run or open it on the host. A mount that
lacks them (mounted by hand, or before this rule) is remounted with them.
"""

from __future__ import annotations

from ..config import SharedMount
from ..engine import Call, Check, MakeDir, PlannedFile, WriteFile, blocked, needs_change, ok, run_command, skipped
from ..errors import StepFailed
from ..journal import Undo
from .. import facts as F
from ..probes import osfacts
from ..render import render
from ..context import Context
from . import apt
from ..fstab import FSTAB, desired_fstab, has_entry
from ..shared_facts import NFS_CLIENT_PACKAGE as PACKAGE

FSTYPE = "nfs4"
EFS_OPTIONS = ("nfsvers=4.1", "rsize=1048576", "wsize=1048576", "hard", "timeo=600", "retrans=2", "noresvport")
BOOT_OPTIONS = ("nofail", "_netdev")
# Per-mount flags every share has on every worker (mount(8): nosuid ignores set-user-ID and
# set-group-ID bits and file capabilities; nodev does not interpret device nodes).
SECURITY_OPTIONS = ("nosuid", "nodev")
# A hard mount whose server is gone blocks every stat for ever: a check gives it this long.
STAT_TIMEOUT = 10


def options(mount: SharedMount) -> str:
    always = [*EFS_OPTIONS, *BOOT_OPTIONS, *SECURITY_OPTIONS]
    extra = [o for o in mount.options.split(",") if o and o not in always]
    return ",".join([*always, *extra])


def entry(mount: SharedMount) -> str:
    return render("fstab-nfs.j2", source=mount.source, path=mount.path, fstype=FSTYPE,
                  options=options(mount)).rstrip("\n")


def wanted_fstab(current: str, mounts: tuple[SharedMount, ...]) -> str:
    text = current
    for mount in mounts:
        text = desired_fstab(text, entry(mount), mount.path)
    return text


def parse_answer(result, _path: str) -> str | None:
    """Why `stat --file-system` under `timeout` failed (a stale NFS handle, a server that is gone),
    or None when the filesystem answered."""
    if result.ok:
        return None
    if result.returncode == 124:
        return f"does not answer within {STAT_TIMEOUT} s (is the NFS server reachable?)"
    said = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return said.split(": ")[-1] if ": " in said else said


# Asked with a time limit, as a hard mount would block for ever.
FILESYSTEM_PROBLEM = F.fact("filesystem_problem", F.COMMAND,
                            lambda path: ["timeout", str(STAT_TIMEOUT), "stat", "--file-system", "--format=%T", path],
                            parse_answer)


def mount_point_problem(ctx: Context, path: str) -> str | None:
    """Why `path` cannot be a mount point: mount(8) follows a symlink on the way, and mountinfo
    would name another path, so it would be mounted again on every run."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:depth])
        status = ctx.fact(F.FILE_STATUS, prefix)
        if status is None:
            return None
        if status.is_symlink:
            return f"{prefix} is a symlink, and mount would follow it; give the mount the directory it points to"
        if not status.is_dir:
            return f"{prefix} is not a directory"
    return None


def _verify(ctx: Context, entries: list[str]) -> None:
    problem = ctx.host.verify_fstab("\n".join(entries) + "\n")
    if problem:
        raise StepFailed(f"the new {FSTAB} entries for the shared filesystem do not verify: {problem}; {FSTAB} was "
                         "not changed.", "Check [[shared.mounts]].")


class SharedFsStep:
    name = "shared-fs"
    description = "the shared filesystem's NFS mounts mounted and in /etc/fstab"

    def files(self, ctx: Context) -> list[PlannedFile]:
        mounts = ctx.config.shared.mounts
        if not mounts:
            return []
        return [PlannedFile(FSTAB, wanted_fstab(ctx.fact(F.FILE_TEXT, FSTAB) or "", mounts))]

    def check(self, ctx: Context) -> Check:
        mounts = ctx.config.shared.mounts
        if not mounts:
            return skipped("no [[shared.mounts]] configured, so no shared filesystem is kept")
        actions, reasons, remounts = [], [], []
        if not ctx.fact(F.PACKAGE_INSTALLED, PACKAGE):
            actions += [apt.update(ctx), apt.install(ctx, PACKAGE)]
            reasons.append(f"{PACKAGE} (the NFS client) is not installed")
        current = ctx.fact(F.FILE_TEXT, FSTAB)
        wanted = self.files(ctx)[0].content
        for mount in mounts:
            problem = mount_point_problem(ctx, mount.path)
            if problem:
                return blocked(problem)
            mounted = osfacts.mount_at(ctx.fact(F.MOUNTS), mount.path)
            if mounted is not None and (not mounted.fstype.startswith("nfs") or mounted.source != mount.source):
                return blocked(f"{mount.path} holds {mounted.fstype} {mounted.source}, not {mount.source}; unmount "
                               f"it (umount {mount.path}) or give the share another path, then run setup again")
            if not ctx.fact(F.EXISTS, mount.path):
                actions.append(MakeDir(mount.path))
            if mounted is None:
                reasons.append(f"nothing mounted at {mount.path}")
                remounts.append(run_command("mount", mount.path, timeout=120, progress=f"mounting {mount.path}",
                                           undo=Undo("umount", path=mount.path)))
                continue
            missing = [o for o in SECURITY_OPTIONS if o not in mounted.mount_options]
            stale = ctx.fact(FILESYSTEM_PROBLEM, mount.path)
            if missing and not stale:
                reasons.append(f"{mount.path} is mounted without {','.join(missing)}")
                remounts.append(run_command("mount", "-o", "remount," + ",".join(SECURITY_OPTIONS), mount.path,
                                            timeout=120, progress=f"remounting {mount.path}"))
            if stale:
                reasons.append(f"{mount.source} at {mount.path} is stale: {stale}")
                # Lazy: a hung hard mount cannot be unmounted otherwise; the next mount is fresh.
                remounts += [run_command("umount", "--lazy", mount.path),
                             run_command("mount", mount.path, timeout=120, progress=f"mounting {mount.path}",
                                         undo=Undo("umount", path=mount.path))]
        if (current or "") != wanted:
            entries = [entry(m) for m in mounts]
            actions.append(Call(f"verify the new {FSTAB} entries with findmnt --verify",
                                lambda ctx: _verify(ctx, entries)))
            actions.append(WriteFile(FSTAB, wanted, current))
            lines = (current or "").splitlines()
            differs = [m.path for m in mounts if has_entry(current or "", m.path) and entry(m) not in lines]
            reasons.insert(0, f"{FSTAB} entry for {', '.join(differs)} differs" if differs
                           else f"{FSTAB} lacks entries for the shared filesystem")
            if ctx.fact(F.SYSTEMD_RUNNING):
                actions.append(run_command("systemctl", "daemon-reload"))
        actions += remounts
        if actions:
            return needs_change("; ".join(reasons), *actions)
        shown = ", ".join(f"{m.source} at {m.path}" + (" (read-only)" if m.read_only else "") for m in mounts)
        return ok(f"{shown}: mounted nosuid,nodev, answering, in {FSTAB}")

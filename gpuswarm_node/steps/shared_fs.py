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

Three rules keep a share from hanging the tool or lying to notebooks:

- every read of a share's path (its mount point and the directories on the way, its statfs) runs in
  a child process with a time limit, abandoned when the kernel holds it (gpuswarm_node.bounded: a
  hard mount whose server is gone blocks stat(2) in D state for ever); a path that does not answer
  is named in the step's detail, and status and setup go on;
- Docker starts after the shares are mounted, and not without them: a docker.service drop-in
  (DOCKER_DROPIN) with `RequiresMountsFor=` the mount points, which systemd.unit(5) documents as
  adding Requires= and After= on the mount units those paths need. Chosen over fstab's
  x-systemd.before=/x-systemd.required-by= because it works with every systemd the tool supports
  and shows in `systemctl cat docker`. A share that fails to mount at boot then fails Docker's
  start ("dependency failed") instead of starting notebooks on an empty directory; the boot unit's
  setup run mounts it and starts Docker again;
- an unmounted mount point is immutable (chattr +i, FS_IMMUTABLE_FL; mode 0000 where its filesystem
  has no such attribute): a notebook's bind mount of it fails to write, even as root, instead of
  filling the local disk with what belongs on the share.
  Mounting over an immutable directory works; the attribute is set before every mount the step
  makes, and status reports a mount point that is neither mounted nor immutable.
"""

from __future__ import annotations

from ..config import SharedMount
from ..engine import (Action, Call, Check, MakeDir, PlannedFile, WriteFile, blocked, needs_change, ok, run_command,
                      skipped, write_wanted)
from ..errors import CommandFailed, StepFailed
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
DOCKER_DROPIN = "/etc/systemd/system/docker.service.d/gpuswarm-shared-fs.conf"


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


# A path as a bounded read finds it (host.PathAnswer): read in a child process, given STAT_TIMEOUT.
SHARE_PATH = F.fact("share_path", F.HOST, lambda path: lambda host: host.bounded_status(path, STAT_TIMEOUT))


def mount_point_problem(ctx: Context, path: str, mounted: bool = False) -> str | None:
    """Why `path` cannot be a mount point: mount(8) follows a symlink on the way, and mountinfo
    would name another path, so it would be mounted again on every run; or a directory on the way
    does not answer (it lies on another share that hangs). The mount point itself is read only
    when nothing is mounted there (`mounted`): a mounted share's own answer is FILESYSTEM_PROBLEM's."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + (0 if mounted else 1)):
        prefix = "/" + "/".join(parts[:depth])
        answer = ctx.fact(SHARE_PATH, prefix)
        if answer.problem:
            return (f"{prefix} {answer.problem}" if answer.problem.startswith("does not") else
                    f"{prefix} cannot be read ({answer.problem})") + \
                ": a filesystem it lies on (an NFS share?) does not answer; check its server, then run setup again"
        status = answer.status
        if status is None:
            return None
        if status.is_symlink:
            return f"{prefix} is a symlink, and mount would follow it; give the mount the directory it points to"
        if not status.is_dir:
            return f"{prefix} is not a directory"
    return None


def unit_path(path: str) -> str:
    """A path as a unit file's path list takes it: `%` doubled (a specifier otherwise), quoted
    when it holds a blank (systemd splits the list on blanks, honouring quotes)."""
    path = path.replace("%", "%%")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def dropin_text(mounts) -> str:
    return render("docker-shares-dropin.conf.j2", paths=" ".join(unit_path(m.path) for m in mounts))


def protect(path: str) -> Call:
    """chattr +i on the mount point, so that nothing (a bind mount, root) writes into it while the
    share is not mounted over it. A filesystem without inode attributes (chattr: "Operation not
    supported") gets mode 0000 instead, root's: notebook users (not root) cannot write there."""
    def run(ctx: Context) -> None:
        try:
            ctx.host.run(["chattr", "+i", path])
        except CommandFailed as exc:
            if "Operation not supported" not in exc.output and "Inappropriate ioctl" not in exc.output:
                raise
            ctx.host.run(["chmod", "0000", path])

    return Call(f"make {path} immutable while nothing is mounted there (chattr +i)", run)


def protected(answer) -> bool:
    """Whether an unmounted mount point refuses writes: immutable, or (where the filesystem has no
    such attribute) root's with mode 0000."""
    return answer.immutable or (answer.status is not None and answer.status.uid == 0 and answer.status.mode == 0)


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
        return [PlannedFile(FSTAB, wanted_fstab(ctx.fact(F.FILE_TEXT, FSTAB) or "", mounts)),
                PlannedFile(DOCKER_DROPIN, dropin_text(mounts))]

    def check(self, ctx: Context) -> Check:
        mounts = ctx.config.shared.mounts
        if not mounts:
            # Like their fstab entries, the drop-in of shares dropped from the config stays (reset
            # removes both); it is harmless: RequiresMountsFor= waits only for mount units systemd has.
            return skipped("no [[shared.mounts]] configured, so no shared filesystem is kept")
        actions: list[Action] = []
        reasons: list[str] = []
        remounts: list[Action] = []
        if not ctx.fact(F.PACKAGE_INSTALLED, PACKAGE):
            actions += [apt.update(ctx), apt.install(ctx, PACKAGE)]
            reasons.append(f"{PACKAGE} (the NFS client) is not installed")
        current = ctx.fact(F.FILE_TEXT, FSTAB)
        wanted = self.files(ctx)[0].content
        for mount in mounts:
            mounted = osfacts.mount_at(ctx.fact(F.MOUNTS), mount.path)
            problem = mount_point_problem(ctx, mount.path, mounted is not None)
            if problem:
                return blocked(problem)
            if mounted is not None and (not mounted.fstype.startswith("nfs") or mounted.source != mount.source):
                return blocked(f"{mount.path} holds {mounted.fstype} {mounted.source}, not {mount.source}; unmount "
                               f"it (umount {mount.path}) or give the share another path, then run setup again")
            mount_it = run_command("mount", mount.path, timeout=120, progress=f"mounting {mount.path}",
                                   undo=Undo("umount", path=mount.path))
            if mounted is None:
                point = ctx.fact(SHARE_PATH, mount.path)
                if point.status is None:
                    actions.append(MakeDir(mount.path))
                if point.status is None or not protected(point):
                    reasons.append(f"nothing mounted at {mount.path}"
                                   + ("" if point.status is None else
                                      ", and it is a writable directory that a notebook's bind mount would fill "
                                      "instead of the share"))
                    remounts += [protect(mount.path), mount_it]
                else:
                    reasons.append(f"nothing mounted at {mount.path} (its directory refuses writes meanwhile)")
                    remounts.append(mount_it)
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
                # --no-canonicalize: umount(8) would otherwise resolve the path, a stat that hangs.
                remounts += [run_command("umount", "--lazy", "--no-canonicalize", mount.path, timeout=30),
                             protect(mount.path), mount_it]
        if (current or "") != wanted:
            entries = [entry(m) for m in mounts]
            actions.append(Call(f"verify the new {FSTAB} entries with findmnt --verify",
                                lambda ctx: _verify(ctx, entries)))
            actions.append(WriteFile(FSTAB, wanted, current))
            lines = (current or "").splitlines()
            differs = [m.path for m in mounts if has_entry(current or "", m.path) and entry(m) not in lines]
            reasons.insert(0, f"{FSTAB} entry for {', '.join(differs)} differs" if differs
                           else f"{FSTAB} lacks entries for the shared filesystem")
        dropin = write_wanted(ctx, self.files(ctx)[1])
        if dropin is not None:
            actions.append(dropin)
            reasons.append(f"{DOCKER_DROPIN} does not make Docker wait for the shares" if dropin.before is not None
                           else f"no {DOCKER_DROPIN}, so after a reboot Docker may start notebooks before the "
                                "shares are mounted")
        if (current or "") != wanted or dropin is not None:
            actions += self._reload(ctx)
        actions += remounts
        if actions:
            return needs_change("; ".join(reasons), *actions)
        shown = ", ".join(f"{m.source} at {m.path}" + (" (read-only)" if m.read_only else "") for m in mounts)
        return ok(f"{shown}: mounted nosuid,nodev, answering, in {FSTAB}; Docker starts after them")

    @staticmethod
    def _reload(ctx: Context) -> list:
        return [run_command("systemctl", "daemon-reload")] if ctx.fact(F.SYSTEMD_RUNNING) else []

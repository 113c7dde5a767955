"""docker: Docker Engine installed (the distro's docker.io, or Docker's docker-ce), enabled, running."""

from __future__ import annotations

from ..engine import Call, Check, perform, PlannedFile, blocked, needs_change, ok, run_command, write_wanted
from .. import facts as F
from .. import floors
from ..errors import StepFailed
from ..render import render
from ..context import Context
from ..shared_facts import TOOLKIT_PACKAGE, joint_nfs_client, joint_toolkit_install, toolkit_source_file
from ..journal import keep
from . import apt

DISTRO_PACKAGES = ("docker.io",)
DOCKER_CE_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io")
DOCKER_CE_LIST = "/etc/apt/sources.list.d/docker.list"
DOCKER_CE_KEY = "/etc/apt/keyrings/docker.asc"


def docker_ce_source(ctx: Context) -> str:
    release = ctx.fact(F.OS_RELEASE)
    distro = release.get("ID", "debian")
    codename = release.get("VERSION_CODENAME", "")
    arch = ctx.fact(F.DPKG_ARCHITECTURE)
    return (f"deb [arch={arch} signed-by={DOCKER_CE_KEY}] https://download.docker.com/linux/{distro} "
            f"{codename} stable")


CLIENT_LABEL = "install docker-cli too where the distribution ships Docker's client apart from docker.io"


def install_split_client(ctx: Context) -> None:
    """Debian 13 ships Docker's client as docker-cli, only recommended by docker.io (apt installs
    no recommends here): without it the node has no `docker` command. Asked of apt once the
    package lists are current; Debian 12 and Ubuntu have no such package."""
    if ctx.fact(F.ON_PATH, "docker"):
        return
    if ctx.fact(F.APT_SHOWS, "docker-cli"):
        perform(ctx, apt.install(ctx, "docker-cli"))


# `runc --version` prints "runc version 1.3.3" first (runc's main.go); "" when it cannot run.
RUNC_VERSION = F.fact("runc_version", F.COMMAND, lambda _a: ["runc", "--version"],
                      lambda r, _a: (r.stdout.splitlines() or [""])[0].rpartition(" ")[2]
                      if r.ok and r.stdout.startswith("runc version ") else "", takes_arg=False)
RUNC_FLOOR_AFTER_UPGRADE = "check the upgraded runc against the advisories' minimum versions"
RUNC_FLOOR_AFTER_INSTALL = "check the installed runc against the advisories' minimum versions"


def runc_lacks(ctx: Context) -> tuple[floors.Missing | None, str]:
    """What the runc that Docker starts containers with lacks (floors.FLOORS), and the package
    that ships it ("" when it is not from a package this step installs). The distribution's
    runc package is judged by its Debian version (backports count); docker-ce's containerd.io
    bundles runc under containerd's version, so its runc is judged by `runc --version`."""
    version = ctx.fact(F.PACKAGE_VERSION, "runc")
    if version:
        return floors.merged("runc", floors.missing("runc", version, "runc")), "runc"
    if ctx.fact(F.ON_PATH, "runc") is None:
        return None, ""  # Docker brings its runtime; nothing to judge before it is installed
    version = ctx.fact(RUNC_VERSION)
    package = "containerd.io" if ctx.fact(F.PACKAGE_VERSION, "containerd.io") else ""
    if not version:
        return None, package
    return floors.merged("runc", floors.missing("runc", version, is_upstream=True)), package


def runc_floor_after_upgrade(ctx: Context) -> None:
    lacking = floors.unaccepted(runc_lacks(ctx)[0], ctx.config.docker.accept_advisories)
    if lacking is not None:
        raise StepFailed(f"{lacking.sentence()}, and the configured source offers nothing newer.",
                         f'Set docker.source = "docker-ce" (Docker\'s containerd.io ships a fixed runc) or install runc '
                         f"{lacking.fixed} or later from your distribution's backports, then run setup again; only "
                         f"if every notebook user is trusted, accept the risk with docker.accept_advisories = "
                         f"\"{','.join(lacking.advisories)}\".")


class DockerStep:
    name = "docker"
    description = "Docker Engine installed, enabled and running"

    def files(self, ctx: Context) -> list[PlannedFile]:
        """docker-ce's apt source (docker.source = docker-ce), and the toolkit's where it comes in
        Docker's apt transaction (shared_facts.joint_toolkit_install)."""
        files = []
        if ctx.config.docker.source == "docker-ce":
            files.append(PlannedFile(DOCKER_CE_LIST, render("apt-source.list.j2", purpose="Docker's docker-ce repository",
                                                            line=docker_ce_source(ctx))))
        if not self._installed(ctx) and joint_toolkit_install(ctx) is not None:
            files.append(toolkit_source_file(ctx))
        return files

    def _installed(self, ctx: Context) -> list[str]:
        return [p for p in ("docker.io", "docker-ce") if ctx.fact(F.PACKAGE_INSTALLED, p)]

    def check(self, ctx: Context) -> Check:
        if not ctx.fact(F.SYSTEMD_RUNNING):
            return blocked("systemd is not running on this machine; the tool runs docker as a systemd service")
        installed = self._installed(ctx)
        actions = []
        if not installed:
            wanted = DOCKER_CE_PACKAGES if ctx.config.docker.source == "docker-ce" else DISTRO_PACKAGES
            for planned in self.files(ctx):
                if planned.path == DOCKER_CE_LIST and (write := write_wanted(ctx, planned)):
                    release = ctx.fact(F.OS_RELEASE).get("ID", "debian")
                    actions.append(apt.download_key(f"https://download.docker.com/linux/{release}/gpg", DOCKER_CE_KEY))
                    actions.append(write)
            reason = f"{' '.join(wanted)} is not installed"
            # On a fresh GPU machine the toolkit comes in the same apt transaction: one
            # `apt-get update`, one install, instead of one of each per step.
            toolkit = joint_toolkit_install(ctx)
            if toolkit is not None:
                actions += toolkit
                wanted = (*wanted, TOOLKIT_PACKAGE)
                reason += f"; {TOOLKIT_PACKAGE} comes in the same apt transaction"
            shared = joint_nfs_client(ctx)  # the NFS client, for shared-fs
            if shared:
                wanted = (*wanted, *shared)
                reason += f"; {' '.join(shared)} (shared-fs) comes in the same apt transaction"
            actions += [*apt.repair_interrupted(ctx), apt.update(ctx), apt.install(ctx, *wanted)]
            if ctx.config.docker.source != "docker-ce":
                actions.append(Call(CLIENT_LABEL, install_split_client))
            actions.append(Call(RUNC_FLOOR_AFTER_INSTALL, runc_floor_after_upgrade))
        else:
            found, package = runc_lacks(ctx)
            lacking = floors.unaccepted(found, ctx.config.docker.accept_advisories)
            if lacking is not None and not package:
                return blocked(f"{lacking.sentence()}; that runc is not from a package this tool installs: upgrade "
                               f"it to {lacking.fixed} or later, then run setup again")
            enabled, active = ctx.fact(F.UNIT_ENABLED, "docker"), ctx.fact(F.UNIT_ACTIVE, "docker")
            if enabled and active and lacking is None:
                return ok(f"{installed[0]} installed, docker.service enabled and running" + floors.acceptance_note(found))
            reasons = [lacking.sentence()] if lacking is not None else []
            if lacking is not None:
                # A container escape is never ok: upgrade from the configured source, in this run.
                actions += [apt.update(ctx), apt.install(ctx, package),
                            Call(RUNC_FLOOR_AFTER_UPGRADE, runc_floor_after_upgrade)]
            if not (enabled and active):
                reasons.append("docker.service is " + " and ".join(
                    w for w, bad in (("not enabled", not enabled), ("not running", not active)) if bad))
            reason = "; ".join(reasons)
        actions.append(run_command("systemctl", "enable", "--now", "docker", timeout=300,
                                   progress="starting docker", undo=keep("docker left enabled and running")))
        return needs_change(reason, *actions)

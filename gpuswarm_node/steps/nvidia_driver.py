"""nvidia-driver: NVML initialises and reports a driver version; otherwise the distribution's driver.

Whether a driver is installed is read from the packages that provide its kernel module and NVML,
under any distribution's names (Ubuntu's GPGPU install has no nvidia-driver-* package at all:
nvidia-headless-no-dkms-*-server with precompiled linux-modules-nvidia-*), and what is loaded
from the kernel. Installed but not loaded is `blocked` with reboot_required when a reboot will load
it, and `blocked` with the cause when one already did not, never a second install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import apt_sources
from ..engine import (Call, Check, perform, PlannedFile, WriteFile, blocked, needs_change, ok, run_command, skipped,
                      write_wanted)
from ..errors import NvmlUnavailable, StepFailed
from .. import facts as F
from ..context import Context
from ..render import render
from ..shared_facts import gpu_presence
from ..journal import keep
from . import apt

if TYPE_CHECKING:
    from ..probes import driver
    from ..probes.driver import PciGpu

# probes.driver (the driver packages' names, Secure Boot, DKMS) is loaded where the driver is not
# answering NVML, not with the step: a converged node's status never needs it (about 2 ms of it).

STEP = "nvidia-driver"
DEBIAN_FIRMWARE = "firmware-misc-nonfree"

# unattended-upgrades keeps these back (Unattended-Upgrade::Package-Blacklist: Python regular
# expressions, each tried with re.match on a package name, in unattended-upgrades'
# is_pkgname_in_blacklist; the lists of every apt.conf.d file add up). NVIDIA's driver installation
# guide ("Version locking") pins a branch; what breaks notebooks is any upgrade of the driver's
# userspace while the old module stays loaded, which only the unattended path does unannounced.
# So this holds back unattended upgrades only, not the operator's `apt-get upgrade` nor the tool's
# own installs (apt-mark hold would refuse those too). Debian's, Ubuntu's and NVIDIA's CUDA
# repository's names; linux-modules-nvidia-* stay out (per kernel ABI, they must follow the kernel).
UNATTENDED_DROPIN = "/etc/apt/apt.conf.d/51gpuswarm-node-nvidia-driver"
DRIVER_UPGRADE_PATTERNS = (
    r"nvidia-driver(-.*)?$",            # nvidia-driver-535-server[-open]; Debian's nvidia-driver, -bin, -libs
    r"nvidia-headless-.*",              # nvidia-headless[-no-dkms]-535-server
    r"nvidia-dkms-.*",                  # nvidia-dkms-535[-server][-open]
    r"nvidia-(.+-)?kernel(-open)?-(dkms|support|source|common).*",  # nvidia-kernel-common-535-server, nvidia-kernel-dkms
    r"nvidia-(tesla|legacy)-.*",        # nvidia-tesla-470-driver and its libraries
    r"nvidia-(compute-)?utils-.*",      # nvidia-utils-535-server, nvidia-compute-utils-535-server
    r"nvidia-(smi|alternative|persistenced)$",
    r"nvidia-firmware-.*",              # nvidia-firmware-535-server-535.216.01
    r"firmware-nvidia-gsp.*",           # Debian's GSP firmware, of the driver's version
    r"nvidia-fabricmanager(-.*)?$",     # must match the loaded driver's version exactly
    # libnvidia-compute-535-server, libnvidia-ml1, libnvidia-nscq-535; not the container toolkit's
    # libnvidia-container*, which follows no driver version (and whose security fixes must come in)
    r"libnvidia-(?!container).*",
    r"libcuda1$",
    r"libnv(cuvid|optix)1$",
    r"lib(gl|egl|gles|glx)[0-9]*-nvidia.*",
    r"xserver-xorg-video-nvidia.*",
    r"cuda-drivers.*",
    r"nvidia-open(-[0-9]+)?$",
)


def unattended_dropin_text() -> str:
    return render("unattended-upgrades-nvidia-driver.conf.j2", patterns=DRIVER_UPGRADE_PATTERNS)


def _module(module: driver.LoadedModule) -> str:
    return f"NVIDIA kernel module {module.version}" if module.version else "NVIDIA kernel module"


def _names(pkgs: driver.DriverPackages) -> str:
    return f"{pkgs.modules[0].name} (kernel module) and {pkgs.nvml[0].name} (NVML)"


def secure_boot_problem(ctx: Context, distro: str) -> Check | None:
    """Secure Boot loads only signed modules, and DKMS builds this one here: a key DKMS signs with
    must be enrolled in the machine's MOK list first. None when nothing stands in the way."""
    from ..probes import driver

    if not driver.secure_boot(ctx.facts):
        return None
    state, key = driver.dkms_key_state(ctx.facts)
    if state == driver.ENROLLED:
        return None
    if state == driver.PENDING:
        return blocked(f"Secure Boot is on and the DKMS signing key {key} is queued for enrolment; reboot, "
                       "confirm the key in MokManager at the console, then run setup again", reboot_required=True)
    debian_key, ubuntu_key = driver.DKMS_SIGNING_KEYS
    if distro == "ubuntu":
        enrol = f"`mokutil --import {ubuntu_key}`"
        other = ("use the precompiled, signed modules (linux-modules-nvidia-*, which `ubuntu-drivers install "
                 "--gpgpu` picks)")
    else:
        enrol = f"`dkms generate_mok` if {debian_key} is missing, then `mokutil --import {debian_key}`"
        other = "use a driver with signed precompiled modules"
    unknown = "mokutil is not installed, so no enrolled key can be seen; " if state == driver.UNKNOWN else ""
    return blocked(f"{unknown}Secure Boot is on and the NVIDIA kernel module is built here by DKMS, signed by no "
                   f"key the firmware trusts, so the kernel would refuse to load it: enrol DKMS's signing key ({enrol}, "
                   f"reboot, confirm the key in MokManager at the console), or {other}, or turn Secure Boot off "
                   "in the firmware settings; then run setup again")


def install_detected(gpus: list[PciGpu], headers: list[str]) -> Call:
    """Debian: which driver branch the GPUs need is known once nvidia-detect is installed, in the
    same run."""
    ids = ", ".join(dict.fromkeys(g.pci_id for g in gpus))

    def install(ctx: Context) -> None:
        from ..probes import driver

        package, problem = driver.choose_driver(driver.detect(ctx.facts, gpus))
        if problem:
            raise StepFailed(f"{problem}.", "Install a driver that supports every GPU by hand, then run setup again.")
        perform(ctx, apt.install(ctx, *headers, package, DEBIAN_FIRMWARE))

    return Call(f"install the driver package nvidia-detect recommends for {ids}, with "
                f"{' '.join([*headers, DEBIAN_FIRMWARE])}", install)


class NvidiaDriverStep:
    name = STEP
    description = "NVIDIA driver loaded: NVML reports a driver version"

    def files(self, ctx: Context) -> list[PlannedFile]:
        # Debian's apt sources, when the driver's components are missing from them; the
        # unattended-upgrades drop-in once a driver runs (NVML answers), as the check writes it
        # once nothing else blocks.
        planned = [PlannedFile(a.path, a.content) for a in self.check(ctx).actions if isinstance(a, WriteFile)]
        try:
            ctx.inventory()
        except NvmlUnavailable:
            return planned
        if not any(p.path == UNATTENDED_DROPIN for p in planned):
            planned.append(PlannedFile(UNATTENDED_DROPIN, unattended_dropin_text()))
        return planned

    def check(self, ctx: Context) -> Check:
        try:
            inv = ctx.inventory()
        except NvmlUnavailable as exc:
            return self._without_nvml(ctx, exc)
        if not inv.gpus:
            return blocked(f"driver {inv.driver_version} is loaded but NVML reports no GPU")
        # NVML answering is not serving: a MIG-mode GPU without MIG devices yields no slice, and
        # CUDA can fail while NVML answers (probes.cuda). Each is blocked with its fix.
        empty = [g for g in inv.gpus if g.mig_enabled and not g.mig_devices]
        if empty:
            return blocked("; ".join(
                f"GPU {g.index} ({g.name}) is in MIG mode but has no MIG devices (they do not survive a reboot), so "
                f"no notebook can use it: create them (`nvidia-smi mig -i {g.index} -cgi <profiles> -C`), or turn "
                f"MIG off (`nvidia-smi -i {g.index} -mig 0`, then reset the GPU or reboot)" for g in empty))
        from ..probes.cuda import problem as cuda_problem

        refused = cuda_problem(ctx.cuda(), inv.driver_version)
        if refused:
            return blocked(refused)
        serving = f"driver {inv.driver_version}, {len(inv.gpus)} GPU(s), CUDA initialises"
        # The driver runs: from now on only a deliberate upgrade (and its reboot) may change it.
        write = write_wanted(ctx, PlannedFile(UNATTENDED_DROPIN, unattended_dropin_text()))
        if write:
            what = "is missing" if write.before is None else "differs"
            return needs_change(f"{serving}; {UNATTENDED_DROPIN} {what}, so unattended-upgrades may upgrade the driver "
                                "under its loaded module (then NVML and CUDA fail until a reboot)", write)
        return ok(f"{serving}; unattended-upgrades leaves the driver's packages alone ({UNATTENDED_DROPIN})")

    def _without_nvml(self, ctx: Context, exc: NvmlUnavailable) -> Check:
        from ..probes import driver

        present, why, gpus = gpu_presence(ctx)
        if not present:
            return skipped(why)
        host = ctx.facts.files
        release = driver.kernel_release(ctx.facts)
        pkgs = driver.driver_packages(ctx.facts, release)
        distro = ctx.fact(F.OS_RELEASE).get("ID", "")
        if pkgs.unfinished:
            names = ", ".join(f"{p.name} ({p.state})" for p in pkgs.unfinished)
            return needs_change(f"{why}; the last install of {names} did not finish",
                                run_command("dpkg", "--configure", "-a", env=apt.APT_ENV, timeout=1800,
                                            progress="finishing an interrupted dpkg run"))
        module = driver.loaded_module(ctx.facts)
        if pkgs.complete:
            return self._installed(ctx, exc, pkgs, distro, module)
        if not pkgs.modules and (module.loaded or host.exists(driver.RUNFILE_UNINSTALLER)):
            # A driver outside the package manager: NVIDIA's .run installer, or a driver container.
            # A distribution driver installed over it would fight it.
            what = (f"an {_module(module)} is loaded" if module.loaded
                    else f"NVIDIA's .run installer left a driver here ({driver.RUNFILE_UNINSTALLER})")
            return blocked(f"{why}; {what} that no package provides, so no distribution driver is installed over "
                           "it: repair that driver (or remove it with nvidia-uninstall), then run setup again")
        if pkgs.modules:
            nvml = driver.nvml_package_for(pkgs.modules[0].name)
            if nvml:
                return needs_change(f"{why}; {pkgs.modules[0].name} provides the kernel module but no package "
                                    "provides NVML", apt.update(ctx), apt.install(ctx, nvml))
            return blocked(f"{pkgs.modules[0].name} provides the kernel module but no package provides NVML "
                           "(libnvidia-ml.so.1); install the NVML library of the same driver, then run setup again")
        return self._install(ctx, why, gpus, pkgs, distro, release)

    def _installed(self, ctx: Context, exc: NvmlUnavailable, pkgs: driver.DriverPackages, distro: str,
                   module: driver.LoadedModule) -> Check:
        from ..probes import driver

        host, release = ctx.facts.files, pkgs.kernel_release
        if module.loaded:
            lib = pkgs.nvml[0]
            if module.version and lib.upstream_version and module.version != lib.upstream_version:
                return blocked(f"the loaded kernel module is {module.version} but {lib.name} {lib.upstream_version} "
                               f"is installed (upgraded since boot), so {exc.reason}; reboot the machine, then run "
                               "setup again", reboot_required=True)
            return blocked(f"the {_module(module)} is loaded and {_names(pkgs)} installed, "
                           f"but {exc.reason}")
        if pkgs.dkms:
            problem = secure_boot_problem(ctx, distro)
            if problem is not None:
                return problem
            if pkgs.headers is None and release:
                headers = driver.headers_packages(release, distro)
                return needs_change(f"{_names(pkgs)} installed, but not the headers of the running kernel "
                                    f"{release}, so DKMS could not build the module",
                                    apt.update(ctx), apt.install(ctx, *headers))
        if driver.installed_since_boot(ctx.facts, pkgs.newest()) is False:
            hints = []
            if host.exists("/sys/module/nouveau"):
                hints.append("nouveau is loaded and holds the GPU (blacklist it and rebuild the initramfs)")
            if pkgs.dkms:
                hints.append("`dkms status` shows whether the module was built for this kernel")
            return blocked(f"{_names(pkgs)} were installed before this boot, yet {exc.reason}: "
                           f"`modprobe nvidia` says why{''.join('; ' + h for h in hints)}")
        return blocked(f"the driver is installed, {_names(pkgs)}, but {exc.reason}; reboot the machine, then run "
                       "setup again", reboot_required=True)

    def _install(self, ctx: Context, why: str, gpus: list[PciGpu], pkgs: driver.DriverPackages, distro: str,
                 release: str) -> Check:
        from ..probes import driver

        if distro == "ubuntu":
            partial = pkgs.drivers or pkgs.nvml
            if partial:
                # ubuntu-drivers takes an installed nvidia-headless-no-dkms-* as done and installs nothing.
                return blocked(f"{partial[0].name} is installed but no package provides the NVIDIA kernel module "
                               f"for kernel {release or 'this kernel'}: install the precompiled "
                               "linux-modules-nvidia-<branch>-<kernel flavour> of the same branch, or "
                               f"nvidia-dkms-<branch> with linux-headers-{release or '$(uname -r)'}, then run setup "
                               "again")
            # --gpgpu picks the -server branch with precompiled, signed modules where the kernel has them.
            return needs_change(f"{why}; no driver installed", apt.update(ctx),
                                apt.install(ctx, "ubuntu-drivers-common"),
                                run_command("ubuntu-drivers", "install", "--gpgpu", timeout=1800,
                                            progress="ubuntu-drivers install",
                                            undo=keep("the driver ubuntu-drivers installed is left installed")))
        if distro == "debian":
            return self._debian_install(ctx, why, gpus, release)
        return blocked(f"no driver installer for distribution {distro or 'unknown'}; install the NVIDIA driver by "
                       "hand")

    def _debian_install(self, ctx: Context, why: str, gpus: list[PciGpu], release: str) -> Check:
        from ..probes import driver

        host = ctx.facts.files
        # Debian builds the module with DKMS: with Secure Boot on, the kernel refuses it unsigned.
        problem = secure_boot_problem(ctx, "debian")
        if problem is not None:
            return problem
        writes, lists_main = [], False
        for path, edit, has_main in (
                (apt_sources.DEBIAN_SOURCES, apt_sources.add_components_deb822, apt_sources.lists_main_deb822),
                (apt_sources.SOURCES_LIST, apt_sources.add_components_one_line, apt_sources.lists_main_one_line)):
            text = host.read_text(path)
            if text is None:
                continue
            lists_main = lists_main or has_main(text)
            wanted = edit(text)
            if wanted != text:
                writes.append(WriteFile(path, wanted, text))
        if not lists_main:
            return blocked(f"neither {apt_sources.DEBIAN_SOURCES} nor {apt_sources.SOURCES_LIST} lists the Debian "
                           "archive's main component; enable contrib non-free non-free-firmware for your mirror, "
                           "then run setup again")
        headers = driver.headers_packages(release, "debian")
        reasons = [f"{why}; no driver installed"]
        if writes:
            reasons.append(f"the driver's components (contrib non-free non-free-firmware) are not enabled in "
                           f"{' and '.join(w.path for w in writes)}")
        if host.which("nvidia-detect"):
            package, problem_text = driver.choose_driver(driver.detect(ctx.facts, gpus))
            if problem_text:
                return blocked(f"{why}; {problem_text}")
            reasons.append(f"nvidia-detect recommends {package}")
            install = [apt.install(ctx, *headers, package, DEBIAN_FIRMWARE)]
        else:
            install = [apt.install(ctx, "nvidia-detect"), install_detected(gpus, headers)]
        return needs_change("; ".join(reasons), *writes, apt.update(ctx), *install)

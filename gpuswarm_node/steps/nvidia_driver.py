"""nvidia-driver: NVML initialises and reports a driver version; otherwise the distro's driver."""

from __future__ import annotations

from ..engine import Check, PlannedFile, blocked, needs_change, ok, skipped
from ..errors import NvmlUnavailable
from ..host import Host
from ..probes import system
from ..system import Context
from . import apt

PCI_DEVICES = "/sys/bus/pci/devices"
NVIDIA_VENDOR = "0x10de"


def nvidia_pci_devices(host: Host) -> list[str]:
    """PCI addresses of NVIDIA display/3D controllers (class 0x03xxxx), whatever the driver state."""
    found = []
    for dev in host.listdir(PCI_DEVICES):
        vendor = (host.read_text(f"{PCI_DEVICES}/{dev}/vendor") or "").strip()
        klass = (host.read_text(f"{PCI_DEVICES}/{dev}/class") or "").strip()
        if vendor == NVIDIA_VENDOR and klass.startswith("0x03"):
            found.append(dev)
    return found


def gpu_presence(ctx: Context) -> tuple[bool, str]:
    """Whether this machine has an NVIDIA GPU, and how we know."""
    try:
        inv = ctx.inventory()
        return True, f"NVML reports {len(inv.gpus)} GPU(s), driver {inv.driver_version}"
    except NvmlUnavailable as exc:
        pci = nvidia_pci_devices(ctx.host)
        if pci:
            return True, f"{len(pci)} NVIDIA device(s) on the PCI bus, but {exc.reason}"
        return False, f"no NVIDIA GPU on the PCI bus ({exc.reason})"


def driver_packages_installed(ctx: Context) -> list[str]:
    result = ctx.host.query(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", "nvidia-driver*"])
    # "<package> <want> <flag> <status>"; a held driver is "hold ok installed", still installed.
    return [line.split()[0] for line in result.stdout.splitlines()
            if line.split()[2:] == ["ok", "installed"]]


class NvidiaDriverStep:
    name = "nvidia-driver"
    description = "NVIDIA driver loaded: NVML reports a driver version"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        try:
            inv = ctx.inventory()
        except NvmlUnavailable as exc:
            present, why = gpu_presence(ctx)
            if not present:
                return skipped(why)
            installed = driver_packages_installed(ctx)
            if installed:
                return blocked(f"driver package {installed[0]} is installed but {exc.reason}; reboot the machine, "
                               "then run setup again", reboot_required=True)
            distro = system.os_release(ctx.host).get("ID", "")
            if distro == "ubuntu":
                # --gpgpu picks the -server driver branch with precompiled, signed modules.
                actions = (apt.update(ctx), apt.install(ctx, "ubuntu-drivers-common"),
                           _ubuntu_drivers_install())
            elif distro == "debian":
                # Debian ships the driver in non-free/contrib, which must be enabled in sources.
                actions = (apt.update(ctx), apt.install(ctx, "nvidia-driver", "firmware-misc-nonfree"))
            else:
                return blocked(f"no driver installer for distribution {distro or 'unknown'}; install the "
                               "NVIDIA driver by hand")
            return needs_change(f"{why}; no driver installed", *actions)
        if not inv.gpus:
            return blocked(f"driver {inv.driver_version} is loaded but NVML reports no GPU")
        return ok(f"driver {inv.driver_version}, {len(inv.gpus)} GPU(s)")


def _ubuntu_drivers_install():
    from ..engine import run_command

    return run_command("ubuntu-drivers", "install", "--gpgpu", timeout=1800, progress="ubuntu-drivers install")

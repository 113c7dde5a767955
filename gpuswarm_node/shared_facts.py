"""What more than one step reads or decides, so that no step calls or imports another.

- gpu_presence: whether the machine has an NVIDIA GPU and how that is known (NVML first, the PCI
  bus when NVML cannot answer); the driver and toolkit steps both go by it.
- the toolkit's apt source, and the plan-level decision that on a fresh GPU machine the toolkit
  is installed in the docker step's apt transaction (one `apt-get update`, one install); likewise
  the NFS client that shared-fs needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import NVIDIA_TOOLKIT_SOURCE
from .context import Context
from .engine import PlannedFile, write_wanted
from .errors import NvmlUnavailable
from . import facts as F
from .render import render

if TYPE_CHECKING:
    from .probes.driver import PciGpu

TOOLKIT_PACKAGE = "nvidia-container-toolkit"
NFS_CLIENT_PACKAGE = "nfs-common"  # mount.nfs4, the NFS client's mount helper (Debian, Ubuntu)
TOOLKIT_SOURCE_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
NVIDIA_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
NVIDIA_KEY = "/usr/share/keyrings/nvidia-container-toolkit-keyring.asc"


def gpu_presence(ctx: Context) -> tuple[bool, str, list[PciGpu]]:
    """(present, how we know, the GPUs on the PCI bus when NVML could not answer)."""
    try:
        inv = ctx.inventory()
        return True, f"NVML reports {len(inv.gpus)} GPU(s), driver {inv.driver_version}", []
    except NvmlUnavailable as exc:
        from .probes import driver  # only here: NVML answers on a converged node

        gpus = driver.nvidia_gpus(ctx.facts)
        if gpus:
            return True, f"{len(gpus)} NVIDIA device(s) on the PCI bus, but {exc.reason}", gpus
        return False, f"no NVIDIA GPU on the PCI bus ({exc.reason})", []


def toolkit_source_text(ctx: Context) -> str:
    return render("apt-source.list.j2", purpose="NVIDIA container toolkit", line=ctx.config.nvidia.toolkit_apt_source)


def toolkit_source_file(ctx: Context) -> PlannedFile:
    """The toolkit's apt source list as the docker and nvidia-toolkit steps both want it."""
    return PlannedFile(TOOLKIT_SOURCE_LIST, toolkit_source_text(ctx))


def toolkit_source_actions(ctx: Context) -> list:
    """The signing key (for the default source) and the source list, where the list differs."""
    from .steps.apt import download_key  # the steps' apt helpers (not a step), imported late: they import us

    write = write_wanted(ctx, toolkit_source_file(ctx))
    if write is None:
        return []
    actions = []
    if ctx.config.nvidia.toolkit_apt_source == NVIDIA_TOOLKIT_SOURCE and not ctx.fact(F.EXISTS, NVIDIA_KEY):
        actions.append(download_key(NVIDIA_KEY_URL, NVIDIA_KEY))
    return actions + [write]


def joint_toolkit_install(ctx: Context) -> list | None:
    """When Docker is installed on a GPU machine that lacks the toolkit: the toolkit's source
    actions, so that both packages go in one apt transaction; None otherwise."""
    if not gpu_presence(ctx)[0] or ctx.fact(F.PACKAGE_INSTALLED, TOOLKIT_PACKAGE):
        return None
    return toolkit_source_actions(ctx)


def joint_nfs_client(ctx: Context) -> tuple[str, ...]:
    """For the docker step's install on a fresh machine: the NFS client, when shared mounts are
    configured and it is missing, so that it comes in the same apt transaction."""
    if ctx.config.shared.mounts and not ctx.fact(F.PACKAGE_INSTALLED, NFS_CLIENT_PACKAGE):
        return (NFS_CLIENT_PACKAGE,)
    return ()

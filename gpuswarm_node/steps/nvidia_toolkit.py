"""nvidia-toolkit: nvidia-container-toolkit installed from the configured apt source."""

from __future__ import annotations

from ..config import NVIDIA_TOOLKIT_SOURCE
from ..engine import Check, PlannedFile, WriteFile, needs_change, ok, skipped
from ..probes import system
from ..render import render
from ..system import Context
from . import apt
from .nvidia_driver import gpu_presence

SOURCE_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
NVIDIA_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
NVIDIA_KEY = "/usr/share/keyrings/nvidia-container-toolkit-keyring.asc"
PACKAGE = "nvidia-container-toolkit"


class NvidiaToolkitStep:
    name = "nvidia-toolkit"
    description = "nvidia-container-toolkit installed, nvidia-container-runtime on PATH"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return [PlannedFile(SOURCE_LIST, render("apt-source.list.j2", purpose="NVIDIA container toolkit",
                                                line=ctx.config.nvidia.toolkit_apt_source))]

    def check(self, ctx: Context) -> Check:
        present, why = gpu_presence(ctx)
        if not present:
            return skipped(why)
        source = self.files(ctx)[0]
        before = ctx.host.read_text(SOURCE_LIST)
        installed = system.package_installed(ctx.host, PACKAGE)
        runtime = ctx.host.which("nvidia-container-runtime")
        if before == source.content and installed and runtime:
            return ok(f"{PACKAGE} installed, runtime at {runtime}")
        actions = []
        reasons = []
        if before != source.content:
            reasons.append(f"{SOURCE_LIST} {'differs' if before is not None else 'is missing'}")
            if ctx.config.nvidia.toolkit_apt_source == NVIDIA_TOOLKIT_SOURCE and not ctx.host.exists(NVIDIA_KEY):
                actions.append(apt.download_key(NVIDIA_KEY_URL, NVIDIA_KEY))
            actions += [WriteFile(SOURCE_LIST, source.content, before), apt.update()]
        if not installed or not runtime:
            reasons.append(f"{PACKAGE} is not installed" if not installed else "nvidia-container-runtime is not on PATH")
            if before == source.content:
                actions.append(apt.update())
            # Installed but its runtime gone: only a reinstall brings the file back.
            actions.append(apt.install("--reinstall", PACKAGE) if installed else apt.install(PACKAGE))
        return needs_change("; ".join(reasons), *actions)

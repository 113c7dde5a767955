"""How the NVIDIA container hook picks a container's devices, and which of its settings would let a
container get GPUs the slice-aware runtime did not give it.

Source: nvidia-container-toolkit, internal/config/image/cuda_image.go (`VisibleDevices`: CDI
annotations, then /dev/null mounts under /var/run/nvidia-container-devices/ when
`accept-nvidia-visible-devices-as-volume-mounts` is on, then the variables named by
`swarm-resource` if any is set in the container, else NVIDIA_VISIBLE_DEVICES, honoured for an
unprivileged container only with `accept-nvidia-visible-devices-envvar-when-unprivileged`), and
cmd/nvidia-container-runtime-hook/hook_config.go (up to 1.17 the hook reads the driver
container's copy of config.toml when it exists). The same logic runs from 1.14 to today.

The runtime wrapper refuses volume-mount device lists and CDI annotations itself, and refuses
every start while swarm-resource is set; `problems` is what `status` reports about the files.
"""

from __future__ import annotations

from dataclasses import dataclass

RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
DRIVER_CONFIG = "/run/nvidia/driver" + RUNTIME_CONFIG
# Every file a version of the hook may read, in the order it looks for them.
TOOLKIT_CONFIGS = (DRIVER_CONFIG, RUNTIME_CONFIG)
CDI_SECTION = ("nvidia-container-runtime", "modes", "cdi")
DEFAULT_ANNOTATION_PREFIXES = ["cdi.k8s.io/"]


@dataclass(frozen=True)
class Problem:
    """A setting in `path` that defeats or disables the slice-aware runtime, and its fix."""

    path: str
    setting: str
    why: str
    fix: str

    def sentence(self) -> str:
        if not self.setting:
            return f"{self.path} {self.why}. {self.fix}"
        return f"{self.path} sets {self.setting}: {self.why}. {self.fix}"


def _table(data: dict, keys: tuple[str, ...]) -> dict:
    for name in keys:
        data = data.get(name) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def problems(path: str, data: dict) -> list[Problem]:
    """What in one parsed config.toml lets a container pick its own GPUs, or stops every
    container from getting its own; [] when the chain from reservation to device is closed."""
    found = []
    swarm = data.get("swarm-resource", "")
    if swarm != "":
        found.append(Problem(
            path, f"swarm-resource = {swarm!r}",
            "the NVIDIA hook takes devices from the variables it names instead of the devices the slice-aware "
            "runtime selects, so a service could name any GPU (the runtime refuses every start while it is set)",
            f'Delete the line or write swarm-resource = "" in {path}, then run setup again.'))
    if data.get("accept-nvidia-visible-devices-envvar-when-unprivileged", True) is not True:
        found.append(Problem(
            path, "accept-nvidia-visible-devices-envvar-when-unprivileged = false",
            "the hook ignores NVIDIA_VISIBLE_DEVICES in unprivileged containers, so no notebook gets its GPU",
            f"Set it to true (or delete the line) in {path}, then run setup again."))
    prefixes = _table(data, CDI_SECTION).get("annotation-prefixes", DEFAULT_ANNOTATION_PREFIXES)
    if prefixes != DEFAULT_ANNOTATION_PREFIXES:
        found.append(Problem(
            path, f"annotation-prefixes = {prefixes!r}",
            "the NVIDIA runtime would read CDI device requests from annotations the slice-aware runtime does "
            "not refuse (it refuses cdi.k8s.io/ only)",
            f"Delete the line in {path}, then run setup again."))
    return found


def notes(data: dict) -> list[str]:
    """Settings that are safe only because the runtime wrapper refuses what they accept."""
    if data.get("accept-nvidia-visible-devices-as-volume-mounts") is True:
        return ["device lists as volume mounts are accepted by the toolkit and refused by the slice-aware runtime"]
    return []

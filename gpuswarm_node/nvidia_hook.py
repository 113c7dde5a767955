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
    table: object = data
    for name in keys:
        table = table.get(name) if isinstance(table, dict) else None
    return table if isinstance(table, dict) else {}


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


# --- What a container can set that the NVIDIA hook acts on, and what the wrapper does with it ----

STRIP, PIN, REFUSE, KEEP = "strip", "pin", "refuse", "keep"


@dataclass(frozen=True)
class HookInput:
    """One input of the NVIDIA hook (or of nvidia-container-runtime's spec modifiers) that a
    container, its image or whoever creates it can set.

    kind: "env" (process.env, the name exact), "env-prefix" (every variable starting with name),
    "mount" (a mount destination under name), "annotation" (annotation keys containing name),
    "capability" (process.capabilities). action: STRIP (the wrapper removes it from process.env),
    PIN (the wrapper writes the one value it allows), REFUSE (the start fails, naming it), KEEP
    (harmless as the others are decided: why says so). source: nvidia-container-toolkit file:lines
    at the tags named, where the toolkit reads it."""

    kind: str
    name: str
    action: str
    why: str
    source: str


# Derived from nvidia-container-toolkit v1.14.0 to v1.20.0 (git tags), reading
# internal/config/image/, cmd/nvidia-container-runtime-hook/ and internal/modifier/ of each: every
# Getenv/HasEnvvar/env[...] of the container's environment, every read of its mounts and
# annotations. Variables the hook reads from its own process environment (NVIDIA_CTK_CONFIG_FILE_PATH,
# XDG_CONFIG_HOME) are the runtime's, not the container's, and are checked by toolkit_guard.
HOOK_INPUTS = (
    HookInput("env", "NVIDIA_VISIBLE_DEVICES", PIN,
              "the devices the hook injects: pinned to the devices behind the container's slices, void without",
              "v1.14.0 cmd/nvidia-container-runtime-hook/container_config.go:172-258 (getDevicesFromEnvvar, "
              "getDevices); v1.20.0 internal/config/image/envvars.go:28, cuda_image.go:258-333 (VisibleDevices)"),
    HookInput("env-prefix", "DOCKER_RESOURCE_", REFUSE,
              "read instead of NVIDIA_VISIBLE_DEVICES when swarm-resource names it: refused when the image "
              "sets it (only Swarm may), and every start is refused while swarm-resource is set",
              "v1.14.0 cmd/nvidia-container-runtime-hook/hook_config.go:97 (getSwarmResourceEnvvars), "
              "container_config.go:172; v1.20.0 hook_config.go:85 (getSwarmResource), "
              "internal/config/image/cuda_image.go:237-250 (visibleEnvVars)"),
    HookInput("env", "NVIDIA_DRIVER_CAPABILITIES", PIN,
              "which driver libraries and device nodes are injected: pinned to the requested ones among "
              "compute, compat32, graphics, utility and video (compute,utility when unset, empty or "
              "legacy); display (the X server's driver and nvidia-modeset) is dropped",
              "v1.14.0 cmd/nvidia-container-runtime-hook/container_config.go:274-298 (getDriverCapabilities); "
              "v1.20.0 container_config.go:151-175, internal/modifier/graphics.go:68-80 "
              "(requiresGraphicsModifier)"),
    HookInput("env", "NVIDIA_MIG_CONFIG_DEVICES", STRIP,
              "grants the MIG config capability (/proc/driver/nvidia/capabilities/mig/config): repartition "
              "every tenant's GPU",
              "v1.14.0 cmd/nvidia-container-runtime-hook/container_config.go:260-265 (getMigConfigDevices); "
              "v1.20.0 container_config.go:135-149 (getMigDevices), internal/config/image/envvars.go:24"),
    HookInput("env", "NVIDIA_MIG_MONITOR_DEVICES", STRIP,
              "grants the MIG monitor capability: every tenant's MIG devices become visible to monitoring",
              "v1.14.0 cmd/nvidia-container-runtime-hook/container_config.go:267-272 (getMigMonitorDevices); "
              "v1.20.0 container_config.go:139-149, internal/config/image/envvars.go:25"),
    HookInput("env", "NVIDIA_IMEX_CHANNELS", STRIP,
              "injects /dev/nvidia-caps-imex-channels/channel<N>: IMEX channels are shared by every job of "
              "the IMEX domain",
              "v1.16.0 and v1.16.2 cmd/nvidia-container-runtime-hook/container_config.go:26,280-290; v1.20.0 "
              "internal/config/image/envvars.go:23, cuda_image.go:416-455 (ImexChannelRequests)"),
    HookInput("env", "NVIDIA_GDS", STRIP,
              "NVIDIA_GDS=enabled injects GPUDirect Storage's /dev/nvidia-fs* (shared by the node)",
              "v1.14.0 internal/modifier/gds.go:30-34; v1.17.8 internal/modifier/gated.go:50; "
              "v1.20.0 internal/modifier/cdi.go:133"),
    HookInput("env", "NVIDIA_MOFED", STRIP,
              "NVIDIA_MOFED=enabled injects /dev/infiniband/* (the node's RDMA devices)",
              "v1.14.0 internal/modifier/mofed.go:30-34; v1.17.8 internal/modifier/gated.go:58; "
              "v1.20.0 internal/modifier/cdi.go:136"),
    HookInput("env", "NVIDIA_NVSWITCH", STRIP,
              "NVIDIA_NVSWITCH=enabled injects /dev/nvidia-nvswitch* (the fabric every GPU of the node shares)",
              "v1.15.0 internal/config/features.go:45, internal/modifier/gated.go:34; v1.17.8 gated.go:66; "
              "v1.20.0 internal/modifier/cdi.go:142"),
    HookInput("env", "NVIDIA_GDRCOPY", STRIP,
              "NVIDIA_GDRCOPY=enabled injects /dev/gdrdrv (GPUDirect RDMA copies, shared by the node)",
              "v1.15.0 internal/config/features.go:46, internal/modifier/gated.go:35; v1.17.8 gated.go:74; "
              "v1.20.0 internal/modifier/cdi.go:139"),
    HookInput("env", "NVIDIA_REQUIRE_JETPACK", STRIP,
              "csv-mounts=all mounts every file and device the Tegra CSV files list",
              "v1.14.0 internal/modifier/csv.go:44,101 (checkRequirements); v1.20.0 internal/config/image/"
              "envvars.go:27, internal/modifier/csv.go:46, cdi.go:182"),
    HookInput("env-prefix", "NVIDIA_REQUIRE_", KEEP,
              "constraints (cuda>=, driver>=, arch, brand) nvidia-container-cli checks: they can only fail "
              "the start",
              "v1.14.0 internal/config/image/cuda_image.go:70-93 (GetRequirements); v1.20.0 "
              "cuda_image.go:113-136"),
    HookInput("env", "NVIDIA_DISABLE_REQUIRE", KEEP,
              "skips those constraint checks: grants nothing (the driver refuses what it cannot run)",
              "v1.14.0 internal/config/image/cuda_image.go:95 (HasDisableRequire); v1.20.0 cuda_image.go:138"),
    HookInput("env", "CUDA_VERSION", KEEP,
              "marks a legacy image, whose defaults are every GPU and every capability: both are pinned, so "
              "it only adds a cuda>= constraint",
              "v1.14.0 internal/config/image/cuda_image.go:29,62 (IsLegacy); v1.20.0 envvars.go:20, "
              "cuda_image.go:101"),
    HookInput("mount", "/var/run/nvidia-container-devices", REFUSE,
              "/dev/null mounted here (also cdi/<name> and imex/<channel>) is a device list of its own "
              "(accept-nvidia-visible-devices-as-volume-mounts); /run is checked too",
              "v1.14.0 cmd/nvidia-container-runtime-hook/container_config.go:33,199-234 "
              "(getDevicesFromMounts); v1.20.0 internal/config/image/cuda_image.go:34-37,336-413"),
    HookInput("annotation", "cdi.k8s.io/", REFUSE,
              "CDI device requests (cdi.k8s.io/ is the runtime's default annotation prefix; "
              "nvidia.cdi.k8s.io/ is read by the toolkit's NRI plugin): any key containing it",
              "v1.14.0 internal/modifier/cdi.go:58-130 (getDevicesFromSpec, getAnnotationDevices); v1.20.0 "
              "internal/config/image/cuda_image.go:258-324, cmd/nvidia-ctk-installer/container/runtime/nri/"
              "plugin.go:42"),
    HookInput("capability", "CAP_SYS_ADMIN", KEEP,
              "makes the container privileged to the hook, which then honours variable requests even where "
              "unprivileged ones are off: the variables are pinned or stripped either way (a privileged "
              "container sees every device node regardless, outside what the runtime guarantees)",
              "v1.14.0 cmd/nvidia-container-runtime-hook/container_config.go:130 (isPrivileged); v1.20.0 "
              "internal/config/image/cuda_image.go:107, privileged.go"),
)

# NVIDIA_DRIVER_CAPABILITIES the wrapper lets through (internal/config/image/capabilities.go);
# the hook's default when the variable is unset or empty is compute,utility.
ALLOWED_CAPABILITIES = ("compute", "compat32", "graphics", "utility", "video")
DEFAULT_CAPABILITIES = ("compute", "utility")


def wrapper_policy() -> dict:
    """HOOK_INPUTS as the runtime wrapper's template takes them: {"strip": [names],
    "annotation_markers": [substrings], "capabilities": [allowed], "default_capabilities": [..]},
    and the frameworks' memory settings it adds ("memory_groups": slices.MEMORY_SHARE_GROUPS).
    PIN and the refusal of DOCKER_RESOURCE_* and of mounts are written out in the wrapper."""
    from .slices import MEMORY_SHARE_GROUPS

    return {
        "memory_groups": [list(group) for group in MEMORY_SHARE_GROUPS],
        "strip": [i.name for i in HOOK_INPUTS if i.kind == "env" and i.action == STRIP],
        "annotation_markers": [i.name for i in HOOK_INPUTS if i.kind == "annotation" and i.action == REFUSE],
        "capabilities": list(ALLOWED_CAPABILITIES),
        "default_capabilities": list(DEFAULT_CAPABILITIES),
    }

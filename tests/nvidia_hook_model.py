"""The NVIDIA container hook's device selection, as the toolkit documents and implements it, in
plain Python: what devices a container gets from its OCI spec and the toolkit's config.toml.

Sources (nvidia-container-toolkit, the same logic from 1.14 to today):
- internal/config/image/cuda_image.go, `VisibleDevices`: volume-mount device lists (when
  `accept-nvidia-visible-devices-as-volume-mounts`), else the variables named by `swarm-resource`
  that are set, else NVIDIA_VISIBLE_DEVICES; env-var requests count for an unprivileged
  container only with `accept-nvidia-visible-devices-envvar-when-unprivileged` (default true);
  a "legacy" CUDA image (CUDA_VERSION set, NVIDIA_REQUIRE_CUDA not) with no variable gets "all";
  an empty value or "void" gets nothing.
- cmd/nvidia-container-runtime-hook/hook_config.go: up to 1.17 the hook reads
  /run/nvidia/driver/etc/nvidia-container-runtime/config.toml when it exists, else /etc/...
- The hook decodes config.json with Go's encoding/json, which matches object keys to struct
  fields without regard to letter case (Unicode-folded) and lets a later key win.

Used by the unit tests (the wrapper's output fed to this) and, as part of the lab's stand-in
nvidia-container-runtime, by the lab: the stand-in records what this returns. Standard library
only, Python 3.9+, so that it runs inside the lab machines as it is.
"""

from __future__ import annotations

import posixpath

DEVICE_MOUNT_ROOT = "/var/run/nvidia-container-devices"
# Every variable of the container's environment the hook or the runtime's modifiers read
# (nvidia-container-toolkit 1.14 to 1.20: internal/config/image/envvars.go, container_config.go,
# internal/modifier/{gated,gds,mofed,csv,cdi,graphics}.go), and prefixes of families of them.
ENV_READ = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_MIG_CONFIG_DEVICES",
            "NVIDIA_MIG_MONITOR_DEVICES", "NVIDIA_IMEX_CHANNELS", "NVIDIA_GDS", "NVIDIA_MOFED", "NVIDIA_NVSWITCH",
            "NVIDIA_GDRCOPY", "NVIDIA_REQUIRE_JETPACK", "NVIDIA_DISABLE_REQUIRE", "CUDA_VERSION")
ENV_PREFIXES_READ = ("NVIDIA_REQUIRE_",)
# internal/config/image/capabilities.go: every driver capability, and the default.
SUPPORTED_CAPABILITIES = ("compat32", "compute", "display", "graphics", "ngx", "utility", "video")
DEFAULT_CAPABILITIES = ("compute", "utility")
GATED = ("NVIDIA_GDS", "NVIDIA_MOFED", "NVIDIA_NVSWITCH", "NVIDIA_GDRCOPY")
# The runtime's default annotation prefix, and the one the toolkit's NRI plugin reads.
CDI_ANNOTATION_PREFIXES = ("cdi.k8s.io/", "nvidia.cdi.k8s.io/")


def go_fold(key: str) -> str:
    return key.lower().upper()


def go_field(obj, name: str):
    """obj's field `name` as Go's decoder fills a struct: every key that folds to the name,
    later ones winning; objects are merged, as decoding into an existing struct does."""
    if not isinstance(obj, dict):
        return None
    value = None
    for key, item in obj.items():
        if go_fold(key) != go_fold(name):
            continue
        if isinstance(value, dict) and isinstance(item, dict):
            value = {**value, **item}
        else:
            value = item
    return value


def go_clean(path: str) -> str:
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def env_map(env) -> dict:
    out = {}
    for entry in env if isinstance(env, list) else []:
        if isinstance(entry, str) and "=" in entry:
            key, _, value = entry.partition("=")
            out[key] = value
    return out


def privileged(spec: dict) -> bool:
    # IsPrivileged: CAP_SYS_ADMIN in the bounding set of the process.
    caps = go_field(go_field(spec, "process"), "capabilities")
    bounding = go_field(caps, "bounding") or []
    return "CAP_SYS_ADMIN" in bounding


def devices_from_mounts(spec: dict) -> list[str]:
    devices, seen = [], set()
    for mount in go_field(spec, "mounts") or []:
        if go_clean(str(go_field(mount, "source") or "")) != "/dev/null":
            continue
        destination = go_clean(str(go_field(mount, "destination") or ""))
        if destination in seen:
            continue
        seen.add(destination)
        if not destination.startswith(DEVICE_MOUNT_ROOT):
            continue
        device = destination[len(DEVICE_MOUNT_ROOT):].strip("/")
        if device and not device.startswith(("cdi/", "imex/")):
            devices.append(device)
    return devices


def devices_from_env(env: dict, variables: list[str]) -> list[str]:
    requested, is_set = [], False
    for variable in variables:
        if variable in env:
            is_set = True
            requested += [d.strip() for d in env[variable].split(",") if d.strip()]
    legacy = "CUDA_VERSION" in env and "NVIDIA_REQUIRE_CUDA" not in env
    if not is_set and not requested and legacy:
        requested = ["all"]
    if not requested or "void" in requested:
        return []
    return requested


def visible_devices(spec: dict, config: dict) -> list[str]:
    """The device requests the hook acts on ([] for none; "all" for every GPU)."""
    if config.get("accept-nvidia-visible-devices-as-volume-mounts", False) is True:
        mounted = devices_from_mounts(spec)
        if mounted:
            return mounted
    env = env_map(go_field(go_field(spec, "process"), "env"))
    preferred = [v.strip() for v in str(config.get("swarm-resource", "")).split(",") if v.strip()]
    variables = [v for v in preferred if v in env] or ["NVIDIA_VISIBLE_DEVICES"]
    requested = devices_from_env(env, variables)
    if not requested:
        return []
    if privileged(spec) or config.get("accept-nvidia-visible-devices-envvar-when-unprivileged", True) is True:
        return requested
    return []


def config_path(version: str, exists) -> str:
    """The config.toml the hook of this package version reads; exists(path) -> bool."""
    driver = "/run/nvidia/driver/etc/nvidia-container-runtime/config.toml"
    parts = version.partition(":")[2 if ":" in version else 0].split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1].split("-")[0].split("~")[0]))
    except (IndexError, ValueError):
        major_minor = (0, 0)
    if major_minor < (1, 18) and exists(driver):
        return driver
    return "/etc/nvidia-container-runtime/config.toml"


def driver_capabilities(env: dict) -> list[str]:
    """getDriverCapabilities: every supported one for a legacy image without the variable, the
    default when it is unset or empty, else the ones named ("all": every one)."""
    legacy = "CUDA_VERSION" in env and "NVIDIA_REQUIRE_CUDA" not in env
    if "NVIDIA_DRIVER_CAPABILITIES" not in env:
        return list(SUPPORTED_CAPABILITIES) if legacy else list(DEFAULT_CAPABILITIES)
    asked = [c.strip() for c in env["NVIDIA_DRIVER_CAPABILITIES"].split(",") if c.strip()]
    if not asked:
        return list(DEFAULT_CAPABILITIES)
    return list(SUPPORTED_CAPABILITIES) if "all" in asked else asked


def grants(spec: dict, config: dict) -> dict:
    """Everything the hook and the runtime's modifiers would give the container: its GPUs
    ("devices"), the driver capabilities, and each thing every tenant of the node shares
    (empty when not granted)."""
    env = env_map(go_field(go_field(spec, "process"), "env"))
    devices = visible_devices(spec, config)
    mounted = [go_clean(str(go_field(m, "destination") or "")) for m in go_field(spec, "mounts") or []
               if go_clean(str(go_field(m, "source") or "")) == "/dev/null"]
    imex = [d for d in env.get("NVIDIA_IMEX_CHANNELS", "").split(",") if d.strip() and d.strip() != "all"]
    if config.get("accept-nvidia-visible-devices-as-volume-mounts", False) is True:
        imex += [m for m in mounted if m.startswith(DEVICE_MOUNT_ROOT + "/imex/")]
    annotations = go_field(spec, "annotations") or {}
    return {
        "devices": devices,
        "capabilities": driver_capabilities(env) if devices else [],
        "mig_config": env.get("NVIDIA_MIG_CONFIG_DEVICES", ""),
        "mig_monitor": env.get("NVIDIA_MIG_MONITOR_DEVICES", ""),
        "imex_channels": imex,
        "gated": [v for v in GATED if env.get(v) == "enabled"] if devices else [],
        "csv_mounts_all": env.get("NVIDIA_REQUIRE_JETPACK") == "csv-mounts=all",
        "cdi_annotations": [k for k in annotations if any(k.startswith(p) for p in CDI_ANNOTATION_PREFIXES)],
    }

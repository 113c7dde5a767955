"""Slices as the rest of the node sees them: what each GPU yields under the configuration, the
slice map the runtime wrapper reads, and the device behind a slice ID (for CUDA_VISIBLE_DEVICES).

A slice ID is `<GPU UUID>::<n>` or a MIG device's own `MIG-` UUID; its device is the part before
`::`. The wrapper (templates/gpuswarm-runtime.j2) is a standalone program and carries its own
copy of the syntax check below; the tests hold the two to the same inputs.
"""

from __future__ import annotations

import shlex
from typing import Mapping, Sequence

from .config import MAX_SLICES_PER_GPU, GpuConfig
from .probes.gpu import Gpu, compute_slices, fitting_slices, slices_of
from .render import render

ENV_PREFIX = "DOCKER_RESOURCE_"


def env_variable(kind: str) -> str:
    """The variable Swarm puts a task's slices in (swarmkit upper-cases prefix and kind)."""
    return ENV_PREFIX + kind.upper()


def for_config(gpus: Sequence[Gpu], cfg: GpuConfig) -> list[str]:
    return compute_slices(tuple(gpus), cfg.slices_per_gpu, cfg.slice_memory_bytes)


def device_of(slice_id: str) -> str:
    return slice_id.partition("::")[0]


def known_devices(gpus: Sequence[Gpu]) -> set[str]:
    """Every device ID NVML reports: GPUs and their MIG devices."""
    return {g.uuid for g in gpus} | {m.uuid for g in gpus for m in g.mig_devices}


def well_formed(slice_id: str) -> bool:
    device, sep, n = slice_id.partition("::")
    if sep and not (n.isascii() and n.isdigit() and n[0] != "0"):
        return False
    if device.startswith("MIG-") and sep:
        return False
    if not device.startswith(("GPU-", "MIG-")) or len(device) == 4:
        return False
    return all(c.isascii() and (c.isalnum() or c in "-/") for c in device)


def notes(gpus: Sequence[Gpu], cfg: GpuConfig) -> list[str]:
    """Why a GPU advertises nothing, or fewer slices than gpu.slice_memory fits: one sentence
    fragment per such GPU."""
    out = []
    for gpu in gpus:
        if slices_of(gpu, cfg.slices_per_gpu, cfg.slice_memory_bytes):
            fits = fitting_slices(gpu, cfg.slices_per_gpu, cfg.slice_memory_bytes)
            if not gpu.mig_enabled and fits > MAX_SLICES_PER_GPU:
                out.append(f"GPU {gpu.index} ({gpu.name}, {gpu.memory_bytes / 2**30:.1f} GiB) holds {fits} slices of "
                           f"gpu.slice_memory = {cfg.slice_memory}: it advertises the maximum of {MAX_SLICES_PER_GPU}, "
                           f"each with {gpu.memory_bytes / MAX_SLICES_PER_GPU / 2**30:.1f} GiB")
            continue
        if gpu.mig_enabled:
            out.append(f"GPU {gpu.index} ({gpu.name}) is in MIG mode without MIG devices: no slices")
        else:
            out.append(f"GPU {gpu.index} ({gpu.name}, {gpu.memory_bytes / 2**30:.1f} GiB) is smaller than "
                       f"gpu.slice_memory = {cfg.slice_memory}: no slices")
    return out


def slice_map_text(kind: str, slices: Sequence[str]) -> str:
    """/etc/gpuswarm-node/slices.json: what the runtime wrapper maps from, for every container."""
    return render("slices.json.j2", kind=kind, variable=env_variable(kind),
                  slices={s: device_of(s) for s in slices})


def cuda_visible_devices(value: str, variable: str) -> str:
    """The device list for CUDA_VISIBLE_DEVICES from a DOCKER_RESOURCE_<KIND> value; raises
    ValueError naming the first malformed slice. No value means no reservation: no device."""
    devices: list[str] = []
    for slice_id in value.split(",") if value else []:
        if not well_formed(slice_id):
            raise ValueError(f"slice {slice_id[:80]!r} in {variable} is malformed "
                             "(expected GPU-<uuid>::<n> or MIG-<uuid>)")
        device = device_of(slice_id)
        if device not in devices:
            devices.append(device)
    return ",".join(devices)


def cuda_env(environ: Mapping[str, str], kind: str) -> str:
    """sh that sets CUDA_VISIBLE_DEVICES from this container's slices: `eval` it."""
    variable = env_variable(kind)
    devices = cuda_visible_devices(environ.get(variable, ""), variable)
    return f"export CUDA_VISIBLE_DEVICES={shlex.quote(devices)}\n"

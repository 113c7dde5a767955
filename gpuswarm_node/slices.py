"""Slices, all of them here: what each GPU yields (the rule), the order Swarm hands them out in,
the `kind=slice` node-generic-resources strings daemon.json advertises, the slice map the runtime
wrapper reads, and the device behind a slice ID (for CUDA_VISIBLE_DEVICES).

A slice ID is `<GPU UUID>::<n>` or a MIG device's own `MIG-` UUID; its device is the part before
`::`. The wrapper (templates/gpuswarm-runtime.j2) is a standalone program and carries its own
copy of the syntax check below; the tests hold the two to the same inputs.
"""

from __future__ import annotations

import shlex
from typing import Collection, Mapping, Sequence

from .config import MAX_SLICES_PER_GPU, GpuConfig
from .probes.gpu import Gpu
from .render import render

ENV_PREFIX = "DOCKER_RESOURCE_"


def slices_of(gpu: Gpu, slices_per_gpu: int, slice_memory: int = 0) -> list[str]:
    """One GPU's slice IDs: its MIG devices' UUIDs when MIG is on, else `<uuid>::1` .. `<uuid>::N`.

    N is slices_per_gpu, or with slice_memory (bytes) as many slices as fit in the GPU's memory,
    rounded down: a slice that does not fit would promise memory the GPU does not have. Never more
    than MAX_SLICES_PER_GPU (config.py says why): a GPU that holds more slices of slice_memory gives
    that many, each with more memory than asked for.
    """
    if gpu.mig_enabled:
        return [m.uuid for m in gpu.mig_devices]
    return [f"{gpu.uuid}::{n}" for n in range(1, slice_count(gpu, slices_per_gpu, slice_memory) + 1)]


def slice_count(gpu: Gpu, slices_per_gpu: int, slice_memory: int = 0) -> int:
    """How many `<uuid>::<n>` slices a GPU outside MIG mode yields."""
    return min(fitting_slices(gpu, slices_per_gpu, slice_memory), MAX_SLICES_PER_GPU)


def fitting_slices(gpu: Gpu, slices_per_gpu: int, slice_memory: int = 0) -> int:
    """The count the settings ask for, before the maximum."""
    return gpu.memory_bytes // slice_memory if slice_memory > 0 else slices_per_gpu


def compute_slices(gpus: tuple[Gpu, ...] | list[Gpu], slices_per_gpu: int, slice_memory: int = 0) -> list[str]:
    """Slice IDs in the order Swarm should hand them out.

    The `::` cannot occur in a UUID, so a slice's device is always recoverable; MIG UUIDs are
    real device IDs already. Swarm assigns named resources in list order, so the list takes slice
    1 of every GPU before slice 2 of any: users spread across GPUs instead of filling the first.
    """
    per_gpu = [slices_of(gpu, slices_per_gpu, slice_memory) for gpu in gpus]
    depth = max((len(s) for s in per_gpu), default=0)
    return [s[i] for i in range(depth) for s in per_gpu if i < len(s)]


def generic_resources(kind: str, slices: Sequence[str]) -> list[str]:
    """daemon.json's node-generic-resources entries for the slices: `<kind>=<slice id>` each."""
    return [f"{kind}={s}" for s in slices]


def parse_generic_resource(entry: str) -> tuple[str, str]:
    """(kind, value) of one node-generic-resources entry."""
    kind, _, value = entry.partition("=")
    return kind, value


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


# How much of a GPU's memory the common frameworks take, by the variables they read. Slices of one
# GPU share its memory, while TensorFlow maps nearly all of it at start and JAX 75 %: the first such
# notebook on a GPU leaves its neighbours none (k8s-device-plugin #461). A group is the container's
# own as soon as it sets any variable of it. Cooperation, not enforcement: code can still ask for
# more (tf.config, jax's own options); only MIG, or MPS with a pinned memory limit, enforces.
MEMORY_SHARE_GROUPS: tuple[tuple[str, ...], ...] = (
    # TensorFlow: tensorflow/core/common_runtime/gpu/gpu_bfc_allocator.cc (GetAllowGrowthValue):
    # allocate as needed instead of (nearly) all at start. It has no variable for a cap.
    ("TF_FORCE_GPU_ALLOW_GROWTH",),
    # JAX, "GPU memory allocation" (docs.jax.dev): the fraction it preallocates and, with its
    # default BFC allocator, its limit; XLA_CLIENT_MEM_FRACTION is the newer name of the first.
    ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE"),
    # CuPy, "Environment variables" (docs.cupy.dev): its memory pool's limit, bytes or "N%".
    ("CUPY_GPU_MEMORY_LIMIT",),
)


def memory_share_percent(held: Sequence[str], slice_devices: Mapping[str, str]) -> int:
    """The share of its GPU's memory a container's slices stand for, in whole percent rounded down
    (so that the shares of one GPU never add up to more than it has): for each device it holds,
    its slices of that device over all the slices the node maps to it (`slice_devices`, slice ID
    -> device, the slice map's "slices"), the smallest over its devices; at least 1. A MIG device
    or all of a GPU's slices is 100."""
    counts: dict[str, int] = {}
    for slice_id in dict.fromkeys(held):
        device = slice_devices.get(slice_id, device_of(slice_id))
        counts[device] = counts.get(device, 0) + 1
    totals: dict[str, int] = {}
    for device in slice_devices.values():
        totals[device] = totals.get(device, 0) + 1
    return max(1, min((n * 100 // max(totals.get(d, n), n) for d, n in counts.items()), default=100))


def memory_share_env(percent: int | None, present: Collection[str]) -> list[tuple[str, str]]:
    """(variable, value) pairs that keep the common frameworks within a share of a GPU's memory
    (MEMORY_SHARE_GROUPS), for the groups of which the container sets no variable (`present`: the
    names it has). percent: from memory_share_percent; None where the share is not known (inside a
    container, without the node's slice map): then only what needs no share (TensorFlow's growth,
    JAX's on-demand allocation). Nothing at 100 %: the GPU is the container's own."""
    if percent is not None and percent >= 100:
        return []
    fraction = f"{percent / 100:.2f}" if percent is not None else ""
    values: tuple[list[tuple[str, str]], ...] = (
        [("TF_FORCE_GPU_ALLOW_GROWTH", "true")],
        [("XLA_PYTHON_CLIENT_MEM_FRACTION", fraction), ("XLA_CLIENT_MEM_FRACTION", fraction)] if fraction
        else [("XLA_PYTHON_CLIENT_PREALLOCATE", "false")],
        [("CUPY_GPU_MEMORY_LIMIT", f"{percent}%")] if fraction else [],
    )
    return [pair for group, pairs in zip(MEMORY_SHARE_GROUPS, values)
            if not any(name in present for name in group) for pair in pairs]


def cuda_env(environ: Mapping[str, str], kind: str) -> str:
    """sh that sets CUDA_VISIBLE_DEVICES from this container's slices, and the frameworks' memory
    settings that need no share (memory_share_env) when a slice is part of a GPU: `eval` it."""
    variable = env_variable(kind)
    value = environ.get(variable, "")
    devices = cuda_visible_devices(value, variable)
    lines = [f"export CUDA_VISIBLE_DEVICES={shlex.quote(devices)}\n"]
    if any("::" in s for s in value.split(",")):  # a slice of a GPU: how many share it is not known here
        lines += [f"export {name}={shlex.quote(v)}\n" for name, v in memory_share_env(None, environ)]
    return "".join(lines)

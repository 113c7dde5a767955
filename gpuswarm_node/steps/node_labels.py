"""node-labels: the manager's labels for this node describe its GPUs, so that a service can be
placed on the GPU it needs (`--constraint node.labels.gpuswarm.gpu.model==NVIDIA-A100-SXM4-40GB`).

The labels, all of them strings (Docker's node labels are), their names stable:

| label | value |
|---|---|
| `gpuswarm.gpu.model` | the GPUs' model as NVML names it, each character outside `A-Za-z0-9._-` a `-` (as NVIDIA's GPU feature discovery writes `nvidia.com/gpu.product`); `mixed` when the node's GPUs differ |
| `gpuswarm.gpu.count` | the number of GPUs |
| `gpuswarm.gpu.memory_mib` | the memory of the node's smallest GPU, in MiB (NVML's total) |
| `gpuswarm.slices` | the number of slices the node advertises |
| `gpuswarm.slice.memory_mib` | the memory of the smallest slice, in MiB (a GPU's memory over its slices) |
| `gpuswarm.driver.version` | the NVIDIA driver's version (NVML) |
| `gpuswarm.cuda.version` | the newest CUDA the driver supports, `12.4` (NVML) |

Other labels of the `gpuswarm.` prefix are removed, except `gpuswarm.health`, which
`gpuswarm-node watch` sets (watch.py) and this step keeps as it finds it; labels outside the
prefix are never touched. They are set through the manager (a worker cannot label itself),
through the hub's gate when it has one.

setup records what the manager holds once it is right: RECORD, the node's id, the manager and the
labels; the record's modification time is when the manager last said so. An SSH session to the
hub costs about half a second on the node and a login on the hub, and fleets run setup (a repair)
and status (a health check) from cron on every node, so:

- setup asks the manager when the record does not match (another node id, manager or GPU
  inventory, or no record yet) or is older than `swarm.labels_recheck` seconds (default an hour;
  0: at every run). When the manager's labels are still right, the run renews the record's time
  (Host.touch at the run's end: no change of the machine). Labels someone removed on the manager
  are so repaired within that time of the next setup.
- status trusts a matching record whatever its age (it changes nothing either way), and asks the
  manager only when the record does not match.

A record is trusted only when it is root's, a regular file and writable by nobody else (a record
anyone could write would let them hide a repair); otherwise it is written again.
"""

from __future__ import annotations

import json
import re

from .. import facts as F
from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok, skipped, write_wanted
from ..errors import GpuswarmError, NvmlUnavailable, StepFailed
from ..probes.gpu import Inventory
from ..slices import for_config, slices_of
from ..context import Context

MODEL = "gpuswarm.gpu.model"
HEALTH = "gpuswarm.health"  # watch's, kept as found (watch.HEALTH_LABEL)
MIB = 2**20
RECORD = "/var/lib/gpuswarm-node/node-labels.json"


def label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text.strip())[:128] or "unknown"


def gpu_labels(inventory: Inventory, cfg) -> dict[str, str]:
    """The labels for a node with these GPUs and this [gpu] configuration (see the module's table)."""
    gpus = inventory.gpus
    if not gpus:
        return {}
    models = {label_value(g.name) for g in gpus}
    slice_mib = []
    for gpu in gpus:
        slices = slices_of(gpu, cfg.slices_per_gpu, cfg.slice_memory_bytes)
        if gpu.mig_enabled:
            slice_mib += [m.memory_bytes // MIB for m in gpu.mig_devices]
        elif slices:
            slice_mib.append(gpu.memory_bytes // len(slices) // MIB)
    labels = {
        MODEL: models.pop() if len(models) == 1 else "mixed",
        "gpuswarm.gpu.count": str(len(gpus)),
        "gpuswarm.gpu.memory_mib": str(min(g.memory_bytes for g in gpus) // MIB),
        "gpuswarm.slices": str(len(for_config(gpus, cfg))),
        "gpuswarm.slice.memory_mib": str(min(slice_mib)) if slice_mib else "",
        "gpuswarm.driver.version": label_value(inventory.driver_version) if inventory.driver_version else "",
        "gpuswarm.cuda.version": label_value(inventory.cuda_version) if inventory.cuda_version else "",
    }
    return {k: v for k, v in labels.items() if v}


def describe(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def record_text(node_id: str, manager: str, labels: dict[str, str]) -> str:
    """RECORD's content: the labels `manager` holds for node `node_id`, as setup last found them."""
    return json.dumps({"manager": manager, "node_id": node_id, "labels": labels}, indent=2, sort_keys=True) + "\n"


def _record(ctx: Context) -> PlannedFile | None:
    """RECORD as this node's labels make it, or None where there is nothing to record (no
    manager, no GPUs, or not a worker of a swarm)."""
    if not ctx.config.swarm.manager:
        return None
    try:
        wanted = gpu_labels(ctx.inventory(), ctx.config.gpu)
    except NvmlUnavailable:
        return None
    if not wanted or ctx.docker.unreachable_reason():
        return None
    membership = ctx.docker.swarm()
    if membership.state != "active" or membership.is_manager:
        return None
    return PlannedFile(RECORD, record_text(membership.node_id, ctx.config.swarm.manager, wanted))


class NodeLabelsStep:
    name = "node-labels"
    description = "the manager's labels for this node describe its GPUs"

    def files(self, ctx: Context) -> list[PlannedFile]:
        record = _record(ctx)
        return [record] if record is not None else []

    def check(self, ctx: Context) -> Check:
        if not ctx.config.swarm.manager:
            return skipped("no swarm.manager: there is no hub to place notebooks by label")
        try:
            wanted = gpu_labels(ctx.inventory(), ctx.config.gpu)
        except NvmlUnavailable as exc:
            return blocked(f"the GPUs cannot be read, so their labels cannot be known: {exc.reason}",
                           waits_for=("nvidia-driver",))
        if not wanted:
            return blocked("this node has no GPU to describe")
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        membership = ctx.docker.swarm()
        action = Call(f"set the labels {describe(wanted)} on this node through {ctx.config.swarm.manager}",
                      lambda ctx: set_labels(ctx, wanted))
        if membership.state != "active" or membership.is_manager:
            # Planned after swarm-join: the node has no place on the manager yet.
            return needs_change("this node is not yet a worker of the manager's swarm; label it once it is", action)
        manager = ctx.config.swarm.manager
        record = _record(ctx)  # files()'s own statement of RECORD: every condition for it holds here
        trusted = record_trusted(ctx)
        recorded = trusted and ctx.fact(F.FILE_TEXT, RECORD) == record.content
        if recorded and ctx.options.diagnose:
            return ok(f"labelled {describe(wanted)}, as setup found them on {manager} ({RECORD}; "
                      "status does not ask the manager)")
        if recorded and RECORD not in ctx.touched:  # written by this run: its re-check asks the manager
            age, recheck = ctx.fact(F.AGE, RECORD), ctx.config.swarm.labels_recheck
            if age is not None and 0 <= age < recheck:
                # The time of the manager's answer, not its age: the detail reads the same at every
                # run until the manager is asked again (an age would change every second).
                confirmed = utc_time(ctx.fact(F.MTIME, RECORD))
                return ok(f"labelled {describe(wanted)}, as {manager} said at {confirmed} ({RECORD}); "
                          f"setup asks it again {duration(recheck)} after that (swarm.labels_recheck)",
                          data={"labels_confirmed_at": confirmed, "labels_age_s": int(age),
                                "labels_recheck_s": recheck})
        try:
            with ctx.manager_session() as session:
                have = session.node_labels(membership.node_id)
        except GpuswarmError as exc:
            return blocked(f"the manager cannot be asked for this node's labels: {exc.message()}")
        write = write_wanted(ctx, record, force=not trusted)
        kept = {HEALTH: have[HEALTH]} if HEALTH in have else {}
        if {k: v for k, v in have.items() if k != HEALTH} == wanted:
            if write is not None:
                return needs_change(f"labelled {describe(have)}; {RECORD} does not say so yet"
                                    + ("" if trusted else " (or is not root's alone)"), write)
            ctx.confirmed.append(RECORD)
            return ok(f"labelled {describe(have)}")
        stale = {k: v for k, v in have.items() if wanted.get(k) != v and k != HEALTH}
        if kept:  # set with the labels, so that setting them does not remove it
            action = Call(f"set the labels {describe(wanted)} on this node through {manager} (keeping "
                          f"{describe(kept)})", lambda ctx: set_labels(ctx, {**wanted, **kept}))
        return needs_change(f"the manager's labels for this node are {describe(have)}"
                            + (f" (stale: {', '.join(sorted(stale))})" if stale else ""),
                            action, *([write] if write is not None else []))


def record_trusted(ctx: Context) -> bool:
    """Whether RECORD may be believed: a regular file of root's that nobody else can write (or no
    file yet, which matches nothing)."""
    st = ctx.fact(F.FILE_STATUS, RECORD)
    return st is None or (st.uid == 0 and st.is_regular and not st.mode & 0o022)


def utc_time(epoch: float | None) -> str:
    """`epoch` (seconds since 1970) as ISO 8601 in UTC to the second, "2026-12-07T21:04:05Z"; "an
    unknown time" for None (the record vanished between two reads)."""
    if epoch is None:
        return "an unknown time"
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def duration(seconds: float) -> str:
    """`seconds` for a person: "40 s", "12 min", "3 h" (rounded down)."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def set_labels(ctx: Context, labels: dict[str, str]) -> None:
    membership = ctx.docker.swarm()
    if membership.state != "active" or membership.is_manager:
        raise StepFailed("this node is not a worker of the manager's swarm, so it cannot be labelled there.",
                         "Let swarm-join converge first (see its detail).")
    with ctx.manager_session() as session:
        session.set_labels(membership.node_id, labels)

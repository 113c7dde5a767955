"""node-exporter textfile metrics from a status run, for fleets watched by Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

from .engine import RunReport, State
from .errors import ConfigError
from .host import atomic_write


def render(report: RunReport, now: float | None = None) -> str:
    lines = [
        "# HELP gpuswarm_node_step_ok 1 when the step's check is ok (or skipped with a reason), else 0.",
        "# TYPE gpuswarm_node_step_ok gauge",
    ]
    for step in report.steps:
        healthy = int(step.state in (State.OK, State.SKIPPED))
        lines.append(f'gpuswarm_node_step_ok{{step="{step.name}",state="{step.state.value}"}} {healthy}')
    lines += [
        "# HELP gpuswarm_node_converged 1 when every step is ok or skipped.",
        "# TYPE gpuswarm_node_converged gauge",
        f"gpuswarm_node_converged {int(report.ok)}",
        "# HELP gpuswarm_node_status_timestamp_seconds When this status was taken.",
        "# TYPE gpuswarm_node_status_timestamp_seconds gauge",
        f"gpuswarm_node_status_timestamp_seconds {now if now is not None else time.time():.3f}",
    ]
    return "\n".join(lines) + "\n"


def check_path(path: str) -> None:
    """Refuse, before any check runs, a --prometheus FILE that node-exporter would never read or
    that cannot be written: status changes nothing else, so it creates no directory either.
    Raises ConfigError (exit 2)."""
    fix = "Give the path of a .prom file in an existing directory, e.g. /var/lib/node_exporter/textfile/gpuswarm_node.prom."
    target = Path(path)
    if not path or not target.name or path.endswith("/"):
        raise ConfigError(f"--prometheus {path!r} names no file.", fix)
    if target.suffix != ".prom":
        raise ConfigError(f"--prometheus {path} does not end in .prom, and node-exporter's textfile collector "
                          "reads only *.prom files.", fix)
    if target.is_dir():
        raise ConfigError(f"--prometheus {path} is a directory.", fix)
    if not target.parent.is_dir():
        raise ConfigError(f"--prometheus {path}: the directory {target.parent} does not exist.", fix)


def write(report: RunReport, path: str) -> None:
    # node-exporter may read at any moment: it must never see half a file. Concurrent status runs
    # may write it at once: each renames its own temp file (host.atomic_write).
    check_path(path)
    atomic_write(Path(path), render(report), 0o644)

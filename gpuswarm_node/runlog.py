"""The run log: one JSON line per step of every setup, for operators and fleet tooling."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from .engine import RunReport

RUN_LOG = "/var/log/gpuswarm-node/runs.jsonl"


def append(report: RunReport, path: str = RUN_LOG) -> None:
    run_id = uuid.uuid4().hex[:12]
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    lines = []
    for step in report.steps:
        lines.append(json.dumps({
            "time": now, "run": run_id, "mode": report.mode, "step": step.name,
            "before": (step.before or step.state).value, "actions": step.actions,
            "after": step.state.value, "changed": step.changed, "seconds": round(step.seconds, 3),
            "error": step.detail if step.state.value == "failed" else None,
        }))
    log = Path(path)
    log.parent.mkdir(parents=True, exist_ok=True)
    # One write of whole lines with O_APPEND: concurrent readers never see half a record.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode())
    finally:
        os.close(fd)

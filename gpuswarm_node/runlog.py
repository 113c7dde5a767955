"""The run log: one JSON line per step of every setup, for operators and fleet tooling."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from .engine import RunReport
from .host import LOG_DIR, append_json_lines, checked_dir

RUN_LOG = f"{LOG_DIR}/runs.jsonl"


def prepare(path: str = RUN_LOG) -> None:
    """Refuse before a run changes anything, not after, when the log's directory is unsafe."""
    checked_dir(Path(path).parent, 0o755, "run log directory")


def append(report: RunReport, path: str = RUN_LOG) -> None:
    run_id = uuid.uuid4().hex[:12]
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    records = []
    # When each step began, in seconds from the first one's start: a step run alongside others
    # (the image pull) overlaps them, so the steps' `seconds` add up to more than the run took.
    first = min((step.started for step in report.steps), default=0.0)
    for step in report.steps:
        records.append({
            "time": now, "run": run_id, "mode": report.mode, "step": step.name,
            "before": (step.before or step.state).value, "actions": step.actions,
            "after": step.state.value, "changed": step.changed, "seconds": round(step.seconds, 3),
            "offset": round(step.started - first, 3),
            "error": step.detail if step.state.value == "failed" else None,
        })
    log = Path(path)
    checked_dir(log.parent, 0o755, "run log directory")
    append_json_lines(log, records, 0o640, "run log")


def append_records(records: list[dict], path: str = RUN_LOG) -> None:
    """Append records of a command that runs no plan (watch's transitions), in the same file and
    form: one JSON object a line, with "time", "mode", "step", "before", "after", "actions"."""
    run_id = uuid.uuid4().hex[:12]
    log = Path(path)
    checked_dir(log.parent, 0o755, "run log directory")
    append_json_lines(log, [{"run": run_id, **r} for r in records], 0o640, "run log")

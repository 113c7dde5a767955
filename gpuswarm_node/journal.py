"""The tool's own record of what it changed, so `reset` reverts facts rather than guesses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .host import append_record, checked_dir, read_record

JOURNAL = "/var/lib/gpuswarm-node/changes.jsonl"


class Journal:
    def __init__(self, path: str = JOURNAL) -> None:
        self.path = Path(path)

    def ready(self) -> None:
        """Refuse, before any change, a journal directory someone else could change (reset
        restores files as root from what the journal names)."""
        checked_dir(self.path.parent, 0o700, "journal directory")

    def record(self, **entry) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}) + "\n"
        self.ready()
        # fsync: a record that is lost would make reset miss a change.
        append_record(self.path, line, 0o600, "journal", sync=True)

    def entries(self) -> list[dict]:
        if not self.path.parent.exists():
            return []
        self.ready()
        text = read_record(self.path, "journal")
        if text is None:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def archive(self) -> Path | None:
        """Set the record aside after a reset, so a second reset finds nothing to undo."""
        if not self.path.exists():
            return None
        done = self.path.with_name(f"{self.path.name}.reset-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.path, done)
        return done

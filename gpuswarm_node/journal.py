"""The tool's own record of what it changed, so `reset` reverts facts rather than guesses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

JOURNAL = "/var/lib/gpuswarm-node/changes.jsonl"


class Journal:
    def __init__(self, path: str = JOURNAL) -> None:
        self.path = Path(path)

    def record(self, **entry) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)  # a record that is lost would make reset miss a change
        finally:
            os.close(fd)

    def entries(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def archive(self) -> Path | None:
        """Set the record aside after a reset, so a second reset finds nothing to undo."""
        if not self.path.exists():
            return None
        done = self.path.with_name(f"{self.path.name}.reset-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.path, done)
        return done

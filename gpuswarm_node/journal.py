"""The tool's own record of what it changed, so `reset` reverts facts rather than guesses.

One JSON object a line (changes.jsonl is append-only, fsync-ed). Every change carries the data
that reverses it, as an `undo` object ({"op": ..., ...}, see Undo): the file's backup, the group
membership, the pulled image, the swarm membership. `reset` replays those objects newest first and
never reads an action's wording.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .host import append_json_lines, checked_dir, read_record

JOURNAL = "/var/lib/gpuswarm-node/changes.jsonl"

# What `reset` can do with an undo record: restore a file from its backup, remove a file the tool
# created, remove a directory it created (when empty), unmount, take a user out of a group,
# remove a pulled image, leave the swarm, disable a unit it enabled, stop a service it started,
# delete the metadata guard's firewall rules, remove a Docker network or service it created (hub
# init), or keep something on purpose (said in `note`).
UNDO_OPS = ("restore", "remove", "rmdir", "umount", "leave-group", "remove-image", "leave-swarm", "disable-unit",
            "stop-unit", "unguard", "remove-network", "remove-service", "keep")


@dataclass(frozen=True)
class Undo:
    """What reverses one change, as the journal stores it (only the fields an op uses are set)."""

    op: str
    path: str = ""
    backup: str = ""
    user: str = ""
    group: str = ""
    image: str = ""
    unit: str = ""
    network: str = ""
    service: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.op not in UNDO_OPS:
            raise ValueError(f"unknown undo op {self.op!r}")

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_record(cls, data: dict) -> "Undo":
        known = {f.name for f in fields(cls)}
        return cls(**{k: str(v) for k, v in data.items() if k in known and v is not None})


def keep(note: str) -> Undo:
    return Undo("keep", note=note)


class Journal:
    def __init__(self, path: str = JOURNAL) -> None:
        self.path = Path(path)

    def ready(self) -> None:
        """Refuse, before any change, a journal directory someone else could change (reset
        restores files as root from what the journal names)."""
        checked_dir(self.path.parent, 0o700, "journal directory")

    def record(self, **entry) -> None:
        self.ready()
        # fsync: a record that is lost would make reset miss a change.
        append_json_lines(self.path, [{"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}], 0o600, "journal",
                          sync=True)

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

"""What `logs` reads back: the last runs of the run log (runlog.py) and the apt log the apt steps
keep (steps/apt.py), read-only, from their end, for people and for --json.

The run log, `/var/log/gpuswarm-node/runs.jsonl`: one JSON object a line, one line per step of a
run of setup, leave or reset (all of one run written at once, so its lines are together), and one
per transition of watch; each has "time" (when the run was logged, its end:
%Y-%m-%dT%H:%M:%S%z), "run" (its id), "mode" (setup, leave, reset or watch), "step", "before",
"after", "changed", "actions", "error" (null, or the failure), and for a plan's steps "seconds" and
"offset" (when the step began, in seconds from the run's first step).

The apt log, `/var/log/gpuswarm-node/apt.log` (host.LocalHost.run with `log=`): every apt-get and
dpkg run's whole output between `=== <time> <command>` and `=== exit <code> after <seconds> s`.

Both are root's (0640): without root they are usually unreadable, which `LogUnreadable` says in
one sentence. Outside text in them (apt's output, a step's error) is cleaned (sanitize.clean)
before it is returned.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

from .errors import ConfigError, GpuswarmError
from .host import LOG_DIR
from .runlog import RUN_LOG
from .sanitize import clean

APT_LOG = f"{LOG_DIR}/apt.log"  # steps/apt.py: <ctx.log_dir>/apt.log
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
BLOCK = 1 << 16  # bytes read at a time, from the end of a log
APT_HEADER = re.compile(r"=== (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}) (.*)")
APT_FOOTER = re.compile(r"=== exit (-?\d+) after ([0-9.]+) s")


class LogUnreadable(GpuswarmError):
    """A log that is there but cannot be read (permission, not a file, a symlink)."""


@dataclass
class Run:
    """One run of the run log: its records, in the order they were logged."""

    run: str
    time: str
    command: str
    records: list[dict] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return [r["step"] for r in self.records if r.get("changed")]

    @property
    def failed(self) -> list[str]:
        return [r["step"] for r in self.records if r.get("after") == "failed" or r.get("error")]

    @property
    def blocked(self) -> list[str]:
        return [r["step"] for r in self.records if r.get("after") == "blocked"]

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(r["step"], clean(r["error"])) for r in self.records if r.get("error")]

    @property
    def seconds(self) -> float | None:
        """How long the run took (its last step's end from its first step's start), or None for
        records without timings (watch's)."""
        ends = [r["offset"] + r["seconds"] for r in self.records
                if isinstance(r.get("offset"), (int, float)) and isinstance(r.get("seconds"), (int, float))]
        return round(max(ends), 3) if ends else None

    def began(self) -> datetime | None:
        """When the run began: its logged time less its length."""
        try:
            end = datetime.strptime(self.time, TIME_FORMAT)
        except ValueError:
            return None
        from datetime import timedelta

        return end - timedelta(seconds=self.seconds or 0.0)

    def as_json(self) -> dict:
        return {"run": self.run, "time": self.time, "command": self.command, "seconds": self.seconds,
                "changed": self.changed, "failed": self.failed, "blocked": self.blocked,
                "errors": [{"step": step, "error": error} for step, error in self.errors],
                "steps": [{"step": r["step"], "before": r.get("before"), "after": r.get("after"),
                           "changed": bool(r.get("changed")), "actions": [clean(a) for a in r.get("actions") or []],
                           "error": clean(r["error"]) if r.get("error") else None} for r in self.records]}


@dataclass
class AptRun:
    """One apt-get or dpkg run of the apt log."""

    time: str
    command: str
    output: str
    exit: int | None  # None: no end line (it still runs, or was killed)
    seconds: float | None

    def as_json(self) -> dict:
        return {"time": self.time, "command": self.command, "exit": self.exit, "seconds": self.seconds,
                "output": self.output}


def _open(path: str, what: str) -> int | None:
    """A read-only descriptor of the log at `path`, None when there is none. Never through a
    symlink, never a FIFO or device (it would block or mean nothing), and only a file of root's
    or of the user running this: what it shows must be what the tool wrote."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(f"The {what} {path} cannot be read by this user (permission denied).",
                          f"Run it with sudo (`sudo gpuswarm-node logs`), or give this user read access to "
                          f"{os.path.dirname(path)}.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LogUnreadable(f"The {what} {path} is a symlink, so it is not the tool's log.",
                                f"Move it aside (mv {path} {path}.suspect); the next run writes a new one.") from None
        raise LogUnreadable(f"The {what} {path} cannot be read: {exc.strerror}.",
                            "Check the file and the disk it is on.") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid not in (0, os.geteuid()):
        problem = f"is owned by uid {st.st_uid}, not root"
    if problem:
        os.close(fd)
        raise LogUnreadable(f"The {what} {path} {problem}, so it is not the tool's log.",
                            f"Move it aside (mv {path} {path}.suspect); the next run writes a new one.")
    return fd


def lines_from_end(fd: int, block: int = BLOCK) -> Iterator[str]:
    """The lines of the file open at `fd`, last first, without reading more of it than asked for.
    An unfinished last line (no newline yet) is one too; empty lines are left out."""
    position = os.lseek(fd, 0, os.SEEK_END)
    rest = b""
    while position > 0:
        size = min(block, position)
        position -= size
        rest = os.pread(fd, size, position) + rest
        parts = rest.split(b"\n")
        rest = parts[0]
        for line in reversed(parts[1:]):
            if line:
                yield line.decode("utf-8", errors="replace")
    if rest:
        yield rest.decode("utf-8", errors="replace")


def last_runs(count: int, path: str = RUN_LOG) -> tuple[list[Run], int] | None:
    """The last `count` runs of the run log, oldest first, and how many of the lines read were
    not records (torn or foreign lines, skipped); None when there is no run log.
    Raises ConfigError (exit 2) when this user may not read it, LogUnreadable when it is not the
    tool's file or cannot be read."""
    fd = _open(path, "run log")
    if fd is None:
        return None
    runs: list[Run] = []  # newest first while reading
    skipped = 0
    try:
        for line in lines_from_end(fd, BLOCK):
            try:
                record = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), str):
                skipped += 1
                continue
            run_id = str(record.get("run", ""))
            if not runs or runs[-1].run != run_id:
                if len(runs) == count:
                    break  # the records of one run are together: the runs asked for are complete
                runs.append(Run(run_id, clean(str(record.get("time", "?")), lines=False),
                                clean(str(record.get("mode", "?")), lines=False)))
            runs[-1].records.insert(0, record)
    except OSError as exc:
        raise LogUnreadable(f"The run log {path} cannot be read: {exc.strerror}.",
                            "Check the file and the disk it is on.") from None
    finally:
        os.close(fd)
    return list(reversed(runs)), skipped


def apt_runs(since: datetime | None, count: int, path: str = APT_LOG) -> list[AptRun] | None:
    """The apt log's runs that began at `since` or later, oldest first (`since` None: its last
    `count` runs); None when there is no apt log. Raises as last_runs."""
    fd = _open(path, "apt log")
    if fd is None:
        return None
    found: list[AptRun] = []  # newest first while reading
    body: list[str] = []  # the lines below the header being looked for, last first
    try:
        for line in lines_from_end(fd, BLOCK):
            header = APT_HEADER.fullmatch(line)
            if not header:
                body.append(line)
                continue
            try:
                began = datetime.strptime(header.group(1), TIME_FORMAT)
            except ValueError:
                began = None
            if since is not None and began is not None and began < since:
                break
            lines = list(reversed(body))
            body = []
            footer = APT_FOOTER.fullmatch(lines[-1]) if lines else None
            if footer:
                lines.pop()
            found.append(AptRun(header.group(1), clean(header.group(2), lines=False), clean("\n".join(lines)),
                                int(footer.group(1)) if footer else None,
                                float(footer.group(2)) if footer else None))
            if since is None and len(found) == count:
                break
    except OSError as exc:
        raise LogUnreadable(f"The apt log {path} cannot be read: {exc.strerror}.",
                            "Check the file and the disk it is on.") from None
    finally:
        os.close(fd)
    return list(reversed(found))

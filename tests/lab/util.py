"""Small helpers shared by the lab's tests."""

from __future__ import annotations

import sys
import time
from pathlib import Path

WAIT = 60.0


def wait_for(what: str, predicate, timeout: float = WAIT, interval: float = 0.5, explain=None):
    """Poll until `predicate()` is truthy and return it; fail the test with `what` on timeout,
    and with what `explain()` says about the state it was stuck in."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            seen = f"; last seen: {explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(interval)


# Phase timings of the lab, printed at the end of the run by tests/conftest.py.
TIMINGS: dict[str, float] = {}


class timed:
    """Adds the time spent inside the block to TIMINGS[phase]."""

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def __enter__(self) -> "timed":
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.started
        TIMINGS[self.phase] = TIMINGS.get(self.phase, 0.0) + self.seconds


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command name) of every process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # The name is in parentheses and may hold spaces; the parent pid follows the state.
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        found.append((int(entry.name), int(stat[stat.rindex(")") + 2:].split()[1]), name))
    return found


class Started:
    """A lab part used as `with Part(...) as part:`: started on entry, closed on exit, and closed
    again (safely) when starting failed half-way."""

    def start(self):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def gate_program(directory: Path) -> Path:
    """The program a gated key's forced command names, written in `directory`: this checkout's CLI
    (on a real hub, /usr/local/bin/gpuswarm-node)."""
    program = directory / "gpuswarm-node"
    repo = Path(__file__).resolve().parents[2]
    program.write_text(f"#!/bin/sh\nPYTHONPATH={repo} exec {sys.executable} -m gpuswarm_node.cli \"$@\"\n")
    program.chmod(0o755)
    return program

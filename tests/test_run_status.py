"""engine.run_status: every check on threads of its own, the report in the steps' order."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from gpuswarm_node import config
from gpuswarm_node.context import Context
from gpuswarm_node.engine import ok, run_status

from .fakes import FakeHost


@dataclass
class Slow:
    name: str
    seconds: float
    seen: list

    description = "waits, then answers"

    def check(self, ctx):
        self.seen.append(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.name == "raises":
            raise RuntimeError("a check's own bug")
        return ok(f"{self.name} waited {self.seconds} s")

    def files(self, ctx):
        return []


def context() -> Context:
    return Context(config=config.from_tables({}), host=FakeHost(), inventory_reader=lambda: None)


@dataclass
class Meeting:
    """A check that returns only once `meeting.parties` checks are in their check at the same
    time: it can pass only where the checks run at once, whatever the machine's speed (the
    timeout is for a failure only). Counts how many were ever in at once."""

    name: str
    meeting: threading.Barrier
    counts: dict

    description = "meets the others"

    def check(self, ctx):
        with self.counts["lock"]:
            self.counts["in"] += 1
            self.counts["most"] = max(self.counts["most"], self.counts["in"])
        try:
            self.meeting.wait()
        finally:
            with self.counts["lock"]:
                self.counts["in"] -= 1
        return ok(f"{self.name} met {self.meeting.parties - 1} others")

    def files(self, ctx):
        return []


def test_checks_run_at_once_on_at_most_four_threads_and_the_report_keeps_their_order():
    meeting = threading.Barrier(4, timeout=60)
    counts = {"lock": threading.Lock(), "in": 0, "most": 0}
    steps = [Meeting(f"s{i}", meeting, counts) for i in range(8)]
    report = run_status(steps, context())
    assert [s.name for s in report.steps] == [f"s{i}" for i in range(8)]
    assert all(s.state.value == "ok" for s in report.steps), [s.detail for s in report.steps]
    assert counts["most"] == 4  # four at once, never more than the workers


def test_a_check_that_raises_is_reported_failed_and_the_others_still_run():
    seen: list[str] = []
    report = run_status([Slow("a", 0, seen), Slow("raises", 0, seen), Slow("b", 0, seen)], context())
    assert [(s.name, s.state.value) for s in report.steps] == [("a", "ok"), ("raises", "failed"), ("b", "ok")]
    assert "a check's own bug" in report.steps[1].detail


def test_an_error_of_the_engine_itself_is_raised_not_lost(monkeypatch):
    from gpuswarm_node import engine

    def broken(step, check, started, **kw):
        raise KeyError("the report could not be made")

    monkeypatch.setattr(engine, "_report", broken)
    with pytest.raises(KeyError, match="the report could not be made"):
        run_status([Slow("a", 0, []), Slow("b", 0, [])], context())


def test_no_steps_is_an_empty_report():
    assert run_status([], context()).steps == []

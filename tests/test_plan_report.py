"""What a report says about actions: setup names what ran (the failing action included, nothing after
it), a dry run what would run, each file write with its diff."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuswarm_node import config
from gpuswarm_node.engine import Call, PlannedFile, WriteFile, blocked, needs_change, ok, run_setup
from gpuswarm_node.errors import StepFailed
from gpuswarm_node.context import Context

from .fakes import FakeHost


def boom(_ctx) -> None:
    raise StepFailed("the second action failed.")


@dataclass
class Failing:
    name: str = "failing"
    description: str = "writes a file, then fails"
    calls: list = field(default_factory=list)

    def check(self, ctx):
        return needs_change("two actions", WriteFile("/etc/x.conf", "x = 1\n"), Call("explode", boom),
                            Call("never", lambda c: self.calls.append("never")))

    def files(self, ctx):
        return [PlannedFile("/etc/x.conf", "x = 1\n")]


@dataclass
class Blocked:
    name: str = "blocked"
    description: str = "cannot go on"

    def check(self, ctx):
        return blocked("waits for something")

    def files(self, ctx):
        return []


def context() -> Context:
    return Context(config=config.from_tables({}), host=FakeHost())


def test_setup_names_what_ran_with_the_diff() -> None:
    step = Failing()
    report = run_setup([step], context())
    assert step.calls == []
    [row] = report.as_json()["steps"]
    assert row["state"] == "failed"
    assert row["actions"][0]["description"] == "create /etc/x.conf" and "+x = 1" in row["actions"][0]["diff"]
    assert row["actions"][1:] == [{"description": "explode"}]  # "never" did not run
    assert report.as_json()["dry_run"] is False and report.as_json()["ok"] is False


def test_dry_run_names_what_would_run_and_what_stops_it() -> None:
    report = run_setup([Failing(), Blocked()], context(), dry_run=True)
    plan = report.as_json()
    assert plan["dry_run"] is True and plan["ok"] is False and plan["changed"] == []
    assert [a["description"] for a in plan["steps"][0]["actions"]] == ["create /etc/x.conf", "explode", "never"]
    assert [s.name for s in report.stoppers] == ["blocked"]
    assert report.plan_ok is False


def test_a_plan_of_changes_only_is_ok() -> None:
    @dataclass
    class Fine:
        name: str = "fine"
        description: str = ""

        def check(self, ctx):
            return ok("fine")

        def files(self, ctx):
            return []

    report = run_setup([Fine(), Failing()], context(), dry_run=True)
    assert report.plan_ok and report.as_json()["ok"] is True
    assert report.ok is False  # not converged now: only the plan is

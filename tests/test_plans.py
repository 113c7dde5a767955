"""setup, leave and reset are plans of one engine: preflight before any action, paired actions
whose closing half runs whatever happens between, a dry run that only looks."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuswarm_node import config, lifecycle
from gpuswarm_node.context import Context
from gpuswarm_node.engine import Call, Paired, Plan, Preflight, needs_change, ok, run_plan
from gpuswarm_node.errors import StepFailed

from .fakes import FakeDocker, FakeHost, FakeManager


def context(tables=None, swarm=None) -> tuple[Context, FakeHost, FakeDocker]:
    host = FakeHost()
    docker = FakeDocker.from_case({"swarm": swarm or {"state": "active", "node_id": "n1"}})
    return Context(config=config.from_tables(tables or {}), host=host, docker_factory=lambda: docker), host, docker


@dataclass
class Bracketed:
    """A step whose actions are paired: open, a failing middle, close."""

    name: str = "bracketed"
    description: str = "opens, fails, closes"
    log: list = field(default_factory=list)

    def check(self, ctx):
        if "closed" in self.log:
            return ok("closed")

        def fail(ctx):
            self.log.append("middle")
            raise StepFailed("the middle failed.")

        return needs_change("open it", Paired(Call("open", lambda c: self.log.append("opened")),
                                              (Call("middle", fail), Call("never", lambda c: self.log.append("x"))),
                                              Call("close", lambda c: self.log.append("closed"))))

    def files(self, ctx):
        return []


def test_the_closing_half_of_a_pair_runs_when_the_middle_fails():
    step = Bracketed()
    report = run_plan(Plan("setup", (step,)), context()[0])
    assert step.log == ["opened", "middle", "closed"]
    [row] = report.steps
    assert row.state.value == "failed" and row.actions == ["open", "middle", "close"]


def test_a_failed_preflight_check_runs_no_action_and_is_named():
    step = Bracketed()
    plan = Plan("setup", (step,), (Preflight("ssh-key", lambda ctx: "swarm.ssh_key /k does not exist"),
                                   Preflight("registry-ca", lambda ctx: None)))
    report = run_plan(plan, context()[0])
    assert step.log == [] and not report.ok and not report.plan_ok
    assert report.as_json()["preflight"] == [
        {"name": "ssh-key", "ok": False, "detail": "swarm.ssh_key /k does not exist"},
        {"name": "registry-ca", "ok": True}]
    assert report.steps[0].state.value == "needs-change"  # checked, never applied


MANAGER = {"swarm": {"manager": "198.18.0.1"}}


def test_leave_dry_run_plans_drain_leave_and_removal_and_changes_nothing(monkeypatch):
    ctx, host, docker = context(MANAGER)
    monkeypatch.setattr(lifecycle, "drain_and_wait", lambda ctx: pytest_fail("drained in a dry run"))
    report = run_plan(lifecycle.leave_plan(), ctx, dry_run=True)
    assert [(s.name, s.state.value) for s in report.steps] == [
        ("drain", "needs-change"), ("leave-swarm", "needs-change"), ("manager-node-list", "needs-change")]
    assert report.plan_ok and docker.calls == [] and host.actions == []


def test_leave_drains_before_it_leaves_and_then_removes_the_node(monkeypatch):
    ctx, _, docker = context(MANAGER)
    order: list[str] = []

    def drain(ctx):
        order.append("drain")
        ctx.outcomes.update({"drained": "n1", "tasks moved": "3"})
        return 3

    def remove(ctx):
        order.append(f"remove {ctx.outcomes['left']}")
        ctx.outcomes["removed"] = ctx.outcomes["left"]

    monkeypatch.setattr(lifecycle, "drain_and_wait", drain)
    monkeypatch.setattr(lifecycle, "_remove_from_manager", remove)
    report = run_plan(lifecycle.leave_plan(), ctx)
    assert order == ["drain", "remove n1"] and docker.calls == ["leave"]
    assert report.ok and report.changed == ["drain", "leave-swarm", "manager-node-list"]


def test_leave_goes_through_the_contexts_manager_session_only():
    ctx, _, docker = context(MANAGER)
    manager = FakeManager({"tasks": ["t1", "t2"]})
    ctx.manager_session_factory = manager.session
    report = run_plan(lifecycle.leave_plan(), ctx)
    assert manager.reads == ["tasks n1", "availability n1 drain", "tasks n1", "state n1", "remove n1"]
    assert docker.calls == ["leave"] and report.ok
    assert report.steps[-1].detail == "the manager no longer lists n1"


def test_leave_refuses_a_manager_node_before_any_change(monkeypatch):
    ctx, _, docker = context(MANAGER, swarm={"state": "active", "node_id": "n1", "is_manager": True})
    monkeypatch.setattr(lifecycle, "drain_and_wait", lambda ctx: pytest_fail("drained a manager"))
    report = run_plan(lifecycle.leave_plan(), ctx)
    assert [p.name for p in report.refused] == ["leave-drainable"]
    assert "swarm manager" in report.refused[0].problem and docker.calls == []


def test_leave_without_a_swarm_is_ok():
    ctx, _, docker = context(swarm={"state": "inactive"})
    report = run_plan(lifecycle.leave_plan(), ctx)
    assert report.ok and report.changed == [] and docker.calls == []


def pytest_fail(message: str):
    import pytest

    pytest.fail(message)


def test_every_command_and_call_is_journaled_with_its_undo(tmp_path):
    from gpuswarm_node.engine import run_command
    from gpuswarm_node.journal import Journal, Undo
    from gpuswarm_node.reset import plan

    @dataclass
    class Joins:
        name: str = "swarm-join"
        description: str = "adds a user and joins"

        def check(self, ctx):
            if ctx.ran:
                return ok("done")
            return needs_change("not yet", run_command("usermod", "--append", "--groups", "docker", "--", "bob",
                                                       undo=Undo("leave-group", user="bob", group="docker")),
                                Call("join somewhere", lambda c: None, Undo("leave-swarm")))

        def files(self, ctx):
            return []

    ctx, _, _ = context()
    ctx.journal = Journal(str(tmp_path / "j" / "changes.jsonl"))
    report = run_plan(Plan("setup", (Joins(),)), ctx)
    assert report.ok
    entries = ctx.journal.entries()
    assert [(e["kind"], e["step"]) for e in entries] == [("run", "swarm-join"), ("call", "swarm-join")]
    assert plan(entries) == [Undo("leave-swarm"), Undo("leave-group", user="bob", group="docker")]


def test_a_step_is_ok_only_when_the_re_check_after_its_actions_says_so():
    @dataclass
    class Stubborn:
        name: str = "stubborn"
        description: str = "its action changes nothing"

        def check(self, ctx):
            return needs_change("still wrong", Call("try", lambda c: None))

        def files(self, ctx):
            return []

    report = run_plan(Plan("setup", (Stubborn(),)), context()[0])
    [row] = report.steps
    assert row.state.value == "failed" and not row.changed
    assert row.detail == "still not converged after applying: still wrong"


def test_the_end_of_run_summary_names_each_step_that_failed_or_is_blocked_with_its_reason():
    from rich.console import Console

    from gpuswarm_node.engine import blocked
    from gpuswarm_node.ui import print_summary

    @dataclass
    class Waits:
        name: str = "waits"
        description: str = "blocked"

        def check(self, ctx):
            return blocked("waits for a reboot")

        def files(self, ctx):
            return []

    report = run_plan(Plan("setup", (Bracketed(), Waits())), context()[0])
    console = Console(record=True, width=300)
    print_summary(console, report)
    lines = console.export_text().splitlines()
    assert "bracketed failed: the middle failed." in lines and "waits blocked: waits for a reboot" in lines
    assert "node converged." not in lines


def test_a_write_other_than_the_step_declares_fails_the_step_before_it_runs():
    """`render` prints a step's files(); a check that plans another file, or other content, than
    files() states is refused by the engine: render equals what setup writes by construction."""
    from gpuswarm_node.engine import PlannedFile, WriteFile

    @dataclass
    class Liar:
        name: str = "liar"
        description: str = "renders one thing, writes another"
        path: str = "/etc/x.conf"

        def check(self, ctx):
            return needs_change("x.conf is missing", WriteFile(self.path, "written\n", None))

        def files(self, ctx):
            return [PlannedFile("/etc/x.conf", "rendered\n")]

    for step in (Liar(), Liar(path="/etc/elsewhere.conf")):
        ctx, host, _docker = context()
        report = run_plan(Plan("setup", (step,)), ctx)
        [row] = report.steps
        assert row.state.value == "failed" and "render would differ from setup" in row.detail
        assert host.actions == []


@dataclass
class Confirms:
    """A step whose check asked a record's source again and found the record still true."""

    name: str = "confirms"
    description: str = "asks the source of its record"
    record: str = "/var/lib/gpuswarm-node/node-labels.json"

    def check(self, ctx):
        ctx.confirmed.append(self.record)
        return ok("the source says what the record says")

    def files(self, ctx):
        return []


def test_a_record_confirmed_by_its_source_has_its_time_renewed_at_the_runs_end_without_a_change():
    ctx, host, _ = context()
    host.files[Confirms.record] = "{}"
    report = run_plan(Plan("setup", (Confirms(), Confirms())), ctx)
    assert host.actions == [f"touch {Confirms.record}"]  # once, however many checks confirmed it
    assert host.mtimes[Confirms.record] > 0 and not any(row.changed for row in report.steps)


def test_a_dry_run_or_a_failed_preflight_renews_no_record():
    for dry_run, preflight in ((True, ()), (False, (Preflight("ssh-key", lambda ctx: "no key"),))):
        ctx, host, _ = context()
        host.files[Confirms.record] = "{}"
        run_plan(Plan("setup", (Confirms(),), preflight), ctx, dry_run=dry_run)
        assert host.actions == [] and Confirms.record not in host.mtimes


@dataclass
class NoDockerYet:
    """The docker step on a fresh machine: docker.io is not installed, so it would install it."""

    name: str = "docker"
    description: str = "docker.io installed and running"

    def check(self, ctx):
        return needs_change("docker.io is not installed", Call("install docker.io", lambda c: None))

    def files(self, ctx):
        return []


def test_a_dry_run_on_a_fresh_machine_shows_the_steps_docker_would_unblock_as_pending_on_it():
    """Without Docker, image and swarm-join cannot look; the docker step before them installs it.
    The dry run says they wait for it and that the plan can converge (exit 0), not `blocked`."""
    from gpuswarm_node.cli import exit_code
    from gpuswarm_node.steps.image import ImageStep
    from gpuswarm_node.steps.swarm_join import SwarmJoinStep

    ctx, _host, docker = context({"image": {"name": "hub:5000/notebook:latest"}, **MANAGER})
    docker.reachable = False
    report = run_plan(Plan("setup", (NoDockerYet(), ImageStep(), SwarmJoinStep())), ctx, dry_run=True)
    states = {s.name: (s.state.value, s.detail) for s in report.steps}
    assert states["image"][0] == "pending" and states["image"][1].startswith("waits for docker: ")
    assert states["swarm-join"][0] == "pending" and states["swarm-join"][1].startswith("waits for docker: ")
    assert report.plan_ok and exit_code(report) == 0 and not report.stoppers
    assert report.as_json()["steps"][1]["state"] == "pending"


def test_without_the_step_it_waits_for_in_the_plan_a_step_stays_blocked():
    """`--skip docker` on a machine without Docker: nothing in this run brings it, so it is blocked."""
    from gpuswarm_node.cli import exit_code
    from gpuswarm_node.steps.image import ImageStep

    ctx, _host, docker = context({"image": {"name": "hub:5000/notebook:latest"}})
    docker.reachable = False
    report = run_plan(Plan("setup", (ImageStep(),)), ctx, dry_run=True)
    assert report.steps[0].state.value == "blocked" and exit_code(report) == 1

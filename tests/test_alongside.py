"""A step run alongside others (engine.Alongside): the image pull begins once Docker runs and goes
on while the driver is installed; a Docker restart waits for it; it is reported at its place.

Concurrency is shown by events, never by time: an action that can only finish once the other
has begun would wait in vain (and the test fail) if the two ran one after the other.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field

from rich.console import Console

from gpuswarm_node import config, runlog
from gpuswarm_node.context import Context
from gpuswarm_node.engine import Alongside, Call, Plan, State, blocked, needs_change, ok, run_plan
from gpuswarm_node.errors import StepFailed
from gpuswarm_node.steps import ALONGSIDE, ALL_STEPS, STEP_NAMES
from gpuswarm_node.steps.image import ImageStep
from gpuswarm_node.ui import ConsoleReporter

from .fakes import FakeDocker, FakeHost

# Long enough never to be reached when the engine is right; a wrong engine fails instead of hanging.
DEADLOCK = 20.0


@dataclass
class Toy:
    """A step that needs one change: `work` runs as its action, then it is ok."""

    name: str
    log: list
    work: object = None
    state: str = "needs-change"
    done: bool = False
    description: str = "a step of the test"

    def check(self, ctx):
        if self.state == "blocked":
            return blocked("something is missing")
        if self.done or self.state == "ok":
            return ok("done")
        return needs_change("not done", Call(f"do {self.name}", self.apply))

    def apply(self, ctx):
        self.log.append(f"{self.name} begins")
        if self.work is not None:
            self.work()
        self.done = True
        self.log.append(f"{self.name} ends")

    def files(self, ctx):
        return []


def context() -> Context:
    return Context(config=config.from_tables({}), host=FakeHost(), docker_factory=FakeDocker)


NAMES = ("docker", "driver", "daemon", "guard", "image", "join")


@dataclass
class Node:
    """docker, driver (slow), daemon (restarts Docker), guard, image (alongside), join."""

    log: list = field(default_factory=list)

    def steps(self, **kinds):
        return {n: Toy(n, self.log, state=kinds.get(n, "needs-change")) for n in NAMES}

    def plan(self, made, alongside=(Alongside("image", after=("docker",), joined_before=("daemon",)),)):
        return Plan("setup", tuple(made.values()), alongside=alongside)


def wait(event: threading.Event, what: str) -> None:
    if not event.wait(DEADLOCK):
        raise StepFailed(f"{what} never happened: the steps ran one after the other.")


def test_the_pull_runs_while_the_driver_installs_and_the_restart_waits_for_it(tmp_path):
    node = Node()
    made = node.steps()
    pull_begun, daemon_checked = threading.Event(), threading.Event()
    # The driver's install ends only once the pull has begun: the two overlap.
    made["driver"].work = lambda: wait(pull_begun, "the pull beginning during the driver install")

    def pull():
        pull_begun.set()
        wait(daemon_checked, "the daemon step being reached")  # still pulling when the restart is due

    made["image"].work = pull
    daemon, daemon_check = made["daemon"], made["daemon"].check

    def check(ctx):
        daemon_checked.set()
        return daemon_check(ctx)

    def restart():
        if "image ends" not in node.log:
            raise StepFailed("Docker restarted while the image was being pulled.")

    daemon.check, daemon.work = check, restart
    report = run_plan(node.plan(made), context())
    assert report.ok, [(s.name, s.detail) for s in report.steps]
    # Reported at its place, in the plan's order, as applied.
    assert [s.name for s in report.steps] == list(NAMES)
    assert report.changed == list(NAMES)
    image = report.steps[4]
    assert image.actions == ["do image"] and image.before is State.NEEDS_CHANGE
    log = node.log
    assert log.index("docker ends") < log.index("image begins") < log.index("driver ends")
    assert log.index("image ends") < log.index("daemon begins") < log.index("join begins")
    # The run log says when each step began: the image before the driver ended.
    path = tmp_path / "runs.jsonl"
    runlog.append(report, str(path))
    rows = {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}
    assert rows["docker"]["offset"] == 0.0 and all(row["offset"] >= 0 for row in rows.values())
    docker, driver = report.steps[0], report.steps[1]
    assert docker.started + docker.seconds <= image.started < driver.started + driver.seconds


def test_a_daemon_step_with_nothing_to_change_does_not_wait_for_the_pull():
    node = Node()
    made = node.steps(daemon="ok")
    guard_reached = threading.Event()
    # The pull ends only once the step after the daemon is reached: a wait for it before the
    # daemon step, which has nothing to apply, would never end.
    made["image"].work = lambda: wait(guard_reached, "the steps after the daemon going on during the pull")
    guard, guard_check = made["guard"], made["guard"].check
    guard.check = lambda ctx: (guard_reached.set(), guard_check(ctx))[1]
    report = run_plan(node.plan(made), context())
    assert report.ok, [(s.name, s.detail) for s in report.steps]
    assert "image" in report.changed and "daemon" not in report.changed


def test_nothing_runs_in_the_background_in_a_dry_run():
    node = Node()
    made = node.steps()
    report = run_plan(node.plan(made), context(), dry_run=True)
    assert node.log == []
    assert [s.state for s in report.steps] == [State.NEEDS_CHANGE] * len(NAMES)


def test_a_blocked_prerequisite_keeps_the_step_at_its_place():
    node = Node()
    made = node.steps(docker="blocked")
    report = run_plan(node.plan(made), context())
    # Nothing after a blocked step is stopped by it, but the image is not begun early.
    assert node.log.index("driver ends") < node.log.index("daemon begins") < node.log.index("image begins")
    assert report.steps[0].state is State.BLOCKED


def test_a_failed_background_step_is_reported_at_its_place_and_stops_the_rest():
    node = Node()
    made = node.steps()

    def pull():
        raise StepFailed("pulling img: manifest unknown.")

    made["image"].work = pull
    report = run_plan(node.plan(made), context())
    states = {s.name: s.state for s in report.steps}
    assert states == {"docker": State.OK, "driver": State.OK, "daemon": State.OK, "guard": State.OK,
                      "image": State.FAILED, "join": State.NEEDS_CHANGE}
    assert "manifest unknown" in report.steps[4].detail and report.steps[4].actions == ["do image"]
    assert "join begins" not in node.log


def test_a_failure_before_its_place_still_waits_for_and_reports_the_background_step():
    node = Node()
    made = node.steps()
    release = threading.Event()
    made["image"].work = lambda: wait(release, "the driver failing")

    def driver():
        release.set()
        raise StepFailed("the driver's DKMS build failed.")

    made["driver"].work = driver
    report = run_plan(node.plan(made), context())
    states = {s.name: s.state for s in report.steps}
    assert states["driver"] is State.FAILED and states["daemon"] is State.NEEDS_CHANGE
    assert states["image"] is State.OK and report.steps[4].changed and "image ends" in node.log
    assert "daemon begins" not in node.log and "join begins" not in node.log


def test_without_alongside_the_order_is_the_plans():
    node = Node()
    made = node.steps()
    run_plan(node.plan(made, alongside=()), context())
    assert [e for e in node.log if e.endswith("begins")] == [f"{n} begins" for n in made]


def test_setup_pulls_alongside_once_docker_and_the_registry_ca_are_there():
    # The declaration the setup plan uses names steps that exist, in an order that leaves room.
    [entry] = ALONGSIDE
    assert entry.step == "image" and entry.joined_before == ("docker-daemon",)
    position = {name: i for i, name in enumerate(STEP_NAMES)}
    assert all(position[name] < position["nvidia-driver"] for name in entry.after)
    assert position["docker-daemon"] < position["image"] < position["swarm-join"]
    assert set(entry.after) == {"docker", "registry-trust"} and ALL_STEPS


def test_the_real_image_step_pulls_in_the_background_through_docker():
    docker = FakeDocker()
    ctx = Context(config=config.from_tables({"image": {"name": "hub/notebook:1"}}), host=FakeHost(),
                  docker_factory=lambda: docker)
    log: list = []
    pulled = threading.Event()
    real_pull = docker.pull

    def pull(name, on_progress):
        real_pull(name, on_progress)
        pulled.set()

    docker.pull = pull
    docker_step = Toy("docker", log, state="ok")
    driver = Toy("nvidia-driver", log, work=lambda: wait(pulled, "the pull during the driver install"))
    plan = Plan("setup", (docker_step, driver, ImageStep()),
                alongside=(Alongside("image", after=("docker",), joined_before=()),))
    report = run_plan(plan, ctx)
    assert report.ok and report.changed == ["nvidia-driver", "image"]
    assert docker.calls == ["pull hub/notebook:1"] and report.steps[2].actions == ["pull hub/notebook:1"]


def test_a_background_pull_prints_lines_on_a_terminal_not_a_live_display():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    reporter = ConsoleReporter(console).concurrent()
    with reporter.activity("pulling"):
        pass
    with reporter.pull("hub/notebook:1") as feed:
        feed({"id": "l1", "status": "Downloading", "progressDetail": {"current": 5, "total": 10}})
    text = buffer.getvalue()
    assert "pulling hub/notebook:1" in text and "pulled hub/notebook:1: 1 layers" in text
    # Plain lines: no cursor movement or line erasing, which would garble apt's live bar.
    assert "\x1b[" not in text and "\r" not in text
    # The foreground reporter keeps the live bar, which redraws in place.
    with ConsoleReporter(console).pull("hub/notebook:1") as feed:
        feed({"id": "l1", "status": "Downloading", "progressDetail": {"current": 5, "total": 10}})
    assert "\x1b[" in buffer.getvalue()[len(text):]

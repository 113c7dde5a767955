"""The fault-injection test's crash points (tests/lab/crash_points.py) are the same for two runs
that do the same thing, whatever their details, timings and progress say: proven on output printed
by the real reporter (gpuswarm_node/ui.py), as setup prints it to a pipe."""

from __future__ import annotations

import io

from rich.console import Console

from gpuswarm_node import progress
from gpuswarm_node.engine import RunReport, State, StepReport
from gpuswarm_node.steps import STEP_NAMES
from gpuswarm_node.ui import ConsoleReporter, print_summary
from tests.lab.crash_points import BUILD_POINT, MARKS, point_of, points_of

# What one run does: (step, actions it ran, its result), as a fresh node's setup reports it.
RUN = [
    ("boot", ["create /etc/systemd/system/gpuswarm-node-boot.service", "run systemctl enable gpuswarm-node-boot.service"],
     State.OK),
    ("docker", ["run apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends docker.io"], State.OK),
    ("image", ["pull 198.18.0.1:5000/singleuser:latest"], State.OK),
    ("swarm-join", ["fetch the worker join token from 198.18.0.1 and join the swarm at 198.18.0.1:2377"], State.OK),
    ("node-labels", [], State.OK),
    ("nvidia-driver", [], State.BLOCKED),
]


# The lab runs setup with COLUMNS=WIDTH, so that no action's description is wrapped.
WIDTH = 1000


def output(details: dict[str, str], seconds: float, progress_lines: list[str], width: int) -> str:
    """setup's live lines and summary for RUN, on a console that is no terminal (a pipe, a log)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    reporter = ConsoleReporter(console)
    reports = []
    for i, (step, actions, state) in enumerate(RUN):
        for action in actions:
            reporter.action(step, action)
        for line in progress_lines:
            console.print(line)
        report = StepReport(step, state, details.get(step, ""), changed=bool(actions), actions=actions,
                            seconds=seconds * (i + 1))
        reporter.step_finished(report)
        reports.append(report)
    print_summary(console, RunReport(reports, "setup"), logs=["/var/log/gpuswarm-node/apt.log"])
    return buffer.getvalue()


def two_runs(width: int) -> tuple[str, str]:
    """The output of two runs of RUN that differ in every detail, time and progress line."""
    first = output({"node-labels": "labelled gpuswarm.slices=6, as 198.18.0.1 said 49 s ago",
                    "swarm-join": "joined 198.18.0.1:2377 as node abc123 after 3 tries"},
                   0.1, ["pulling 198.18.0.1:5000/singleuser:latest: 3 of 7 layers, 1.2 GB of 4.9 GB, 48.1 MB/s"],
                   width)
    second = output({"node-labels": "labelled gpuswarm.slices=6, as 198.18.0.2 said 51 s ago, which is a much "
                                    "longer detail that rich wraps onto a line of its own: ok docker changed " * 12,
                     "swarm-join": "joined 198.18.0.9:2377 as node zz9 after 1 try"},
                    12.7, ["apt-get install docker.io: installing 54%, Unpacking docker.io (amd64)",
                           "still working (45 s)"], width)
    return first, second


def test_two_runs_that_do_the_same_give_the_same_points():
    first, second = two_runs(WIDTH)
    assert first != second
    assert points_of(first) == points_of(second)
    assert points_of(first) == [
        "boot: create /etc/systemd/system/gpuswarm-node-boot.service",
        "boot: run systemctl enable gpuswarm-node-boot.service",
        "changed boot",
        "docker: run apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends docker.io",
        "changed docker",
        "image: pull 198.18.0.1:5000/singleuser:latest",
        "changed image",
        "swarm-join: fetch the worker join token from 198.18.0.1 and join the swarm at 198.18.0.1:2377",
        "changed swarm-join",
        "ok node-labels",
        "blocked nvidia-driver",
    ]


def test_at_a_terminal_width_a_wrapped_description_still_gives_the_same_points():
    first, second = two_runs(80)
    assert first != second
    assert points_of(first) == points_of(second)
    assert len(points_of(first)) == 11


def test_every_mark_of_every_step_is_a_boundary_and_nothing_else_is():
    for step in STEP_NAMES:
        for mark in MARKS:
            buffer = io.StringIO()
            reporter = ConsoleReporter(Console(file=buffer, width=200, force_terminal=False, color_system=None))
            state = State.OK if mark == "changed" else State(mark)
            reporter.step_finished(StepReport(step, state, "some detail 42 s ago", changed=mark == "changed",
                                              seconds=3.25))
            assert point_of(buffer.getvalue()) == f"{mark} {step}"
    # Lines of the summary, the stoppers' sentences and progress are no points.
    for line in (" docker         changed  0.1 s    installed docker.io",
                 "docker blocked: Docker is not installed",
                 "ok docker (not aligned as the reporter aligns it)",
                 "pulled 198.18.0.1:5000/singleuser:latest: 4.9 GB in 1 min 2 s",
                 "changed: tmpfs, docker", "node converged."):
        assert point_of(line) is None, line


def test_setup_sh_building_its_environment_is_one_point():
    assert point_of("setup.sh: installing gpuswarm-node into /opt/gpuswarm-node/venv-0123456789ab-4242\n") == BUILD_POINT
    assert point_of("setup.sh: pip: still working (45 s)") is None


def test_progress_lines_as_the_tool_prints_them_are_no_points():
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False, color_system=None)
    ticks = iter(range(0, 10_000, 7))  # a clock that moves 7 s at each look: a periodic line each time

    def clock() -> float:
        return float(next(ticks))

    with progress.apt_view(console, "apt-get install docker.io", clock=clock) as update:
        for percent in (12.0, 54.0, 99.0):
            update(f"pmstatus:docker.io:{percent}:Unpacking docker.io (amd64)")
    with progress.pull_view(console, "198.18.0.1:5000/singleuser:latest", clock=clock, plain=True) as update:
        for current in (10, 50, 90):
            update({"status": "Downloading", "id": "a1", "progressDetail": {"current": current, "total": 100}})
        update({"status": "Pull complete", "id": "a1"})
    text = buffer.getvalue()
    assert "installing 54%" in text and "pulling 198.18.0.1:5000/singleuser:latest: " in text, text
    assert points_of(text) == []

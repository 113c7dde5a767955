"""Hostile text never reaches a terminal raw (sanitize.py): text from a registry, the manager, apt
or dpkg, Docker or an image's name is stripped of escape sequences, control characters and
bidirectional overrides before the console, --json or the run log get it."""

from __future__ import annotations

import io
import json
import unicodedata
from dataclasses import dataclass

import docker
import pytest
from rich.console import Console

from gpuswarm_node import progress, runlog, ui
from gpuswarm_node.engine import Call, Plan, Preflight, ok, needs_change, blocked, run_plan
from gpuswarm_node.errors import CommandFailed, GpuswarmError
from gpuswarm_node.manager import ManagerSession
from gpuswarm_node.probes.docker import SdkDocker
from gpuswarm_node.sanitize import clean, clean_event
from gpuswarm_node.table import status_text

from .test_plans import context

# What a hostile registry, manager, package or image says: a colour, a window title and a
# clipboard write (OSC 0, OSC 52), a hyperlink, a cursor move that overwrites the line, 8-bit CSI,
# a DCS string, a bell, a backspace, a carriage return, NUL, DEL, C1 NEL, and a right-to-left override.
HOSTILE = ("ok\x1b[31mred\x1b[0m\x1b]0;owned\x07\x1b]52;c;ZWNobyBoaQ==\x1b\\\x1b]8;;http://x\x1b\\link"
           "\x1b]8;;\x1b\\\x1b[2K\x1b[1A\x9b31m\x1bPq#0\x1b\\\x07\x08\r\x00\x7f\x85 \u202egnp.exe\u2066x\u2069 end")


def assert_clean(text: str) -> None:
    bad = [c for c in text if (unicodedata.category(c) == "Cc" and c not in "\n\t")
           or c in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"]
    assert not bad, (bad, text)
    assert "owned" not in text and "ZWNob" not in text  # the sequences' payloads go with them


def test_clean_strips_every_kind_and_keeps_the_words():
    assert clean(HOSTILE) == "okredlink gnp.exex end"
    assert clean("two\nlines\tand a tab") == "two\nlines\tand a tab"
    assert clean("two\nlines", lines=False) == "two lines"
    assert clean("plain ünïcode — ok") == "plain ünïcode — ok"
    assert clean_event({"status": HOSTILE, "progressDetail": {"current": 1}, "id": "l\x1b[1"}) == \
        {"status": "okredlink gnp.exex end", "progressDetail": {"current": 1}, "id": "l"}


def plain_console() -> tuple[Console, io.StringIO]:
    """A console writing to a buffer, without colours (rich's own styling is not at issue)."""
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, color_system=None, width=400, soft_wrap=True), buffer


def manager_error() -> Exception:
    """The manager's answer (its gate's stderr, over SSH) as it reaches a step."""
    session = ManagerSession.__new__(ManagerSession)
    session.run = lambda command: (126, "", HOSTILE)
    with pytest.raises(Exception) as info:
        session.gate("join-token")
    return info.value


def docker_error() -> Exception:
    """Docker's API error (its explanation relays the registry's) as it reaches a step."""
    sdk = SdkDocker.__new__(SdkDocker)

    class Api:
        def pull(self, *args, **kwargs):
            raise docker.errors.APIError("500 Server Error", explanation=HOSTILE)

    sdk._client = type("Client", (), {"api": Api()})()
    with pytest.raises(Exception) as info:
        sdk.pull("registry.example:5000/nb:latest", lambda event: None)
    return info.value


def registry_error() -> Exception:
    """A registry's error inside the pull stream."""
    sdk = SdkDocker.__new__(SdkDocker)

    class Api:
        def pull(self, *args, **kwargs):
            yield {"error": HOSTILE}

    sdk._client = type("Client", (), {"api": Api()})()
    with pytest.raises(Exception) as info:
        sdk.pull("registry.example:5000/nb:latest", lambda event: None)
    return info.value


def apt_error() -> Exception:
    """apt's or dpkg's last line in a failed command's error."""
    return CommandFailed(["apt-get", "install", "-y", "x"], 100, f"Reading package lists...\nE: {HOSTILE}\n")


@dataclass
class Says:
    """A step whose check or action says outside text: in a detail, an action, or an error."""

    how: str
    name: str = "hostile"
    description: str = "says what it was told"

    def files(self, ctx):
        return []  # writes nothing (every step states what it writes: engine.Step)

    def check(self, ctx):
        if self.how == "detail":  # an image's name and labels in a status detail
            return blocked(f"image {HOSTILE} has label org.opencontainers.image.title={HOSTILE}")
        if self.how == "ok":
            return ok(f"image {HOSTILE} is here")
        error = {"manager": manager_error, "docker": docker_error, "registry": registry_error,
                 "apt": apt_error}[self.how]()

        def fail(ctx):
            raise error

        return needs_change(f"pull {HOSTILE}", Call(f"pull {HOSTILE}", fail))


SAID = {"manager": "the hub's gate refused `join-token`: okredlink", "docker": "pulling registry.example:5000/nb",
        "registry": "pulling registry.example:5000/nb:latest failed: okredlink",
        "apt": "`apt-get install -y x` exited 100:", "detail": "has label", "ok": "image okredlink"}


@pytest.mark.parametrize("how", ["manager", "docker", "registry", "apt", "detail", "ok"])
def test_outside_text_is_clean_on_the_console_in_json_and_in_the_run_log(how, tmp_path):
    ctx, _, _ = context()
    # A preflight problem quoting the manager refuses the run, so only steps without actions get one.
    checks = (Preflight("hostile-check", lambda c: f"manager said {HOSTILE}"),) if how in ("detail", "ok") else ()
    plan = Plan("setup", (Says(how),), checks)
    report = run_plan(plan, ctx)
    console, buffer = plain_console()
    ui.print_summary(console, report)
    ui.print_plan(console, report)
    console.print(ui.status_table(report))
    reporter = ui.ConsoleReporter(console)
    for step in report.steps:
        reporter.step_finished(step)
    assert_clean(buffer.getvalue())
    assert_clean(status_text(report))
    assert_clean(json.dumps(report.as_json(), ensure_ascii=False))
    log = tmp_path / "runs.jsonl"
    runlog.append(report, str(log))
    assert_clean(json.dumps([json.loads(line) for line in log.read_text().splitlines()], ensure_ascii=False))
    # The words are there, without what a terminal would act on, from the path under test.
    assert "gnp.exex end" in buffer.getvalue()
    assert SAID[how] in report.steps[0].detail, report.steps[0].detail


def test_the_error_itself_is_clean_whatever_prints_it():
    for made in (manager_error, docker_error, registry_error, apt_error):
        error = made()
        assert isinstance(error, GpuswarmError) and "gnp.exex end" in error.message(), error
        assert_clean(error.message())
        assert_clean(str(error))


@pytest.mark.parametrize("terminal", [False, True])
def test_a_pull_progress_event_and_an_image_name_are_clean(terminal):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, color_system=None, width=300)
    clock = iter(range(0, 10000, 10))
    with progress.pull_view(console, f"nb{HOSTILE}", clock=lambda: next(clock)) as feed:
        feed({"status": f"Pulling from {HOSTILE}", "id": "latest"})
        feed({"status": "Downloading", "id": f"abc{HOSTILE}", "progressDetail": {"current": 5, "total": 10}})
        feed({"status": HOSTILE, "id": "abc"})
    out = buffer.getvalue()
    if terminal:  # rich's own cursor control for the live bars is the one allowed sequence
        out = out.replace("\x1b[?25l", "").replace("\x1b[?25h", "").replace("\r", "").replace("\x1b[2K", "") \
            .replace("\x1b[1A", "")
    assert_clean(out)
    assert "nbokredlink" in out


@pytest.mark.parametrize("terminal", [False, True])
def test_an_apt_progress_line_is_clean(terminal):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, color_system=None, width=300)
    clock = iter(range(0, 10000, 10))
    with progress.apt_view(console, "installing docker.io", clock=lambda: next(clock)) as feed:
        feed(f"pmstatus:evil{HOSTILE}:40.0:Unpacking {HOSTILE}\n")
        feed(f"pmerror:evil{HOSTILE}:50.0:{HOSTILE}\n")
    out = buffer.getvalue()
    if terminal:
        out = out.replace("\x1b[?25l", "").replace("\x1b[?25h", "").replace("\r", "").replace("\x1b[2K", "") \
            .replace("\x1b[1A", "")
    assert_clean(out)
    assert "okredlink" in out

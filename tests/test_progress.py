"""Progress for people, fed recorded streams: what a terminal and a log each receive.

The recordings in tests/data/progress/ are real: `docker-pull-events.jsonl` is Docker 20.10's pull
stream (through the Docker SDK, `api.pull(..., stream=True, decode=True)`) of a 4-layer image from
a registry throttled to 3 MB/s, one layer already present, each event with the seconds since the
pull began (`t`); the registry's name was replaced by registry.example.org:5000. The apt files are
apt 2.6.1's APT::Status-Fd lines (Debian 12) of `apt-get update` and of
`apt-get install --no-install-recommends hello cowsay` on a fresh root filesystem.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from rich.console import Console

from gpuswarm_node import progress
from gpuswarm_node.errors import CommandFailed, StepFailed
from gpuswarm_node.host import LOG_MODE, run_logged
from gpuswarm_node.ui import ConsoleReporter

DATA = Path(__file__).parent / "data" / "progress"
IMAGE = "registry.example.org:5000/nb:1"
LAYERS = {"43a2ca214116": 0, "a916f0a40fa4": 24007513, "bcf253c6b1d3": 6002036, "ab90b26d7842": 300298}
ESC = "\x1b["


def pull_recording() -> list[tuple[float, dict]]:
    return [(r["t"], r["event"]) for r in map(json.loads, (DATA / "docker-pull-events.jsonl").read_text().splitlines())]


def apt_recording(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


class Clock:
    """The recorded time of the event being fed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=140, color_system="standard" if terminal else None,
                   legacy_windows=False), buffer


def replay_pull(view_console: Console, clock: Clock) -> None:
    with progress.pull_view(view_console, IMAGE, clock) as feed:
        for t, event in pull_recording():
            clock.now = t
            feed(event)


def replay_apt(view_console: Console, clock: Clock, name: str, label: str, step: float = 0.25) -> None:
    with progress.apt_view(view_console, label, clock) as feed:
        for line in apt_recording(name):
            clock.now += step
            feed(line)


# --- Docker pulls ---------------------------------------------------------------------------------

def test_the_tracker_follows_every_layer_of_a_recorded_pull_to_the_end():
    tracker = progress.PullTracker()
    for _, event in pull_recording():
        tracker.feed(event)
    assert {i: layer.size for i, layer in tracker.layers.items()} == LAYERS
    assert all(layer.done for layer in tracker.layers.values())
    assert [i for i, layer in tracker.layers.items() if layer.existed] == ["43a2ca214116"]
    assert tracker.downloaded == tracker.size == sum(LAYERS.values())
    assert tracker.last_status == f"Status: Downloaded newer image for {IMAGE}"


def test_while_layers_download_the_tracker_counts_their_bytes_and_knows_when_sizes_are_unknown():
    tracker = progress.PullTracker()
    events = [event for _, event in pull_recording()]
    for event in events[:5]:  # the tag, one layer already here, three layers announced
        tracker.feed(event)
    assert tracker.size == 0 and not tracker.sizes_known
    assert tracker.summary(1.0) == "1 of 4 layers, 0 B of 0 B+"
    for event in events:
        tracker.feed(event)
        if tracker.sizes_known and 0 < tracker.downloaded < tracker.size:
            break
    line = tracker.summary(2.0)
    assert line.startswith("1 of 4 layers, ") and " of 30.3 MB, " in line and "/s, about " in line and " left" in line


def test_a_log_gets_a_plain_line_at_the_start_every_few_seconds_and_at_the_end():
    out, buffer = console(terminal=False)
    replay_pull(out, Clock())
    text = buffer.getvalue()
    assert ESC not in text and "\r" not in text
    lines = text.splitlines()
    # The recording lasts 8.8 s: the start, one line after 5 s, the end.
    assert lines[0] == f"pulling {IMAGE}"
    assert len(lines) == 3
    assert lines[1].startswith(f"pulling {IMAGE}: 1 of 4 layers, ") and " of 30.3 MB, " in lines[1]
    assert "MB/s, about " in lines[1] and lines[1].endswith(" s left")
    assert lines[2] == f"pulled {IMAGE}: 4 layers (1 already here), 30.3 MB in 9 s"


def test_a_slow_pull_gives_a_log_one_line_per_interval_not_one_per_event():
    out, buffer = console(terminal=False)
    clock = Clock()
    with progress.pull_view(out, IMAGE, clock) as feed:
        for t, event in pull_recording():
            clock.now = t * 10  # the same pull at a tenth of the speed: 88 s
            feed(event)
    lines = buffer.getvalue().splitlines()
    events = len(pull_recording())
    assert 1 + 88 // 5 - 2 <= len(lines) - 2 <= 88 // 5 < events
    assert all(line.startswith(f"pulling {IMAGE}: ") for line in lines[1:-1])
    assert lines[-1].endswith("in 1 min 28 s")


def test_a_terminal_gets_a_bar_per_layer_with_bytes_and_one_for_the_image_with_speed_and_time_left():
    out, buffer = console(terminal=True)
    clock = Clock()
    with progress.pull_view(out, IMAGE, clock) as feed:
        for t, event in pull_recording():
            clock.now = t
            feed(event)
            if event.get("status") == "Downloading" and event["id"] == "a916f0a40fa4" and t > 4:
                mid = buffer.getvalue()
    assert ESC in mid  # redrawn in place
    # Midway: the big layer downloading, its bytes, and the image's speed and time left.
    midway = mid[mid.rindex(IMAGE):]  # the newest frame starts with the image's bar
    assert "a916f0a40fa4 downloading" in midway and "/24.0 MB" in midway
    assert "30.3 MB" in midway and "MB/s" in midway and "0:00:0" in midway
    final = buffer.getvalue()
    for layer_id, size in LAYERS.items():
        assert (layer_id in final) is (size > 0)
    assert "a916f0a40fa4 pull complete" in final and "(1 of 4 layers already here)" in final
    assert "30.3/30.3 MB" in final


def test_a_quiet_console_gets_nothing():
    buffer = io.StringIO()
    quiet = Console(file=buffer, quiet=True)
    replay_pull(quiet, Clock())
    replay_apt(quiet, Clock(), "apt-install-status-fd.txt", "apt-get install hello cowsay")
    assert buffer.getvalue() == ""


def test_the_reporter_picks_bars_for_a_terminal_and_plain_lines_for_a_log():
    for terminal in (True, False):
        out, buffer = console(terminal)
        reporter = ConsoleReporter(out)
        with reporter.pull(IMAGE) as feed:
            for _, event in pull_recording():
                feed(event)
        with reporter.apt("apt-get update") as feed:
            for line in apt_recording("apt-update-status-fd.txt"):
                feed(line)
        text = buffer.getvalue()
        assert (ESC in text) is terminal
        assert f"pulled {IMAGE}" in text if not terminal else "a916f0a40fa4 pull complete" in text
        assert "apt-get update" in text


# --- apt --------------------------------------------------------------------------------------------

def test_every_recorded_status_line_parses():
    for name in ("apt-update-status-fd.txt", "apt-install-status-fd.txt"):
        statuses = [progress.parse_apt_status(line) for line in apt_recording(name)]
        assert None not in statuses
    install = [progress.parse_apt_status(line) for line in apt_recording("apt-install-status-fd.txt")]
    assert install[12] == progress.AptStatus("dlstatus", "4", 46.3145, "Retrieving file 4 of 9")
    assert install[-1] == progress.AptStatus("pmstatus", "cowsay", 97.2973, "Installed cowsay (amd64)")
    assert [s.kind for s in install].index("pmstatus") == 26


@pytest.mark.parametrize("line, parsed", [
    ("pmerror:hello:54.0541:installed hello package post-installation script subprocess returned error exit status 1",
     progress.AptStatus("pmerror", "hello", 54.0541,
                        "installed hello package post-installation script subprocess returned error exit status 1")),
    ("pmconffile:/etc/foo.conf:40.0000:'/etc/foo.conf' '/etc/foo.conf.dpkg-new' 1 1",
     progress.AptStatus("pmconffile", "/etc/foo.conf", 40.0, "'/etc/foo.conf' '/etc/foo.conf.dpkg-new' 1 1")),
    ("pmstatus:a:b:c:d", None),  # a percent that is not a number
    ("dlstatus:1:12.5", None),  # torn
    ("media-change: insert the disc", None),
    ("", None),
])
def test_status_lines_of_every_kind_and_what_is_not_one(line, parsed):
    assert progress.parse_apt_status(line) == parsed


def test_a_log_gets_apts_words_every_few_seconds_and_every_package_error():
    out, buffer = console(terminal=False)
    clock = Clock()
    label = "apt-get install hello cowsay"
    with progress.apt_view(out, label, clock) as feed:
        for line in apt_recording("apt-install-status-fd.txt"):
            clock.now += 0.25  # 84 lines over 21 s
            feed(line)
        feed("pmerror:hello:70.2703:installed hello package post-installation script subprocess returned error exit "
             "status 1")
    text = buffer.getvalue()
    assert ESC not in text
    lines = text.splitlines()
    assert lines[0] == label
    # Every 5 s (20 lines): where apt is then, in its words.
    assert lines[1] == f"{label}: downloading 95%, Retrieving file 8 of 9"
    assert lines[2] == f"{label}: installing 19%, Unpacking libgdbm6 (amd64)"
    assert lines[3] == f"{label}: installing 54%, Running dpkg"
    assert lines[4] == f"{label}: installing 89%, Configuring perl (amd64)"
    assert lines[5] == (f"{label}: error in hello: installed hello package post-installation script subprocess "
                        "returned error exit status 1")
    assert lines[6] == f"{label}: done in 21 s"
    assert len(lines) == 7


def test_a_terminal_gets_one_bar_for_the_download_then_one_for_dpkg_with_apts_words():
    out, buffer = console(terminal=True)
    replay_apt(out, Clock(), "apt-install-status-fd.txt", "apt-get install hello cowsay")
    text = buffer.getvalue()
    assert ESC in text
    assert "apt-get install hello cowsay: downloading" in text and "Retrieving file 9 of 9" in text
    assert "apt-get install hello cowsay: installing" in text and "Installed cowsay (amd64)" in text
    assert "100%" in text


# --- the command log ----------------------------------------------------------------------------------

FAKE_APT = """#!{python}
# Stands in for apt-get: status lines to the fd it is given, output to stdout and stderr.
import os, sys
args = sys.argv[1:]
fd = next((int(v.split("=", 1)[1]) for k, v in zip(args, args[1:]) if k == "-o" and v.startswith("APT::Status-Fd=")),
          None)
print("Reading package lists...", flush=True)
if fd is not None:
    with open(os.environ["STATUS_LINES"], "rb") as lines:
        os.write(fd, lines.read())
print("E: Sub-process /usr/bin/dpkg returned an error code (1)", file=sys.stderr, flush=True)
sys.exit(int(os.environ["EXIT"]))
"""


@pytest.fixture
def fake_apt(tmp_path):
    program = tmp_path / "bin" / "apt-get"
    program.parent.mkdir()
    program.write_text(FAKE_APT.format(python=sys.executable))
    program.chmod(0o755)
    return program


def run_fake_apt(program: Path, log: Path, rc: int, seen: list[str] | None):
    env = {"PATH": f"{program.parent}:/usr/bin:/bin", "STATUS_LINES": str(DATA / "apt-install-status-fd.txt"),
           "EXIT": str(rc)}
    return run_logged([str(program), "install", "--yes", "hello"], env, 60, str(log),
                      seen.append if seen is not None else None)


def test_a_commands_status_lines_reach_the_reporter_and_its_whole_output_the_log(tmp_path, fake_apt):
    log = tmp_path / "log" / "gpuswarm-node" / "apt.log"
    seen: list[str] = []
    old = os.umask(0o077)
    try:
        result = run_fake_apt(fake_apt, log, 0, seen)
    finally:
        os.umask(old)
    assert seen == apt_recording("apt-install-status-fd.txt")
    assert "Reading package lists..." in result.stdout
    st = log.stat()
    assert stat.S_IMODE(st.st_mode) == LOG_MODE and st.st_uid == os.geteuid()
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o755
    lines = log.read_text().splitlines()
    assert lines[0].startswith("=== ") and lines[0].endswith(f"{fake_apt} install --yes hello")
    assert lines[1:3] == ["Reading package lists...", "E: Sub-process /usr/bin/dpkg returned an error code (1)"]
    assert lines[3].startswith("=== exit 0 after ") and len(lines) == 4
    # A second command is appended, never written over the first.
    with pytest.raises(CommandFailed) as failed:
        run_fake_apt(fake_apt, log, 100, None)
    assert failed.value.returncode == 100
    assert "exited 100: E: Sub-process /usr/bin/dpkg returned an error code (1)" in failed.value.cause
    lines = log.read_text().splitlines()
    assert len(lines) == 8 and lines[4].startswith("=== ") and lines[7].startswith("=== exit 100 after ")


def test_the_log_is_never_written_through_a_symlink_nor_into_a_directory_others_can_write(tmp_path, fake_apt):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o755)
    os.chmod(log_dir, 0o755)
    (log_dir / "apt.log").symlink_to(victim)
    with pytest.raises(StepFailed, match="is a symlink"):
        run_fake_apt(fake_apt, log_dir / "apt.log", 0, None)
    assert victim.read_text() == "keep\n"
    (log_dir / "apt.log").unlink()
    os.chmod(log_dir, 0o777)
    with pytest.raises(StepFailed, match="is writable by others"):
        run_fake_apt(fake_apt, log_dir / "apt.log", 0, None)
    assert not (log_dir / "apt.log").exists()


def test_a_command_that_outlives_its_timeout_is_killed_and_named(tmp_path):
    with pytest.raises(StepFailed, match=r"`sleep 30` did not finish within 1 s"):
        run_logged(["sleep", "30"], {"PATH": "/usr/bin:/bin"}, 1, str(tmp_path / "log" / "x.log"))
    assert (tmp_path / "log" / "x.log").read_text().startswith("=== ")


def test_apt_runs_log_into_the_contexts_log_directory_and_a_failure_names_the_log(tmp_path):
    from gpuswarm_node.config import Config
    from gpuswarm_node.steps import apt
    from gpuswarm_node.context import Context
    from tests.fakes import FakeHost

    host = FakeHost(effects={"apt-get -o DPkg::Lock::Timeout=600 install --yes --no-install-recommends hello": {
        "rc": 100, "stderr": "E: Unable to locate package hello"}})
    ctx = Context(config=Config(), host=host, log_dir=str(tmp_path / "logs"))
    apt.update(ctx).execute(ctx)
    log = str(tmp_path / "logs" / "apt.log")
    assert host.logs == [log] and ctx.logs == [log]
    with pytest.raises(CommandFailed) as failed:
        apt.install(ctx, "hello").execute(ctx)
    assert failed.value.message().endswith(f"Its whole output is in {log}; fix the cause there and run setup again.")
    assert ctx.logs == [log]

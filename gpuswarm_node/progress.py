"""Progress for people: Docker image pulls and apt runs, read from their machine-readable streams
and shown as bars on a terminal or as a plain line every few seconds in a log (a cloud-init log,
a CI job, `setup ... 2>&1 | tee`).

Sources of the formats:

- Docker's pull stream (Engine API `POST /images/create`; moby `pkg/jsonmessage`): one JSON object
  per event, `{"status", "id", "progressDetail": {"current", "total"}}`. A layer (`id`, a short
  digest) goes `Pulling fs layer`, `Waiting`, `Downloading` (bytes received of its compressed
  size), `Verifying Checksum`, `Download complete`, `Extracting` (bytes of that same size
  unpacked), `Pull complete`; a layer already on the machine is `Already exists`. Events without
  an `id` (`Digest: ...`, `Status: ...`) are about the whole image.
- apt's `APT::Status-Fd` (apt-pkg/install-progress.cc, `PackageManagerProgressFd`, and the
  acquire status of apt-get): one line per event, `dlstatus:<item>:<percent>:<text>` while it
  downloads, `pmstatus:<package>:<percent>:<text>` while dpkg works, `pmerror:<package>:<percent>:
  <message>` when a package fails, `pmconffile:...` when a configuration file is in question;
  percent is of the whole download, or of the whole dpkg run, 0 to 100.

The trackers only read the events; the views turn them into output. A view writes to a rich
Console: bars when it is a terminal, else a line when `PLAIN_INTERVAL` seconds passed since the
last one, plus one at the end. Time comes from a clock given to the view (`time.monotonic` unless
a test gives recorded times), so the speed and time left are those of the events, not of the test.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from .sanitize import clean, clean_event

PLAIN_INTERVAL = 5.0  # seconds between two plain lines
REFRESH_INTERVAL = 0.1  # seconds between two redraws of the bars

Clock = Callable[[], float]


# --- formatting ---------------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    """`n` bytes in decimal units, as Docker prints them: 512 B, 300.3 kB, 24.0 MB, 14.2 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """3 s, 42 s, 2 min 5 s, 1 h 3 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


# --- Docker pulls -------------------------------------------------------------------------------

DOWNLOADED = {"Verifying Checksum", "Download complete", "Extracting", "Pull complete"}


@dataclass
class Layer:
    status: str = ""
    downloaded: int = 0  # bytes of the compressed layer received
    size: int = 0  # the compressed layer's size, 0 until Docker says (its first `Downloading`)
    extracted: int = 0  # bytes of it unpacked
    done: bool = False  # `Pull complete` or `Already exists`
    existed: bool = False  # `Already exists`: nothing to download


@dataclass
class PullTracker:
    """The state of one image pull, fed Docker's pull events in order."""

    layers: dict[str, Layer] = field(default_factory=dict)
    last_status: str = ""  # the newest event without a layer (`Digest: ...`, `Status: ...`)

    def feed(self, event: dict) -> Layer | None:
        """Take one event; returns the layer it was about, or None."""
        status = str(event.get("status", ""))
        layer_id = event.get("id")
        detail = event.get("progressDetail") or {}
        # The first event names the tag, not a layer ("Pulling from nb", id "1").
        if not layer_id or status.startswith("Pulling from"):
            self.last_status = status
            return None
        layer = self.layers.setdefault(str(layer_id), Layer())
        layer.status = status
        if status == "Downloading" and detail.get("total"):
            layer.size = int(detail["total"])
            layer.downloaded = min(int(detail.get("current", 0)), layer.size)
        elif status in DOWNLOADED:
            layer.downloaded = layer.size
            if status == "Extracting" and detail.get("total"):
                layer.size = layer.downloaded = max(layer.size, int(detail["total"]))
                layer.extracted = int(detail.get("current", 0))
        if status == "Pull complete":
            layer.done, layer.extracted = True, layer.size
        elif status == "Already exists":
            layer.done = layer.existed = True
        return layer

    @property
    def downloaded(self) -> int:
        return sum(layer.downloaded for layer in self.layers.values())

    @property
    def size(self) -> int:
        """Bytes to download as far as known: a layer's size is known once it starts downloading."""
        return sum(layer.size for layer in self.layers.values())

    @property
    def done_layers(self) -> int:
        return sum(1 for layer in self.layers.values() if layer.done)

    @property
    def sizes_known(self) -> bool:
        return all(layer.size or layer.existed for layer in self.layers.values())

    def summary(self, elapsed: float) -> str:
        """One line: layers, bytes, speed and time left (once every layer's size is known)."""
        line = (f"{self.done_layers} of {len(self.layers)} layers, {human_bytes(self.downloaded)} of "
                f"{human_bytes(self.size)}{'' if self.sizes_known else '+'}")
        if elapsed > 0 and self.downloaded:
            speed = self.downloaded / elapsed
            line += f", {human_bytes(speed)}/s"
            if self.sizes_known and self.downloaded < self.size:
                line += f", about {human_seconds((self.size - self.downloaded) / speed)} left"
        return line


class PlainPullView:
    """A log's view of a pull: a line at the start, one every PLAIN_INTERVAL seconds while bytes
    arrive, and one at the end."""

    def __init__(self, console: Console, image: str, clock: Clock = time.monotonic) -> None:
        self.console, self.image, self.clock = console, image, clock
        self.tracker = PullTracker()
        self.started = self.last_line = clock()
        self.console.print(f"pulling {image}", markup=False, highlight=False)

    def feed(self, event: dict) -> None:
        self.tracker.feed(event)
        now = self.clock()
        if now - self.last_line >= PLAIN_INTERVAL:
            self.last_line = now
            self.console.print(f"pulling {self.image}: {self.tracker.summary(now - self.started)}",
                               markup=False, highlight=False)

    def finish(self) -> None:
        elapsed = self.clock() - self.started
        t = self.tracker
        existed = sum(1 for layer in t.layers.values() if layer.existed)
        self.console.print(f"pulled {self.image}: {len(t.layers)} layers ({existed} already here), "
                           f"{human_bytes(t.downloaded)} in {human_seconds(elapsed)}",
                           markup=False, highlight=False)


def pull_progress(console: Console, clock: Clock = time.monotonic) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(bar_width=30), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console, auto_refresh=False,
                    transient=False, get_time=clock)


class TerminalPullView:
    """A terminal's view of a pull: one bar per layer to fetch (downloading, then extracting) with
    bytes, and a bar for the whole image with bytes, speed and time left; layers already on the
    machine are counted in the image's line."""

    def __init__(self, console: Console, image: str, clock: Clock = time.monotonic) -> None:
        self.image, self.clock = image, clock
        self.tracker = PullTracker()
        self.progress = pull_progress(console, clock)
        self.total = self.progress.add_task(f"[bold]{escape(image)}[/]", total=None)
        self.tasks: dict[str, TaskID] = {}
        self.last_refresh = -1e9
        self.progress.start()

    def feed(self, event: dict) -> None:
        layer = self.tracker.feed(event)
        if layer is not None and not layer.existed:
            layer_id = str(event["id"])
            if layer_id not in self.tasks:
                self.tasks[layer_id] = self.progress.add_task("", total=None)
            extracting = layer.status == "Extracting"
            self.progress.update(self.tasks[layer_id], description=f"  {escape(layer_id)} {escape(layer.status.lower())}",
                                 completed=layer.extracted if extracting else layer.downloaded,
                                 total=layer.size or None)
        t = self.tracker
        existed = sum(1 for layer in t.layers.values() if layer.existed)
        here = f" ({existed} of {len(t.layers)} layers already here)" if existed else ""
        self.progress.update(self.total, completed=t.downloaded, description=f"[bold]{escape(self.image)}[/]{here}",
                             total=t.size if t.sizes_known and t.layers else None)
        now = self.clock()
        if now - self.last_refresh >= REFRESH_INTERVAL:
            self.last_refresh = now
            self.progress.refresh()

    def finish(self) -> None:
        self.progress.refresh()
        self.progress.stop()


@contextlib.contextmanager
def pull_view(console: Console, image: str, clock: Clock = time.monotonic,
              plain: bool = False) -> Iterator[Callable[[dict], None]]:
    """The view that suits `console` (none on a quiet one); yields the function to feed events to.
    `plain`: lines even on a terminal, for a pull that runs while something else (apt) may hold
    the terminal's one live display."""
    if console.quiet:
        yield lambda event: None
        return
    # Docker relays the registry's words (an error, a status): cleaned as they enter (sanitize.py).
    view = (TerminalPullView if console.is_terminal and not plain else PlainPullView)(
        console, clean(image, lines=False), clock)
    try:
        yield lambda event: view.feed(clean_event(event))
    except BaseException:
        if isinstance(view, TerminalPullView):
            view.progress.stop()
        raise
    view.finish()


# --- apt ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AptStatus:
    kind: str  # "dlstatus", "pmstatus", "pmerror" or "pmconffile"
    subject: str  # the item number (dlstatus) or the package (pm*)
    percent: float  # of the whole download or the whole dpkg run, 0-100
    text: str  # apt's own words: "Retrieving file 2 of 9", "Unpacking perl (amd64)"


def parse_apt_status(line: str) -> AptStatus | None:
    """One APT::Status-Fd line, or None for one this does not understand (a new kind, a torn
    line). The text may itself hold colons; the percent is a decimal with a point."""
    kind, sep, rest = line.rstrip("\n").partition(":")
    if not sep or kind not in ("dlstatus", "pmstatus", "pmerror", "pmconffile"):
        return None
    parts = rest.split(":", 2)
    if len(parts) != 3:
        return None
    subject, percent, text = parts
    try:
        value = float(percent)
    except ValueError:
        return None
    return AptStatus(kind, subject, min(100.0, max(0.0, value)), text.strip())


def phase(status: AptStatus) -> str:
    return "downloading" if status.kind == "dlstatus" else "installing"


class PlainAptView:
    """A log's view of an apt run: a line at the start, one every PLAIN_INTERVAL seconds while apt
    reports, one for every package error, and one at the end."""

    def __init__(self, console: Console, label: str, clock: Clock = time.monotonic) -> None:
        self.console, self.label, self.clock = console, label, clock
        self.started = self.last_line = clock()
        self.status: AptStatus | None = None
        self.console.print(label, markup=False, highlight=False)

    def feed(self, line: str) -> None:
        status = parse_apt_status(line)
        if status is None:
            return
        self.status = status
        now = self.clock()
        if status.kind == "pmerror":
            self.console.print(f"{self.label}: error in {status.subject}: {status.text}", markup=False,
                               highlight=False)
        elif now - self.last_line >= PLAIN_INTERVAL:
            self.last_line = now
            self.console.print(f"{self.label}: {phase(status)} {status.percent:.0f}%, {status.text}",
                               markup=False, highlight=False)

    def finish(self) -> None:
        self.console.print(f"{self.label}: done in {human_seconds(self.clock() - self.started)}",
                           markup=False, highlight=False)


class TerminalAptView:
    """A terminal's view of an apt run: one bar, for the download and then for dpkg's work, with
    apt's own words for what it does."""

    def __init__(self, console: Console, label: str, clock: Clock = time.monotonic) -> None:
        self.label, self.clock = label, clock
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30),
                                 TaskProgressColumn(), TimeRemainingColumn(), console=console,
                                 auto_refresh=False, get_time=clock)
        self.task = self.progress.add_task(escape(label), total=100)
        self.phase = ""
        self.last_refresh = -1e9
        self.progress.start()

    def feed(self, line: str) -> None:
        status = parse_apt_status(line)
        if status is None:
            return
        if status.kind == "pmerror":
            self.progress.console.print(f"[red]{escape(self.label)}: error in {escape(status.subject)}:[/] "
                                        f"{escape(status.text)}")
        if phase(status) != self.phase:
            # The percent starts again from 0 when dpkg takes over from the download: a new bar
            # (keeping the download's), so its time left is not measured across the two.
            if self.phase:
                self.progress.update(self.task, completed=100)
                self.task = self.progress.add_task("", total=100)
            self.phase = phase(status)
        self.progress.update(self.task, completed=status.percent,
                             description=f"{escape(self.label)}: {self.phase} [dim]{escape(status.text)}[/]")
        now = self.clock()
        if now - self.last_refresh >= REFRESH_INTERVAL:
            self.last_refresh = now
            self.progress.refresh()

    def finish(self) -> None:
        self.progress.update(self.task, completed=100)
        self.progress.refresh()
        self.progress.stop()


@contextlib.contextmanager
def apt_view(console: Console, label: str, clock: Clock = time.monotonic) -> Iterator[Callable[[str], None]]:
    """The view that suits `console` (none on a quiet one); yields the function to feed apt's
    status lines to."""
    if console.quiet:
        yield lambda line: None
        return
    view = (TerminalAptView if console.is_terminal else PlainAptView)(console, label, clock)
    try:
        # apt's and dpkg's words (a package's name, a maintainer script's error): cleaned as they enter.
        yield lambda line: view.feed(clean(line, lines=False))
    except BaseException:
        if isinstance(view, TerminalAptView):
            view.progress.stop()
        raise
    view.finish()

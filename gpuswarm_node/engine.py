"""The step engine: a step's read-only check plans actions, the runner applies them and re-checks.

"Changed" is never set by hand: a step changed the machine when its check said needs-change,
its actions ran, and the re-check said ok. Dry-run lives here and only here.
"""

from __future__ import annotations

import difflib
import shlex
import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

from .errors import GpuswarmError, StepFailed

if TYPE_CHECKING:
    from .system import Context


class State(str, Enum):
    OK = "ok"
    NEEDS_CHANGE = "needs-change"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"


# --- actions: what a check plans and the runner carries out -------------------------------------

class Action(Protocol):
    def describe(self) -> str: ...

    def execute(self, ctx: Context) -> None: ...


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str | bytes  # bytes: a file that is not text (bytecode), shown without a diff
    before: str | bytes | None = None
    mode: int = 0o644

    def describe(self) -> str:
        return f"{'update' if self.before is not None else 'create'} {self.path}"

    def diff(self) -> str:
        if isinstance(self.content, bytes) or isinstance(self.before, bytes):
            return ""
        old = (self.before or "").splitlines(keepends=True)
        new = self.content.splitlines(keepends=True)
        return "".join(difflib.unified_diff(old, new, f"{self.path} (now)", f"{self.path} (wanted)"))

    def execute(self, ctx: Context) -> None:
        ctx.host.write_text(self.path, self.content, self.mode)


@dataclass(frozen=True)
class RemoveFile:
    path: str

    def describe(self) -> str:
        return f"remove {self.path}"

    def execute(self, ctx: Context) -> None:
        ctx.host.remove(self.path)


@dataclass(frozen=True)
class MakeDir:
    path: str

    def describe(self) -> str:
        return f"create directory {self.path}"

    def execute(self, ctx: Context) -> None:
        ctx.host.makedirs(self.path)


@dataclass(frozen=True)
class RunCommand:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    # A long command gets a live spinner with this label.
    progress: str = ""

    def describe(self) -> str:
        return "run " + shlex.join(self.argv)

    def execute(self, ctx: Context) -> None:
        with ctx.reporter.activity(self.progress or self.describe()):
            ctx.host.run(list(self.argv), env=dict(self.env), timeout=self.timeout)


@dataclass(frozen=True)
class Call:
    """An action carried out through a library seam (Docker SDK, SSH) rather than a command."""

    description: str
    fn: Callable[[Context], None] = field(compare=False)

    def describe(self) -> str:
        return self.description

    def execute(self, ctx: Context) -> None:
        self.fn(ctx)


def run_command(*argv: str, env: Mapping[str, str] | None = None, timeout: float | None = None,
                progress: str = "") -> RunCommand:
    return RunCommand(tuple(argv), tuple(sorted((env or {}).items())), timeout, progress)


# --- checks and steps -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    state: State
    detail: str
    actions: tuple[Action, ...] = ()
    reboot_required: bool = False

    def __post_init__(self) -> None:
        if (self.state is State.NEEDS_CHANGE) != bool(self.actions):
            raise ValueError(f"a {self.state.value} check must {'' if self.state is State.NEEDS_CHANGE else 'not '}"
                             f"plan actions: {self.detail}")

    @property
    def diff(self) -> str:
        return "".join(a.diff() for a in self.actions if isinstance(a, WriteFile))


def ok(detail: str) -> Check:
    return Check(State.OK, detail)


def needs_change(detail: str, *actions: Action) -> Check:
    return Check(State.NEEDS_CHANGE, detail, tuple(actions))


def blocked(detail: str, reboot_required: bool = False) -> Check:
    return Check(State.BLOCKED, detail, reboot_required=reboot_required)


def skipped(detail: str) -> Check:
    return Check(State.SKIPPED, detail)


@dataclass(frozen=True)
class PlannedFile:
    path: str
    content: str


class Step(Protocol):
    name: str
    description: str

    def check(self, ctx: Context) -> Check: ...

    def files(self, ctx: Context) -> list[PlannedFile]:
        """Every file this step would write, with the content it would write."""


# --- the runner ---------------------------------------------------------------------------------

@dataclass
class StepReport:
    name: str
    state: State
    detail: str
    changed: bool = False
    # What ran (setup) or would run (dry-run, status), in order; diffs[i] is actions[i]'s file diff or "".
    actions: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    diff: str = ""
    reboot_required: bool = False
    seconds: float = 0.0
    error: GpuswarmError | None = None
    before: State | None = None  # the first check's verdict, when the step was applied

    def as_json(self) -> dict:
        diffs = self.diffs + [""] * (len(self.actions) - len(self.diffs))
        return {"name": self.name, "state": self.state.value, "detail": self.detail,
                "actions": [{"description": d, **({"diff": x} if x else {})} for d, x in zip(self.actions, diffs)]}


@dataclass
class RunReport:
    steps: list[StepReport]
    mode: str  # "setup", "dry-run" or "status"

    @property
    def ok(self) -> bool:
        return all(s.state in (State.OK, State.SKIPPED) for s in self.steps)

    @property
    def changed(self) -> list[str]:
        return [s.name for s in self.steps if s.changed]

    @property
    def failed(self) -> list[StepReport]:
        return [s for s in self.steps if s.state is State.FAILED]

    @property
    def stoppers(self) -> list[StepReport]:
        """The steps that keep the node from converging: blocked or failed."""
        return [s for s in self.steps if s.state in (State.BLOCKED, State.FAILED)]

    @property
    def plan_ok(self) -> bool:
        """A dry run's verdict: applying the plan can reach a converged node (nothing blocked or failed)."""
        return not self.stoppers

    @property
    def reboot_required(self) -> bool:
        return any(s.reboot_required for s in self.steps)

    def as_json(self) -> dict:
        report: dict = {"ok": self.plan_ok if self.mode == "dry-run" else self.ok}
        if self.mode != "status":
            report["dry_run"] = self.mode == "dry-run"
        report.update(changed=self.changed, reboot_required=self.reboot_required,
                      steps=[s.as_json() for s in self.steps])
        return report


def safe_check(step: Step, ctx: Context) -> Check:
    """A check that raised is a failed step, reported, never a crash of the whole run."""
    try:
        return step.check(ctx)
    except GpuswarmError as exc:
        return Check(State.FAILED, exc.message())
    except Exception as exc:  # a bug in a check must not hide the other steps
        ctx.reporter.debug_traceback(traceback.format_exc())
        return Check(State.FAILED, f"internal error while checking: {type(exc).__name__}: {exc}")


def _diff_of(action: Action) -> str:
    return action.diff() if isinstance(action, WriteFile) else ""


def _report(step: Step, check: Check, started: float, **kw) -> StepReport:
    return StepReport(step.name, check.state, check.detail,
                      actions=[a.describe() for a in check.actions],
                      diffs=[_diff_of(a) for a in check.actions], diff=check.diff,
                      reboot_required=check.reboot_required,
                      seconds=time.monotonic() - started, **kw)


def converge(step: Step, ctx: Context) -> StepReport:
    """Check, apply what the check planned, re-check. Only ok after the re-check is success."""
    started = time.monotonic()
    before = safe_check(step, ctx)
    if before.state is not State.NEEDS_CHANGE:
        return _report(step, before, started)
    ran: list[Action] = []  # what was carried out, the failing action included

    def applied(report: StepReport) -> StepReport:
        report.actions, report.diffs = [a.describe() for a in ran], [_diff_of(a) for a in ran]
        report.before = before.state
        return report

    try:
        for action in before.actions:
            ran.append(action)
            ctx.reporter.action(step.name, action.describe())
            action.execute(ctx)
            if ctx.journal is not None and isinstance(action, (RunCommand, Call)):
                ctx.journal.record(kind="run" if isinstance(action, RunCommand) else "call", step=step.name,
                                   argv=list(getattr(action, "argv", ())), action=action.describe())
    except GpuswarmError as exc:
        return applied(_report(step, Check(State.FAILED, exc.message()), started, error=exc))
    except Exception as exc:
        ctx.reporter.debug_traceback(traceback.format_exc())
        failure = StepFailed(f"internal error while applying: {type(exc).__name__}: {exc}",
                             "Re-run with --debug and report the traceback.")
        return applied(_report(step, Check(State.FAILED, failure.message()), started, error=failure))
    after = safe_check(step, ctx)
    if after.state is State.OK or (after.state is State.BLOCKED and after.reboot_required):
        report = _report(step, after, started, changed=True)
    else:
        report = _report(step, Check(State.FAILED, f"still not converged after applying: {after.detail}"),
                         started)
    report.diff = before.diff
    return applied(report)


def run_setup(steps: Sequence[Step], ctx: Context, dry_run: bool = False) -> RunReport:
    reports: list[StepReport] = []
    stop_applying = dry_run
    for step in steps:
        ctx.reporter.step_started(step.name, step.description)
        if stop_applying:
            started = time.monotonic()
            report = _report(step, safe_check(step, ctx), started)
        else:
            report = converge(step, ctx)
            # Later steps build on earlier ones: after a failure only look, do not touch.
            stop_applying = report.state is State.FAILED
        ctx.reporter.step_finished(report)
        reports.append(report)
    return RunReport(reports, "dry-run" if dry_run else "setup")


def run_status(steps: Sequence[Step], ctx: Context, workers: int = 4) -> RunReport:
    """Every check, concurrently: they only read, and most of their time is spent waiting for
    systemctl, dpkg-query and the Docker socket. The report keeps the steps' order."""
    from concurrent.futures import ThreadPoolExecutor

    from .errors import NvmlUnavailable

    try:
        ctx.inventory()  # asked once, before the threads, which then share the answer
    except NvmlUnavailable:
        pass

    def check(step: Step) -> StepReport:
        started = time.monotonic()
        return _report(step, safe_check(step, ctx), started)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return RunReport(list(pool.map(check, steps)), "status")

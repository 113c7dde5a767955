"""The step engine: a step's read-only check plans actions, the runner applies them and re-checks.

setup, leave and reset are all plans of this engine (Plan): preflight checks first, then each
step's check, its actions and a re-check; each action that changes the machine goes into the
journal with the data that reverses it. "Changed" is never set by hand: a step changed the machine
when its check said needs-change, its actions ran, and the re-check said ok. Whether actions run
at all (a dry run, a refused preflight, an earlier failure) is decided in run_plan and nowhere else.
"""

from __future__ import annotations

import copy
import shlex
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from .errors import GpuswarmError, StepFailed
from .sanitize import clean
from .facts import Facts
from .journal import Undo

if TYPE_CHECKING:
    from .context import Context


def _traceback_text() -> str:
    import traceback  # only for a bug's report

    return traceback.format_exc()


class State(str, Enum):
    OK = "ok"
    NEEDS_CHANGE = "needs-change"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    # A dry run's verdict on a step that is blocked only by what an earlier step of the same plan
    # would change (no Docker yet, so no image can be pulled): applying the plan lifts the block.
    PENDING = "pending"


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
        import difflib  # only where a file differs: status on a converged node never loads it

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
    undo: Undo | None = None  # what reverses it, for the journal (None: nothing to undo)

    def describe(self) -> str:
        return "run " + shlex.join(self.argv)

    def execute(self, ctx: Context) -> None:
        with ctx.reporter.activity(self.progress or self.describe()):
            ctx.host.run(list(self.argv), env=dict(self.env), timeout=self.timeout)


@dataclass(frozen=True)
class Call:
    """An action carried out through a library seam (Docker SDK, SSH) rather than a command."""

    description: str
    fn: Callable[[Context], object] = field(compare=False)  # what it returns is not used
    undo: Undo | None = None  # what reverses it, for the journal (None: nothing to undo)

    def describe(self) -> str:
        return self.description

    def execute(self, ctx: Context) -> None:
        self.fn(ctx)


def run_command(*argv: str, env: Mapping[str, str] | None = None, timeout: float | None = None,
                progress: str = "", undo: Undo | None = None) -> RunCommand:
    return RunCommand(tuple(argv), tuple(sorted((env or {}).items())), timeout, progress, undo)


@dataclass(frozen=True)
class Paired:
    """An opening action, the actions it brackets, and the closing action that runs whenever the
    opening one ran, whatever happens between (try/finally): drain, restart Docker, make the node
    active again. Described, journaled and reported as its parts, in order."""

    opening: Action
    between: tuple[Action, ...]
    closing: Action

    def describe(self) -> str:
        return "; ".join(a.describe() for a in self.parts())

    def parts(self) -> list[Action]:
        return [self.opening, *self.between, self.closing]

    def execute(self, ctx: Context) -> None:
        perform(ctx, self.opening)
        try:
            for action in self.between:
                perform(ctx, action)
        finally:
            perform(ctx, self.closing)


def flatten(actions: Sequence[Action]) -> list[Action]:
    """The actions as they run, a Paired one as its parts."""
    return [part for a in actions for part in (a.parts() if isinstance(a, Paired) else [a])]


def perform(ctx: Context, action: Action) -> None:
    """Carry out one action for the step now running (ctx.step), and journal it with its undo
    data. Also for an action another one starts (an install decided while the run goes)."""
    if isinstance(action, Paired):
        action.execute(ctx)
        return
    ctx.reporter.action(ctx.step, action.describe())
    ctx.ran.append(action)
    try:
        action.execute(ctx)
    finally:
        ctx.facts.forget()  # the machine may have changed: the next check reads it again
    if isinstance(action, (WriteFile, RemoveFile)):
        ctx.touched.add(action.path)
    if ctx.journal is not None and isinstance(action, (RunCommand, Call)):
        undo = {"undo": action.undo.record()} if action.undo is not None else {}
        ctx.journal.record(kind="run" if isinstance(action, RunCommand) else "call", step=ctx.step,
                           argv=list(getattr(action, "argv", ())), action=action.describe(), **undo)


# --- checks and steps -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    state: State
    detail: str
    actions: tuple[Action, ...] = ()
    reboot_required: bool = False
    # What the check observed for programs (status --json's "data"), where the detail says it for
    # people: a time, a count. Kept out of the detail's text so that the text stays the same from
    # one run to the next while the machine does (two status outputs can be diffed).
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # A blocked check whose cause an earlier step removes (its names): no Docker yet for `docker`.
    waits_for: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.state is State.NEEDS_CHANGE) != bool(self.actions):
            raise ValueError(f"a {self.state.value} check must {'' if self.state is State.NEEDS_CHANGE else 'not '}"
                             f"plan actions: {self.detail}")

    @property
    def diff(self) -> str:
        return "".join(a.diff() for a in flatten(self.actions) if isinstance(a, WriteFile))


def ok(detail: str, data: Mapping[str, Any] | None = None) -> Check:
    return Check(State.OK, detail, data=data or {})


def needs_change(detail: str, *actions: Action) -> Check:
    return Check(State.NEEDS_CHANGE, detail, tuple(actions))


def blocked(detail: str, reboot_required: bool = False, waits_for: tuple[str, ...] = ()) -> Check:
    """`waits_for`: the earlier steps whose change would lift the block (a dry run then calls the
    step pending on them when they would change)."""
    return Check(State.BLOCKED, detail, reboot_required=reboot_required, waits_for=waits_for)


def skipped(detail: str) -> Check:
    return Check(State.SKIPPED, detail)


@dataclass(frozen=True)
class PlannedFile:
    """A file as a step wants it: the one statement that `render` prints, the step's check turns
    into a WriteFile where the machine differs (write_wanted), and the engine holds every WriteFile
    of the step to (undeclared_writes)."""

    path: str
    content: str | bytes  # bytes: not text (bytecode); `render` names it without printing it
    mode: int = 0o644


def write_wanted(ctx: Context, planned: PlannedFile, force: bool = False) -> WriteFile | None:
    """The write that makes `planned` true, or None when the file already holds its content
    (`force`: written again all the same, e.g. to make it root's with its mode)."""
    from .facts import FILE_BYTES, FILE_TEXT

    have = ctx.fact(FILE_BYTES if isinstance(planned.content, bytes) else FILE_TEXT, planned.path)
    if have == planned.content and not force:
        return None
    return WriteFile(planned.path, planned.content, have, planned.mode)


class Step(Protocol):
    name: str
    description: str

    def check(self, ctx: Context) -> Check: ...

    def files(self, ctx: Context) -> list[PlannedFile]:
        """Every file this step wants, with its content and mode: what `render` prints, and the
        only files (and contents) its check may plan to write."""


class ClosingStep(Step, Protocol):
    """The closing step of a Bracket: in a dry run the opening step changed nothing, so its check
    would say there is nothing to close; `planned` says what it would do after a real opening."""

    def planned(self, ctx: Context) -> Check:
        """What this step does in a dry run, where the opening step before it has not happened."""
        ...


def undeclared_writes(step: Step, ctx: Context, check: Check) -> list[str]:
    """The files a check plans to write with content its step's files() does not state: render
    would show something else than setup writes. Empty for a correct step."""
    writes = [a for a in flatten(check.actions) if isinstance(a, WriteFile)]
    if not writes:
        return []
    declared = {(p.path, p.content) for p in step.files(ctx)}
    return [w.path for w in writes if (w.path, w.content) not in declared]


def file_rule(step: Step, ctx: Context, check: Check) -> Check:
    """The rule for every file a step installs (its files()), which root later runs or reads: the
    file is not a symlink, is root's, writable by root alone and has no mode bit beyond its
    planned mode (nor lacks the execute bits a program needs); its directory is root's and
    writable by root alone, and not a symlink. A file whose content is right but breaks the rule
    is written again with the same content (root's, with its mode; the write replaces a symlink);
    a directory gets chown/chmod; a symlinked directory blocks the step (it cannot be repaired in
    place). A check that is ok or needs a change gets these added; files its actions write or
    remove already are theirs. The same rule the runtime wrapper's own check applies
    (docker_daemon._ownership_actions), for every file of every step."""
    import posixpath

    from .facts import FILE_BYTES, FILE_STATUS, FILE_TEXT
    from .host import dir_repair_commands, unsafe

    if check.state not in (State.OK, State.NEEDS_CHANGE):
        return check
    planned = flatten(check.actions)
    handled = {a.path for a in planned if isinstance(a, (WriteFile, RemoveFile))}
    commands = {tuple(a.argv) for a in planned if isinstance(a, RunCommand)}
    handled |= {argv[-1] for argv in commands if argv[0] in ("chmod", "chown")}  # the step repairs it itself
    dir_fixes: list[Action] = []
    file_fixes: list[Action] = []
    reasons: list[str] = []
    for wanted in step.files(ctx):
        directory = posixpath.dirname(wanted.path)
        status = ctx.fact(FILE_STATUS, directory)
        if status is not None and status.is_symlink:
            return blocked(f"directory {directory} of {wanted.path} is a symlink, so whoever controls its target "
                           "could change what root runs or reads; make it a directory owned by root")
        problem = unsafe(status)
        if problem:
            for argv in dir_repair_commands(directory, status):
                if argv not in commands:
                    commands.add(argv)
                    dir_fixes.append(run_command(*argv))
            reasons.append(f"directory {directory} {problem}")
        if wanted.path in handled:
            continue
        status = ctx.fact(FILE_STATUS, wanted.path)
        problem = unsafe(status)
        if status is not None and problem is None:
            extra, missing_x = status.mode & ~wanted.mode & 0o7777, wanted.mode & 0o111 & ~status.mode
            if extra:
                problem = f"has mode {status.mode:04o}, more than {wanted.mode:04o}"
            elif missing_x:
                problem = f"has mode {status.mode:04o}, not executable as {wanted.mode:04o}"
        if problem is None:
            continue
        have = ctx.fact(FILE_BYTES if isinstance(wanted.content, bytes) else FILE_TEXT, wanted.path)
        if have != wanted.content:
            continue  # the step keeps content of its own choosing there (boot's recorded config)
        file_fixes.append(WriteFile(wanted.path, wanted.content, have, wanted.mode))
        reasons.append(f"{wanted.path} {problem}")
    if not reasons:
        return check
    # Directories first: nothing is written into one that someone else can still change.
    actions = (*dir_fixes, *check.actions, *file_fixes)
    detail = "; ".join(reasons) if check.state is State.OK else f"{check.detail}; {'; '.join(reasons)}"
    return Check(State.NEEDS_CHANGE, detail, actions, check.reboot_required)


# --- plans ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preflight:
    """A prerequisite known before anything changes (kubeadm's preflight checks). `name` is stable:
    it is shown in the output and the JSON. `problem` says what is wrong, or None."""

    name: str
    problem: Callable[[Context], str | None] = field(compare=False)


@dataclass(frozen=True)
class Bracket:
    """Steps whose closing step is applied whenever the opening step changed the machine, whatever
    happens to the steps between (try/finally): drain the node, reset, make it active again."""

    opening: Step
    steps: tuple[Step, ...]
    closing: ClosingStep


@dataclass(frozen=True)
class Alongside:
    """A step whose actions run in the background, alongside the steps before its place: begun
    (its check, then its actions on a thread of their own) as soon as every step of `after` that
    the plan holds is ok after this run's check or apply, and finished (joined) at its own place,
    where it is reported as any applied step. Before a step of `joined_before` is applied (its check
    says needs-change), the background work is waited for: that step would cut it short (a Docker
    restart ends a pull in flight). Nothing starts in a dry run, after a refused preflight or a
    failure. For slow work that needs only what `after` gives: the notebook image pull needs a
    running Docker and the registry's CA, not the driver, so it runs while the driver is built."""

    step: str
    after: tuple[str, ...]
    joined_before: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What a command does: its preflight checks, then its steps in order."""

    command: str  # "setup", "leave" or "reset"
    steps: tuple[Step | Bracket, ...]
    preflight: tuple[Preflight, ...] = ()
    # Steps independent of each other (reset's undo records): a failed one does not stop the next.
    best_effort: bool = False
    alongside: tuple[Alongside, ...] = ()
    # Steps applied even after a refused preflight (never in a dry run): what makes a later run
    # happen by itself (setup's boot unit), so that a zero-touch boot whose manager did not answer
    # tries again at the next boot instead of staying as it is for good.
    regardless: tuple[str, ...] = ()


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
    before: State | None = None  # the first check's verdict, when the step was applied
    # When the step began (time.monotonic()): a step run alongside others began before the steps
    # reported ahead of it ended, so `seconds` of all steps add up to more than the run took.
    started: float = 0.0
    data: Mapping[str, Any] = field(default_factory=dict)  # Check.data of the verdict reported

    def __setattr__(self, name: str, value) -> None:
        # What every output (console, --json, the run log) takes a step's words from: outside
        # text in them (an image's name, Docker's or the manager's answer) is cleaned here.
        if name == "detail":
            value = clean(value)
        elif name == "actions":
            value = [clean(a) for a in value]
        object.__setattr__(self, name, value)

    def as_json(self) -> dict:
        diffs = self.diffs + [""] * (len(self.actions) - len(self.diffs))
        return {"name": self.name, "state": self.state.value, "detail": self.detail,
                "actions": [{"description": d, **({"diff": x} if x else {})} for d, x in zip(self.actions, diffs)],
                **({"data": dict(self.data)} if self.data else {})}


@dataclass
class PreflightReport:
    name: str
    problem: str | None

    def __post_init__(self) -> None:
        if self.problem is not None:
            self.problem = clean(self.problem)  # as StepReport's detail

    def as_json(self) -> dict:
        return {"name": self.name, "ok": self.problem is None, **({"detail": self.problem} if self.problem else {})}


@dataclass
class RunReport:
    steps: list[StepReport]
    mode: str  # "dry-run", "status", or the command that applied its plan ("setup", "leave", "reset")
    command: str = "setup"
    preflight: list[PreflightReport] = field(default_factory=list)

    @property
    def refused(self) -> list[PreflightReport]:
        """The preflight checks that failed: then no action ran but those of plan.regardless."""
        return [p for p in self.preflight if p.problem is not None]

    @property
    def ok(self) -> bool:
        return not self.refused and all(s.state in (State.OK, State.SKIPPED) for s in self.steps)

    @property
    def changed(self) -> list[str]:
        return [s.name for s in self.steps if s.changed]

    @property
    def stoppers(self) -> list[StepReport]:
        """The steps that keep the node from converging: blocked or failed."""
        return [s for s in self.steps if s.state in (State.BLOCKED, State.FAILED)]

    @property
    def plan_ok(self) -> bool:
        """A dry run's verdict: applying the plan can reach a converged node (every preflight
        check passes, nothing blocked or failed)."""
        return not self.refused and not self.stoppers

    @property
    def reboot_required(self) -> bool:
        return any(s.reboot_required for s in self.steps)

    def as_json(self) -> dict:
        from . import version

        report: dict = {"version": version(), "ok": self.plan_ok if self.mode == "dry-run" else self.ok}
        if self.mode != "status":
            report["dry_run"] = self.mode == "dry-run"
        report.update(changed=self.changed, reboot_required=self.reboot_required,
                      steps=[s.as_json() for s in self.steps])
        if self.mode != "status":
            report["preflight"] = [p.as_json() for p in self.preflight]
        return report


def safe_check(step: Step, ctx: Context) -> Check:
    """A check that raised is a failed step, reported, never a crash of the whole run; so is one
    that plans to write a file its step does not declare (render would not show it)."""
    try:
        check = file_rule(step, ctx, step.check(ctx))
        undeclared = undeclared_writes(step, ctx, check) if check.state is State.NEEDS_CHANGE else []
        if undeclared:
            return Check(State.FAILED, f"internal error: the plan writes {', '.join(undeclared)} other than "
                                       f"{step.name} declares it (render would differ from setup)")
        return check
    except GpuswarmError as exc:
        return Check(State.FAILED, exc.message())
    except Exception as exc:  # a bug in a check must not hide the other steps
        ctx.reporter.debug_traceback(_traceback_text())
        return Check(State.FAILED, f"internal error while checking: {type(exc).__name__}: {exc}")


def _diff_of(action: Action) -> str:
    return action.diff() if isinstance(action, WriteFile) else ""


def _report(step: Step, check: Check, started: float, **kw) -> StepReport:
    planned = flatten(check.actions)
    return StepReport(step.name, check.state, check.detail,
                      actions=[a.describe() for a in planned],
                      diffs=[_diff_of(a) for a in planned], diff=check.diff,
                      reboot_required=check.reboot_required,
                      seconds=time.monotonic() - started, started=started, data=check.data, **kw)


def converge(step: Step, ctx: Context, before: Check | None = None, started: float | None = None,
             carry_out: Callable[[Context], None] | None = None) -> StepReport:
    """Check, apply what the check planned, re-check. Only ok after the re-check is success.
    `before`: the check, when the caller made it already; `carry_out`: what stands for carrying
    out its actions (waiting for them, when they ran in the background: Background.finish)."""
    started = time.monotonic() if started is None else started
    before = safe_check(step, ctx) if before is None else before
    if before.state is not State.NEEDS_CHANGE:
        return _report(step, before, started)
    ctx.step, ctx.ran = step.name, []  # what was carried out, the failing action included

    def applied(report: StepReport) -> StepReport:
        report.actions, report.diffs = [a.describe() for a in ctx.ran], [_diff_of(a) for a in ctx.ran]
        report.before = before.state
        return report

    try:
        if carry_out is not None:
            carry_out(ctx)
        else:
            for action in before.actions:
                perform(ctx, action)
    except GpuswarmError as exc:
        return applied(_report(step, Check(State.FAILED, exc.message()), started))
    except Exception as exc:
        ctx.reporter.debug_traceback(_traceback_text())
        failure = StepFailed(f"internal error while applying: {type(exc).__name__}: {exc}",
                             "Re-run with --debug and report the traceback.")
        return applied(_report(step, Check(State.FAILED, failure.message()), started))
    after = safe_check(step, ctx)
    if after.state is State.OK or (after.state is State.BLOCKED and after.reboot_required):
        report = _report(step, after, started, changed=True)
    else:
        report = _report(step, Check(State.FAILED, f"still not converged after applying: {after.detail}"),
                         started)
    report.diff = before.diff
    return applied(report)


class Background:
    """A step's planned actions carried out on a thread (Plan.alongside), with a view of the run of
    their own: a shallow copy of the context sharing its host, journal, logs and answers, with its
    own Docker client (made on first use: the SDK's lazily made client is not shared across
    threads), its own record of the actions run and files touched, and the reporter's concurrent
    form (lines, no live display: a terminal has one, and apt's may hold it)."""

    def __init__(self, step: Step, ctx: Context, before: Check, started: float) -> None:
        self.step, self.before, self.started = step, before, started
        self.ctx = copy.copy(ctx)
        self.ctx.step, self.ctx.ran, self.ctx.touched = step.name, [], set()
        self.ctx._docker = None
        # Facts of its own, asked of its own Docker client; the run's are forgotten when it ends.
        self.ctx.facts = Facts(ctx.host, ctx.facts.given, docker=self.ctx._docker_api)
        concurrent = getattr(ctx.reporter, "concurrent", None)
        if concurrent is not None:
            self.ctx.reporter = concurrent()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"gpuswarm-node {step.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for action in self.before.actions:
                perform(self.ctx, action)
        except BaseException as exc:  # raised again on the run's own thread, by finish
            self.error = exc

    def finish(self, ctx: Context) -> None:
        """Wait for the actions; record them in `ctx` as carried out there; raise what they raised."""
        self.thread.join()
        ctx.facts.forget()  # it changed the machine (an image pulled)
        ctx.ran.extend(self.ctx.ran)
        ctx.touched.update(self.ctx.touched)
        if self.error is not None:
            raise self.error


def _plan_steps(plan: Plan) -> list[Step]:
    """The plan's steps in order, a Bracket's as opening, the steps between, closing."""
    return [s for item in plan.steps
            for s in ((item.opening, *item.steps, item.closing) if isinstance(item, Bracket) else (item,))]


def run_plan(plan: Plan, ctx: Context, dry_run: bool = False) -> RunReport:
    """Preflight, then every step in order. Actions run only when this is no dry run and every
    preflight check passed; after a failed step the later ones are only checked (they build on
    it, unless the plan is best_effort; a failed opening step of a Bracket always stops them),
    except the closing step of a Bracket whose opening step changed the machine. A step of
    plan.alongside may run in the background from the moment its `after` steps are ok; once begun,
    it is waited for and reported at its place whatever happened meanwhile."""
    preflight = [PreflightReport(p.name, _safe_problem(p, ctx)) for p in plan.preflight]
    stop = dry_run or any(p.problem for p in preflight)
    reports: list[StepReport] = []
    steps_by_name = {s.name: s for s in _plan_steps(plan)}
    order = list(steps_by_name)
    waiting = [a for a in plan.alongside if a.step in steps_by_name]  # not begun yet
    running: dict[str, tuple[Alongside, Background]] = {}
    ready: set[str] = set()  # the steps that are ok after this run's check or apply

    def begin_ready(done: str) -> None:
        """Begin every background step whose `after` steps are all ok now, and which is still ahead."""
        for entry in list(waiting):
            if stop or order.index(entry.step) <= order.index(done):
                continue
            if not all(name in ready for name in entry.after if name in steps_by_name):
                continue
            waiting.remove(entry)
            step, started = steps_by_name[entry.step], time.monotonic()
            check = safe_check(step, ctx)
            if check.state is State.NEEDS_CHANGE:
                running[entry.step] = (entry, Background(step, ctx, check, started))
            # Otherwise the step is checked again at its place, as any other.

    def one(step: Step, apply: bool) -> StepReport:
        nonlocal stop
        ctx.reporter.step_started(step.name, step.description)
        if step.name in running:  # begun in the background: it ran, so it is finished and reported
            _entry, job = running.pop(step.name)
            report = converge(step, ctx, job.before, job.started, job.finish)
            stop = stop or (report.state is State.FAILED and not plan.best_effort)
        elif apply:
            before, started = None, None
            cut = [job for entry, job in running.values() if step.name in entry.joined_before]
            if cut:
                started = time.monotonic()
                before = safe_check(step, ctx)
                if before.state is State.NEEDS_CHANGE:  # applying it would cut the work short
                    with ctx.reporter.activity(f"waiting for {', '.join(j.step.name for j in cut)} "
                                               f"before {step.name}"):
                        for job in cut:
                            job.thread.join()
                    started = time.monotonic()  # the wait is the background step's time, not this one's
            report = converge(step, ctx, before, started)
            # Later steps build on earlier ones: after a failure only look, do not touch.
            stop = stop or (report.state is State.FAILED and not plan.best_effort)
        else:
            started = time.monotonic()
            check = safe_check(step, ctx)
            if check.state is State.NEEDS_CHANGE:  # what the engine would carry out
                ctx.touched.update(a.path for a in flatten(check.actions) if isinstance(a, (WriteFile, RemoveFile)))
            report = _report(step, check, started)
            earlier = [r.name for r in reports if r.name in check.waits_for
                       and r.state in (State.NEEDS_CHANGE, State.PENDING)]
            if check.state is State.BLOCKED and earlier:
                # Not applied (a dry run, a refused preflight): what blocks it is what those steps change.
                report.state = State.PENDING
                report.detail = f"waits for {', '.join(earlier)}: {check.detail}"
        ctx.reporter.step_finished(report)
        reports.append(report)
        if report.state in (State.OK, State.SKIPPED):
            ready.add(step.name)
        if waiting:
            begin_ready(step.name)
        return report

    for item in plan.steps:
        if not isinstance(item, Bracket):
            one(item, not stop or (not dry_run and not reports and item.name in plan.regardless))
            continue
        opened = one(item.opening, not stop)
        # What the bracket protects (a drain before a restart) did not happen: touch nothing more.
        stop = stop or opened.state is State.FAILED
        try:
            for step in item.steps:
                one(step, not stop)
        finally:
            if opened.changed:
                one(item.closing, True)
            elif opened.state is State.NEEDS_CHANGE:  # a dry run: the closing half would follow
                started = time.monotonic()
                report = _report(item.closing, item.closing.planned(ctx), started)
                ctx.reporter.step_finished(report)
                reports.append(report)
    if not dry_run and not any(p.problem for p in preflight):
        for path in dict.fromkeys(ctx.confirmed):
            ctx.host.touch(path)
    return RunReport(reports, "dry-run" if dry_run else plan.command, plan.command, preflight)


def _safe_problem(check: Preflight, ctx: Context) -> str | None:
    try:
        return check.problem(ctx)
    except GpuswarmError as exc:
        return exc.message()
    except Exception as exc:
        ctx.reporter.debug_traceback(_traceback_text())
        return f"internal error: {type(exc).__name__}: {exc}"


def run_setup(steps: Sequence[Step], ctx: Context, dry_run: bool = False,
              preflight: Sequence[Preflight] = ()) -> RunReport:
    return run_plan(Plan("setup", tuple(steps), tuple(preflight)), ctx, dry_run)


def run_status(steps: Sequence[Step], ctx: Context, workers: int = 4) -> RunReport:
    """Every check, concurrently: they only read, and most of their time is spent waiting for
    systemctl, the Engine API's socket and iptables. The report keeps the steps' order.

    `workers` threads take the steps in order. Plain threads rather than concurrent.futures,
    whose import (with logging) took about 3 ms of a status on the benchmark's node."""
    import threading

    from .errors import NvmlUnavailable

    try:
        ctx.inventory()  # asked once, before the threads, which then share the answer
    except NvmlUnavailable:
        pass
    steps = list(steps)
    reports: list[StepReport | None] = [None] * len(steps)
    failures: list[BaseException] = []
    ahead = iter(range(len(steps)))
    taking = threading.Lock()

    def work() -> None:
        while True:
            with taking:
                index = next(ahead, None)
            if index is None:
                return
            started = time.monotonic()
            try:
                reports[index] = _report(steps[index], safe_check(steps[index], ctx), started)
            except BaseException as exc:  # safe_check catches a check's errors; this is the engine's own
                failures.append(exc)
                return

    threads = [threading.Thread(target=work, name=f"status check {n}") for n in range(min(workers, len(steps)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return RunReport([r for r in reports if r is not None], "status", "status")

"""Rendering for people: rich tables, live progress and the end-of-run summary. JSON goes elsewhere."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import progress
from .engine import RunReport, State, StepReport
from .probes.gpu import Inventory

STYLE = {State.OK: "green", State.NEEDS_CHANGE: "yellow", State.FAILED: "bold red",
         State.BLOCKED: "red", State.SKIPPED: "dim", State.PENDING: "cyan"}


def state_text(state: State) -> str:
    return f"[{STYLE[state]}]{state.value}[/]"


class ConsoleReporter:
    """Live lines on stderr while a run goes; stdout stays free for the result."""

    def __init__(self, console: Console, debug: bool = False, concurrent: bool = False,
                 verbose: bool = False) -> None:
        self.console = console
        self.debug = debug
        # Work in the background (engine.Background) prints lines only: a terminal has one live
        # display, which the steps in the foreground (apt's bar, a spinner) may hold.
        self.background = concurrent
        # -v: a line as each step begins (what it sees to), and the diff of every file it wrote.
        self.verbose = verbose

    def concurrent(self) -> "ConsoleReporter":
        """This reporter for work that runs alongside the steps in the foreground."""
        return ConsoleReporter(self.console, self.debug, concurrent=True, verbose=self.verbose)

    def step_started(self, name: str, description: str) -> None:
        if self.verbose:
            self.console.print(f"[dim]{'checking':>12}[/] [bold]{name}[/] [dim]{escape(description)}[/]")

    def step_finished(self, report: StepReport) -> None:
        mark = "changed" if report.changed else report.state.value
        style = "cyan" if report.changed else STYLE[report.state]
        self.console.print(f"[{style}]{mark:>12}[/] [bold]{report.name}[/] {escape(report.detail)} "
                           f"[dim]({report.seconds:.1f} s)[/]")
        if self.verbose and report.changed:  # what it wrote (a dry run's plan shows what it would)
            for diff in report.diffs:
                if diff:
                    self.console.print(diff, markup=False, highlight=False, end="" if diff.endswith("\n") else "\n")

    def action(self, step: str, description: str) -> None:
        self.console.print(f"{'':>12} [dim]{step}:[/] {escape(description)}")

    @contextlib.contextmanager
    def activity(self, label: str) -> Iterator[None]:
        if not self.console.is_terminal or self.background:
            yield
            return
        with self.console.status(escape(label)):
            yield

    def pull(self, image: str) -> ContextManager[Callable[[dict], None]]:
        return progress.pull_view(self.console, image, plain=self.background)

    def apt(self, label: str) -> ContextManager[Callable[[str], None]]:
        return progress.apt_view(self.console, label)

    def debug_traceback(self, text: str) -> None:
        if self.debug:
            self.console.print(escape(text), style="dim")


def status_table(report: RunReport) -> Table:
    table = Table(title="gpuswarm-node status", title_justify="left")
    table.add_column("step")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    for step in report.steps:
        table.add_row(step.name, state_text(step.state), escape(step.detail))
    return table


def print_preflight(console: Console, report: RunReport) -> None:
    for check in report.refused:
        console.print(f"[bold red]preflight {check.name} failed:[/] {escape(check.problem or '')}")  # refused: set


def print_kept(console: Console, report: RunReport) -> None:
    """What a reset leaves in place on purpose (its `kept` steps), one line each."""
    for step in report.steps:
        if step.name == "kept":
            console.print(f"kept: {escape(step.detail)}")


def print_plan(console: Console, report: RunReport, verbose: bool = False) -> None:
    """A dry run's plan. `verbose` (-v): also each step that is already right, with its detail."""
    print_preflight(console, report)
    for step in report.steps:
        if verbose and step.state in (State.OK, State.SKIPPED):
            console.print(f"[{STYLE[step.state]}]{step.name} {step.state.value}[/]: {escape(step.detail)}")
        if step.state is State.NEEDS_CHANGE:
            console.print(f"[yellow]{step.name}[/]: {escape(step.detail)}")
            for action in step.actions:
                console.print(f"  - {escape(action)}")
            if step.diff:
                console.print(escape(step.diff), highlight=False, markup=False)
    print_kept(console, report)
    waiting = [s for s in report.steps if s.state is State.PENDING]
    for step in waiting:
        console.print(f"[cyan]{step.name} pending[/]: {escape(step.detail)}")
    for step in report.stoppers:
        console.print(f"[bold red]{step.name} {step.state.value}:[/] {escape(step.detail)}")
    console.print(escape(plan_line(report)))


def plan_line(report: RunReport) -> str:
    """A dry run's verdict, one line: what would change, what waits on it, what stops it."""
    waiting = [s for s in report.steps if s.state is State.PENDING]
    pending = [s.name for s in report.steps if s.state is State.NEEDS_CHANGE]
    line = f"dry run: {len(pending)} step(s) would change: {', '.join(pending) or 'none'}; "
    if waiting:
        line += f"{len(waiting)} step(s) pending on those: {', '.join(s.name for s in waiting)}; "
    stoppers = [f"{s.name} ({s.state.value})" for s in report.stoppers]
    if report.refused:
        line += (f"refused by preflight check(s) {', '.join(p.name for p in report.refused)}, so {report.command} "
                 "would change nothing; ")
    if stoppers:
        line += f"stopped by {len(stoppers)} step(s): {', '.join(stoppers)}, so {report.command} would not converge; "
    elif report.reboot_required:
        line += "a reboot would be required; "
    return line + "nothing was changed."


def print_plan_quietly(console: Console, report: RunReport) -> None:
    """A dry run under -q: what refuses or stops it, then its verdict line."""
    print_preflight(console, report)
    for step in report.stoppers:
        console.print(f"[bold red]{step.name} {step.state.value}:[/] {escape(step.detail)}")
    console.print(escape(plan_line(report)))


def print_summary(console: Console, report: RunReport, backups: Sequence[tuple[str, str]] = (),
                  logs: Sequence[str] = ()) -> None:
    """The end of every run that may change the machine (setup, leave, reset)."""
    print_preflight(console, report)
    if report.refused:
        console.print(f"{report.command} refused before any change: nothing was changed.")
    table = Table(title=f"{report.command} summary", title_justify="left")
    for col in ("step", "result", "time", "detail"):
        table.add_column(col, overflow="fold" if col == "detail" else "ellipsis")
    for step in report.steps:
        result = "[cyan]changed[/]" if step.changed else state_text(step.state)
        table.add_row(step.name, result, f"{step.seconds:.1f} s", escape(step.detail))
    console.print(table)
    console.print(f"changed: {', '.join(report.changed) or 'nothing'}")
    reboot = [s.name for s in report.steps if s.reboot_required]
    if reboot:
        console.print(f"[bold yellow]reboot required[/] ({', '.join(reboot)}), then run setup again.")
    for original, backup in backups:
        console.print(f"backup of {escape(original)}: {escape(backup)}")
    for log in logs:
        console.print(f"full command output: {escape(log)}")
    print_kept(console, report)
    for step in report.stoppers:
        console.print(f"[bold red]{step.name} {step.state.value}:[/] {escape(step.detail)}")
    if report.ok:
        console.print(f"[green]{DONE[report.command]}[/]")


DONE = {"setup": "node converged.", "leave": "node drained and out of the swarm.",
        "reset": "everything setup recorded is reverted, or kept as said above.",
        "hub init": "hub converged.",
        "hub reset": "everything hub init recorded is reverted, or kept as said above."}


def run_verdict(report: RunReport) -> str:
    """The end of a run that may change the machine (setup, leave, reset), in one line."""
    if report.refused:
        return f"{report.command} refused before any change: nothing was changed."
    changed = f"changed: {', '.join(report.changed) or 'nothing'}"
    if report.ok:
        return f"{DONE[report.command].rstrip('.')}; {changed}."
    stoppers = ", ".join(f"{s.name} ({s.state.value})" for s in report.stoppers) or "a step"
    return f"{report.command} did not converge: stopped by {stoppers}; {changed}."


def print_summary_quietly(console: Console, report: RunReport) -> None:
    """A run's end under -q: its errors (refusals, failed and blocked steps), a reboot it needs,
    and its verdict line; no table."""
    print_preflight(console, report)
    for step in report.stoppers:
        console.print(f"[bold red]{step.name} {step.state.value}:[/] {escape(step.detail)}")
    reboot = [s.name for s in report.steps if s.reboot_required]
    if reboot:
        console.print(f"[bold yellow]reboot required[/] ({', '.join(reboot)}), then run setup again.")
    console.print(escape(run_verdict(report)), style="green" if report.ok else None)


def status_verdict(report: RunReport) -> str:
    """`status` in one line: converged, or which steps are not right."""
    wrong = [s for s in report.steps if s.state not in (State.OK, State.SKIPPED)]
    if not wrong:
        return f"node converged: {len(report.steps)} step(s) checked, none needs a change."
    return (f"node not converged: {len(wrong)} of {len(report.steps)} step(s) not right: "
            f"{', '.join(f'{s.name} ({s.state.value})' for s in wrong)}.")


def print_status_quietly(console: Console, report: RunReport) -> None:
    """`status -q`: a line for each step that is not right, then the verdict line."""
    for step in report.steps:
        if step.state not in (State.OK, State.SKIPPED):
            console.print(f"{step.name} {step.state.value}: {step.detail}", markup=False, highlight=False)
    console.print(status_verdict(report), markup=False, highlight=False)


def print_status_actions(console: Console, report: RunReport) -> None:
    """`status -v`, after the table: what setup would run for each step that is not right."""
    for step in report.steps:
        if step.actions:
            console.print(f"{step.name}: setup would run:", markup=False, highlight=False)
            for action in step.actions:
                console.print(f"  - {action}", markup=False, highlight=False)
    console.print(status_verdict(report), markup=False, highlight=False)


def inventory_table(inventory: Inventory, slices: list[str]) -> Table:
    table = Table(title=f"NVIDIA driver {inventory.driver_version}", title_justify="left")
    for col in ("index", "uuid", "name", "memory", "MIG", "slices"):
        table.add_column(col)
    for gpu in inventory.gpus:
        mig = f"on, {len(gpu.mig_devices)} device(s)" if gpu.mig_enabled else "off"
        own = {m.uuid for m in gpu.mig_devices}
        count = sum(1 for s in slices if s.partition("::")[0] == gpu.uuid or s in own)
        table.add_row(str(gpu.index), gpu.uuid, escape(gpu.name), f"{gpu.memory_bytes / 2**30:.1f} GiB", mig,
                      str(count))
    return table


def print_runs(console: Console, runs: Sequence, skipped: int, path: str) -> None:
    """`logs`: each run of the run log (logs.Run) in one line, when it was logged, the command, what
    changed, failed or was blocked, then a line for each error."""
    for run in runs:
        head = f"{run.time}  {run.command:<6} run {run.run}: "
        if run.command == "watch":
            record = run.records[-1]
            head += (f"{record.get('before')} -> {record.get('after')} ({record.get('reason', '?')}): "
                     f"{record.get('detail', '')}")
        else:
            took = f" in {run.seconds:.1f} s" if run.seconds is not None else ""
            head += f"{len(run.records)} step(s){took}; changed: {', '.join(run.changed) or 'nothing'}"
            for what, names in (("failed", run.failed), ("blocked", run.blocked)):
                if names:
                    head += f"; {what}: {', '.join(names)}"
        console.print(head, markup=False, highlight=False)
        for step, error in run.errors:
            console.print(f"  error in {step}: {error}", markup=False, highlight=False)
    if skipped:
        console.print(f"note: {skipped} line(s) of {path} are not run records; skipped.", markup=False,
                      highlight=False)


def print_apt_runs(console: Console, runs: Sequence) -> None:
    """`logs --apt`: each apt-get or dpkg run (logs.AptRun) as the apt log holds it."""
    for run in runs:
        console.print(f"=== {run.time} {run.command}", markup=False, highlight=False)
        if run.output:
            console.print(run.output, markup=False, highlight=False)
        end = (f"=== exit {run.exit} after {run.seconds:.1f} s" if run.exit is not None
               else "=== no end recorded (still running, or cut off)")
        console.print(end, markup=False, highlight=False)

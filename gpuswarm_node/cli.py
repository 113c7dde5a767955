"""The command line: parse, build the configuration, run, render. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import GpuswarmError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Turn a GPU machine into a Docker Swarm worker for JupyterHub, and keep it healthy.")

ConfigOption = typer.Option(None, "--config", "-c", metavar="FILE",
                            help="Config file (default: $GPUSWARM_CONFIG or /etc/gpuswarm-node/config.toml).")
SetOption = typer.Option([], "--set", metavar="SECTION.KEY=VALUE", help="Override one config key.")
JsonOption = typer.Option(False, "--json", help="Print one JSON object instead of tables.")


class State:
    config: Optional[Path] = None
    debug: bool = False


state = State()
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(exc: GpuswarmError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message())}")
    raise typer.Exit(exc.exit_code)


def guarded(fn: Callable[[], int]) -> None:
    """Run a command body: domain errors become one line and an exit code, never a traceback."""
    try:
        code = fn()
    except GpuswarmError as exc:
        if state.debug:
            err.print(traceback.format_exc(), markup=False)
        fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted.")
        raise typer.Exit(130)
    except typer.Exit:
        raise
    except Exception as exc:
        if state.debug:
            err.print(traceback.format_exc(), markup=False)
        err.print(f"[bold red]internal error:[/] {escape(f'{type(exc).__name__}: {exc}')}. Re-run with --debug for the traceback.")
        raise typer.Exit(1)
    raise typer.Exit(code)


def load_config(config: Optional[Path], overrides: List[str]):
    from .config import load

    return load(config or state.config, overrides=overrides)


def make_context(config, json_mode: bool, changes: bool = False, **options):
    """`changes`: this run may change the machine, so it keeps a journal for `reset`."""
    from .host import LocalHost
    from .journal import Journal
    from .system import Context, RunOptions
    from .ui import ConsoleReporter

    reporter = ConsoleReporter(err, debug=state.debug)
    if json_mode:
        reporter = ConsoleReporter(Console(stderr=True, quiet=not state.debug), debug=state.debug)
    journal = Journal() if changes else None
    return Context(config=config, host=LocalHost(journal=journal), reporter=reporter, journal=journal,
                   options=RunOptions(**options))


@app.callback()
def main_options(
    config: Optional[Path] = ConfigOption,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debugging output."),
) -> None:
    state.config = config
    state.debug = debug


@app.command()
def setup(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; change nothing."),
    only: List[str] = typer.Option([], "--only", metavar="STEP", help="Run only this step (repeatable)."),
    skip: List[str] = typer.Option([], "--skip", metavar="STEP", help="Do not run this step (repeatable)."),
    json_out: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    force_rejoin: bool = typer.Option(False, "--force-rejoin",
                                      help="Leave another swarm this node is in, to join the configured one."),
    allow_restart: bool = typer.Option(False, "--allow-restart",
                                       help="Restart Docker even though containers are running on this node."),
    drain: bool = typer.Option(False, "--drain",
                               help="Drain this node through the manager before restarting Docker."),
) -> None:
    """Converge this machine into a ready Swarm worker (safe to re-run)."""

    def body() -> int:
        from . import steps
        from .engine import State as StepState, run_setup
        from .ui import print_plan, print_summary

        from .lock import run_lock
        from .runlog import append as log_run, prepare as prepare_run_log

        cfg = load_config(config, overrides)
        selected = steps.select(only, skip)
        ctx = make_context(cfg, json_out, changes=not dry_run, force_rejoin=force_rejoin,
                           allow_restart=allow_restart, drain=drain)
        if dry_run:
            report = run_setup(selected, ctx, dry_run=True)
        else:
            with run_lock(command="setup"):
                prepare_run_log()
                report = run_setup(selected, ctx)
                log_run(report)
        if json_out:
            out.print_json(json.dumps(report.as_json()))
        elif dry_run:
            print_plan(out, report)
        else:
            print_summary(out, report, getattr(ctx.host, "backups", []))
        if dry_run:
            return 1 if any(s.state is StepState.FAILED for s in report.steps) else 0
        return 0 if report.ok else 1

    guarded(body)


@app.command()
def status(
    json_out: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    prometheus: Optional[Path] = typer.Option(None, "--prometheus", metavar="FILE",
                                              help="Also write node-exporter textfile metrics to FILE."),
) -> None:
    """Check every step without changing anything; exit 1 when the node is not converged."""

    def body() -> int:
        from . import steps
        from .engine import run_status
        from .ui import status_table

        cfg = load_config(config, overrides)
        report = run_status(steps.ALL_STEPS, make_context(cfg, json_out))
        if prometheus is not None:
            from .metrics import write as write_metrics

            write_metrics(report, str(prometheus))
        if json_out:
            out.print_json(json.dumps(report.as_json()))
        else:
            out.print(status_table(report))
        return 0 if report.ok else 1

    guarded(body)


@app.command("steps")
def list_steps() -> None:
    """List the steps in the order setup runs them."""
    from . import steps

    for step in steps.ALL_STEPS:
        out.print(f"{step.name:<16} {step.description}")


@app.command()
def gpus(
    json_out: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
) -> None:
    """Show the GPUs NVML reports and the Swarm slices they yield."""

    def body() -> int:
        from .probes.gpu import read_inventory
        from .slices import for_config, notes
        from .ui import inventory_table

        cfg = load_config(config, overrides)
        inventory = read_inventory()
        slices = for_config(inventory.gpus, cfg.gpu)
        why_not = notes(inventory.gpus, cfg.gpu)
        resources = [f"{cfg.gpu.resource}={s}" for s in slices]
        if json_out:
            out.print_json(json.dumps({"driver_version": inventory.driver_version,
                                       "gpus": [asdict(g) for g in inventory.gpus],
                                       "node_generic_resources": resources, "notes": why_not}))
        else:
            out.print(inventory_table(inventory, slices))
            out.print(f"{len(slices)} slice(s) advertised as node-generic-resources:")
            for r in resources:
                out.print(f"  {r}")
            for note in why_not:
                out.print(f"note: {note}", markup=False)
        return 0

    guarded(body)


@app.command()
def render(
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
) -> None:
    """Print every file setup would write, with its full content, for review."""

    def body() -> int:
        from . import steps
        from .errors import NvmlUnavailable

        cfg = load_config(config, overrides)
        ctx = make_context(cfg, json_mode=False)
        for step in steps.ALL_STEPS:
            try:
                files = step.files(ctx)
            except NvmlUnavailable as exc:
                err.print(f"# {step.name}: cannot render without GPUs: {exc.reason}")
                continue
            for planned in files:
                out.print(f"# ==> {planned.path} ({step.name})", markup=False)
                out.print(planned.content, markup=False, end="" if planned.content.endswith("\n") else "\n")
        return 0

    guarded(body)


@app.command("cuda-env")
def cuda_env(
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
) -> None:
    """Print sh setting CUDA_VISIBLE_DEVICES from this container's DOCKER_RESOURCE_<KIND>; eval it."""

    def body() -> int:
        import os

        from .slices import cuda_env as shell_lines

        cfg = load_config(config, overrides)
        try:
            text = shell_lines(os.environ, cfg.gpu.resource)
        except ValueError as exc:
            raise GpuswarmError(f"{exc}.", "The container's slice reservation is unusable; CUDA_VISIBLE_DEVICES "
                                           "was left unset.") from None
        sys.stdout.write(text)
        return 0

    guarded(body)


@app.command("hub-config")
def hub_config(
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
) -> None:
    """Print the jupyterhub_config.py lines for SwarmSpawner that ask for this node's resource kind."""

    def body() -> int:
        from .hub import hub_config as lines

        sys.stdout.write(lines(load_config(config, overrides)))
        return 0

    guarded(body)


@app.command()
def leave(
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for tasks to move elsewhere."),
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
) -> None:
    """Drain this node through the manager, wait for its tasks to move, then leave the swarm."""

    def body() -> int:
        from .lifecycle import leave as leave_swarm
        from .lock import run_lock

        cfg = load_config(config, overrides)
        # The same lock as setup: a leave must not race a setup that is joining or restarting Docker.
        with run_lock(command="leave"):
            report = leave_swarm(make_context(cfg, json_mode=False, changes=True), timeout=timeout)
        for note in report.notes:
            out.print(note)
        if report.left:
            out.print(f"node {report.node_id} drained ({report.tasks_moved} task(s) moved) and left the swarm"
                      + ("; removed from the manager" if report.removed_from_manager else ""))
        return 0

    guarded(body)


@app.command()
def reset(
    yes: bool = typer.Option(False, "--yes", help="Really revert; without it, only print the plan."),
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    allow_restart: bool = typer.Option(False, "--allow-restart",
                                       help="Restart Docker even though containers are running on this node."),
    drain: bool = typer.Option(False, "--drain",
                               help="Drain this node through the manager before restarting Docker."),
) -> None:
    """Best-effort revert of everything setup changed, from the tool's own record of changes."""

    def body() -> int:
        from . import reset as resetting
        from .journal import Journal
        from .lock import run_lock

        journal = Journal()
        undo = resetting.plan(journal.entries())
        if not undo:
            out.print(f"nothing to revert: no changes recorded in {journal.path}")
            return 0
        if not yes:
            if drain:
                out.print("  - drain this node through the manager and wait for its tasks to move")
            for item in undo:
                out.print(f"  - {escape(item.describe())}")
            flags = "".join(f" {flag}" for flag, on in (("--allow-restart", allow_restart), ("--drain", drain)) if on)
            out.print(f"run `gpuswarm-node reset --yes{flags}` to do this.")
            return 0
        cfg = load_config(config, overrides)
        ctx = make_context(cfg, json_mode=False, allow_restart=allow_restart, drain=drain)
        with run_lock(command="reset"):
            # Setup's restart rules, decided before anything is undone.
            refusal = resetting.refusal(ctx, resetting.plan(journal.entries()))
            if refusal:
                raise GpuswarmError(f"reset refused: {refusal}.", "Nothing was reverted.")
            report = resetting.execute(ctx, journal)
        for item in report.done:
            out.print(f"reverted: {escape(item)}")
        for item in report.kept:
            out.print(f"kept: {escape(item)}")
        for item in report.notes:
            out.print(f"note: {escape(item)}")
        for item in report.failed:
            out.print(f"[red]not reverted:[/] {escape(item)}")
        return 1 if report.failed else 0

    guarded(body)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(f"gpuswarm-node {__version__}")


def main() -> None:
    # Before anything is created: under umask 000 (some cloud-init setups) every file and directory
    # would otherwise start group- and world-writable. The tool sets explicit modes too.
    os.umask(0o022)
    app()


if __name__ == "__main__":
    sys.exit(main())

"""The command line: parse, build the configuration, run, render. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, NoReturn, Optional, Sequence

from enum import Enum

import typer
from rich.console import Console
from rich.markup import escape

try:  # typer 0.2x carries its own click; earlier ones use the click package
    from typer._click import exceptions as click_errors
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer
    # mypy reads typer._click above; these redefine the same names for an older typer.
    from click import exceptions as click_errors  # type: ignore[no-redef]
    from click.globals import get_current_context  # type: ignore[no-redef]

from . import version as tool_version
from .errors import GpuswarmError

PROG = "gpuswarm-node"
# The steps' names, for help and completion without importing the steps (tests/test_cli_help.py
# checks them against gpuswarm_node.steps.STEP_NAMES).
STEP_NAMES = ("boot", "tmpfs", "docker-group", "docker", "registry-trust", "nvidia-driver", "nvidia-toolkit",
              "docker-daemon", "metadata-guard", "image", "shared-fs", "swarm-join", "node-labels", "watch")

CONFIG_ENV = ("GPUSWARM_CONFIG (the config file); GPUSWARM_<SECTION>_<KEY> for any key, e.g. "
              "GPUSWARM_SWARM_MANAGER (`gpuswarm-node config` lists them).")
USAGE_EXIT = "2 bad usage or configuration."


def epilog(example: str, exit_codes: str, environment: str = CONFIG_ENV) -> str:
    """The end of a command's help: an example, its exit codes, the environment it reads. One
    paragraph each (typer's rich help keeps paragraphs apart and joins the lines within one)."""
    return "\n\n".join(escape(line) for line in (f"Example: {example}", f"Exit codes: {exit_codes}",
                                                  f"Environment: {environment}"))


app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Turn a GPU machine into a Docker Swarm worker for JupyterHub, and keep it healthy.",
                  epilog=epilog(f"sudo {PROG} setup --config node.toml",
                                f"0 success; 1 a step failed or the node is not converged; {USAGE_EXIT} "
                                f"Each command's -h says more."))

def complete_steps(incomplete: str) -> List[str]:
    """Shell completion of --only and --skip: the step names that begin with what was typed."""
    return [name for name in STEP_NAMES if name.startswith(incomplete)]


def complete_config_keys(incomplete: str) -> List[str]:
    """Shell completion of --set: `SECTION.KEY=` for every config key that begins with what was
    typed (config.reference, the keys `config` lists), less those only a config file can give (the
    [[shared.mounts]] tables: a tuple default)."""
    from .config import reference

    keys = (f"{section}.{name}=" for section, name, default, _ in reference() if not isinstance(default, tuple))
    return [key for key in keys if key.startswith(incomplete)]


ConfigOption = typer.Option(None, "--config", "-c", metavar="FILE",
                            help="Config file (default: $GPUSWARM_CONFIG or /etc/gpuswarm-node/config.toml).")
SetOption = typer.Option([], "--set", metavar="SECTION.KEY=VALUE", help="Override one config key.",
                         autocompletion=complete_config_keys)
JsonOption = typer.Option(False, "--json", help="Print one JSON object instead of tables.")
# reset and hub reset: a revert runs only when asked for by name.
RevertYesOption = typer.Option(False, "--yes", help="Really revert; without it, only print the plan.")
RevertDryRunOption = typer.Option(False, "--dry-run", help="Only print the plan (as without --yes), even with --yes.")


class State:
    config: Optional[Path] = None
    debug: bool = False
    quiet: bool = False  # -q: errors, warnings and each command's verdict line only
    verbose: bool = False  # -v: each step as it begins, and what it wrote or would run


state = State()
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: dict) -> None:
    """Print one --json object, which names the tool's version and commit first ("version")."""
    out.print_json(json.dumps({"version": tool_version(), **data}))


def fail(exc: GpuswarmError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message())}")
    raise typer.Exit(exc.exit_code)


def need_root(command: str) -> None:
    """Setup, status, leave and reset read root's files (the boot config, the journal), the Docker
    socket and iptables, and setup changes the machine: without root they would report what they
    cannot see as wrong, or fail half-way. A usage error (exit 2), before anything is read."""
    if os.geteuid() != 0:
        import shlex

        from .errors import ConfigError

        raise ConfigError(f"{command} needs root: it reads root's files, the Docker socket and iptables.",
                          f"Run it as `sudo {shlex.join([PROG, *sys.argv[1:]])}`.")


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
        from .sanitize import clean

        err.print(f"[bold red]internal error:[/] {escape(clean(f'{type(exc).__name__}: {exc}'))}. Re-run with --debug for "
                  "the traceback.")
        raise typer.Exit(1)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(message)}")


class ConfigSource:
    """Where a command's configuration comes from: --config (the command's, else the one given
    before the command), and each --set override, in order."""

    def __init__(self, config: Optional[Path], overrides: Sequence[str]) -> None:
        self.given, self.overrides = config, list(overrides)

    @property
    def path(self) -> Optional[Path]:
        return self.given or state.config

    def load(self, remember: bool = False):
        """The validated configuration (config.load: file, then environment, then --set).
        `remember`: a command that acts on this node (setup, status, leave, reset, config) reads
        the configuration of the last setup where no file is named, and says so on stderr."""
        from .config import load, remembered_note

        cfg = load(self.path, overrides=self.overrides, warn=warn, remember=remember)
        note = remembered_note(cfg) if remember else None
        if note and not state.quiet:
            err.print(f"note: {note}", markup=False)
        return cfg


# No --config, no --set: a command's default, which with_config replaces by the options given.
DEFAULT_SOURCE = ConfigSource(None, [])


def with_config(command: Callable) -> Callable:
    """A command that reads the configuration declares `source: ConfigSource`; this gives it the
    options --config and --set in that parameter's place (one definition for every command)."""
    import functools
    import inspect

    signature = inspect.signature(command)
    params = []
    for param in signature.parameters.values():
        if param.name == "source":
            params += [inspect.Parameter("config", param.KEYWORD_ONLY, default=ConfigOption, annotation=Optional[Path]),
                       inspect.Parameter("overrides", param.KEYWORD_ONLY, default=SetOption, annotation=List[str])]
        else:
            params.append(param.replace(kind=param.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(*, config: Optional[Path] = None, overrides: Sequence[str] = (), **kwargs):
        return command(source=ConfigSource(config, overrides), **kwargs)

    # inspect.signature reads __signature__, which typeshed does not declare on a function.
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    del wrapper.__wrapped__  # typer reads the signature above, not the command's
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def make_context(config, json_mode: bool, changes: bool = False, journal_path: Optional[str] = None, **options):
    """`changes`: this run may change the machine, so it keeps a journal for `reset` (at
    `journal_path`, default the worker's; `hub init` keeps its own)."""
    from .host import LocalHost
    from .journal import Journal
    from .context import Context, RunOptions
    from .ui import ConsoleReporter

    reporter = ConsoleReporter(err, debug=state.debug, verbose=state.verbose)
    if json_mode or state.quiet:
        # No live lines (--json keeps stderr for errors; -q prints the verdict only), but --debug's.
        reporter = ConsoleReporter(Console(stderr=True, quiet=not state.debug), debug=state.debug)
    journal = (Journal(journal_path) if journal_path else Journal()) if changes else None
    return Context(config=config, host=LocalHost(journal=journal), reporter=reporter, journal=journal,
                   options=RunOptions(**options))


def apply_plan(plan, ctx, dry_run: bool, json_out: bool, hint: str = ""):
    """Run a plan (setup, leave, reset) the one way: a dry run only looks; a real run holds the
    lock and appends to the run log. Prints the plan or the end-of-run summary (or JSON); returns
    the report (exit_code says what it means for the exit status)."""
    from .engine import run_plan
    from .ui import print_plan, print_plan_quietly, print_summary, print_summary_quietly

    if dry_run:
        report = run_plan(plan, ctx, dry_run=True)
    else:
        from .lock import run_lock
        from .runlog import append as log_run, prepare as prepare_run_log

        # One lock for setup, leave and reset: none may race another over apt, Docker or the swarm.
        with run_lock(command=plan.command):
            prepare_run_log()
            report = run_plan(plan, ctx)
            log_run(report)
    if json_out:
        print_json(report.as_json())
    elif dry_run and state.quiet:
        print_plan_quietly(out, report)
    elif dry_run:
        print_plan(out, report, verbose=state.verbose)
        if hint:
            out.print(hint)
    elif state.quiet:
        print_summary_quietly(out, report)
    else:
        print_summary(out, report, getattr(ctx.host, "backups", []), ctx.logs)
    return report


def exit_code(report) -> int:
    """0 when the run converged, or a dry run's plan can; 1 otherwise. The plan is honest: it passes
    only when applying it can reach a converged node."""
    return 0 if (report.plan_ok if report.mode == "dry-run" else report.ok) else 1


def print_version(value: bool) -> None:
    if value:
        out.print(f"{PROG} {tool_version()}")
        raise typer.Exit(0)


# The options every command takes, before its name or after it (`gpuswarm-node setup --debug`):
# each sets the run's State, whichever of the two places gave it.
GLOBAL_FLAGS = ("debug", "quiet", "verbose")


def take_flag(name: str, value: bool) -> None:
    """Record one of GLOBAL_FLAGS; -q with -v is a usage error."""
    if value:
        setattr(state, name, True)
    if state.quiet and state.verbose:
        raise click_errors.UsageError("-q/--quiet and -v/--verbose ask for opposite things: give one of them.")


@app.callback()
def main_options(
    config: Optional[Path] = ConfigOption,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debugging output."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Print only errors, warnings and the command's verdict line (never changes "
                                    "--json)."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Also print each step as it begins, the diff of each file written, and "
                                      "what the steps that are not right would run."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=print_version,
                                 help="Print the version and exit."),
) -> None:
    state.config = config
    # Set, not only raised: each run starts from what its own command line says (the flags after
    # the command, parsed next, may raise them).
    state.debug, state.quiet, state.verbose = debug, quiet, verbose
    take_flag("quiet", quiet)  # refuses -q with -v


def with_global_flags(root) -> None:
    """Give every command and group under `root` (the click command typer built from `app`) the
    root's --debug, -q and -v, so they may come after the command's name as well as before it."""
    import copy

    flags = [param for param in root.params if param.name in GLOBAL_FLAGS]

    def setter(ctx, param, value):
        if not ctx.resilient_parsing:  # completion parses without acting
            take_flag(param.name, value)
        return value

    def walk(group) -> None:
        for command in getattr(group, "commands", {}).values():
            have = {param.name for param in command.params}
            for flag in flags:
                if flag.name not in have:
                    twin = copy.copy(flag)
                    twin.callback, twin.expose_value = setter, False
                    command.params.append(twin)
            walk(command)

    walk(root)


def cli_command():
    """The click command the program runs: typer's, with the global flags on every command."""
    command = typer.main.get_command(app)
    with_global_flags(command)
    return command


STEP_LIST = ", ".join(STEP_NAMES)


@app.command(epilog=epilog(f"sudo {PROG} setup --config node.toml --dry-run",
                           f"0 converged (with --dry-run: applying the plan can converge the node); 1 a step failed or "
                           f"is blocked (with --dry-run: the plan names the steps that stop it); "
                           f"{USAGE_EXIT}",
                           f"{CONFIG_ENV} SUDO_USER (the user node.user defaults to)."))
@with_config
def setup(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; change nothing."),
    only: List[str] = typer.Option([], "--only", metavar="STEP", autocompletion=complete_steps,
                                   help=f"Run only this step (repeatable): {STEP_LIST}."),
    skip: List[str] = typer.Option([], "--skip", metavar="STEP", autocompletion=complete_steps,
                                   help=f"Do not run this step (repeatable): {STEP_LIST}."),
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
    force_rejoin: bool = typer.Option(False, "--force-rejoin",
                                      help="Leave another swarm this node is in, to join the configured one."),
    allow_restart: bool = typer.Option(False, "--allow-restart",
                                       help="Restart Docker even though containers are running on this node."),
    drain: bool = typer.Option(False, "--drain",
                               help="Drain this node through the manager before restarting Docker."),
) -> None:
    """Converge this machine into a ready Swarm worker (safe to re-run)."""

    def body() -> int:
        need_root("setup")
        from . import steps
        from .preflight import setup_plan

        cfg = source.load(remember=True)
        selected = steps.select(only, skip)
        ctx = make_context(cfg, json_out, changes=not dry_run, force_rejoin=force_rejoin,
                           allow_restart=allow_restart, drain=drain)
        from .render import save_cache, use_cache

        use_cache()
        report = apply_plan(setup_plan(selected), ctx, dry_run, json_out)
        if not dry_run:
            from .steps.boot import reboot_if_allowed

            # A full run rendered every file status will render: that and nothing older. A run of
            # some steps adds what they rendered to what the other steps rendered last time.
            save_cache(partial=bool(only or skip))

            line = reboot_if_allowed(report, ctx)
            if line:
                (err if json_out else out).print(line, markup=False)
        return exit_code(report)

    guarded(body)


@app.command(epilog=epilog(f"{PROG} status --json --prometheus /var/lib/node_exporter/textfile/gpuswarm_node.prom",
                           f"0 converged; 1 not converged (a step needs a change, is blocked or failed); {USAGE_EXIT}"))
@with_config
def status(
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
    prometheus: Optional[Path] = typer.Option(None, "--prometheus", metavar="FILE",
                                              help="Also write node-exporter textfile metrics to FILE."),
) -> None:
    """Check every step without changing anything; exit 1 when the node is not converged."""

    def body() -> int:
        need_root("status")
        from . import steps
        from .engine import run_status
        from .table import plain_wanted, status_text
        from .ui import status_table

        cfg = source.load(remember=True)
        from .render import use_cache

        use_cache()
        if prometheus is not None:
            from .metrics import check_path

            check_path(str(prometheus))  # a usage error before any check runs
        report = run_status(steps.ALL_STEPS, make_context(cfg, json_out, diagnose=True))
        if prometheus is not None:
            from .metrics import write as write_metrics

            write_metrics(report, str(prometheus))
        if json_out:
            print_json(report.as_json())
        elif state.quiet:
            from .ui import print_status_quietly

            print_status_quietly(out, report)
        elif plain_wanted(sys.stdout):
            sys.stdout.write(status_text(report))
        else:
            out.print(status_table(report))
        if state.verbose and not json_out:
            from .ui import print_status_actions

            print_status_actions(out, report)
        return 0 if report.ok else 1

    guarded(body)


@app.command("steps", epilog=epilog(f"{PROG} steps", f"0; {USAGE_EXIT}", "none."))
def list_steps() -> None:
    """List the steps in the order setup runs them."""
    from . import steps

    for step in steps.ALL_STEPS:
        out.print(f"{step.name:<16} {step.description}")


@app.command(epilog=epilog(f"sudo {PROG} logs --runs 3 --apt",
                           "0 printed (also when no run has been logged yet: it says so); 1 a log is not the "
                           "tool's file (a symlink, not a regular file) or cannot be read; 2 this user may not read "
                           "a log (run it with sudo), or bad usage.", "none."))
def logs(
    runs: int = typer.Option(5, "--runs", metavar="N", min=1, help="How many of the last runs to show."),
    apt: bool = typer.Option(False, "--apt", help="Also the whole output of every apt-get and dpkg run since the "
                                                  "first of those runs began (apt.log)."),
    json_out: bool = JsonOption,
) -> None:
    """Show the last runs of setup, leave, reset and watch from the run log (read-only)."""

    def body() -> int:
        from . import logs as logs_mod
        from .ui import print_apt_runs, print_runs

        found = logs_mod.last_runs(runs)
        shown, skipped = found if found is not None else ([], 0)
        apt_found = None
        if apt:
            began = [b for b in (run.began() for run in shown) if b is not None]
            apt_found = logs_mod.apt_runs(min(began) if began else None, runs)
        if json_out:
            data: dict = {"run_log": logs_mod.RUN_LOG, "run_log_found": found is not None,
                          "runs": [run.as_json() for run in shown], "skipped_lines": skipped}
            if apt:
                data.update(apt_log=logs_mod.APT_LOG, apt_log_found=apt_found is not None,
                            apt=[r.as_json() for r in apt_found or []])
            print_json(data)
            return 0
        if found is None:
            out.print(f"no run log at {logs_mod.RUN_LOG}: no setup, leave, reset or watch has logged a run on "
                      "this machine yet.", markup=False)
        elif not shown:
            out.print(f"the run log {logs_mod.RUN_LOG} holds no run yet.", markup=False)
        print_runs(out, shown, skipped, logs_mod.RUN_LOG)
        if apt:
            if apt_found is None:
                out.print(f"no apt log at {logs_mod.APT_LOG}: no step of this tool has run apt-get or dpkg here "
                          "yet.", markup=False)
            elif not apt_found:
                out.print(f"no apt-get or dpkg run in {logs_mod.APT_LOG} since those runs began.", markup=False)
            else:
                print_apt_runs(out, apt_found)
        return 0

    guarded(body)


@app.command(epilog=epilog(f"{PROG} gpus --json --set gpu.slice_memory=4GiB",
                           "0 the inventory was printed, also when the machine has no NVIDIA GPU (then an empty "
                           "list); 1 NVIDIA GPUs are on the PCI bus but NVML cannot read them (no driver, or not "
                           f"loaded); {USAGE_EXIT}"))
@with_config
def gpus(
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
) -> None:
    """Show the GPUs NVML reports and the Swarm slices they yield."""

    def body() -> int:
        from .errors import NvmlUnavailable
        from .probes.gpu import read_inventory
        from .slices import for_config, generic_resources, notes
        from .ui import inventory_table

        cfg = source.load()
        try:
            inventory = read_inventory()
        except NvmlUnavailable as exc:
            # As the nvidia-driver step decides: NVML cannot answer, so the PCI bus says whether
            # there is a GPU at all. None is a fact to report; GPUs without a working driver are not.
            from .facts import Facts
            from .host import LocalHost
            from .probes.driver import nvidia_gpus

            present = nvidia_gpus(Facts(LocalHost()))
            if present:
                raise GpuswarmError(f"{len(present)} NVIDIA GPU(s) on the PCI bus "
                                    f"({', '.join(g.address for g in present)}), but {exc.cause}",
                                    f"{exc.fix} `sudo {PROG} setup --only nvidia-driver` installs the "
                                    "distribution's driver.") from None
            line = f"no NVIDIA GPU on this machine: none on the PCI bus ({exc.reason})"
            if json_out:
                print_json({"driver_version": None, "gpus": [], "node_generic_resources": [], "notes": [line]})
            else:
                out.print(line, markup=False)
            return 0
        slices = for_config(inventory.gpus, cfg.gpu)
        why_not = notes(inventory.gpus, cfg.gpu)
        resources = generic_resources(cfg.gpu.resource, slices)
        if json_out:
            print_json({"driver_version": inventory.driver_version, "gpus": [asdict(g) for g in inventory.gpus],
                        "node_generic_resources": resources, "notes": why_not})
        else:
            out.print(inventory_table(inventory, slices))
            out.print(f"{len(slices)} slice(s) advertised as node-generic-resources:")
            for r in resources:
                out.print(f"  {r}")
            for note in why_not:
                out.print(f"note: {note}", markup=False)
        return 0

    guarded(body)


@app.command(epilog=epilog(f"{PROG} gpus --json > gpus.json (on a GPU node), then {PROG} render --config node.toml "
                           "--inventory gpus.json | less",
                           f"0 every file was printed; 1 a file could not be rendered (without GPUs and without "
                           f"--inventory: the files that need them), the others are printed; {USAGE_EXIT}"))
@with_config
def render(
    source: ConfigSource = DEFAULT_SOURCE,
    inventory: Optional[Path] = typer.Option(None, "--inventory", metavar="FILE",
                                             help="Render for the GPUs in FILE (what `gpus --json` prints on a GPU "
                                                  "node) instead of this machine's."),
) -> None:
    """Print every file setup would write, with its full content, for review."""

    def body() -> int:
        from . import steps
        from .errors import ConfigError, NvmlUnavailable

        cfg = source.load()
        ctx = make_context(cfg, json_mode=False)
        if inventory is not None:
            from . import trust
            from .probes.gpu import inventory_from_json

            fix = f"Save what `{PROG} gpus --json` prints on a GPU node to a file and give that."
            raw = trust.read(inventory, "--inventory")  # ConfigError: missing, unreadable, not to be trusted
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"--inventory {inventory} is not UTF-8 text (byte {exc.start}).", fix) from None
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--inventory {inventory} is not JSON ({exc.msg} at line {exc.lineno}, "
                                  f"column {exc.colno}).", fix) from None
            except ValueError as exc:  # valid JSON Python refuses: an integer past sys.get_int_max_str_digits()
                raise ConfigError(f"--inventory {inventory} is not JSON this tool reads "
                                  f"({str(exc).split(';')[0]}).", fix) from None
            try:
                given = inventory_from_json(data)
            except ValueError as exc:
                raise ConfigError(f"--inventory {inventory} is not a GPU inventory: {exc}.", fix) from None
            ctx.inventory_reader = lambda: given
        missing = []
        shown: set[str] = set()
        for step in steps.ALL_STEPS:
            try:
                files = step.files(ctx)
            except NvmlUnavailable as exc:
                missing.append(f"{step.name} ({exc.reason})")
                continue
            for planned in files:
                if planned.path in shown:  # a file two steps want alike (the toolkit's apt source)
                    continue
                shown.add(planned.path)
                out.print(f"# ==> {planned.path} ({step.name})", markup=False)
                if isinstance(planned.content, bytes):
                    out.print(f"# ({len(planned.content)} bytes, not text)", markup=False)
                    continue
                out.print(planned.content, markup=False, end="" if planned.content.endswith("\n") else "\n")
        if missing:
            err.print(f"[bold red]error:[/] could not render the files of {escape('; '.join(missing))}. "
                      f"Run it on a node with working GPUs, or give --inventory FILE (what `{PROG} gpus --json` "
                      "prints there).")
            return 1
        return 0

    guarded(body)


@app.command("cuda-env", epilog=epilog(f'eval "$({PROG} cuda-env)"',
                                      f"0 printed; 1 the container's slice reservation is unusable; {USAGE_EXIT}",
                                      f"DOCKER_RESOURCE_<KIND> (set by Swarm in the container); {CONFIG_ENV}"))
@with_config
def cuda_env(
    source: ConfigSource = DEFAULT_SOURCE,
) -> None:
    """Print sh setting CUDA_VISIBLE_DEVICES from this container's DOCKER_RESOURCE_<KIND>; eval it."""

    def body() -> int:
        import os

        from .slices import cuda_env as shell_lines

        cfg = source.load()
        try:
            text = shell_lines(os.environ, cfg.gpu.resource)
        except ValueError as exc:
            raise GpuswarmError(f"{exc}.", "The container's slice reservation is unusable; CUDA_VISIBLE_DEVICES "
                                           "was left unset.") from None
        sys.stdout.write(text)
        return 0

    guarded(body)


@app.command("hub-config", epilog=epilog(f"{PROG} hub-config --hub-address jupyterhub > jupyterhub_config.py; "
                                         f"on the manager: {PROG} hub-config --profiles > jupyterhub_config.py",
                                         f"0 printed; 1 --profiles found no labelled node, or no swarm to ask; "
                                         f"{USAGE_EXIT}"))
@with_config
def hub_config(
    hub_address: str = typer.Option("jupyterhub", "--hub-address",
                                    help="Name (or address) the servers reach the hub's API at, on the network."),
    network: str = typer.Option("jupyterhub", "--network",
                                help="Attachable overlay network of the hub and the servers."),
    slice_wait: int = typer.Option(60, "--slice-wait", help="Seconds a spawn waits for a free GPU slice."),
    start_timeout: int = typer.Option(600, "--start-timeout", help="JupyterHub's Spawner.start_timeout, seconds."),
    http_timeout: int = typer.Option(120, "--http-timeout", help="JupyterHub's Spawner.http_timeout, seconds."),
    source: ConfigSource = DEFAULT_SOURCE,
    profiles: bool = typer.Option(False, "--profiles",
                                  help="Also print a GPU profile per GPU model in the swarm (from the workers' "
                                       "node labels), for the spawn form; run it on the manager."),
) -> None:
    """Print a jupyterhub_config.py for SwarmSpawner that asks for this node's GPU slices."""

    def body() -> int:
        from .hub import HubSide, hub_config as text

        side = HubSide(hub_address=hub_address, network=network, slice_wait=slice_wait,
                       start_timeout=start_timeout, http_timeout=http_timeout)
        cfg = source.load()
        if not cfg.image.name:
            from .errors import ConfigError

            # Without one the spawner starts its own default image, not the one the workers
            # pulled: every spawn would pull gigabytes, and the notebooks lack the node's CUDA stack.
            raise ConfigError("hub-config needs the notebook image, and image.name is empty.",
                              "Set it with --set image.name=REGISTRY/IMAGE:TAG, GPUSWARM_IMAGE_NAME or [image] name "
                              "in the --config file (the workers' image).")
        config_text = text(cfg, side)
        if profiles:
            from .hub import hub_profiles, swarm_nodes

            config_text += "\n" + hub_profiles(swarm_nodes())  # before anything is printed: all or nothing
        sys.stdout.write(config_text)
        return 0

    guarded(body)


@app.command(epilog=epilog(f"sudo {PROG} leave --dry-run, then sudo {PROG} leave --timeout 300 "
                           f"--then 'aws ec2 terminate-instances --instance-ids i-0abc'",
                           f"0 left the swarm, or was in none, and the --then command exited 0 (with --dry-run: "
                           f"the plan can be carried out); 1 it could not drain or leave, or a preflight check "
                           f"refused it (the --then command did not run); {USAGE_EXIT} 3 the node is out of the "
                           f"swarm but the --then command failed."))
@with_config
def leave(
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for tasks to move elsewhere."),
    then: Optional[str] = typer.Option(None, "--then", metavar="CMD",
                                       help="Run CMD (split like a shell would, run without one) once the node "
                                            "is out of the swarm, e.g. the cloud CLI call that terminates it."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be done; change nothing."),
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
) -> None:
    """Drain this node through the manager, wait for its tasks to move, then leave the swarm."""

    def body() -> int:
        need_root("leave")
        from .lifecycle import leave_plan, run_then, then_argv

        after = then_argv(then) if then is not None else None  # a usage error before anything changes
        cfg = source.load(remember=True)
        ctx = make_context(cfg, json_out, changes=not dry_run, drain_timeout=timeout)
        report = apply_plan(leave_plan(), ctx, dry_run, json_out)
        if after is None or dry_run or not report.ok:
            return exit_code(report)
        status = run_then(after)
        # In --json mode stdout holds only the report's JSON; -q: the error below says a failure.
        if not state.quiet:
            (err if json_out else out).print(f"then: `{' '.join(after)}` exited {status}", markup=False)
        if status != 0:
            err.print(f"[bold red]error:[/] the node is out of the swarm, but the --then command exited {status}.")
            return 3
        return 0

    guarded(body)


@app.command(epilog=epilog(f"sudo {PROG} watch --once (setup runs it as gpuswarm-node-watch.service)",
                           f"0 stopped (as a service: never by itself); with --once 0 the round saw no fault, 1 "
                           f"it saw one (acted on or not yet, see the line printed), or watch cannot run; "
                           f"{USAGE_EXIT}"))
@with_config
def watch(
    once: bool = typer.Option(False, "--once", help="Run one round and exit."),
    interval: Optional[float] = typer.Option(None, "--interval", metavar="S",
                                             help="Seconds between rounds (default: watch.interval)."),
    source: ConfigSource = DEFAULT_SOURCE,
) -> None:
    """Drain this node through the manager while it cannot serve (GPU, Docker, disk, tmpfs faults)
    and make it active again once the fault has cleared; each transition in the run log and status."""

    def body() -> int:
        from .config import MAX_WATCH_INTERVAL, MIN_WATCH_INTERVAL
        from .errors import ConfigError, GpuswarmError
        from .watch import serve

        cfg = source.load()
        every = cfg.watch.interval if interval is None else interval
        if not MIN_WATCH_INTERVAL <= every <= MAX_WATCH_INTERVAL:
            raise ConfigError(f"--interval must be from {MIN_WATCH_INTERVAL} to {MAX_WATCH_INTERVAL} seconds, "
                              f"got {every:g}.", "Give a value within the range, or leave it out.")
        if os.geteuid() != 0:
            raise GpuswarmError("watch needs root: it reads NVML and Docker's socket and writes /var/lib/gpuswarm-node.",
                                "Run it with sudo, or let setup run it as a service.")

        def say(line: str) -> None:  # each line an event (a drain, a failure): -q keeps them
            err.print(line, markup=False, highlight=False)

        config_args = (("--config", str(source.path)) if source.path else ()) + tuple(
            arg for override in source.overrides for arg in ("--set", override))
        watcher = serve(cfg, every, once=once, say=say, config_args=config_args)
        verdict, seen = watcher.verdict, watcher.observed
        out.print(f"watch: verdict {verdict.health}" + (f" ({verdict.reason})" if verdict.health == "fault" else "")
                  + f"; this round: {seen.summary()}", markup=False, highlight=False)
        return 0 if seen.healthy else 1

    guarded(body)


hub_app = typer.Typer(no_args_is_help=True, help="Commands run on the hub (the swarm manager).")
app.add_typer(hub_app, name="hub")


@hub_app.command("authorize", epilog=epilog(
    f"{PROG} hub authorize --key worker-7.pub --node worker-7",
    f"0 the key is in authorized_keys, gated; {USAGE_EXIT} (a bad key, node name or path; nothing written)",
    "HOME (the default authorized_keys is ~/.ssh/authorized_keys)."))
def hub_authorize(
    key: Path = typer.Option(..., "--key", metavar="PUBFILE", help="The worker's public key (its .pub file)."),
    node: str = typer.Option(..., "--node", metavar="NAME",
                             help="The worker's host name: the only node this key may drain, remove or label."),
    authorized_keys: Optional[Path] = typer.Option(None, "--authorized-keys", metavar="FILE",
                                                   help="Default: ~/.ssh/authorized_keys of the user running this."),
    program: Optional[str] = typer.Option(None, "--program", metavar="PATH",
                                          help="gpuswarm-node on the hub, as the forced command names it "
                                               "(default: the one on PATH)."),
) -> None:
    """Let a worker's SSH key do only what workers need on this hub (join, leave, label itself)."""

    def body() -> int:
        from .errors import ConfigError
        from .gate import authorize, default_program

        from . import trust

        try:
            text = trust.read(key, "--key").decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--key {key} cannot be read: {getattr(exc, 'strerror', None) or exc}.",
                              "Give the worker's .pub file.") from None
        target = authorized_keys or Path(os.path.expanduser("~/.ssh/authorized_keys"))
        for line in authorize(text, f"--key {key}", node, target, program or default_program()):
            out.print(line, markup=False)
        return 0

    guarded(body)


@hub_app.command("bundle", epilog=epilog(
    f"sudo {PROG} hub bundle --node worker-7 --out worker-7 --manager hub.example.org --registry "
    "hub.example.org:5000 --registry-ca registry-ca.crt --image hub.example.org:5000/notebook:latest "
    "--cloud-init --tool gpuswarm-node.tar.gz",
    f"0 written, and the key authorised; {USAGE_EXIT} (a bad value, file or path; nothing written, nothing "
    "authorised)",
    "none: the worker's configuration comes from --worker-config (default /etc/gpuswarm-node/worker.toml when it "
    "exists), the flags and --set, never from this hub's GPUSWARM_* variables."))
def hub_bundle(
    node: str = typer.Option(..., "--node", metavar="NAME", help="The worker's host name (its key is bound to it)."),
    out_dir: Path = typer.Option(..., "--out", metavar="DIR",
                                 help="Write the bundle to DIR (must not exist) and DIR.tar.gz."),
    manager: Optional[str] = typer.Option(None, "--manager", metavar="HOST",
                                          help="swarm.manager: the name workers reach this hub's SSH on."),
    registry: Optional[str] = typer.Option(None, "--registry", metavar="HOST:PORT", help="registry.address."),
    registry_ca: Optional[Path] = typer.Option(None, "--registry-ca", metavar="FILE",
                                               help="The registry's PEM CA certificate (default: the CA hub init "
                                                    "made, /etc/gpuswarm-node/hub/ca.crt, when it is there)."),
    image: Optional[str] = typer.Option(None, "--image", metavar="NAME", help="image.name."),
    ssh_user: Optional[str] = typer.Option(None, "--ssh-user", metavar="USER",
                                           help="swarm.ssh_user (default: the user running this)."),
    ssh_port: Optional[int] = typer.Option(None, "--ssh-port", metavar="PORT", help="swarm.ssh_port."),
    worker_config: Optional[Path] = typer.Option(None, "--worker-config", metavar="FILE",
                                                 help="The workers' config template (default: "
                                                      "/etc/gpuswarm-node/worker.toml when it exists)."),
    overrides: List[str] = typer.Option([], "--set", metavar="SECTION.KEY=VALUE", autocompletion=complete_config_keys,
                                        help="Set one key of the worker's config."),
    host_keys: List[Path] = typer.Option([], "--host-key", metavar="PUBFILE",
                                         help="This hub's public SSH host key (repeatable; default: "
                                              "/etc/ssh/ssh_host_*_key.pub)."),
    authorized_keys: Optional[Path] = typer.Option(None, "--authorized-keys", metavar="FILE",
                                                   help="Default: ~/.ssh/authorized_keys of swarm.ssh_user."),
    program: Optional[str] = typer.Option(None, "--program", metavar="PATH",
                                          help="gpuswarm-node on the hub, as the forced command names it "
                                               "(default: the one on PATH)."),
    cloud_init: bool = typer.Option(False, "--cloud-init",
                                    help="Also write cloud-init user-data that installs the tool and runs setup."),
    tool: Optional[Path] = typer.Option(None, "--tool", metavar="TARBALL",
                                        help="The tool's release tarball (tools/release.sh), for --cloud-init."),
    tool_url: Optional[str] = typer.Option(None, "--tool-url", metavar="URL",
                                           help="With --cloud-init: the worker downloads --tool's tarball from this "
                                                "https URL (checked by its SHA-256) instead of carrying it."),
) -> None:
    """Write a new worker's files (config, key pair authorised through the gate, known_hosts, CA, user-data)."""

    def body() -> int:
        from . import bundle

        sets = bundle.flag_overrides(manager, registry, image, ssh_user, ssh_port, overrides)
        cfg = bundle.worker_config(worker_config, sets, bundle.default_ssh_user())
        target = authorized_keys or bundle.authorized_keys_of(cfg.swarm.ssh_user)
        from .gate import default_program

        made = bundle.make(node, out_dir, cfg, list(host_keys) or bundle.default_host_keys(),
                           bundle.default_registry_ca(cfg, registry_ca), target,
                           program or default_program(), cloud_init=cloud_init, tool=tool, tool_url=tool_url)
        for line in bundle.report_lines(made, node):
            out.print(line, markup=False)
        return 0

    guarded(body)


@hub_app.command("revoke", epilog=epilog(
    f"{PROG} hub revoke --node worker-7",
    f"0 no key of the node is left in any authorized_keys searched; 1 a file could not be read or written, or "
    f"a key of the node is still in one; {USAGE_EXIT}",
    "HOME (~/.ssh/authorized_keys is searched with every other user's)."))
def hub_revoke(
    node: str = typer.Option(..., "--node", metavar="NAME", help="The node whose gated keys are removed."),
    authorized_keys: List[Path] = typer.Option([], "--authorized-keys", metavar="FILE",
                                               help="Search only this file (repeatable). Default: "
                                                    "~/.ssh/authorized_keys of every user of this host."),
) -> None:
    """Remove a worker's gated keys from authorized_keys (after its workshop, or when its bundle leaked)."""

    def body() -> int:
        from .gate import revoke, revoke_targets

        for line in revoke(node, revoke_targets(list(authorized_keys))):
            out.print(line, markup=False)
        return 0

    guarded(body)


@hub_app.command("status", epilog=epilog(
    f"{PROG} hub status --json --prometheus /var/lib/node_exporter/textfile/gpuswarm_fleet.prom",
    f"0 the fleet can take a new user (a free slice on a ready, active, healthy node); 1 it cannot, or the "
    f"manager's Docker does not answer; {USAGE_EXIT}",
    "DOCKER_HOST (the manager's Docker; default its local socket)."))
def hub_status(
    json_out: bool = JsonOption,
    prometheus: Optional[Path] = typer.Option(None, "--prometheus", metavar="FILE",
                                              help="Also write node-exporter textfile metrics to FILE."),
) -> None:
    """The fleet on one screen: each node's state, GPU model, slices and servers; who waits and why."""

    def body() -> int:
        from . import fleet as fleet_mod

        if prometheus is not None:
            from .metrics import check_path

            check_path(str(prometheus))
        fleet = fleet_mod.read_fleet(fleet_mod.DockerManager())
        if prometheus is not None:
            from .host import atomic_write

            atomic_write(prometheus, fleet_mod.prometheus(fleet), 0o644)
        if json_out:
            print_json(fleet.as_json())
            return 0 if fleet.can_take_a_user else 1
        if state.quiet:
            out.print(escape(fleet_mod.summary_line(fleet)))
            return 0 if fleet.can_take_a_user else 1
        from rich.table import Table

        table = Table(title="fleet", title_justify="left")
        for column in ("node", "state", "GPU model", "slices used", "servers"):
            table.add_column(column, overflow="fold")
        for row in fleet_mod.table_rows(fleet):
            table.add_row(*(escape(cell) for cell in row))
        out.print(table)
        for waiting in fleet.pending:
            out.print(f"waiting: {escape(waiting.service)} ({waiting.state}): {escape(waiting.reason)}")
        out.print(escape(fleet_mod.summary_line(fleet)))
        return 0 if fleet.can_take_a_user else 1

    guarded(body)


@hub_app.command("init", epilog=epilog(
    f"sudo {PROG} hub init --config hub.toml --dry-run, then sudo {PROG} hub init --config hub.toml",
    f"0 the hub converged (with --dry-run: applying the plan can converge it; with --status: it is converged); 1 a "
    f"preflight check refused it, or a step failed or is blocked; {USAGE_EXIT}"))
@with_config
def hub_init(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; change nothing."),
    check_only: bool = typer.Option(False, "--status",
                                    help="Check every step of the hub without changing anything (as `status` does "
                                         "for a worker); exit 1 when it is not converged."),
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
) -> None:
    """Converge this machine into the hub: Docker, a swarm it manages, the overlay network, a TLS
    registry with its own CA, the notebook image in it, and JupyterHub as a service (safe to re-run)."""

    def body() -> int:
        need_root("hub init")
        from .hub_init import HUB_JOURNAL, hub_steps, init_plan

        cfg = source.load()
        if check_only:
            from .engine import run_status
            from .table import plain_wanted, status_text
            from .ui import status_table

            report = run_status(hub_steps(), make_context(cfg, json_out, diagnose=True))
            if json_out:
                print_json(report.as_json())
            elif plain_wanted(sys.stdout):
                sys.stdout.write(status_text(report))
            else:
                out.print(status_table(report))
            return 0 if report.ok else 1
        ctx = make_context(cfg, json_out, changes=not dry_run, journal_path=HUB_JOURNAL)
        report = apply_plan(init_plan(), ctx, dry_run, json_out)
        return exit_code(report)

    guarded(body)


@hub_app.command("reset", epilog=epilog(f"sudo {PROG} hub reset, then sudo {PROG} hub reset --yes",
                                        f"0 reverted, or the plan was printed and can be carried out; 1 something was "
                                        f"not reverted; {USAGE_EXIT}"))
@with_config
def hub_reset(
    yes: bool = RevertYesOption,
    dry_run: bool = RevertDryRunOption,
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
) -> None:
    """Best-effort revert of everything hub init changed, from its own record of changes (packages stay)."""

    def body() -> int:
        need_root("hub reset")
        import dataclasses

        from . import reset as resetting
        from .hub_init import HUB_JOURNAL
        from .journal import Journal

        journal = Journal(HUB_JOURNAL)
        undo = resetting.plan(journal.entries())
        looking = dry_run or not yes
        if not undo:
            if json_out:
                print_json({"ok": True, "dry_run": looking, "changed": [], "reboot_required": False,
                            "steps": [], "preflight": []})
            else:
                out.print(f"nothing to revert: no changes recorded in {journal.path}")
            return 0
        cfg = source.load()
        ctx = make_context(cfg, json_out)
        plan = dataclasses.replace(resetting.reset_plan(ctx, undo, by="hub init"), command="hub reset")
        report = apply_plan(plan, ctx, looking, json_out, hint="run `gpuswarm-node hub reset --yes` to do this.")
        if not looking and report.ok:
            journal.archive()  # a second hub reset finds nothing to undo
        return exit_code(report)

    guarded(body)


@hub_app.command("prune", epilog=epilog(
    f"{PROG} hub prune --dry-run, then {PROG} hub prune",
    f"0 nothing left to prune; 1 a node could not be removed; {USAGE_EXIT}",
    "DOCKER_HOST (the manager's Docker; default its local socket)."))
def hub_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Name the nodes that would be removed; remove none."),
    after: int = typer.Option(600, "--after", metavar="SECONDS", min=0,
                              help="How long a worker must have been down to be taken for gone."),
) -> None:
    """Forget workers that have been down for a while (their instance is gone): docker node rm."""

    def body() -> int:
        import time

        from . import fleet as fleet_mod

        manager = fleet_mod.DockerManager()
        gone = fleet_mod.prune_candidates(fleet_mod.read_fleet(manager), time.time(), after)
        failed = 0
        for worker in gone:
            name = f"{worker.hostname or '?'} ({worker.node_id[:12]}, {worker.address or 'no address'})"
            if dry_run:
                out.print(f"would remove {escape(name)}: down for at least {after} s")
                continue
            try:
                manager.remove_node(worker.node_id)
                out.print(f"removed {escape(name)}")
            except Exception as exc:  # the SDK's APIError: the node came back, or is no longer down
                failed += 1
                err.print(f"{escape(name)} was not removed: {escape(str(exc))}")
        if not gone:
            out.print(f"no worker has been down for {after} s or more: nothing to prune.")
        return 1 if failed else 0

    guarded(body)


@hub_app.command("gate", epilog=epilog(
    'command="/usr/local/bin/gpuswarm-node hub gate --node worker-7" in authorized_keys (hub authorize writes it)',
    "0 answered; 126 refused; another status: docker's own, when it failed.",
    "SSH_ORIGINAL_COMMAND (the request sshd passes on)."))
def hub_gate(
    node: str = typer.Option(..., "--node", metavar="NAME", help="The node name the key was authorised for."),
) -> None:
    """The forced command of a worker's key: answer one gpuswarm-gate request, refuse anything else."""
    from .gate import serve_from_environment

    raise typer.Exit(serve_from_environment(node))


@app.command(epilog=epilog(f"sudo {PROG} reset, then sudo {PROG} reset --yes",
                           f"0 reverted, or the plan was printed and can be carried out; 1 refused by a preflight "
                           f"check, or something was not reverted; {USAGE_EXIT}"))
@with_config
def reset(
    yes: bool = RevertYesOption,
    dry_run: bool = RevertDryRunOption,
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
    allow_restart: bool = typer.Option(False, "--allow-restart",
                                       help="Restart Docker even though containers are running on this node."),
    drain: bool = typer.Option(False, "--drain",
                               help="Drain this node through the manager before restarting Docker."),
    purge: bool = typer.Option(False, "--purge",
                               help="Then uninstall the tool itself: its environment and PATH link, runtime "
                                    "wrapper, journal, run log and lock. Backups, the operator's files and the "
                                    "packages are kept."),
) -> None:
    """Best-effort revert of everything setup changed, from the tool's own record of changes."""

    def body() -> int:
        need_root("reset")
        from . import reset as resetting
        from .journal import Journal

        if purge:
            # Imported now: the purge may remove the environment this process runs from.
            from . import purge as purging
            tree = purging.paths()

        journal = Journal()
        undo = resetting.plan(journal.entries())
        looking = dry_run or not yes
        code = 0
        if not undo:
            if json_out and not purge:
                print_json({"ok": True, "dry_run": looking, "changed": [], "reboot_required": False,
                            "steps": [], "preflight": []})
            else:
                out.print(f"nothing to revert: no changes recorded in {journal.path}")
            if not purge:
                return 0
        else:
            cfg = source.load(remember=True)
            ctx = make_context(cfg, json_out, allow_restart=allow_restart, drain=drain)
            flags = "".join(f" {flag}" for flag, on in (("--allow-restart", allow_restart), ("--drain", drain),
                                                          ("--purge", purge)) if on)
            hint = "" if purge else f"run `gpuswarm-node reset --yes{flags}` to do this."
            report = apply_plan(resetting.reset_plan(ctx, undo), ctx, looking, json_out, hint=hint)
            code = exit_code(report)
            if not looking and report.ok:
                # A second reset finds nothing to undo; after a failure the record stays, and a
                # second reset re-checks every change (what is undone already is ok).
                journal.archive()
        if looking:
            if purge and not state.quiet:  # -q: the plan's verdict line above only
                print_purge_plan(purging.plan(tree))
                flags = "".join(f" {flag}" for flag, on in (("--allow-restart", allow_restart), ("--drain", drain),
                                                              ("--purge", purge)) if on)
                out.print(f"run `gpuswarm-node reset --yes{flags}` to do this.")
            return code
        if not purge:
            return code
        from .lock import run_lock

        if code:
            out.print("[red]not purged:[/] something was not reverted (above), and the journal and the "
                      "runtime wrapper may still be needed; fix it, then run `gpuswarm-node reset --yes --purge`")
            return code
        with run_lock(str(tree.lock), command="reset"):
            plan = purging.plan(tree)
            for item in plan.kept if not state.quiet else ():
                out.print(f"kept: {escape(item)}")
            # Nothing may be imported from here on: the environment may be gone.
            done = purging.execute(tree)
            for item in done.done:
                out.print(f"purged: {escape(item)}")
            for item in done.failed:
                out.print(f"[red]not purged:[/] {escape(item)}")
            # The lock is this run's own: it is there every time.
            if not done.failed and all(d.startswith(f"removed {tree.lock} ") for d in done.done):
                out.print("nothing else to purge: the tool's own files were gone already")
        return 1 if done.failed else 0

    guarded(body)


def print_purge_plan(plan) -> None:
    out.print("then, with --purge, uninstall the tool itself:")
    for item in plan.remove:
        out.print(f"  - {escape(item.describe())}")
    if not plan.remove:
        out.print("  - nothing to remove: the tool's own files are gone already")
    for item in plan.kept:
        out.print(f"  - keep {escape(item)}")


@app.command(epilog=epilog(f"{PROG} version", f"0; {USAGE_EXIT}", "none."))
def version() -> None:
    """Print the version."""
    out.print(f"{PROG} {tool_version()}")


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


COMPLETE_VAR = "_GPUSWARM_NODE_COMPLETE"


@app.command(epilog=epilog(f"{PROG} completion bash > /etc/bash_completion.d/{PROG}", f"0 printed; {USAGE_EXIT}",
                           "none."))
def completion(shell: Shell = typer.Argument(..., help="bash, zsh or fish.")) -> None:
    """Print the shell completion script for bash, zsh or fish (source it, or save it where the shell loads completions)."""
    from typer.completion import completion_init, shell_complete

    completion_init()  # typer's bash, zsh and fish scripts, which its own completion handler answers
    root = get_current_context().find_root().command
    raise typer.Exit(shell_complete(root, {}, PROG, COMPLETE_VAR, f"source_{shell.value}"))


@app.command(epilog=epilog(f"{PROG} man | man -l -   (or: {PROG} man > docs/{PROG}.1)", f"0 printed; {USAGE_EXIT}",
                           "none."))
def man() -> None:
    """Print this manual page (roff), written from every command's help."""
    from .manpage import render_page

    sys.stdout.write(render_page(get_current_context().find_root().command))


@app.command("config", epilog=epilog(f"GPUSWARM_GPU_SLICES_PER_GPU=2 {PROG} config --config node.toml",
                                     f"0 printed; {USAGE_EXIT}"))
@with_config
def show_config(
    json_out: bool = JsonOption,
    source: ConfigSource = DEFAULT_SOURCE,
) -> None:
    """Print every configuration key: its meaning, its value and where that came from (file, environment, flag, default)."""

    def body() -> int:
        from .config import DEFAULT_CONFIG_PATH, env_name, reference

        cfg = source.load(remember=True)
        path = source.path or os.environ.get("GPUSWARM_CONFIG") or (
            cfg.source if cfg.source != "defaults" else DEFAULT_CONFIG_PATH)
        rows = []
        for section, name, default, help_text in reference():
            dotted = f"{section}.{name}"
            value = getattr(getattr(cfg, section), name)
            if isinstance(value, tuple):  # [[shared.mounts]]: tables, as the file writes them
                value = [asdict(item) for item in value]
            rows.append({"key": dotted, "value": value, "default": list(default) if isinstance(default, tuple) else default,
                         "origin": cfg.origins.get(dotted, "default"), "environment": env_name(section, name),
                         "help": help_text})
        if json_out:
            print_json({"file": str(path), "file_read": cfg.source != "defaults", "keys": rows})
            return 0
        lines = [f"# {PROG} configuration: each key's meaning, its value, and where the value came from.",
                 "# Flags (--set) win over the environment (GPUSWARM_<SECTION>_<KEY>), the environment over the",
                 "# file, the file over the defaults.",
                 f"# File: {path}" + ("" if cfg.source != "defaults" else " (not present: nothing read from it)")]
        current = None
        for row in rows:
            section = row["key"].split(".")[0]
            if section != current:
                lines += ["", f"[{section}]"]
                current = section
            lines.append(f"# {row['help']}")
            where = row["origin"]
            if where != "default":
                where += f"; default {json.dumps(row['default'])}"
            lines.append(f"{row['key'].split('.')[1]} = {json.dumps(row['value'])}  # {where}")
        out.print("\n".join(lines), markup=False)
        return 0

    guarded(body)


def usage_error_line(exc) -> str:
    """A click usage error as one line in the tool's own style, with where to look for help."""
    message = exc.format_message().strip().replace("\n", " ")
    if not message.endswith((".", "?")):
        message += "."
    if isinstance(exc, click_errors.UsageError):
        ctx = getattr(exc, "ctx", None)  # some parser errors come without one
        message += f" See '{ctx.command_path if ctx is not None else PROG} --help'."
    return message


def main() -> NoReturn:  # exits with the command's status
    # Before anything is created: under umask 000 (some cloud-init setups) every file and directory
    # would otherwise start group- and world-writable. The tool sets explicit modes too.
    os.umask(0o022)
    command = cli_command()
    if os.environ.get(COMPLETE_VAR):
        # The shell asks for completions (the script `completion` printed sets this variable).
        from typer.completion import completion_init

        completion_init()
    try:
        # Not standalone: click's own errors come back here and are printed like the tool's.
        code = command.main(prog_name=PROG, complete_var=COMPLETE_VAR, standalone_mode=False)
    except click_errors.ClickException as exc:
        no_args = getattr(click_errors, "NoArgsIsHelpError", None)
        if no_args is not None and isinstance(exc, no_args):
            # A bare `gpuswarm-node` shows the help, as docker and kubeadm do. typer's rich help
            # printed itself when the error was made; click's plain help is the error's text.
            text = exc.format_message()
            if text.strip():
                out.print(text, markup=False, highlight=False)
            sys.exit(0)
        err.print(f"[bold red]error:[/] {escape(usage_error_line(exc))}")
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted.")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())

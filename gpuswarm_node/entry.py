"""The `gpuswarm-node` command: a plain `status` where nothing can go wrong with its words, and
everything else through the typer CLI (gpuswarm_node.cli).

Fleets run `status` from cron and monitoring on every node; typer and click (and, where nobody
sees colour, rich) only parse a few words there. So a command line of exactly `status` or
`status --json`, with at most a config file (`--config FILE`, `-c FILE`, `--config=FILE`, before
or after `status`), is run here with the CLI's own pieces: on a terminal the table is
ui.status_table printed by a rich console set as the CLI's, elsewhere the CLI's plain table
(gpuswarm_node.table); the JSON is indented by 2 with non-ASCII kept, as rich's print_json writes
it to a file or pipe (stdout must not be a terminal for it, where rich would colour it). The
Engine API's /info, dockerd's slowest answer, is asked first and read while the rest loads
(probes.docker.EarlyInfo).
Without --config it reads the configuration of the last setup, as the CLI does (config.load's
`remember`), and says so on stderr the same way. Not run as root, it leaves the command to the CLI,
which says status needs root.
Anything else, and any configuration that warns or fails to load, goes to the CLI, which then
says it in its own words: the CLI stays the one source of the command's behaviour, and this path
only skips its imports.

A finished `status` (either path) ends with `os._exit` once its output is flushed: it wrote no
file that is still open and holds no lock, and the interpreter's teardown of the modules it loaded
(about 20 to 30 ms on a small machine, bench/results.md) would only delay the exit code monitoring waits for.
"""

from __future__ import annotations

import os
import sys


def plain_status(argv: list[str]) -> tuple[str | None, bool] | None:
    """(the config file or None, whether --json) when `argv` (without the program) is a plain
    `status` or `status --json`; None for anything else."""
    config: str | None = None
    seen_status = seen_json = False
    words = iter(argv)
    for word in words:
        if word == "status" and not seen_status:
            seen_status = True
        elif word == "--json" and seen_status and not seen_json:
            seen_json = True
        elif word in ("--config", "-c") and config is None:
            config = next(words, None)
            if config is None or config.startswith("-") or not config:
                return None
        elif word.startswith("--config=") and config is None and len(word) > len("--config="):
            config = word[len("--config="):]
        else:
            return None
    return (config, seen_json) if seen_status else None


def plain_status_json(argv: list[str]) -> tuple[str | None] | None:
    """(the config file or None,) when `argv` is a plain `status --json`; None for anything else."""
    plain = plain_status(argv)
    return (plain[0],) if plain is not None and plain[1] else None


def command_word(argv: list[str]) -> str | None:
    """The command `argv` (without the program) names: its first word that is neither an option
    nor the value of the program's --config/-c."""
    words = iter(argv)
    for word in words:
        if word in ("--config", "-c"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def exit_now(code: int | str | None) -> None:
    """End the process with `code` (as SystemExit reads it) without the interpreter's teardown,
    after flushing stdout and stderr."""
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what was lost is lost either way
            pass
    os._exit(code or 0)


def _status(config: str | None, json_out: bool) -> int | None:
    """Run status and print its table or JSON; the exit status, or None to leave the command to
    the CLI (before anything was printed)."""
    if os.geteuid() != 0:
        return None  # the CLI says status needs root (cli.need_root)
    from pathlib import Path

    from .probes.docker import begin_info

    begin_info()  # dockerd's slowest answer, read while the rest loads (probes.docker.EarlyInfo)

    from .config import load
    from .errors import GpuswarmError

    warnings: list[str] = []
    try:
        cfg = load(Path(config) if config is not None else None, overrides=[], warn=warnings.append, remember=True)
    except GpuswarmError:
        return None
    if warnings:
        return None
    from .config import remembered_note

    note = remembered_note(cfg)

    from . import render, steps
    from .context import Context, RunOptions
    from .engine import run_status
    from .host import LocalHost
    from .sanitize import clean

    from .table import plain_wanted

    render.use_cache()
    # A status reports nothing while it runs (its reporter only shows tracebacks under --debug,
    # which goes to the CLI): the table or the JSON is all it prints.
    rich_table = not json_out and not plain_wanted(sys.stdout)
    if rich_table:
        from rich.console import Console
        from rich.markup import escape

        # As the CLI's consoles (cli.out, cli.err).
        out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)

        def say_error(line: str) -> None:
            word, _, rest = line.partition(": ")
            err.print(f"[bold red]{word}:[/] {escape(rest)}")
    else:
        def say_error(line: str) -> None:  # as the CLI says it where rich adds no colour
            sys.stderr.write(line + "\n")

    if note:  # as the CLI says it (cli.ConfigSource.load)
        sys.stderr.write(f"note: {note}\n")
    ctx = Context(config=cfg, host=LocalHost(), options=RunOptions(diagnose=True))
    try:
        report = run_status(steps.ALL_STEPS, ctx)
    except GpuswarmError as exc:  # as cli.guarded says it
        say_error(f"error: {exc.message()}")
        return exc.exit_code
    except Exception as exc:
        say_error(clean(f"internal error: {type(exc).__name__}: {exc}. Re-run with --debug for the traceback."))
        return 1
    if json_out:
        import json

        sys.stdout.write(json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n")
    elif rich_table:
        from .ui import status_table

        out.print(status_table(report))
    else:
        from .table import status_text

        sys.stdout.write(status_text(report))
    return 0 if report.ok else 1


def main() -> int | None:
    os.umask(0o022)  # as the CLI does, before anything is created
    plain = plain_status(sys.argv[1:])
    # The CLI's own completion variable (cli.COMPLETE_VAR): the shell asks the CLI for completions.
    if (plain is not None and not (plain[1] and sys.stdout.isatty())
            and not os.environ.get("_GPUSWARM_NODE_COMPLETE")):
        # A status allocates a few MiB and ends with os._exit: the cyclic garbage collector's
        # passes while its modules load would free nothing worth the 4 ms they took on the
        # benchmark's node; reference counting still frees everything else as it goes.
        import gc

        gc.disable()
        try:
            code = _status(*plain)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted.\n")
            exit_now(130)
        if code is not None:
            exit_now(code)
        gc.enable()  # the CLI takes the command over, as any other
    from .cli import main as cli_main

    if command_word(sys.argv[1:]) == "status":
        try:
            cli_main()
        except SystemExit as exc:
            exit_now(exc.code)
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())

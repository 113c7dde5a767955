"""The manual page, gpuswarm-node(1), written from the command line's own help: every command and
group, its description, usage, options with their help, and its epilog (example, exit codes,
environment). `gpuswarm-node man` prints it; docs/gpuswarm-node.1 is that output, kept in step by
tests/test_cli_conventions.py.

The output is roff for the man(7) macros (groff_man(7)): `.TH` title line, `.SH`/`.SS` sections,
`.TP` tagged paragraphs for options, `.PP` paragraphs, `\\fB`/`\\fI`/`\\fR` fonts. Text is escaped
as groff_man(7) asks: a backslash as `\\e`, a hyphen-minus as `\\-` (a real minus, so an option
copied from the page works), and `\\&` before a `.` or `'` that would begin a line (a control line
otherwise). No date or version in the title line: the page changes only when the help does.
"""

from __future__ import annotations

from typing import Any, Iterator

from rich.markup import render

from .host import LOG_DIR

PROG = "gpuswarm-node"


def roff(text: str) -> str:
    """`text` as roff body text: escaped, and no line that roff would take for a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(f"\\&{line}" if line.startswith((".", "'")) else line for line in text.split("\n"))


def plain(text: str | None) -> str:
    """Help text as typer's rich help shows it (its markup mode is rich): markup applied, escapes
    (cli.epilog) undone; text rich cannot read as markup, as it is."""
    from rich.errors import MarkupError

    try:
        return render(text or "").plain.strip()
    except MarkupError:
        return (text or "").strip()


def _contexts(command: Any, name: str, parent: Any = None) -> Iterator[tuple[str, Any, Any]]:
    """(the command's path, the command, its click context) for `command` and all below it, in
    the order the help lists them."""
    settings = dict(getattr(command, "context_settings", None) or {})
    ctx = command.context_class(command, info_name=name, parent=parent, **settings)
    path = f"{parent.command_path} {name}" if parent is not None else name
    yield path, command, ctx
    for sub_name in getattr(command, "commands", {}):
        yield from _contexts(command.commands[sub_name], sub_name, ctx)


# Every command takes these (cli.with_global_flags); the page lists them once, under OPTIONS.
EVERYWHERE = ("debug", "quiet", "verbose", "help")


def _options(command: Any, ctx: Any, skip: tuple[str, ...] = ()) -> list[str]:
    lines = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False) or param.name in skip:
            continue
        if getattr(param, "param_type_name", "") == "argument":
            choices = getattr(param.type, "choices", None)
            tag = f"\\fI{roff(param.name.upper())}\\fR"
            help_text = plain(getattr(param, "help", None)) or (f"one of {', '.join(choices)}" if choices else "")
        else:
            record = param.get_help_record(ctx)
            if record is None:
                continue
            # The names from click; the help from the option itself: click's record adds
            # "[required]" and "[default: ...]", which rich would read as markup.
            *names, last = record[0].split(", ")  # "-c, --config FILE"
            last, _, metavar = last.partition(" ")
            tag = ", ".join(f"\\fB{roff(name)}\\fR" for name in (*names, last)) + (
                f" \\fI{roff(metavar)}\\fR" if metavar else "")
            help_text = plain(getattr(param, "help", None)) + (" (required)" if param.required else "")
        lines += [".TP", tag, roff(help_text)]
    return lines


def _usage(path: str, command: Any, ctx: Any) -> str:
    arguments = [p.name.upper() for p in command.get_params(ctx)
                 if getattr(p, "param_type_name", "") == "argument"]
    tail = " COMMAND [ARGS]..." if getattr(command, "commands", None) else ""
    return " ".join([path, "[OPTIONS]", *arguments]) + tail


def render_page(root: Any) -> str:
    """The page for `root`, the click command the program runs (cli.cli_command())."""
    from .config import DEFAULT_CONFIG_PATH
    from .logs import APT_LOG
    from .runlog import RUN_LOG

    entries = list(_contexts(root, PROG))
    _, _, root_ctx = entries[0]
    lines = [f'.TH {PROG.upper()} 1 "" "{PROG}" "User Commands"',
             ".SH NAME", f"{roff(PROG)} \\- {roff(plain(root.help).rstrip('.'))}",
             ".SH SYNOPSIS", f"\\fB{roff(PROG)}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".SH DESCRIPTION", roff(plain(root.help))]
    for paragraph in plain(root.epilog).split("\n\n"):
        lines += [".PP", roff(paragraph)]
    lines += [".SH OPTIONS",
              ".PP", roff("These come before the command; --debug, -q, -v and -h may also come after it, and every "
                   "command takes them."),
              *_options(root, root_ctx), ".SH COMMANDS"]
    for path, command, ctx in entries[1:]:
        lines += [f'.SS "{roff(_usage(path, command, ctx))}"', roff(plain(command.help))]
        for paragraph in plain(getattr(command, "epilog", None)).split("\n\n"):
            if paragraph:
                lines += [".PP", roff(paragraph)]
        lines += _options(command, ctx, skip=EVERYWHERE)
    lines += [".SH FILES",
              ".TP", f"\\fI{roff(str(DEFAULT_CONFIG_PATH))}\\fR", roff("The configuration (--config names another)."),
              ".TP", f"\\fI{roff(RUN_LOG)}\\fR", roff("The run log: one JSON line per step of every run (logs)."),
              ".TP", f"\\fI{roff(APT_LOG)}\\fR", roff("The whole output of every apt-get and dpkg run (logs --apt)."),
              ".TP", f"\\fI{roff(LOG_DIR)}\\fR", roff("The tool's logs."),
              ".SH SEE ALSO", roff("docker(1), apt-get(8); docs/reference.md in the source tree."), ""]
    return "\n".join(lines)

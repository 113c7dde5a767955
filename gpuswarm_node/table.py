"""The status table as plain text, for output that is not a terminal (cron, monitoring, a pipe).

rich draws the table on a terminal, in colour (ui.status_table). Where nobody sees colour, the
same box of three columns is drawn here instead: loading rich and laying a table out with it takes
about 20 ms of a status that fleets run on every node from cron (measured on the benchmark's node),
more than all the checks once dockerd's answer is read early. The layout is rich's for such a
table on a pipe (tests/test_table.py compares the two): as wide as rich would draw it
(width_from_env), the title on its own line, a heavy head, the step and state columns as wide as
their longest word, the detail wrapped at spaces into what is left (a word longer than a line is
cut). Where even a detail column of MIN_DETAIL_WIDTH does not fit beside them, the table is wider
than asked; rich would shorten the step and state instead. Characters are counted as one column
each (rich measures East Asian wide characters as two).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

HEADER = ("step", "state", "detail")
DEFAULT_WIDTH = 80
MIN_DETAIL_WIDTH = 10


def plain_wanted(stream, environ: Mapping[str, str] | None = None) -> bool:
    """Whether status's table goes to `stream` as plain text: rich would not treat it as a terminal
    (TTY_COMPATIBLE, then FORCE_COLOR, then isatty, as rich.console.Console.is_terminal decides)
    and it takes UTF-8 (elsewhere rich draws its ASCII box, and this module draws none)."""
    environ = os.environ if environ is None else environ
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower()
    if not encoding.startswith("utf"):
        return False
    tty_compatible = environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "0"
    force_color = environ.get("FORCE_COLOR")
    if force_color is not None:
        return force_color == ""
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream: not a terminal
        return True


def status_text(report, width: int | None = None) -> str:
    """`report` (engine.RunReport) as status prints it on a pipe: its steps' names, states and details."""
    return render("gpuswarm-node status", [(s.name, s.state.value, s.detail) for s in report.steps],
                  width_from_env() if width is None else width)


def width_from_env(environ: Mapping[str, str] | None = None) -> int:
    """The width to draw at, as rich's Console.size finds it: COLUMNS when it is a positive
    integer; else the size of the first of stdin, stdout and stderr that is a terminal (`status |
    less` draws as wide as the terminal); else 80."""
    environ = os.environ if environ is None else environ
    columns = environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    for fd in (0, 1, 2):
        try:
            width = os.get_terminal_size(fd).columns
        except (OSError, ValueError):
            continue
        return width or DEFAULT_WIDTH
    return DEFAULT_WIDTH


def _lines(text: str, width: int) -> list[str]:
    """`text` wrapped at spaces into lines of at most `width` characters, as rich wraps a cell: a
    word that does not fit goes to the next line, and one longer than a line is cut into pieces
    there, its last piece going on with the words after it; the text's own line breaks are kept."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            if line and len(line) + 1 + len(word) <= width:
                line += " " + word
                continue
            if line:
                out.append(line)
            while len(word) > width:
                out.append(word[:width])
                word = word[width:]
            line = word
        out.append(line)
    return out


def render(title: str, rows: Iterable[tuple[str, str, str]], width: int = DEFAULT_WIDTH) -> str:
    """The table of `rows` (step, state, detail) under `title`, at most `width` characters wide
    (wider only when even a detail column of MIN_DETAIL_WIDTH does not fit); ends with a newline."""
    rows = list(rows)
    step_w = max(len(r[0]) for r in [HEADER, *rows])
    state_w = max(len(r[1]) for r in [HEADER, *rows])
    longest = max(len(line) for r in [HEADER, *rows] for line in r[2].split("\n"))
    # Borders and padding: "│ " + step + " │ " + state + " │ " + detail + " │"
    detail_w = max(MIN_DETAIL_WIDTH, min(longest, width - step_w - state_w - 10))
    widths = (step_w, state_w, detail_w)

    def rule(left: str, fill: str, cross: str, right: str) -> str:
        return left + cross.join(fill * (w + 2) for w in widths) + right

    def row(cells: tuple[str, str, str], bar: str) -> list[str]:
        columns = [[cells[0]], [cells[1]], _lines(cells[2], detail_w)]
        height = max(len(c) for c in columns)
        return [bar + bar.join(f" {(c[i] if i < len(c) else ''):<{w}} " for c, w in zip(columns, widths)) + bar
                for i in range(height)]

    out = [title, rule("┏", "━", "┳", "┓"), *row(HEADER, "┃"), rule("┡", "━", "╇", "┩")]
    for cells in rows:
        out += row(cells, "│")
    out.append(rule("└", "─", "┴", "┘"))
    return "\n".join(out) + "\n"

"""The plain status table (gpuswarm_node.table): what rich draws for the same table on a pipe."""

from __future__ import annotations

import io
import os
import random

import pytest
from rich.console import Console
from rich.table import Table

from gpuswarm_node import table
from gpuswarm_node.steps import ALL_STEPS

STATES = ["ok", "needs-change", "blocked", "skipped", "failed"]
# Words as details have them: paths, labels, sizes, and one longer than any line.
WORDS = ("11.8 GiB tmpfs at /mnt/tmpfs, in /etc/fstab; docker.io installed, docker.service enabled and "
         "running gpuswarm.gpu.model=NVIDIA-A100-SXM4-40GB (/var/lib/gpuswarm-node/node-labels.json; "
         "status does not ask the manager) GPU-0a1b2c3d-4e5f-6789-abcd-ef0123456789::3 "
         "sha256:" + "0123456789abcdef" * 6).split()


def by_rich(rows: list[tuple[str, str, str]], width: int) -> str:
    t = Table(title="gpuswarm-node status", title_justify="left")
    t.add_column("step")
    t.add_column("state")
    t.add_column("detail", overflow="fold")
    for row in rows:
        t.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=width, highlight=False, soft_wrap=True, markup=False).print(t)
    return out.getvalue()


@pytest.mark.parametrize("width", [72, 80, 100, 132, 200])
def test_the_plain_table_is_what_rich_draws_on_a_pipe(width):
    rng = random.Random(width)
    for _ in range(60):
        rows = [(step.name, rng.choice(STATES), " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30)))
                 + ("\nsecond line: " + rng.choice(WORDS) if rng.random() < 0.2 else ""))
                for step in ALL_STEPS]
        assert table.render("gpuswarm-node status", rows, width) == by_rich(rows, width), rows


def test_no_line_is_wider_than_asked_and_every_word_is_there():
    detail = " ".join(WORDS)
    text = table.render("t", [("docker", "needs-change", detail)], 60)
    assert all(len(line) <= 60 for line in text.splitlines())
    cells = " ".join(line.split("│")[3].strip() for line in text.splitlines()[4:-1])
    assert cells.replace(" ", "") == detail.replace(" ", "")


@pytest.mark.parametrize("environ, isatty, plain", [
    ({}, False, True), ({}, True, False), ({"FORCE_COLOR": "1"}, False, False),
    ({"FORCE_COLOR": ""}, True, True), ({"TTY_COMPATIBLE": "0"}, True, True),
    ({"TTY_COMPATIBLE": "1"}, False, False), ({"TTY_COMPATIBLE": "2"}, False, True)])
def test_plain_exactly_where_rich_would_not_treat_the_stream_as_a_terminal(environ, isatty, plain):
    class Stream:
        encoding = "utf-8"

        def isatty(self):
            return isatty

    assert table.plain_wanted(Stream(), environ) is plain
    rich_says = Console(file=Stream(), _environ=environ).is_terminal
    assert plain is not rich_says


def test_a_stream_that_is_not_utf8_is_left_to_rich():
    class Ascii:
        encoding = "ascii"

        def isatty(self):
            return False

    assert table.plain_wanted(Ascii(), {}) is False


@pytest.mark.parametrize("columns, terminal, width", [
    ("", None, 80), ("120", None, 120), ("0", None, 80), ("wide", None, 80), ("-5", None, 80),
    ("", 132, 132), ("100", 132, 100), ("", 0, 80)])
def test_the_width_is_riches_columns_then_a_terminal_then_80(columns, terminal, width, monkeypatch):
    def size(fd):
        if terminal is None or fd != 2:  # stderr alone is a terminal: `status | less`
            raise OSError("not a terminal")
        return os.terminal_size((terminal, 25))

    monkeypatch.setattr(os, "get_terminal_size", size)
    assert table.width_from_env({"COLUMNS": columns}) == width
    if columns in ("", "120", "100"):  # rich's own answer, where it is defined
        assert Console(file=io.StringIO(), _environ={"COLUMNS": columns} if columns else {}).width == width

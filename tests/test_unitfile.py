"""docker.service read the way systemd reads it, checked against systemd itself.

tests/data/systemd-252-command-lines.json was recorded with systemd 252 (Debian 12's) running
as PID 1 in a private namespace: for each case, the unit file, its drop-ins and environment files
were installed, and systemd's `systemctl show` output and the argv the started program received
were kept (the program's path written as /usr/sbin/dockerd). The tool must get the same words
from the same files, with and without systemd to ask.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gpuswarm_node.probes.dockerd import DockerUnit, docker_unit, parse_show
from gpuswarm_node.unitfile import Command, assignments, expand_variables, parse_command, parse_env_file, quote_word

from gpuswarm_node.facts import Facts

from .fakes import FakeHost

RECORDED = json.loads((Path(__file__).parent / "data" / "systemd-252-command-lines.json").read_text())
FRAGMENT = "/etc/systemd/system/docker.service"


def unit_of(case: dict, with_systemd: bool) -> DockerUnit:
    dropins = sorted((p, t) for p, t in case["files"].items() if p != FRAGMENT)
    loaded = parse_show(case["show"]) if with_systemd else None
    if loaded is not None:
        assert [p for p, _ in dropins] == sorted(loaded.dropins, key=lambda p: p.rsplit("/", 1)[1])
    return DockerUnit((FRAGMENT, case["files"][FRAGMENT]), tuple(dropins), loaded, dict(case["env_files"]))


@pytest.mark.parametrize("case", RECORDED, ids=[c["name"] for c in RECORDED])
def test_the_command_systemd_runs(case: dict) -> None:
    unit = unit_of(case, with_systemd=True)
    assert unit.matches_loaded(), "the files must give the command systemd printed"
    args, _origin = unit.dockerd_args()
    assert [a.text for a in args] == case["argv"][1:]


@pytest.mark.parametrize("case", RECORDED, ids=[c["name"] for c in RECORDED])
def test_the_same_command_without_systemd(case: dict) -> None:
    args, _origin = unit_of(case, with_systemd=False).dockerd_args()
    assert [a.text for a in args] == case["argv"][1:]


@pytest.mark.parametrize("case", RECORDED, ids=[c["name"] for c in RECORDED])
def test_a_rendered_command_reads_back_the_same(case: dict) -> None:
    command, _origin = unit_of(case, with_systemd=True).exec_start()
    assert parse_command(command.render()) == [command]


def test_every_argument_says_where_it_is_set() -> None:
    case = next(c for c in RECORDED if c["name"] == "debian unit, DOCKER_OPTS set")
    args, origin = unit_of(case, with_systemd=True).dockerd_args()
    assert origin == FRAGMENT
    assert [(a.text, a.where) for a in args][-2:] == [
        ("--add-runtime=nvidia=/usr/bin/nvidia-container-runtime", "DOCKER_OPTS in /etc/default/docker"),
        ("--default-runtime=nvidia", "DOCKER_OPTS in /etc/default/docker")]
    assert args[0].where == FRAGMENT


def test_a_drop_in_that_clears_exec_start_is_the_origin() -> None:
    case = next(c for c in RECORDED if c["name"] == "a drop-in clears ExecStart and sets it again")
    args, origin = unit_of(case, with_systemd=True).dockerd_args()
    assert origin == "/etc/systemd/system/docker.service.d/50-operator.conf"
    assert args[-1].text == "--default-runtime=runc" and args[-1].where == origin


@pytest.mark.parametrize("word, quoted", [
    ("fd://", "fd://"),
    ("--containerd=/run/containerd/containerd.sock", "--containerd=/run/containerd/containerd.sock"),
    ("team=ml research", '"team=ml research"'),
    ("tag=%n", "tag=%%n"),
    ("100%", '100%%'),
    ("$DOCKER_OPTS", "$DOCKER_OPTS"),   # keeps its meaning when the command runs
    ("${X}", "${X}"),
    ("", '""'),
    (";", "\\;"),
    ('say "hi"\\', '"say \\"hi\\"\\\\"'),
    ("a\tb\nc", '"a\\tb\\nc"'),
    ("it's", '"it\'s"'),
])
def test_quote_word(word: str, quoted: str) -> None:
    assert quote_word(word) == quoted
    dockerd = "/usr/sbin/dockerd"
    assert parse_command(f"{dockerd} {quoted}") == [Command("", dockerd, (dockerd, word))]


def test_random_words_read_back_the_same() -> None:
    """Words of anything a unit line can hold read back as themselves (systemd 252 read the same
    renderings back to the same argv when this was written, by the recording harness)."""
    alphabet = list("ab =-_/:.,;%\"'\\\t{}[]#!@+*?~<>|&()$") + ["é", "\x01", "\x7f", "%%", "$$", "${X}", "\\n"]
    rng = random.Random(7)
    for _ in range(500):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 6))]
        command = Command("", "/usr/sbin/dockerd", ("/usr/sbin/dockerd", *words))
        assert parse_command(command.render()) == [command], command.render()


def test_a_continuation_line_is_one_assignment() -> None:
    text = "[Service]\nExecStart=/usr/sbin/dockerd \\\n  --a \\\n# a comment\n  --b\nType=notify\n"
    assert assignments(text) == [("Service", "ExecStart", "/usr/sbin/dockerd    --a    --b"),
                                 ("Service", "Type", "notify")]
    # A blank line ends a continuation; a backslash at the very end keeps what came before
    # (both as systemd 252 read them).
    assert assignments("[Service]\nExecStart=/usr/sbin/dockerd --a \\\n\nType=notify\n")[-1] == (
        "Service", "Type", "notify")
    assert assignments("[Service]\nExecStart=/usr/sbin/dockerd --a \\") == [
        ("Service", "ExecStart", "/usr/sbin/dockerd --a")]


def test_unbalanced_quotes_leave_the_line_out_as_systemd_does() -> None:
    unit = DockerUnit((FRAGMENT, '[Service]\nExecStart=/usr/sbin/dockerd --a\n'),
                      (("/etc/systemd/system/docker.service.d/x.conf",
                        '[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd "--b\n'),))
    command, origin = unit.exec_start()
    assert command is None and origin == ""


def test_expand_variables_names_the_variable() -> None:
    assert expand_variables(["$A", "x${B}y", "$$C", "$UNSET"], {"A": "1 '2 3'", "B": "b"}) == [
        ("1", "A"), ("2 3", "A"), ("xby", "B"), ("$C", None)]


def test_env_file_names_systemd_ignores() -> None:
    assert parse_env_file("export A=1\n1B=2\nC-D=3\n_E=4\n") == {"_E": "4"}


def test_a_variable_from_environment_is_named_with_its_unit_file() -> None:
    case = next(c for c in RECORDED if c["name"] == "Environment= with quotes")
    args, _origin = unit_of(case, with_systemd=True).dockerd_args()
    assert [(a.text, a.where, a.in_unit) for a in args] == [
        ("--a", f"O (Environment= in {FRAGMENT})", True), ("b", f"O (Environment= in {FRAGMENT})", True),
        ("1", f"P (Environment= in {FRAGMENT})", True)]


def test_docker_unit_asks_systemd_which_files() -> None:
    case = next(c for c in RECORDED if c["name"] == "drop-ins apply by file name")
    host = FakeHost(files={**case["files"]}, dirs={"/run/systemd/system"},
                    facts={"unit_show": {"docker": case["show"]}})
    unit = docker_unit(Facts(host, host.facts))
    assert [p for p, _ in unit.files] == [FRAGMENT, *parse_show(case["show"]).dropins]
    assert [a.text for a in unit.dockerd_args()[0]] == ["--b"]


def test_docker_unit_without_systemd_reads_the_directories() -> None:
    host = FakeHost(files={"/lib/systemd/system/docker.service": "[Service]\nExecStart=/usr/sbin/dockerd -H fd://\n",
                           "/etc/systemd/system/docker.service.d/b.conf": "[Service]\nExecStart=\nExecStart=/x --etc\n",
                           "/lib/systemd/system/docker.service.d/b.conf": "[Service]\nExecStart=\nExecStart=/x --lib\n",
                           "/run/systemd/system/docker.service.d/a.conf": "[Service]\nEnvironment=A=1\n",
                           "/etc/systemd/system/docker.service.d/notes.txt": "[Service]\nExecStart=/x --no\n"})
    unit = docker_unit(Facts(host))
    assert [p for p, _ in unit.files] == ["/lib/systemd/system/docker.service",
                                          "/run/systemd/system/docker.service.d/a.conf",
                                          "/etc/systemd/system/docker.service.d/b.conf"]
    assert [a.text for a in unit.dockerd_args()[0]] == ["--etc"]

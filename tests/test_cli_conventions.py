"""The command line's global flags: -q/--quiet and -v/--verbose, and --debug, -q and -v accepted
after the command as before it. Real CLI runs (conftest's `gsn`: a subprocess with the host's state
directories overlaid), on this machine with no Docker and no systemd, and a real run that changes
nothing (steps skipped for want of configuration)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from .conftest import REPO
from .test_cli import ALL_STEPS, safe_config, write_config

SKIPPED_ONLY = ("--only", "registry-trust", "--only", "image")  # a real setup run that changes nothing


# --- --debug, -q and -v after the command ---------------------------------------------------------

@pytest.mark.parametrize("before", [True, False])
def test_debug_after_the_command_means_what_it_means_before(gsn, tmp_path, before):
    config = str(write_config(tmp_path, "[x]\n"))
    args = ("--debug", "status", "--config", config) if before else ("status", "--config", config, "--debug")
    result = gsn(*args)
    assert result.returncode == 2 and "Traceback" in result.stderr, result.stderr
    assert "Traceback" not in gsn("status", "--config", config).stderr


def test_debug_after_a_hub_command_too(gsn):
    result = gsn("hub", "status", "--debug", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 1 and "Traceback" in result.stderr


@pytest.mark.parametrize("args", [("-q", "status", "-v"), ("status", "--quiet", "--verbose"), ("-v", "-q", "steps")])
def test_quiet_with_verbose_is_a_usage_error(gsn, tmp_path, args):
    result = gsn(*args, "--config", str(safe_config(tmp_path))) if "status" in args else gsn(*args)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: -q/--quiet and -v/--verbose ask for opposite things"), line


def test_every_command_takes_the_global_flags_after_its_name(gsn):
    from gpuswarm_node.cli import cli_command

    def commands(group, path=()):
        for name, command in getattr(group, "commands", {}).items():
            yield (*path, name), command
            yield from commands(command, (*path, name))

    for path, command in commands(cli_command()):
        names = {opt for param in command.params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
        assert {"--debug", "-q", "--quiet", "-v", "--verbose"} <= names, path
    assert "--verbose" in " ".join(gsn("steps", "-h").stdout.split())


# --- setup ----------------------------------------------------------------------------------------

def test_setup_quiet_prints_the_verdict_line_only(gsn, tmp_path):
    config = str(safe_config(tmp_path))
    loud = gsn("setup", *SKIPPED_ONLY, "--config", config)
    assert loud.returncode == 0, loud.stderr
    assert "setup summary" in loud.stdout and "skipped registry-trust" in loud.stderr
    for args in (("-q", "setup"), ("setup", "-q"), ("setup", "--quiet")):
        result = gsn(*args, *SKIPPED_ONLY, "--config", config)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "node converged; changed: nothing.\n"
        assert result.stderr == ""


def test_setup_dry_run_quiet_prints_what_stops_it_and_the_verdict(gsn, tmp_path):
    result = gsn("setup", "--dry-run", "-q", "--config", str(safe_config(tmp_path)))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("dry run: ") and "swarm-join (blocked)" in lines[-1]
    assert lines[-1].endswith("so setup would not converge; nothing was changed.")
    assert "swarm-join blocked: " in result.stdout  # the error, with its reason
    assert "  - " not in result.stdout and "+++ /etc/fstab" not in result.stdout  # no plan, no diff
    assert result.stderr == ""


def test_setup_dry_run_verbose_adds_the_steps_already_right_and_each_step_as_it_begins(gsn, tmp_path):
    config = str(safe_config(tmp_path))
    plain = gsn("setup", "--dry-run", "--only", "tmpfs", "--only", "image", "--config", config)
    verbose = gsn("setup", "--dry-run", "--only", "tmpfs", "--only", "image", "--config", config, "-v")
    assert plain.returncode == verbose.returncode == 0, verbose.stderr
    assert "image skipped: no image configured" not in plain.stdout
    assert "image skipped: no image configured (image.name is empty)" in verbose.stdout
    assert "checking tmpfs" in verbose.stderr and "checking tmpfs" not in plain.stderr
    # The plan's diff once, in the plan: a dry run wrote nothing.
    assert verbose.stdout.count("+++ /etc/fstab (wanted)") == 1 and "+++" not in verbose.stderr


def test_quiet_and_verbose_never_change_json(gsn, tmp_path):
    config = str(safe_config(tmp_path))

    def steps(*flags):
        result = gsn(*flags, "setup", "--dry-run", "--json", "--config", config)
        assert result.returncode == 1
        return [{k: v for k, v in s.items()} for s in json.loads(result.stdout)["steps"]]

    assert steps() == steps("-q") == steps("-v")
    quiet = gsn("status", "--json", "-q", "--config", config)
    assert [s["name"] for s in json.loads(quiet.stdout)["steps"]] == ALL_STEPS
    verbose = gsn("status", "--json", "-v", "--config", config)
    assert json.loads(verbose.stdout)["steps"] == json.loads(quiet.stdout)["steps"]


# --- status ---------------------------------------------------------------------------------------

def test_status_quiet_names_only_the_steps_not_right_and_the_verdict(gsn, tmp_path):
    result = gsn("status", "-q", "--config", str(safe_config(tmp_path)))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("node not converged: ") and "swarm-join (blocked)" in lines[-1]
    assert "tmpfs needs-change: /etc/fstab lacks the entry" in result.stdout
    assert not [line for line in lines if line.startswith(("registry-trust", "image ", "nvidia-driver"))]  # skipped
    assert result.stderr == ""


def test_status_verbose_adds_what_setup_would_run(gsn, tmp_path):
    config = str(safe_config(tmp_path))
    plain = gsn("status", "--config", config)
    verbose = gsn("status", "-v", "--config", config)
    assert plain.returncode == verbose.returncode == 1
    assert "setup would run" not in plain.stdout
    assert "tmpfs: setup would run:" in verbose.stdout and "  - update /etc/fstab" in verbose.stdout
    assert verbose.stdout.startswith(plain.stdout)


def test_quiet_drops_the_note_of_the_remembered_configuration(gsn, tmp_path):
    from .test_front_door import remember

    remember(tmp_path, f'[tmpfs]\npath = "{tmp_path / "scratch"}"\n')
    loud = gsn("setup", *SKIPPED_ONLY)
    assert loud.returncode == 0 and "note: " in loud.stderr, loud.stderr
    quiet = gsn("setup", *SKIPPED_ONLY, "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_quiet_keeps_warnings(gsn, tmp_path):
    result = gsn("setup", "-q", *SKIPPED_ONLY, "--config", str(safe_config(tmp_path)),
                 env={"GPUSWARM_SWARM_NO_SUCH_KEY": "x"})
    assert result.returncode == 0 and result.stderr.startswith("warning: "), result.stderr


# --- rendering (ui.py) ----------------------------------------------------------------------------

def test_the_verbose_reporter_shows_what_a_step_wrote(tmp_path):
    from gpuswarm_node.engine import State, StepReport
    from gpuswarm_node.ui import ConsoleReporter

    diff = "--- /etc/x (now)\n+++ /etc/x (wanted)\n@@ -1 +1 @@\n-a\n+b\n"
    report = StepReport("docker-daemon", State.OK, "daemon.json as wanted", changed=True,
                        actions=["update /etc/x", "run systemctl restart docker"], diffs=[diff, ""])
    for verbose, shown in ((False, False), (True, True)):
        buffer = io.StringIO()
        reporter = ConsoleReporter(Console(file=buffer, width=200), verbose=verbose)
        reporter.step_started("docker-daemon", "daemon.json written")
        reporter.step_finished(report)
        assert (diff in buffer.getvalue()) is shown
        assert ("checking docker-daemon daemon.json written" in buffer.getvalue()) is shown


def test_the_verdict_of_a_run_that_did_not_converge():
    from gpuswarm_node.engine import RunReport, State, StepReport
    from gpuswarm_node.ui import print_summary_quietly

    report = RunReport([StepReport("docker", State.OK, "running", changed=True),
                        StepReport("swarm-join", State.FAILED, "the manager refused the token")], "setup", "setup", [])
    buffer = io.StringIO()
    print_summary_quietly(Console(file=buffer, width=200), report)
    assert buffer.getvalue().splitlines() == [
        "swarm-join failed: the manager refused the token",
        "setup did not converge: stopped by swarm-join (failed); changed: docker."]


# --- shell completion: step names and config keys -------------------------------------------------

def complete(gsn, words: str, shell: str = "bash") -> list[str]:
    """The candidates the program answers the shell with, as the script `completion SHELL` prints
    asks for them (typer's protocol: _GPUSWARM_NODE_COMPLETE=complete_<shell>)."""
    if shell == "bash":
        env = {"_GPUSWARM_NODE_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split(" ")) - 1)}
    else:
        env = {"_GPUSWARM_NODE_COMPLETE": f"complete_{shell}", "_TYPER_COMPLETE_ARGS": words}
    result = gsn(env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_completion_knows_the_step_names_for_only_and_skip(gsn):
    assert complete(gsn, "gpuswarm-node setup --only dock") == ["docker-group", "docker", "docker-daemon"]
    assert complete(gsn, "gpuswarm-node setup --dry-run --skip ") == ALL_STEPS
    assert complete(gsn, "gpuswarm-node setup --skip swarm") == ["swarm-join"]
    assert complete(gsn, "gpuswarm-node setup --only nothing-like-it") == []


def test_completion_knows_the_config_keys_for_set(gsn):
    from gpuswarm_node.config import reference

    settable = [f"{s}.{k}=" for s, k, default, _ in reference() if not isinstance(default, tuple)]
    assert "shared.mounts=" not in settable and "gpu.slices_per_gpu=" in settable  # tables only in the file
    assert complete(gsn, "gpuswarm-node status --set ") == settable
    assert complete(gsn, "gpuswarm-node setup --set gpu.sl") == ["gpu.slices_per_gpu=", "gpu.slice_memory="]
    assert complete(gsn, "gpuswarm-node config --set tmpfs.") == ["tmpfs.enabled=", "tmpfs.path=", "tmpfs.fraction="]
    assert complete(gsn, "gpuswarm-node hub bundle --node w1 --set image.") == ["image.name="]  # the worker's keys


def test_zsh_completion_knows_them_too(gsn):
    assert complete(gsn, "gpuswarm-node setup --only swarm", shell="zsh") == ["_arguments", "'*:", ':(("swarm-join"))\'']


def test_completion_knows_the_new_commands_and_the_flags_after_a_command(gsn):
    assert complete(gsn, "gpuswarm-node lo") == ["logs"]
    assert complete(gsn, "gpuswarm-node ma") == ["man"]
    assert complete(gsn, "gpuswarm-node logs --") == ["--runs", "--apt", "--json", "--debug", "--quiet", "--verbose",
                                                      "--help"]


# --- the manual page ------------------------------------------------------------------------------

MAN_PAGE = REPO / "docs" / "gpuswarm-node.1"
MACROS = {".TH", ".SH", ".SS", ".TP", ".PP"}


def test_the_man_page_in_docs_is_what_the_program_prints(gsn):
    result = gsn("man")
    assert result.returncode == 0, result.stderr
    assert MAN_PAGE.read_text() == result.stdout, \
        "docs/gpuswarm-node.1 differs from the help: run `python -m gpuswarm_node.cli man > docs/gpuswarm-node.1`"


def test_the_man_page_has_every_command_and_option_and_is_roff():
    from gpuswarm_node.cli import cli_command
    from gpuswarm_node.manpage import render_page

    root = cli_command()
    page = render_page(root)
    lines = page.splitlines()
    assert lines[0] == '.TH GPUSWARM-NODE 1 "" "gpuswarm-node" "User Commands"'
    for line in lines:
        assert not line.startswith("'"), line  # a control line roff would run
        if line.startswith("."):
            assert line.split(" ")[0] in MACROS, line
    groups = [("gpuswarm-node", root)]
    while groups:
        path, group = groups.pop()
        for name, command in group.commands.items():
            assert f'.SS "{path} {name} [OPTIONS]'.replace("-", "\\-") in page, (path, name)
            for param in command.params:
                for opt in getattr(param, "opts", []):
                    if param.param_type_name == "option" and param.name not in ("debug", "quiet", "verbose", "help"):
                        assert f"\\fB{opt.replace('-', chr(92) + '-')}\\fR" in page, (path, name, opt)
            if getattr(command, "commands", None):
                groups.append((f"{path} {name}", command))
    for flag in ("\\-\\-debug", "\\-q", "\\-\\-verbose", "\\-\\-version"):
        assert f"\\fB{flag}\\fR" in page

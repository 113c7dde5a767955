"""The command line's conventions: -h, --version, completion, help that says enough, the `config`
command, one style for every error, configuration that forgives what it should."""

from __future__ import annotations

import json
import re

import pytest

from gpuswarm_node import version
from gpuswarm_node.cli import STEP_NAMES as HELP_STEP_NAMES
from gpuswarm_node.steps import STEP_NAMES

from .test_cli import ALL_STEPS, safe_config, write_config

COMMANDS = ["setup", "status", "steps", "gpus", "render", "cuda-env", "hub-config", "leave", "reset", "version",
            "completion", "config", "logs", "man"]


def one_error_line(result, code: int = 2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert not any(c in result.stderr for c in "╭╰│")  # no rich panel
    return lines[0]


# --- help and conventions -------------------------------------------------------------------------

def test_dash_h_is_help_everywhere(gsn):
    top = gsn("-h")
    assert top.returncode == 0 and "Usage: gpuswarm-node" in top.stdout
    assert top.stdout == gsn("--help").stdout
    for command in COMMANDS:
        assert command in top.stdout
    sub = gsn("setup", "-h")
    assert sub.returncode == 0 and "Usage: gpuswarm-node setup" in sub.stdout


def test_bare_command_shows_help(gsn):
    result = gsn()
    assert result.returncode == 0
    assert result.stdout.count("Usage: gpuswarm-node") == 1


def test_version_flag(gsn):
    result = gsn("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gpuswarm-node {version()}"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_has_example_exit_codes_and_environment(gsn, command):
    result = gsn(command, "-h")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Example: " in text and "gpuswarm-node" in text.split("Example: ")[1]
    assert "Exit codes: 0" in text
    assert "Environment: " in text
    if command not in ("steps", "version", "completion", "logs", "man"):
        assert "GPUSWARM_CONFIG" in text and "GPUSWARM_<SECTION>_<KEY>" in text


def test_only_and_skip_help_name_every_step(gsn):
    assert HELP_STEP_NAMES == STEP_NAMES
    text = " ".join(gsn("setup", "-h").stdout.replace("│", " ").split())
    assert f"Run only this step (repeatable): {', '.join(ALL_STEPS)}." in text
    assert f"Do not run this step (repeatable): {', '.join(ALL_STEPS)}." in text


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F"), ("zsh", "#compdef gpuswarm-node"),
                                           ("fish", "complete --command gpuswarm-node")])
def test_completion_prints_a_script(gsn, shell, marker):
    result = gsn("completion", shell)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout and "_GPUSWARM_NODE_COMPLETE" in result.stdout


def test_completion_script_answers_the_shell(gsn):
    # What the bash script runs on <TAB>: the tool itself, with the words typed so far.
    env = {"_GPUSWARM_NODE_COMPLETE": "complete_bash", "COMP_WORDS": "gpuswarm-node se", "COMP_CWORD": "1"}
    result = gsn(env=env)
    assert result.returncode == 0 and result.stdout.split() == ["setup"]
    env.update(COMP_WORDS="gpuswarm-node setup --dr", COMP_CWORD="2")
    assert sorted(gsn(env=env).stdout.split()) == ["--drain", "--dry-run"]


def test_completion_for_an_unknown_shell_is_a_usage_error(gsn):
    line = one_error_line(gsn("completion", "tcsh"))
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in line


# --- one style for every error --------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment, see", [
    (("leave", "--timeout", "abc"), "Invalid value for '--timeout': 'abc' is not a valid float.",
     "See 'gpuswarm-node leave --help'."),
    (("stauts",), "No such command 'stauts'", "See 'gpuswarm-node --help'."),
    (("setup", "--dryrun"), "No such option: --dryrun", "See 'gpuswarm-node setup --help'."),
    (("status", "--config"), "Option '--config' requires an argument.", "--help'."),
])
def test_click_usage_errors_are_one_line_like_the_tools(gsn, args, fragment, see):
    line = one_error_line(gsn(*args))
    assert fragment in line and line.endswith(see)


def test_tool_errors_and_click_errors_share_the_style(gsn, tmp_path):
    ours = one_error_line(gsn("status", "--config", str(tmp_path / "nope.toml")))
    theirs = one_error_line(gsn("status", "--prometheus"))
    assert ours.split(" ")[0] == theirs.split(" ")[0] == "error:"


# --- configuration: the `config` command ----------------------------------------------------------

def test_config_shows_each_value_and_where_it_came_from(gsn, tmp_path):
    config = write_config(tmp_path, '[swarm]\nmanager = "hub.example.org"\nssh_user = "ops"\n'
                                    '[gpu]\nslices_per_gpu = 4\n')
    result = gsn("config", "--config", str(config), "--set", "gpu.slices_per_gpu=5",
                 env={"GPUSWARM_SWARM_SSH_USER": "admin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"# File: {config}" in lines
    assert f'manager = "hub.example.org"  # file {config}; default ""' in lines
    assert 'ssh_user = "admin"  # environment GPUSWARM_SWARM_SSH_USER; default "root"' in lines
    assert "slices_per_gpu = 5  # flag --set gpu.slices_per_gpu; default 3" in lines
    assert "ssh_port = 22  # default" in lines
    assert "# SSH port of the manager." in lines  # the reference, too
    assert "[tmpfs]" in lines and "enabled = true  # default" in lines


def test_config_json_lists_every_key(gsn, tmp_path):
    from gpuswarm_node.config import reference

    result = gsn("config", "--json", "--set", "tmpfs.enabled=false", env={"GPUSWARM_CONFIG": str(safe_config(tmp_path))})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["file_read"] is True
    keys = {row["key"]: row for row in data["keys"]}
    assert list(keys) == [f"{s}.{k}" for s, k, _, _ in reference()]
    assert keys["tmpfs.enabled"]["value"] is False and keys["tmpfs.enabled"]["origin"].startswith("flag --set")
    assert keys["tmpfs.path"]["origin"].startswith("file ")
    assert keys["gpu.resource"] == {"key": "gpu.resource", "value": "gpu", "default": "gpu", "origin": "default",
                                    "environment": "GPUSWARM_GPU_RESOURCE",
                                    "help": "Swarm generic resource kind the slices are advertised as."}


# --- configuration that forgives what it should ---------------------------------------------------

def test_unknown_environment_variable_does_not_stop_commands(gsn):
    result = gsn("config", env={"GPUSWARM_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "warning: ignoring environment variable GPUSWARM_DEBUG: it is not a configuration key. "
        "(`gpuswarm-node config` lists the keys.)"]


def test_unknown_key_in_the_file_is_still_an_error_with_a_suggestion(gsn, tmp_path):
    config = write_config(tmp_path, "[gpu]\nslices_per_gpus = 2\n")
    line = one_error_line(gsn("status", "--config", str(config)))
    assert "Unknown key [gpu] slices_per_gpus" in line and "Did you mean slices_per_gpu?" in line


def test_unknown_set_key_and_section_get_a_suggestion(gsn):
    line = one_error_line(gsn("config", "--set", "gpu.slices_per_gpus=2"))
    assert "Unknown key [gpu] slices_per_gpus in --set gpu.slices_per_gpus. Did you mean slices_per_gpu?" in line
    line = one_error_line(gsn("config", "--set", "swarn.manager=x"))
    assert "Unknown section [swarn]" in line and "Did you mean swarm?" in line


@pytest.mark.parametrize("setting, words", [
    ("swarm.ssh_port=twenty", "[swarm] ssh_port (--set swarm.ssh_port) must be an integer, got 'twenty'."),
    ("tmpfs.fraction=half", "[tmpfs] fraction (--set tmpfs.fraction) must be a number, got 'half'."),
    ("tmpfs.enabled=maybe", "[tmpfs] enabled (--set tmpfs.enabled) must be true or false, got 'maybe'."),
])
def test_messages_are_plain_english(gsn, setting, words):
    line = one_error_line(gsn("config", "--set", setting))
    assert words in line
    assert not re.search(r"must be an? (int|float|str|bool)\b", line)


def test_tmpfs_can_be_turned_off(gsn, tmp_path):
    config = safe_config(tmp_path, "enabled = false\n")
    status = gsn("status", "--json", "--config", str(config))
    steps = {s["name"]: s for s in json.loads(status.stdout)["steps"]}
    assert steps["tmpfs"]["state"] == "skipped"
    assert "tmpfs.enabled is false" in steps["tmpfs"]["detail"]
    plan = gsn("setup", "--dry-run", "--json", "--only", "tmpfs", "--config", str(config),
               env={"GPUSWARM_TMPFS_ENABLED": "no"})
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["steps"][0]["state"] == "skipped"
    render = gsn("render", "--config", str(config))
    assert "# ==> /etc/fstab (tmpfs)" not in render.stdout
    assert not (tmp_path / "scratch").exists()

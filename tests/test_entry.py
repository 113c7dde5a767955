"""The `gpuswarm-node` command's entry (gpuswarm_node.entry): a plain `status --json` runs without
typer, click or rich and prints what the CLI prints; everything else is the CLI's."""

from __future__ import annotations

import json

import pytest

from gpuswarm_node.entry import command_word, plain_status, plain_status_json

from .conftest import A100
from .test_cli import safe_config, write_config

GPUS = [A100]


@pytest.mark.parametrize("argv, plain", [
    (["status", "--json"], (None,)),
    (["--json", "status"], None),  # --json is status's option, not the program's
    (["status", "--json", "--config", "n.toml"], ("n.toml",)),
    (["--config", "n.toml", "status", "--json"], ("n.toml",)),
    (["-c", "n.toml", "status", "--json"], ("n.toml",)),
    (["status", "--config=n.toml", "--json"], ("n.toml",)),
    (["status"], None),  # the table: see plain_status
    (["status", "--json", "--json"], None),
    (["status", "--json", "--config"], None),
    (["status", "--json", "--config", "--debug"], None),
    (["status", "--json", "--config="], None),
    (["status", "--json", "-c", "a", "-c", "b"], None),
    (["--debug", "status", "--json"], None),
    (["status", "--json", "--set", "gpu.slices_per_gpu=2"], None),
    (["status", "--json", "--prometheus", "/m.prom"], None),
    (["setup", "--json"], None),
    (["status", "status", "--json"], None),
    ([], None),
])
def test_only_a_plain_status_json_takes_the_short_path(argv, plain):
    assert plain_status_json(argv) == plain


def test_status_json_prints_what_the_cli_prints(gsn, tmp_path):
    config = str(safe_config(tmp_path))
    by_cli = gsn("--config", config, "status", "--json", gpus=GPUS)
    by_entry = gsn("--config", config, "status", "--json", gpus=GPUS, module="gpuswarm_node.entry")
    assert by_entry.returncode == by_cli.returncode == 1  # no Docker here: not converged
    assert json.loads(by_entry.stdout)["steps"] and by_entry.stderr == ""
    # The checks run twice, so what they say of time-dependent things could differ; nothing
    # here does: the whole output is the same, byte for byte.
    assert by_entry.stdout == by_cli.stdout


def test_status_json_imports_neither_typer_nor_rich(gsn, tmp_path):
    config = str(safe_config(tmp_path))
    result = gsn("--config", config, "status", "--json", gpus=GPUS, module="gpuswarm_node.entry",
                 env={"PYTHONPROFILEIMPORTTIME": "1"})  # python -X importtime
    imported = {line.split("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "gpuswarm_node.steps" in imported and json.loads(result.stdout)["steps"]
    assert not {m.split(".")[0] for m in imported} & {"typer", "click", "rich"}
    # The CLI, for the table, still has them.
    by_cli = gsn("--config", config, "status", gpus=GPUS, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert {"typer", "rich"} <= {line.split("|")[2].strip() for line in by_cli.stderr.splitlines()
                                  if line.startswith("import time:")}


def test_the_status_table_is_the_clis_without_typer_click_or_rich(gsn, tmp_path):
    config = str(safe_config(tmp_path))
    by_cli = gsn("status", "--config", config, gpus=GPUS)
    by_entry = gsn("status", "--config", config, gpus=GPUS, module="gpuswarm_node.entry",
                   env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert by_entry.returncode == by_cli.returncode == 1
    assert by_entry.stdout == by_cli.stdout and "gpuswarm-node status" in by_entry.stdout
    imported = {line.split("|")[2].strip() for line in by_entry.stderr.splitlines() if line.startswith("import time:")}
    # A pipe gets the plain table (gpuswarm_node.table): no rich either.
    assert "gpuswarm_node.table" in imported and not {m.split(".")[0] for m in imported} & {"typer", "click", "rich"}
    assert [line for line in by_entry.stderr.splitlines() if not line.startswith("import time:")] == \
        by_cli.stderr.splitlines()


def test_a_config_that_warns_or_fails_is_left_to_the_cli(gsn, tmp_path):
    bad = write_config(tmp_path, "[tmpfs]\nfraction = 7\n")
    by_entry = gsn("status", "--json", "--config", str(bad), module="gpuswarm_node.entry")
    by_cli = gsn("status", "--json", "--config", str(bad))
    assert by_entry.returncode == by_cli.returncode == 2
    assert by_entry.stderr == by_cli.stderr and by_entry.stderr.startswith("error:") and by_entry.stdout == ""
    missing = gsn("status", "--json", "--config", str(tmp_path / "absent.toml"), module="gpuswarm_node.entry")
    assert missing.returncode == 2 and "absent.toml" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("argv, word", [
    (["status"], "status"), (["--config", "status", "setup"], "setup"), (["-c", "n.toml", "status"], "status"),
    (["--debug", "status", "--json"], "status"), (["--config=n.toml", "gpus"], "gpus"), (["--debug"], None),
])
def test_the_command_word_skips_the_programs_options(argv, word):
    assert command_word(argv) == word


@pytest.mark.parametrize("argv, plain", [
    (["status"], (None, False)), (["-c", "n.toml", "status"], ("n.toml", False)),
    (["status", "--json"], (None, True)), (["status", "--set", "gpu.slices_per_gpu=2"], None),
])
def test_a_plain_status_with_or_without_json_takes_the_short_path(argv, plain):
    assert plain_status(argv) == plain


@pytest.mark.parametrize("json_out, front", [(True, []), (False, []), (False, ["--debug"])])  # --debug: the CLI's
def test_status_ends_without_teardown_and_loses_no_output(gsn, tmp_path, json_out, front):
    # An atexit handler that runs only at the interpreter's teardown: it must not run, and the
    # whole output and the exit code must come through (sitecustomize runs before the command).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import atexit, sys\natexit.register(lambda: sys.stderr.write('teardown\\n'))\n")
    config = str(safe_config(tmp_path))
    argv = [*front, "--config", config, "status", *(["--json"] if json_out else [])]
    by_entry = gsn(*argv, gpus=GPUS, module="gpuswarm_node.entry", env={"PYTHONPATH": str(site)})
    by_cli = gsn(*argv, gpus=GPUS, env={"PYTHONPATH": str(site)})
    assert by_entry.returncode == by_cli.returncode == 1
    assert "teardown" not in by_entry.stderr and "teardown" in by_cli.stderr  # the CLI alone tears down
    if json_out:
        assert json.loads(by_entry.stdout) == json.loads(by_cli.stdout)
    else:
        assert by_entry.stdout.splitlines()[-3:] == by_cli.stdout.splitlines()[-3:] and "docker" in by_entry.stdout


def test_where_rich_is_asked_to_colour_the_table_is_riches_and_still_the_clis(gsn, tmp_path):
    config = str(safe_config(tmp_path))
    env = {"FORCE_COLOR": "1", "PYTHONPROFILEIMPORTTIME": "1"}  # as a terminal would have it
    by_cli = gsn("status", "--config", config, gpus=GPUS, env=env)
    by_entry = gsn("status", "--config", config, gpus=GPUS, module="gpuswarm_node.entry", env=env)
    assert by_entry.returncode == by_cli.returncode == 1
    assert by_entry.stdout == by_cli.stdout and "\x1b[" in by_entry.stdout  # coloured by rich
    imported = {line.split("|")[2].strip() for line in by_entry.stderr.splitlines() if line.startswith("import time:")}
    assert "rich.table" in imported

"""The command line as users run it: commands, exit codes, the JSON shape, errors without tracebacks.

These run the real CLI against this machine (which has no GPU, no systemd and no Docker daemon), or
against GPUs from the fake libnvidia-ml.so.1, and assert on what the machine looks like afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuswarm_node.steps import STEP_NAMES

from .conftest import A100, T4

ALL_STEPS = ["boot", "tmpfs", "docker-group", "docker", "registry-trust", "nvidia-driver", "nvidia-toolkit",
             "docker-daemon", "metadata-guard", "image", "shared-fs", "swarm-join", "node-labels", "watch"]


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def safe_config(tmp_path: Path, extra: str = "") -> Path:
    """A config whose tmpfs lives in the test's own directory."""
    return write_config(tmp_path, f'[tmpfs]\npath = "{tmp_path / "scratch"}"\n{extra}')


def test_help_lists_every_command(gsn):
    result = gsn("--help")
    assert result.returncode == 0
    for command in ("setup", "status", "steps", "gpus", "render", "version"):
        assert command in result.stdout


def test_steps_lists_the_nine_in_order(gsn):
    result = gsn("steps")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == ALL_STEPS
    assert list(STEP_NAMES) == ALL_STEPS


def test_version(gsn):
    from gpuswarm_node import version

    assert gsn("version").stdout.strip() == f"gpuswarm-node {version()}"


def test_dry_run_prints_a_plan_and_changes_nothing(gsn, tmp_path):
    fstab_before = Path("/etc/fstab").read_bytes()
    config = safe_config(tmp_path)
    result = gsn("setup", "--dry-run", "--only", "tmpfs", "--config", str(config))
    assert result.returncode == 0, result.stderr  # applying the plan converges the node
    assert "would change" in result.stdout and "tmpfs" in result.stdout
    assert f"+tmpfs {tmp_path / 'scratch'} tmpfs" in result.stdout  # the fstab diff
    assert "stopped by" not in result.stdout
    assert Path("/etc/fstab").read_bytes() == fstab_before
    assert not (tmp_path / "scratch").exists()


def test_dry_run_with_blocked_steps_exits_1_and_names_them(gsn, tmp_path):
    # No Docker here: the swarm-join step is blocked, so the plan cannot reach a converged node.
    result = gsn("setup", "--dry-run", "--config", str(safe_config(tmp_path)))
    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "stopped by" in summary and "swarm-join (blocked)" in summary and "so setup would not converge" in summary
    assert summary.endswith("nothing was changed.")
    assert "swarm-join blocked:" in result.stdout  # with the step's reason
    assert not (tmp_path / "scratch").exists()


def test_dry_run_json_is_the_full_plan(gsn, tmp_path):
    result = gsn("setup", "--dry-run", "--json", "--config", str(safe_config(tmp_path)))
    assert result.returncode == 1
    plan = json.loads(result.stdout)
    assert list(plan) == ["version", "ok", "dry_run", "changed", "reboot_required", "steps", "preflight"]
    assert [p["name"] for p in plan["preflight"]] == ["config", "ssh-key", "known-hosts", "manager-host-key",
                                                      "registry-ca", "node-name"]
    assert all(p["ok"] for p in plan["preflight"])
    assert plan["ok"] is False and plan["dry_run"] is True and plan["changed"] == []
    assert plan["reboot_required"] is False
    steps = {s["name"]: s for s in plan["steps"]}
    assert list(steps) == ALL_STEPS
    for step in plan["steps"]:
        assert set(step) == {"name", "state", "detail", "actions"}
        assert bool(step["actions"]) == (step["state"] == "needs-change")
    actions = {a["description"]: a for a in steps["tmpfs"]["actions"]}
    assert f"+tmpfs {tmp_path / 'scratch'} tmpfs" in actions["update /etc/fstab"]["diff"]
    assert set(actions[f"create directory {tmp_path / 'scratch'}"]) == {"description"}  # only files carry a diff
    assert steps["swarm-join"]["state"] == "blocked"
    only = json.loads(gsn("setup", "--dry-run", "--json", "--only", "tmpfs", "--config",
                          str(safe_config(tmp_path))).stdout)
    assert only["ok"] is True and only["dry_run"] is True
    assert not (tmp_path / "scratch").exists()


def test_status_json_shape_and_exit_code(gsn, tmp_path):
    result = gsn("--config", str(safe_config(tmp_path)), "status", "--json")
    assert result.returncode == 1  # no Docker here, so not converged
    report = json.loads(result.stdout)
    assert set(report) == {"version", "ok", "changed", "reboot_required", "steps"}
    assert report["ok"] is False and report["changed"] == []
    assert [s["name"] for s in report["steps"]] == ALL_STEPS
    for step in report["steps"]:
        assert set(step) == {"name", "state", "detail", "actions"}
        assert bool(step["actions"]) == (step["state"] == "needs-change")  # what setup would run
        assert step["state"] in {"ok", "needs-change", "failed", "blocked", "skipped", "pending"}
        assert step["detail"]
    states = {s["name"]: s["state"] for s in report["steps"]}
    # One blocked step does not hide the others: each got its own verdict.
    assert states["tmpfs"] == "needs-change"
    assert states["nvidia-driver"] == "skipped"
    assert states["swarm-join"] == "blocked"


def test_status_table(gsn, tmp_path):
    result = gsn("status", "--config", str(safe_config(tmp_path)))
    assert result.returncode == 1
    for name in ALL_STEPS:
        assert name in result.stdout


def test_setup_json_selected_steps(gsn, tmp_path):
    result = gsn("setup", "--json", "--only", "registry-trust", "--only", "image",
                 "--config", str(safe_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    from gpuswarm_node import version

    assert report == {"version": version(), "ok": True, "dry_run": False, "changed": [], "reboot_required": False, "steps": [
        {"name": "registry-trust", "state": "skipped", "detail": "no registry configured (registry.address is empty)",
         "actions": []},
        {"name": "image", "state": "skipped", "detail": "no image configured (image.name is empty)", "actions": []}],
        "preflight": [{"name": n, "ok": True} for n in ("config", "ssh-key", "known-hosts", "manager-host-key",
                                                         "registry-ca", "node-name")]}


def test_skip_removes_steps(gsn, tmp_path):
    result = gsn("setup", "--json", "--dry-run", "--skip", "tmpfs", "--skip", "swarm-join",
                 "--config", str(safe_config(tmp_path)))
    names = [s["name"] for s in json.loads(result.stdout)["steps"]]
    assert names == [n for n in ALL_STEPS if n not in ("tmpfs", "swarm-join")]


def test_gpus_reports_inventory_and_interleaved_slices(gsn):
    result = gsn("gpus", "--json", "--set", "gpu.slices_per_gpu=2", gpus=[A100, T4])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["driver_version"] == "550.54.15"
    assert [g["uuid"] for g in data["gpus"]] == [A100.uuid, T4.uuid]
    assert data["gpus"][0]["memory_bytes"] == 40960 * 2**20
    assert data["node_generic_resources"] == [
        f"gpu={A100.uuid}::1", f"gpu={T4.uuid}::1", f"gpu={A100.uuid}::2", f"gpu={T4.uuid}::2"]


T4_ON_THE_BUS = ("0000:00:1e.0", "0x10de", "0x030200", "0x1eb8")


def test_gpus_without_driver_is_one_clear_line(gsn):
    result = gsn("gpus", mode="driver-not-loaded", pci=[T4_ON_THE_BUS])
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "driver is not loaded" in result.stderr
    assert "1 NVIDIA GPU(s) on the PCI bus (0000:00:1e.0)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_gpus_on_a_machine_without_nvidia_gpu_says_so(gsn):
    # Another vendor's display controller and an NVIDIA device that is no GPU (an audio function).
    bus = [("0000:00:02.0", "0x1234", "0x030000", "0x1111"), ("0000:00:1e.1", "0x10de", "0x040300", "0x10fa")]
    for args in (("gpus",), ("gpus", "--json")):
        for mode in ("ok", "driver-not-loaded"):  # no libnvidia-ml at all, or one without a driver
            result = gsn(*args, pci=bus, mode=mode)
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr and "error" not in result.stderr
            if "--json" in args:
                data = json.loads(result.stdout)
                assert data["gpus"] == [] and data["node_generic_resources"] == [] and data["driver_version"] is None
                assert data["notes"][0].startswith("no NVIDIA GPU on this machine")
            else:
                assert result.stdout.startswith("no NVIDIA GPU on this machine")


def test_status_with_gpus_sees_the_driver(gsn, tmp_path):
    result = gsn("status", "--json", "--config", str(safe_config(tmp_path)), gpus=[A100])
    states = {s["name"]: s for s in json.loads(result.stdout)["steps"]}
    # ok, or needs-change only for the unattended-upgrades drop-in, which this machine need not have
    assert states["nvidia-driver"]["state"] in ("ok", "needs-change")
    assert states["nvidia-driver"]["detail"].startswith("driver 550.54.15, 1 GPU(s), CUDA initialises; ")


def test_render_prints_every_file_setup_would_write(gsn, tmp_path):
    config = safe_config(tmp_path, '[swarm]\nmanager = "198.18.0.1"\n')
    result = gsn("render", "--config", str(config), gpus=[A100])
    assert result.returncode == 0, result.stderr
    assert "# ==> /etc/fstab (tmpfs)" in result.stdout
    assert "# ==> /etc/docker/daemon.json (docker-daemon)" in result.stdout
    body = result.stdout.split("# ==> /etc/docker/daemon.json (docker-daemon)\n")[1].split("# ==>")[0]
    daemon = json.loads(body)
    assert daemon["default-runtime"] == "gpuswarm"
    assert daemon["runtimes"]["gpuswarm"] == {"path": "/usr/local/lib/gpuswarm-node/gpuswarm-runtime"}
    assert daemon["node-generic-resources"] == [f"gpu={A100.uuid}::{n}" for n in (1, 2, 3)]
    assert "# ==> /usr/local/lib/gpuswarm-node/gpuswarm-runtime (docker-daemon)\n#!/bin/sh\n" in result.stdout
    assert "# ==> /usr/local/lib/gpuswarm-node/gpuswarm-runtime.py (docker-daemon)\n" in result.stdout
    body = result.stdout.split("# ==> /etc/gpuswarm-node/slices.json (docker-daemon)\n")[1].split("# ==>")[0]
    assert json.loads(body)["slices"] == {f"{A100.uuid}::{n}": A100.uuid for n in (1, 2, 3)}
    assert not Path(tmp_path / "scratch").exists()


def test_render_without_gpus_exits_1_naming_what_it_could_not_render(gsn, tmp_path):
    config = safe_config(tmp_path, '[swarm]\nmanager = "198.18.0.1"\n')
    result = gsn("render", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "# ==> /etc/fstab (tmpfs)" in result.stdout  # what needs no GPU is still printed
    assert "/etc/docker/daemon.json" not in result.stdout
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert "could not render the files of docker-daemon (" in line and "--inventory" in line
    assert "Traceback" not in result.stderr


def test_render_with_an_inventory_needs_no_gpus(gsn, tmp_path):
    inventory = tmp_path / "gpus.json"
    inventory.write_text(gsn("gpus", "--json", gpus=[A100, T4]).stdout)  # as printed on a GPU node
    config = safe_config(tmp_path, '[swarm]\nmanager = "198.18.0.1"\n')
    result = gsn("render", "--config", str(config), "--inventory", str(inventory))  # no GPUs here
    assert result.returncode == 0, result.stderr
    with_gpus = gsn("render", "--config", str(config), gpus=[A100, T4])
    assert result.stdout == with_gpus.stdout  # the same files as on the node itself
    body = result.stdout.split("# ==> /etc/docker/daemon.json (docker-daemon)\n")[1].split("# ==>")[0]
    assert json.loads(body)["node-generic-resources"][:2] == [f"gpu={A100.uuid}::1", f"gpu={T4.uuid}::1"]
    body = result.stdout.split("# ==> /etc/gpuswarm-node/slices.json (docker-daemon)\n")[1].split("# ==>")[0]
    assert json.loads(body)["slices"][f"{T4.uuid}::1"] == T4.uuid
    assert "# ==> /usr/local/lib/gpuswarm-node/gpuswarm-runtime (docker-daemon)\n#!/bin/sh\n" in result.stdout


def test_render_with_a_bad_inventory_is_a_usage_error(gsn, tmp_path):
    bad = tmp_path / "gpus.json"
    for text, words in (("not json", "--inventory"), ('{"gpus": [{"name": "x"}]}', "gpus[0]"),
                        ("[]", '"gpus" list')):
        bad.write_text(text)
        assert_usage_error(gsn("render", "--config", str(safe_config(tmp_path)), "--inventory", str(bad)), words)
    assert_usage_error(gsn("render", "--inventory", str(tmp_path / "nope.json")), "nope.json")


# --- bad input: exit 2, one line naming the key, no traceback -------------------------------------

def assert_usage_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr


def test_unknown_key_names_it(gsn, tmp_path):
    config = write_config(tmp_path, '[swarm]\nmanagr = "hub"\n')
    assert_usage_error(gsn("--config", str(config), "status"), "[swarm] managr", "Valid keys of [swarm]")


def test_config_after_the_command_is_honoured(gsn, tmp_path):
    config = write_config(tmp_path, '[gpu]\nslices_per_gpu = "three"\n')
    assert_usage_error(gsn("setup", "--config", str(config), "--dry-run"), "[gpu] slices_per_gpu",
                       "must be an integer, got 'three'")


def test_unknown_section(gsn, tmp_path):
    assert_usage_error(gsn("status", "--config", str(write_config(tmp_path, "[gpus]\nx = 1\n"))), "[gpus]")


def test_invalid_toml(gsn, tmp_path):
    assert_usage_error(gsn("status", "--config", str(write_config(tmp_path, "[swarm\n"))), "not valid TOML")


def test_missing_config_file(gsn, tmp_path):
    assert_usage_error(gsn("status", "--config", str(tmp_path / "nope.toml")), "does not exist")


def test_out_of_range_value(gsn, tmp_path):
    config = write_config(tmp_path, "[tmpfs]\nfraction = 1.5\n")
    assert_usage_error(gsn("status", "--config", str(config)), "[tmpfs] fraction")


def test_environment_override_is_validated(gsn, tmp_path):
    result = gsn("status", "--config", str(safe_config(tmp_path)), env={"GPUSWARM_SWARM_SSH_PORT": "70000"})
    assert_usage_error(result, "[swarm] ssh_port")


def test_unknown_environment_key_is_ignored_with_a_warning(gsn, tmp_path):
    result = gsn("status", "--json", "--config", str(safe_config(tmp_path)),
                 env={"GPUSWARM_SWARM_MANAGRE": "x", "GPUSWARM_DEBUG": "1"})
    assert result.returncode == 1  # not converged here, but the command ran
    assert [s["name"] for s in json.loads(result.stdout)["steps"]] == ALL_STEPS
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert "GPUSWARM_DEBUG" in warnings[0] and "not a configuration key" in warnings[0]
    assert "GPUSWARM_SWARM_MANAGRE" in warnings[1] and "Did you mean GPUSWARM_SWARM_MANAGER?" in warnings[1]


def test_bad_set_flag(gsn, tmp_path):
    assert_usage_error(gsn("setup", "--dry-run", "--set", "manager", "--config", str(safe_config(tmp_path))),
                       "section.key=value")


def test_unknown_step(gsn, tmp_path):
    assert_usage_error(gsn("setup", "--only", "dockr", "--config", str(safe_config(tmp_path))), "dockr")


def test_debug_shows_the_traceback(gsn, tmp_path):
    result = gsn("--debug", "status", "--config", str(write_config(tmp_path, "[x]\n")))
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_status_writes_prometheus_textfile(gsn, tmp_path):
    metrics = tmp_path / "textfile" / "gpuswarm_node.prom"
    metrics.parent.mkdir()
    result = gsn("status", "--json", "--prometheus", str(metrics), "--config", str(safe_config(tmp_path)),
                 gpus=[A100])
    states = {s["name"]: s["state"] for s in json.loads(result.stdout)["steps"]}
    lines = metrics.read_text().splitlines()
    for name, step_state in states.items():
        healthy = 1 if step_state in ("ok", "skipped") else 0
        assert f'gpuswarm_node_step_ok{{step="{name}",state="{step_state}"}} {healthy}' in lines
    assert "gpuswarm_node_converged 0" in lines
    assert not list(metrics.parent.glob(".*.tmp"))


@pytest.mark.parametrize("where, problem", [
    ("", "names no file"),
    ("{tmp}", "does not end in .prom"),
    ("{tmp}/textfile.prom", "is a directory"),
    ("{tmp}/missing/gpuswarm_node.prom", "does not exist"),
    ("{tmp}/gpuswarm_node.txt", "reads only *.prom files"),
], ids=["empty", "directory-no-suffix", "directory", "no-parent", "suffix"])
def test_a_prometheus_file_node_exporter_never_reads_is_a_usage_error(gsn, tmp_path, where, problem):
    (tmp_path / "textfile.prom").mkdir()
    path = where.format(tmp=tmp_path)
    result = gsn("status", "--prometheus", path, "--config", str(safe_config(tmp_path)))
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()  # status creates nothing

"""setup's own reboot (steps/boot.reboot_if_allowed): once, only with node.reboot = "auto", only when
the boot unit will resume setup, never in a loop."""

from __future__ import annotations

import pytest

from gpuswarm_node import config
from gpuswarm_node.context import Context
from gpuswarm_node.engine import RunReport, State, StepReport
from gpuswarm_node.steps.boot import BOOT_ID, REBOOT_MARKER, reboot_if_allowed

from .fakes import FakeHost


def report(driver: State = State.BLOCKED, reboot: bool = True, boot: State = State.OK) -> RunReport:
    return RunReport([StepReport("boot", boot, ""), StepReport("nvidia-driver", driver, "", reboot_required=reboot)],
                     "setup")


def context(reboot: str = "auto", files: dict | None = None) -> tuple[Context, FakeHost]:
    host = FakeHost.from_case({"files": {BOOT_ID: "0b1d\n", **(files or {})}})
    return Context(config=config.from_tables({"node": {"reboot": reboot}}), host=host), host


def test_reboots_once_writing_the_marker_first():
    ctx, host = context()
    line = reboot_if_allowed(report(), ctx)
    assert host.actions == [f"write {REBOOT_MARKER}", "run systemctl reboot"]
    assert host.files[REBOOT_MARKER].startswith("boot 0b1d, ")
    assert "rebooting now (node.reboot = auto) for nvidia-driver" in line


def test_a_reboot_that_did_not_help_is_not_repeated():
    ctx, host = context(files={REBOOT_MARKER: "boot 0b1c, 2026-01-01T00:00:00Z\n"})
    line = reboot_if_allowed(report(), ctx)
    assert host.actions == []
    assert "not rebooting again" in line and "boot 0b1c" in line and REBOOT_MARKER in line


def test_a_converged_run_clears_the_marker_and_a_partial_one_keeps_it():
    ctx, host = context(files={REBOOT_MARKER: "boot 0b1c\n"})
    assert reboot_if_allowed(report(State.FAILED, reboot=False), ctx) is None
    assert host.actions == []
    assert reboot_if_allowed(report(State.OK, reboot=False), ctx) is None
    assert host.actions == [f"remove {REBOOT_MARKER}"]


@pytest.mark.parametrize("reboot,boot,says", [("off", State.OK, None),
                                              ("auto", State.FAILED, "not in place to resume setup")])
def test_no_reboot_when_not_allowed_or_nothing_would_resume(reboot, boot, says):
    ctx, host = context(reboot)
    line = reboot_if_allowed(report(boot=boot), ctx)
    assert host.actions == []
    assert line is None if says is None else says in line


def test_the_reboot_key_takes_only_its_words():
    with pytest.raises(config.ConfigError, match="must be one of off, auto"):
        config.from_tables({"node": {"reboot": "yes"}})


def test_the_boot_runs_find_the_boot_config_as_they_would_write_it(monkeypatch):
    # The first setup runs through sudo (node.user from SUDO_USER, added after the file's own
    # keys); the boot unit's runs load the file it wrote, without SUDO_USER: same text, no change.
    from gpuswarm_node.config import tomllib
    from gpuswarm_node.steps.boot import BOOT_CONFIG, BootStep, boot_config_text

    monkeypatch.setenv("SUDO_USER", "alice")
    first = Context(config=config.from_tables({"node": {"reboot": "auto"}, "swarm": {"manager": "hub.example.org"},
                                               "gpu": {"slices_per_gpu": 2}}), host=FakeHost())
    written = boot_config_text(first)
    monkeypatch.delenv("SUDO_USER")
    host = FakeHost.from_case({"files": {BOOT_CONFIG: written}})
    again = Context(config=config.from_tables(tomllib.loads(written)), host=host)
    assert boot_config_text(again) == written
    assert all(w.path != BOOT_CONFIG for w in BootStep().check(again).actions if hasattr(w, "path"))

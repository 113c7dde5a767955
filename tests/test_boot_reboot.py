"""setup's own reboot (steps/boot.reboot_if_allowed): once, only with node.reboot = "auto", only when
the boot unit will resume setup, never in a loop."""

from __future__ import annotations

import pytest

from gpuswarm_node import config
from gpuswarm_node.context import Context, RunOptions
from gpuswarm_node.engine import RunReport, State, StepReport
from gpuswarm_node.steps.boot import BOOT_ID, REBOOT_MARKER, reboot_if_allowed

from .fakes import FakeDocker, FakeHost, FakeManager


def report(driver: State = State.BLOCKED, reboot: bool = True, boot: State = State.OK) -> RunReport:
    return RunReport([StepReport("boot", boot, ""), StepReport("nvidia-driver", driver, "", reboot_required=reboot)],
                     "setup")


def context(reboot: str = "auto", files: dict | None = None, containers: tuple = (), options: dict | None = None,
            manager: dict | None = None, swarm: str = "active") -> tuple[Context, FakeHost]:
    host = FakeHost.from_case({"files": {BOOT_ID: "0b1d\n", **(files or {})}})
    docker = FakeDocker.from_case({"containers": list(containers), "swarm": {"state": swarm, "node_id": "n1"}})
    fake = FakeManager(manager)
    tables = {"node": {"reboot": reboot}, **({"swarm": {"manager": "198.18.0.1"}} if manager is not None else {})}
    ctx = Context(config=config.from_tables(tables), host=host, options=RunOptions(**(options or {})),
                  docker_factory=lambda: docker, manager_session_factory=fake.session)
    ctx.fake_manager = fake
    return ctx, host


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


NOTEBOOKS = ("jupyter-alice.1.x1", "jupyter-bob.1.x2")


def test_an_automatic_reboot_is_refused_while_notebooks_run_as_a_docker_restart_is():
    # Before: node.reboot = auto rebooted the machine under running notebooks, which a Docker
    # restart for the same run would have refused.
    ctx, host = context(containers=NOTEBOOKS)
    line = reboot_if_allowed(report(), ctx)
    assert host.actions == []  # no marker either: the next run may reboot once they are gone
    assert line == ("not rebooting by itself: the automatic reboot (node.reboot = auto) would stop 2 running "
                    "container(s): jupyter-alice.1.x1, jupyter-bob.1.x2; run setup --drain to move swarm tasks off "
                    "first, or --allow-restart to reboot anyway")


def test_allow_restart_lets_the_automatic_reboot_stop_them():
    ctx, host = context(containers=NOTEBOOKS, options={"allow_restart": True})
    assert "rebooting now" in reboot_if_allowed(report(), ctx)
    assert host.actions == [f"write {REBOOT_MARKER}", "run systemctl reboot"]


def test_drain_without_a_manager_cannot_move_them_so_the_reboot_is_refused():
    ctx, host = context(containers=NOTEBOOKS, options={"drain": True})
    line = reboot_if_allowed(report(), ctx)
    assert host.actions == []
    assert "--drain cannot move them (swarm.manager is not set): run setup --allow-restart to reboot anyway" in line


def test_drain_first_then_reboot_and_the_converged_run_after_it_makes_the_node_active_again():
    ctx, host = context(containers=NOTEBOOKS, options={"drain": True}, manager={"tasks": ["t1", "t2"]})
    line = reboot_if_allowed(report(), ctx)
    assert ctx.fake_manager.availability == {"n1": "drain"}
    assert host.actions == [f"write {REBOOT_MARKER}", "run systemctl reboot"]  # drained before the marker
    assert host.files[REBOOT_MARKER].rstrip().endswith(", drained n1")
    assert "makes this node active again once it converges" in line
    # After the reboot the boot unit's run (no flags) converges: the node serves again.
    after, host_after = context(files={REBOOT_MARKER: host.files[REBOOT_MARKER]}, manager={"tasks": []})
    line = reboot_if_allowed(report(State.OK, reboot=False), after)
    assert after.fake_manager.availability == {"n1": "active"}
    assert host_after.actions == [f"remove {REBOOT_MARKER}"]
    assert line == "node n1 is active again: the automatic reboot that drained it is done"


def test_a_drain_that_does_not_finish_makes_the_node_active_again_and_does_not_reboot(monkeypatch):
    from gpuswarm_node import lifecycle

    ctx, host = context(containers=NOTEBOOKS, options={"drain": True}, manager={"tasks": ["t1"]})

    def stuck(ctx):  # drain_and_wait when the tasks do not move within drain_timeout
        from gpuswarm_node.errors import StepFailed
        with ctx.manager_session() as session:
            session.set_availability("n1", "drain")
        ctx.outcomes["drained"] = "n1"
        raise StepFailed("1 task(s) still run on this node 0 s after draining it.", "Look at `docker node ps`.")

    monkeypatch.setattr(lifecycle, "drain_and_wait", stuck)
    line = reboot_if_allowed(report(), ctx)
    assert host.actions == []
    assert ctx.fake_manager.availability == {"n1": "active"}
    assert line.startswith("not rebooting by itself: draining this node first failed: 1 task(s) still run")


def test_a_run_that_does_not_converge_after_the_reboot_leaves_the_node_drained():
    ctx, host = context(files={REBOOT_MARKER: "boot 0b1c, 2026-01-01T00:00:00Z, drained n1\n"}, manager={})
    assert reboot_if_allowed(report(State.FAILED, reboot=False), ctx) is None
    assert host.actions == [] and ctx.fake_manager.availability == {}

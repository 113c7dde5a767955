"""reset obeys setup's restart rules: restoring daemon.json restarts Docker, which is refused while
containers run unless --allow-restart, or --drain (drained through the manager first)."""

from __future__ import annotations


import pytest

from gpuswarm_node import config, lifecycle, reset, runlog
from gpuswarm_node.engine import State, run_plan
from gpuswarm_node.errors import StepFailed
from gpuswarm_node.journal import Journal
from gpuswarm_node.context import Context, RunOptions

from .fakes import FakeDocker, FakeHost

DAEMON_JSON = "/etc/docker/daemon.json"
# Setup wrote daemon.json where there was none, and joined a swarm.
ENTRIES = [
    {"kind": "write", "path": DAEMON_JSON, "backup": None, "undo": {"op": "remove", "path": DAEMON_JSON}},
    {"kind": "call", "step": "swarm-join", "action": "fetch a worker join token over SSH and join hub:2377",
     "undo": {"op": "leave-swarm"}},
]
RUNNING = ["jupyter-alice.1.x1", "jupyter-bob.1.x2"]
MANAGER = {"swarm": {"manager": "198.18.0.1"}}


def context(containers=RUNNING, docker_state="active", swarm="active", options=None, tables=None,
            files=None) -> tuple[Context, FakeHost, FakeDocker]:
    host = FakeHost(files={DAEMON_JSON: "{}", **(files or {})},
                    facts={"active_state": {"docker": docker_state}})
    docker = FakeDocker.from_case({"containers": list(containers), "swarm": {"state": swarm, "node_id": "n1"}})
    ctx = Context(config=config.from_tables(tables or {}), host=host, options=RunOptions(**(options or {})),
                  docker_factory=lambda: docker)
    return ctx, host, docker


def test_a_reset_that_restarts_docker_is_refused_while_containers_run_naming_them():
    # Before: reset restored daemon.json and restarted Docker under running notebooks.
    ctx, host, _ = context()
    why = reset.refusal(ctx, reset.plan(ENTRIES))
    assert why == ("reset restores Docker's settings and restarts Docker, which would stop 2 running container(s): "
                   "jupyter-alice.1.x1, jupyter-bob.1.x2; run reset --yes --drain to move swarm tasks off first, "
                   "or --allow-restart to restart anyway")
    assert host.actions == []


@pytest.mark.parametrize("options, tables", [({"allow_restart": True}, {}), ({"drain": True}, MANAGER)])
def test_allow_restart_or_a_possible_drain_lets_it_run(options, tables):
    ctx, _, _ = context(options=options, tables=tables)
    assert reset.refusal(ctx, reset.plan(ENTRIES)) is None


def test_drain_without_a_manager_cannot_move_them_so_it_is_refused():
    ctx, _, _ = context(options={"drain": True})
    why = reset.refusal(ctx, reset.plan(ENTRIES))
    assert why is not None and why.endswith(
        "--drain cannot move them (swarm.manager is not set): run reset --yes --allow-restart to restart anyway")


@pytest.mark.parametrize("kwargs, entries", [
    ({"containers": []}, ENTRIES),                       # nothing would stop
    ({"docker_state": "inactive"}, ENTRIES),             # reset restarts only a running docker
    ({}, [{"kind": "mkdir", "path": "/mnt/tmpfs"}]),     # nothing Docker reads is restored
])
def test_no_refusal_where_nothing_running_would_stop(kwargs, entries):
    ctx, _, _ = context(**kwargs)
    assert reset.refusal(ctx, reset.plan(entries)) is None


def journal_with(tmp_path, entries) -> Journal:
    journal = Journal(str(tmp_path / "journal" / "changes.jsonl"))
    for entry in entries:
        journal.record(**entry)
    return journal


def fake_manager(monkeypatch, host, fail_drain: bool = False) -> list[str]:
    """The drain and the activation, as the manager would do them; records each with how many
    changes the host had seen by then."""
    calls: list[str] = []

    def drain(ctx):
        calls.append(f"drain after {len(host.actions)}")
        if fail_drain:
            raise StepFailed("2 task(s) still run on this node 600 s after draining it.")
        ctx.outcomes.update({"drained": "n1", "tasks moved": "2"})
        return 2

    def activate(ctx):
        calls.append(f"activate after {len(host.actions)}")
        ctx.outcomes["activated"] = "n1"

    monkeypatch.setattr(lifecycle, "drain_and_wait", drain)
    monkeypatch.setattr(lifecycle, "activate", activate)
    return calls


def run_reset_plan(ctx, entries):
    undo = reset.plan(entries)
    return run_plan(reset.reset_plan(ctx, undo), ctx)


def test_drain_goes_through_the_manager_before_anything_is_undone(monkeypatch):
    ctx, host, docker = context(options={"drain": True}, tables=MANAGER)
    calls = fake_manager(monkeypatch, host)
    report = run_reset_plan(ctx, ENTRIES)
    assert calls == ["drain after 0"]  # it left the swarm: not made active again
    assert docker.calls == ["leave"]
    assert host.actions == [f"remove {DAEMON_JSON}", "run systemctl daemon-reload", "run systemctl restart docker"]
    assert [s.name for s in report.steps] == ["drain", "leave-swarm", "remove", "restart-docker", "activate"]
    assert report.ok and report.changed == ["drain", "leave-swarm", "remove", "restart-docker"]


def test_a_node_still_in_the_swarm_is_made_active_again(monkeypatch):
    ctx, host, _ = context(options={"drain": True}, tables=MANAGER)
    calls = fake_manager(monkeypatch, host)
    report = run_reset_plan(ctx, ENTRIES[:1])
    assert calls == ["drain after 0", "activate after 3"]
    assert report.steps[-1].name == "activate" and report.steps[-1].changed


def test_the_node_is_made_active_again_even_when_an_undo_fails(monkeypatch):
    ctx, host, _ = context(options={"drain": True}, tables=MANAGER)
    host.effects["systemctl daemon-reload"] = {"rc": 1, "stderr": "Failed to reload"}
    calls = fake_manager(monkeypatch, host)
    report = run_reset_plan(ctx, ENTRIES[:1])
    assert calls[-1].startswith("activate")  # the closing half of the drain ran all the same
    assert not report.ok and [s.name for s in report.steps if s.state is State.FAILED] == ["restart-docker"]


def test_a_failed_drain_stops_the_reset_before_anything_is_undone(monkeypatch):
    ctx, host, docker = context(options={"drain": True}, tables=MANAGER)
    calls = fake_manager(monkeypatch, host, fail_drain=True)
    report = run_reset_plan(ctx, ENTRIES)
    assert calls == ["drain after 0"]
    assert host.actions == [] and docker.calls == []  # nothing undone
    assert report.steps[0].state.value == "failed" and not report.ok


def test_no_drain_where_no_restart_happens(monkeypatch):
    ctx, host, _ = context(options={"drain": True}, tables=MANAGER, docker_state="inactive")
    monkeypatch.setattr(lifecycle, "drain_and_wait", lambda *a, **k: pytest.fail("drained for nothing"))
    report = run_reset_plan(ctx, ENTRIES[:1])
    assert "drain" not in [s.name for s in report.steps]


def test_reset_takes_the_restart_flags(gsn):
    result = gsn("reset", "--help")
    assert result.returncode == 0
    assert "--allow-restart" in result.stdout and "--drain" in result.stdout


def run_reset(tmp_path, monkeypatch, ctx, *flags: str):
    """`gpuswarm-node reset` in-process, on a journal, lock and machine of the test's own."""
    from typer.testing import CliRunner

    from gpuswarm_node import cli, journal as journal_module, lock

    journal = journal_with(tmp_path, ENTRIES)
    monkeypatch.setattr(journal_module, "Journal", lambda: journal)
    monkeypatch.setattr(lock, "LOCK_PATH", str(tmp_path / "gpuswarm-node.lock"))
    # The run log under tmp_path, not the machine's /var/log (the CLI calls runlog's functions).
    run_log = str(tmp_path / "log" / "runs.jsonl")
    prepare, append = runlog.prepare, runlog.append
    monkeypatch.setattr(runlog, "prepare", lambda path=run_log: prepare(path))
    monkeypatch.setattr(runlog, "append", lambda report, path=run_log: append(report, path))
    options: dict = {}
    monkeypatch.setattr(cli, "make_context", lambda cfg, json_mode, **kw: (options.update(kw), ctx)[1])
    config_file = tmp_path / "node.toml"
    config_file.write_text("")
    result = CliRunner().invoke(cli.app, ["reset", "--config", str(config_file), *flags])
    return result, journal, options


def test_the_reset_command_refuses_before_anything_is_undone(tmp_path, monkeypatch):
    ctx, host, docker = context()
    result, journal, _ = run_reset(tmp_path, monkeypatch, ctx, "--yes")
    assert result.exit_code == 1
    assert "preflight docker-restart failed: reset restores Docker's settings and restarts Docker" in result.output
    assert "jupyter-alice.1.x1" in result.output and "reset refused before any change" in result.output
    assert host.actions == [] and docker.calls == [] and journal.path.exists()


def test_the_reset_command_passes_its_flags_on(tmp_path, monkeypatch):
    ctx, host, docker = context(options={"allow_restart": True})
    result, journal, options = run_reset(tmp_path, monkeypatch, ctx, "--yes", "--allow-restart")
    assert result.exit_code == 0, result.output
    assert options == {"allow_restart": True, "drain": False}
    assert "reset summary" in result.output
    assert "run systemctl restart docker" in host.actions and docker.calls == ["leave"]
    assert not journal.path.exists()  # archived: a second reset finds nothing
    assert '"mode": "reset"' in (tmp_path / "log" / "runs.jsonl").read_text()


def test_the_reset_plan_shows_the_drain(tmp_path, monkeypatch):
    ctx, host, docker = context(options={"drain": True}, tables=MANAGER)
    result, _, _ = run_reset(tmp_path, monkeypatch, ctx, "--drain")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  - drain this node through the manager and wait for its tasks to move" in lines
    assert lines.index("  - leave the swarm") > lines.index(
        "  - drain this node through the manager and wait for its tasks to move")
    assert lines[-1] == "run `gpuswarm-node reset --yes --drain` to do this."
    assert host.actions == [] and docker.calls == []


def test_bytecode_setup_wrote_is_removed_or_restored_as_bytes(tmp_path):
    # Found by the lab: the wrapper's bytecode is not UTF-8, and reset read every file as text.
    created = "/usr/local/lib/gpuswarm-node/__pycache__/gpuswarm-runtime.cpython-311.pyc"
    replaced = "/usr/local/lib/gpuswarm-node/__pycache__/other.cpython-311.pyc"
    backup = tmp_path / "other.pyc"
    backup.write_bytes(b"\xa7\r\r\n before setup")
    ctx, host, _ = context(containers=[], files={created: b"\xa7\r\r\n setup's", replaced: b"\xa7\r\r\n setup's"})
    entries = [{"kind": "write", "path": created, "backup": None, "undo": {"op": "remove", "path": created}},
               {"kind": "write", "path": replaced, "backup": str(backup),
                "undo": {"op": "restore", "path": replaced, "backup": str(backup)}}]
    report = run_reset_plan(ctx, entries)
    assert report.ok, [(s.name, s.state, s.detail) for s in report.steps]
    assert created not in host.files and host.files[replaced] == b"\xa7\r\r\n before setup"

"""Every case under tests/steps/<step>/<case>.json: state in, check result and planned actions out.

A case says what the machine looks like (files, facts by name as gpuswarm_node.facts reads them,
GPUs, Docker, the manager) and what the step's check must answer. With "converges", the runner also
applies the plan and re-checks: the step must end ok (or blocked on a reboot) with the machine state
the case expects. Every needs-change case is applied; one that cannot converge in one run (or
must not: a lock held past its timeout) says what it ends as, and "converges_note" why. A converged
case must plan nothing and say why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gpuswarm_node import config
from gpuswarm_node.engine import State, converge, flatten
from gpuswarm_node.steps import ALL_STEPS, apt
from gpuswarm_node.steps.docker_daemon import wrapper_bytecode, wrapper_program_text, wrapper_text
from gpuswarm_node.steps.boot import unit_text as boot_unit
from gpuswarm_node.steps.watch import unit_text as watch_unit
from gpuswarm_node.steps.metadata_guard import script_text as guard_script, unit_text as guard_unit
from gpuswarm_node.steps.nvidia_driver import unattended_dropin_text
from gpuswarm_node.context import Context, RunOptions

from .fakes import FakeClock, FakeDocker, FakeHost, FakeManager, FakePorts, cuda_from_case, inventory_from_case

STEPS_DIR = Path(__file__).parent / "steps"
CASES = sorted(STEPS_DIR.glob("*/*.json"))
STEPS = {s.name: s for s in ALL_STEPS}
# A case names the rendered runtime wrapper (its sh front and its Python program) instead of
# spelling out whole programs; their behaviour has tests of their own (test_runtime_wrapper.py).
# Its bytecode likewise, and in paths `<cache tag>` is this Python's (cpython-311): the name under
# __pycache__ that Python's import looks for.
PLACEHOLDERS = {"<rendered gpuswarm-runtime>": wrapper_text,
                "<rendered gpuswarm-runtime.py>": wrapper_program_text,
                "<compiled gpuswarm-runtime.py>": lambda: wrapper_bytecode(wrapper_program_text()),
                "<rendered metadata-guard>": guard_script, "<rendered metadata-guard.service>": guard_unit,
                "<rendered gpuswarm-node-boot.service>": boot_unit,
                "<rendered 51gpuswarm-node-nvidia-driver>": unattended_dropin_text,
                "<rendered gpuswarm-node-watch.service>": watch_unit}


def tagged(text: str) -> str:
    return text.replace("<cache tag>", sys.implementation.cache_tag)


def expand(files: dict[str, str]) -> dict[str, str | bytes]:
    return {tagged(path): PLACEHOLDERS[text]() if text in PLACEHOLDERS else text for path, text in files.items()}


def build(case: dict, monkeypatch) -> tuple[Context, FakeHost, FakeDocker, FakeManager, FakePorts]:
    for name, value in case.get("env", {}).items():
        monkeypatch.setenv(name, value)
    if "SUDO_USER" not in case.get("env", {}):
        monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setattr(apt, "time", FakeClock())  # waiting for a lock takes no time here
    host_spec = dict(case.get("host", {}))
    host_spec["files"] = expand(host_spec.get("files", {}))
    host_spec["stats"] = {tagged(path): st for path, st in host_spec.get("stats", {}).items()}
    host = FakeHost.from_case(host_spec)
    docker = FakeDocker.from_case(case.get("docker", {}))
    host.docker_info = docker.daemon_info  # a command's effect can change what dockerd answers
    manager = FakeManager(case.get("manager"))
    docker.cluster_after_join = manager.cluster_id
    ports = FakePorts(case.get("closed_ports", {}))
    ctx = Context(config=config.from_tables(case.get("config", {})), host=host,
                  options=RunOptions(**case.get("options", {})),
                  docker_factory=lambda: docker, inventory_reader=inventory_from_case(case.get("gpus")),
                  cuda_reader=cuda_from_case(case.get("cuda"), case.get("gpus")),
                  manager_reader=manager.read, port_prober=ports.problem,
                  manager_session_factory=manager.session, given_facts=host.facts)
    return ctx, host, docker, manager, ports


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_step_case(path: Path, monkeypatch) -> None:
    case = json.loads(path.read_text())
    step = STEPS[path.parent.name]
    expect = case["expect"]
    ctx, host, docker, manager, ports = build(case, monkeypatch)

    check = step.check(ctx)

    assert check.state.value == expect["state"], check.detail
    assert tagged(expect["detail"]) in check.detail
    assert dict(check.data) == expect.get("data", {})  # what --json carries beside the detail
    assert [a.describe() for a in flatten(check.actions)] == [tagged(a) for a in expect.get("actions", [])]
    assert host.actions == [] and docker.calls == [], "a check changed the machine"
    assert not any("token" in read for read in manager.reads), "a check fetched a join token"
    if "manager_reads" in expect:
        assert manager.reads == expect["manager_reads"]
    # The records the check found confirmed by their source (their time renewed at a run's end).
    assert ctx.confirmed == expect.get("confirmed", [])
    if check.state is State.OK:
        assert check.detail, "a converged step must say why nothing is to be done"
    if "diff_contains" in expect:
        for fragment in expect["diff_contains"]:
            assert fragment in check.diff

    if "converges" in case:
        report = converge(step, ctx)
        want = case["converges"]
        assert report.state.value == want.get("state", "ok"), report.detail
        assert want.get("detail", "") in report.detail
        assert report.changed is want.get("changed", True)
        # Required, [] included: what applying the plan did to the host is always compared.
        assert "host_actions" in want, "a converging case says what it does to the host"
        assert host.actions == [tagged(a) for a in want["host_actions"]]
        assert docker.calls == want.get("docker_calls", [])
        # Omitted means none: a case whose run asks the manager or probes a port says which.
        assert manager.reads == want.get("manager_reads", []), manager.reads
        assert ports.probed == want.get("ports_probed", []), ports.probed
        if "detail" in want:
            assert want["detail"] in report.detail
        for file, content in expand(want.get("files", {})).items():
            assert host.files.get(file) == content, file
        for file, data in want.get("json_files", {}).items():
            assert json.loads(host.files[file]) == data, file
        if report.changed:  # the second run changes nothing
            again = step.check(ctx)
            assert again.state.value == want.get("state", "ok") and again.actions == ()
        if report.state is State.OK:
            # `render` prints what setup wrote: every file the step renders is on the host as rendered.
            for planned in step.files(ctx):
                assert host.files.get(planned.path) == planned.content, f"render differs from setup: {planned.path}"



def test_every_needs_change_case_is_applied() -> None:
    for path in CASES:
        case = json.loads(path.read_text())
        if case["expect"]["state"] != "needs-change":
            continue
        assert "converges" in case, f"{path.parent.name}/{path.stem} plans actions that no test applies"


def test_every_step_has_cases() -> None:
    covered = {p.parent.name for p in CASES}
    assert covered == set(STEPS), f"steps without cases: {set(STEPS) - covered}"


@pytest.mark.parametrize("key, wrong", [("manager_reads", []), ("ports_probed", []), ("host_actions", ["write /etc/nowhere"]),
                                        ("docker_calls", ["a call that was not made"])])
def test_each_compared_record_of_a_converging_case_can_fail(tmp_path, monkeypatch, key, wrong):
    """The assertions on what a run did are not vacuous: a case that states one of them wrongly
    (here, for a join that asks the manager, probes two ports and fails) fails."""
    source = STEPS_DIR / "swarm-join" / "swarm-port-unreachable.json"
    case = json.loads(source.read_text())
    assert case["converges"].get(key, []) != wrong
    case["converges"][key] = wrong
    mutated = tmp_path / "swarm-join" / "mutated.json"
    mutated.parent.mkdir()
    mutated.write_text(json.dumps(case))
    with pytest.raises(AssertionError):
        test_step_case(mutated, monkeypatch)

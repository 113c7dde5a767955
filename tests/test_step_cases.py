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
from gpuswarm_node.hub_init import hub_steps
from gpuswarm_node.steps import ALL_STEPS, apt
from gpuswarm_node.steps.docker_daemon import wrapper_bytecode, wrapper_program_text, wrapper_text
from gpuswarm_node.steps.boot import unit_text as boot_unit
from gpuswarm_node.steps.watch import unit_text as watch_unit
from gpuswarm_node.steps.metadata_guard import script_text as guard_script, unit_text as guard_unit
from gpuswarm_node.steps.nvidia_driver import unattended_dropin_text
from gpuswarm_node.context import Context, RunOptions

from .fakes import FakeClock, FakeDocker, FakeHost, FakeManager, FakePorts, cuda_from_case, inventory_from_case

def hub_tls_placeholders() -> dict:
    """The hub's CA, another CA and server certificates, made once per test run with the code
    `hub init` makes them with: "<hub CA cert>", "<hub CA key>", "<other CA cert>", "<other CA
    key>", "<hub cert NAMES by CA>" and "<hub key NAMES by CA>" (NAMES comma-separated, CA "hub" or
    "other")."""
    import functools

    from gpuswarm_node import hub_tls

    ca = functools.cache(lambda which: hub_tls.make_ca(f"test {which} CA"))
    issued = functools.cache(lambda names, which: hub_tls.issue(ca(which)[0], ca(which)[1], names.split(",")))
    out = {}
    for which in ("hub", "other"):
        out[f"<{which} CA cert>"] = functools.partial(lambda w: ca(w)[0], which)
        out[f"<{which} CA key>"] = functools.partial(lambda w: ca(w)[1], which)
        for names in ("hub.example.org", "hub.example.org,10.0.0.5"):
            out[f"<hub cert {names} by {which}>"] = functools.partial(lambda n, w: issued(n, w)[0], names, which)
            out[f"<hub key {names} by {which}>"] = functools.partial(lambda n, w: issued(n, w)[1], names, which)
    from gpuswarm_node.hub_init import REGISTRY_CERT, REGISTRY_CONFIG, REGISTRY_DROPIN, REGISTRY_KEY
    from gpuswarm_node.render import render

    # As hub init writes them for hub.name = "hub.example.org" and the default port.
    out["<rendered hub-registry.yml>"] = lambda: render("hub-registry.yml.j2", port=5000, dropin=REGISTRY_DROPIN)
    out["<rendered hub-registry.conf>"] = lambda: render("hub-registry.conf.j2", address="hub.example.org:5000",
                                                         config=REGISTRY_CONFIG, cert=REGISTRY_CERT, key=REGISTRY_KEY)
    from gpuswarm_node.steps.hub_notebook import HOOK, build_files

    notebook = {p.path.rsplit("/", 1)[1]: p.content
                for p in build_files(Context(config=config.from_tables({}), host=FakeHost()))}
    out["<rendered notebook Dockerfile>"] = lambda: notebook["Dockerfile"]
    out["<the cuda-env hook>"] = lambda: notebook[HOOK]

    def hub_config_text() -> str:
        from gpuswarm_node.steps.hub_jupyterhub import config_text

        return config_text(hub_case_context())

    out["<rendered jupyterhub_config.py>"] = hub_config_text

    def hub_dockerfile() -> str:
        from gpuswarm_node.steps.hub_notebook import HubJupyterhubImageStep

        return HubJupyterhubImageStep().build_files(hub_case_context())[0].content

    out["<rendered jupyterhub Dockerfile>"] = hub_dockerfile
    return out


STEPS_DIR = Path(__file__).parent / "steps"
CASES = sorted(STEPS_DIR.glob("*/*.json"))
STEPS = {s.name: s for s in (*ALL_STEPS, *hub_steps())}  # setup's and hub init's
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
                "<rendered gpuswarm-node-watch.service>": watch_unit, **hub_tls_placeholders()}


def hub_case_context() -> Context:
    """hub init's cases: hub.name = "hub.example.org", the registry's certificate's fingerprint "aa11"."""
    facts = {"certificate_summary": {"/etc/gpuswarm-node/hub/registry.crt /etc/gpuswarm-node/hub/private/registry.key":
                                     {"cert": True, "key": True, "sha256": "aa11"}}}
    return Context(config=config.from_tables({"hub": {"name": "hub.example.org"}}), host=FakeHost(), given_facts=facts)


def hub_values() -> dict[str, str]:
    """The values hub init derives that cases name by placeholder: the images' tags (hashes of
    their build contexts) and the hub service's spec label."""
    from gpuswarm_node.steps.hub_jupyterhub import spec_label
    from gpuswarm_node.steps.hub_notebook import HubJupyterhubImageStep, HubNotebookImageStep

    ctx = hub_case_context()
    return {"<notebook tag>": HubNotebookImageStep().tag(ctx), "<jupyterhub tag>": HubJupyterhubImageStep().tag(ctx),
            "<hub spec label>": spec_label(ctx)}


def tagged(text: str) -> str:
    """`<cache tag>`: this Python's; hub init's derived values (hub_values)."""
    text = text.replace("<cache tag>", sys.implementation.cache_tag)
    if "<notebook tag>" in text or "<jupyterhub tag>" in text or "<hub spec label>" in text:
        for placeholder, value in hub_values().items():
            text = text.replace(placeholder, value)
    return text


def expand(files: dict[str, str]) -> dict[str, str | bytes]:
    return {tagged(path): PLACEHOLDERS[text]() if text in PLACEHOLDERS else text for path, text in files.items()}


def build(case: dict, monkeypatch) -> tuple[Context, FakeHost, FakeDocker, FakeManager, FakePorts]:
    for name, value in case.get("env", {}).items():
        monkeypatch.setenv(name, value)
    if "SUDO_USER" not in case.get("env", {}):
        monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setattr(apt, "time", FakeClock())  # waiting for a lock takes no time here
    host_spec = json.loads(tagged(json.dumps(case.get("host", {}))))  # tags in facts and effects too
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
    case = json.loads(tagged(path.read_text()))
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

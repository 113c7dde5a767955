"""docker-daemon where a JSON case cannot say it: a daemon.json that is not valid JSON makes the
check raise StepFailed (the case runner calls step.check directly), and the runner must then
report the step failed without writing anything; values of the wrong type, one test per key; a
restart that fails after a new drop-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuswarm_node import config
from gpuswarm_node.engine import State, converge
from gpuswarm_node.errors import StepFailed
from gpuswarm_node.steps.docker_daemon import (DAEMON_JSON, SLICE_MAP, DockerDaemonStep, parse_process_start,
                                               read_slice_map, without_host_flags)
from gpuswarm_node.context import Context

from .fakes import FakeDocker, FakeHost, inventory_from_case
from .test_step_cases import build

ONE_GPU = {"driver": "550.54.15", "gpus": [{"uuid": "GPU-00000000-1111-4222-8333-444444444444"}]}
BROKEN = '{\n  "log-driver": "json-file",\n}\n'


def context(daemon_json: str) -> tuple[Context, FakeHost]:
    host = FakeHost(files={DAEMON_JSON: daemon_json}, dirs={"/run/systemd/system"},
                    facts={"active_state": {"docker": "active"}})
    docker = FakeDocker()
    ctx = Context(config=config.from_tables({}), host=host, docker_factory=lambda: docker,
                  inventory_reader=inventory_from_case(ONE_GPU))
    return ctx, host


def test_invalid_json_check_raises_naming_file_and_parse_error() -> None:
    ctx, host = context(BROKEN)
    with pytest.raises(StepFailed) as raised:
        DockerDaemonStep().check(ctx)
    message = raised.value.message()
    assert DAEMON_JSON in message
    assert "is not valid JSON" in message
    assert "Expecting property name enclosed in double quotes at line 3 column 1" in message
    assert "nothing was written" in message
    assert host.actions == []


def test_invalid_json_converge_fails_and_writes_nothing() -> None:
    ctx, host = context(BROKEN)
    report = converge(DockerDaemonStep(), ctx)
    assert report.state is State.FAILED
    assert DAEMON_JSON in report.detail and "Expecting property name" in report.detail
    assert report.changed is False and report.actions == []
    assert host.actions == []
    assert host.files[DAEMON_JSON] == BROKEN


def test_json_with_an_integer_python_refuses_fails_naming_the_file_and_writes_nothing() -> None:
    # json.loads raises a plain ValueError (not a JSONDecodeError) past sys.get_int_max_str_digits().
    ctx, host = context('{"max-concurrent-downloads": ' + "1" * 5000 + "}\n")
    report = converge(DockerDaemonStep(), ctx)
    assert report.state is State.FAILED
    assert f"{DAEMON_JSON} is not JSON this tool reads (Exceeds the limit" in report.detail
    assert "Traceback" not in report.detail and "set_int_max_str_digits" not in report.detail
    assert host.actions == []
    ctx, host = context("{}")
    host.files[SLICE_MAP] = '{"slices": {"s0": ' + "1" * 5000 + "}}"
    assert read_slice_map(host)[1] == {}  # unreadable, as a damaged slice map is


def test_json_that_is_not_an_object_is_refused() -> None:
    ctx, host = context('["log-driver", "json-file"]\n')
    with pytest.raises(StepFailed, match="holds a JSON list, not an object"):
        DockerDaemonStep().check(ctx)
    assert converge(DockerDaemonStep(), ctx).state is State.FAILED
    assert host.actions == []


@pytest.mark.parametrize("argv, want", [
    (["/usr/bin/dockerd", "-H", "fd://", "--containerd=/run/c.sock"], ["/usr/bin/dockerd", "--containerd=/run/c.sock"]),
    (["/usr/bin/dockerd", "--host", "tcp://0.0.0.0:2376", "--tlsverify"], ["/usr/bin/dockerd", "--tlsverify"]),
    (["/usr/bin/dockerd", "-H=fd://", "--host=unix:///run/d.sock", "-Hfd://"], ["/usr/bin/dockerd"]),
    (["/usr/bin/dockerd", "--containerd=/run/c.sock"], ["/usr/bin/dockerd", "--containerd=/run/c.sock"]),
])
def test_without_host_flags(argv: list[str], want: list[str]) -> None:
    assert without_host_flags(argv) == want


def test_parse_process_start_handles_spaces_and_parens_in_comm() -> None:
    stat = "4242 (docker (d) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 20 0 12345 1000 50\n"
    assert parse_process_start(stat, "cpu 1 2 3\nbtime 1700000000\n") == 1700000000 + 123.45


@pytest.mark.parametrize("daemon_json, named", [
    ('{"node-generic-resources": "gpu=GPU-a::1"}', "'node-generic-resources' is a string; it must be an array"),
    ('{"node-generic-resources": [["gpu=GPU-a::1"]]}', "'node-generic-resources' is an array; it must be an array of"),
    ('{"runtimes": ["nvidia"]}', "'runtimes' is an array; it must be an object of runtimes by name"),
    ('{"runtimes": {"runsc": "/usr/local/bin/runsc"}}', "'runtimes' is an object; it must be an object of runtimes"),
    ('{"hosts": "unix:///var/run/docker.sock"}', "'hosts' is a string; it must be an array of strings"),
    ('{"default-runtime": 1}', "'default-runtime' is a number; it must be a string"),
    ('{"default-runtime": null}', "'default-runtime' is null; it must be a string"),
    ('{"live-restore": "true"}', "'live-restore' is a string; it must be true or false"),
])
def test_a_value_of_the_wrong_type_is_blocked_naming_the_key(daemon_json: str, named: str) -> None:
    ctx, host = context(daemon_json)
    check = DockerDaemonStep().check(ctx)
    assert check.state is State.BLOCKED and named in check.detail and DAEMON_JSON in check.detail
    report = converge(DockerDaemonStep(), ctx)
    assert report.state is State.BLOCKED and host.actions == []
    with pytest.raises(StepFailed, match="it must be"):  # `render` says the same instead of crashing
        DockerDaemonStep().files(ctx)


def test_a_failed_restart_takes_the_new_drop_in_back_out(monkeypatch) -> None:
    """The drop-in a restart came up unhealthy with is removed and systemd reloaded before Docker is
    started again: otherwise Docker would come back with the command it just failed with."""
    case = json.loads((Path(__file__).parent / "steps" / "docker-daemon" / "hosts-needs-dropin.json").read_text())
    case["host"]["effects"]["systemctl restart docker.socket docker"] = {
        "facts": {"active_state": {"docker": "failed"}}}
    case["host"]["facts"]["unit_log"] = {
        "docker": "unable to configure the Docker daemon with file /etc/docker/daemon.json"}
    ctx, host, *_fakes = build(case, monkeypatch)
    report = converge(DockerDaemonStep(), ctx)
    dropin = "/etc/systemd/system/docker.service.d/gpuswarm-node.conf"
    assert report.state is State.FAILED
    assert "the previous file was restored (and systemd reloaded)" in report.detail
    assert dropin not in host.files
    assert host.actions[-5:] == ["run systemctl restart docker.socket docker", f"remove {dropin}",
                                 "run systemctl daemon-reload", "run systemctl reset-failed docker",
                                 "run systemctl restart docker.socket docker"]

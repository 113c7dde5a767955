"""Restarting Docker: roll back to the previous daemon.json when the new one does not come up."""

from __future__ import annotations

import pytest

from gpuswarm_node import config
from gpuswarm_node.errors import StepFailed
from gpuswarm_node.restart import conflicting_keys, restart_with_rollback
from gpuswarm_node.system import Context

from .fakes import FakeDocker, FakeHost

PATH = "/etc/docker/daemon.json"


def context(host: FakeHost) -> Context:
    docker = FakeDocker()
    return Context(config=config.from_tables({}), host=host, docker_factory=lambda: docker)


def test_unhealthy_restart_restores_the_previous_file_and_says_why():
    host = FakeHost(files={PATH: '{"log-opts": {"max-size": "bogus"}}'},
                    commands={"systemctl is-active docker": {"rc": 3, "stdout": "failed\n"},
                              "systemctl reset-failed docker": {},
                              "journalctl -u docker -n 5 --no-pager -o cat": {
                                  "stdout": "failed to start daemon: invalid log opt\n"}})
    with pytest.raises(StepFailed) as info:
        restart_with_rollback(context(host), PATH, '{"log-level": "warn"}', within=0.2)
    assert host.files[PATH] == '{"log-level": "warn"}'
    assert host.actions == ["run systemctl restart docker", f"write {PATH}", "run systemctl restart docker"]
    message = info.value.message()
    assert "invalid log opt" in message and "the previous file was restored" in message
    assert "did not come back on the previous file either" in message


def test_healthy_restart_keeps_the_new_file():
    host = FakeHost(files={PATH: "{}"}, commands={"systemctl is-active docker": {"stdout": "active\n"},
                                                  "systemctl reset-failed docker": {}})
    restart_with_rollback(context(host), PATH, '{"old": 1}', within=0.2)
    assert host.files[PATH] == "{}" and host.actions == ["run systemctl restart docker"]


def test_a_file_that_did_not_exist_is_removed_on_rollback():
    host = FakeHost(files={PATH: "{}"}, commands={"systemctl is-active docker": {"rc": 3, "stdout": "failed\n"},
                                                  "systemctl reset-failed docker": {},
                                                  "journalctl -u docker -n 5 --no-pager -o cat": {"stdout": ""}})
    with pytest.raises(StepFailed):
        restart_with_rollback(context(host), PATH, None, within=0.2)
    assert PATH not in host.files


@pytest.mark.parametrize("settings, argv, conflicts", [
    ({"hosts": ["unix:///run/d.sock"]}, ["/usr/bin/dockerd", "-H", "fd://"], ["hosts"]),
    ({"containerd": "/run/c.sock"}, ["/usr/bin/dockerd", "--containerd=/run/c.sock"], ["containerd"]),
    ({"data-root": "/srv/docker"}, ["/usr/bin/dockerd", "-g", "/var/lib/docker"], ["data-root"]),
    ({"log-level": "warn"}, ["/usr/bin/dockerd", "-H", "fd://"], []),
])
def test_keys_set_both_as_flag_and_in_the_file(settings, argv, conflicts):
    assert conflicting_keys(settings, argv) == conflicts

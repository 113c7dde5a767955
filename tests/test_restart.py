"""Restarting Docker: roll back to the previous daemon.json when the new one does not come up."""

from __future__ import annotations

import pytest

from gpuswarm_node import config
from gpuswarm_node.errors import StepFailed
from gpuswarm_node.probes.dockerd import Arg
from gpuswarm_node.restart import conflicting_args, restart_action, restart_with_rollback, swarm_incompatible_args
from gpuswarm_node.context import Context

from .fakes import FakeDocker, FakeHost

PATH = "/etc/docker/daemon.json"
DROPIN = "/etc/systemd/system/docker.service.d/gpuswarm-node.conf"
RF = "run systemctl reset-failed docker"  # before each restart: its start limit is not this run's
FAILING = {"active_state": {"docker": "failed"}, "unit_loaded": {"docker.socket": True},
           "unit_log": {"docker": "unable to configure the Docker daemon"}}


def context(host: FakeHost) -> Context:
    docker = FakeDocker()
    return Context(config=config.from_tables({}), host=host, docker_factory=lambda: docker)


def test_unhealthy_restart_restores_the_previous_file_and_says_why():
    host = FakeHost(files={PATH: '{"log-opts": {"max-size": "bogus"}}'},
                    facts={"active_state": {"docker": "failed"},
                           "unit_log": {"docker": "failed to start daemon: invalid log opt"}})
    with pytest.raises(StepFailed) as info:
        restart_with_rollback(context(host), {PATH: '{"log-level": "warn"}'}, within=0.2)
    assert host.files[PATH] == '{"log-level": "warn"}'
    assert host.actions == [RF, "run systemctl restart docker", f"write {PATH}", RF, "run systemctl restart docker"]
    message = info.value.message()
    assert "invalid log opt" in message and "the previous file was restored" in message
    assert "did not come back on the previous file either" in message


def test_healthy_restart_keeps_the_new_file():
    host = FakeHost(files={PATH: "{}"}, facts={"active_state": {"docker": "active"}})
    restart_with_rollback(context(host), {PATH: '{"old": 1}'}, within=0.2)
    assert host.files[PATH] == "{}" and host.actions == [RF, "run systemctl restart docker"]


def test_a_file_that_did_not_exist_is_removed_on_rollback():
    host = FakeHost(files={PATH: "{}"}, facts={"active_state": {"docker": "failed"}, "unit_log": {"docker": ""}})
    with pytest.raises(StepFailed):
        restart_with_rollback(context(host), {PATH: None}, within=0.2)
    assert PATH not in host.files


def test_rollback_removes_a_new_drop_in_and_reloads_systemd():
    """The restart after a new drop-in fails: the drop-in goes too, and systemd forgets it before
    Docker is started again, so Docker comes back with the command it had."""
    host = FakeHost(files={PATH: '{"hosts": ["tcp://0.0.0.0:2376"]}', DROPIN: "[Service]\nExecStart=\n..."},
                    facts=dict(FAILING))
    with pytest.raises(StepFailed) as info:
        restart_with_rollback(context(host), {PATH: "{}", DROPIN: None}, reload=True, within=0.2)
    assert host.files[PATH] == "{}" and DROPIN not in host.files
    # docker.socket too: see restart_docker.
    assert host.actions == [RF, "run systemctl restart docker.socket docker", f"write {PATH}", f"remove {DROPIN}",
                            "run systemctl daemon-reload", RF, "run systemctl restart docker.socket docker"]
    assert "the previous files were restored (and systemd reloaded)" in info.value.message()


def test_rollback_puts_back_the_previous_drop_in():
    host = FakeHost(files={DROPIN: "new"}, facts=dict(FAILING))
    with pytest.raises(StepFailed):
        restart_with_rollback(context(host), {DROPIN: "old"}, reload=True, within=0.2)
    assert host.files[DROPIN] == "old"
    assert host.actions == [RF, "run systemctl restart docker.socket docker", f"write {DROPIN}",
                            "run systemctl daemon-reload", RF, "run systemctl restart docker.socket docker"]


def test_the_restart_action_says_what_it_would_restore():
    assert restart_action({PATH: None, DROPIN: None}, reload=True).describe() == (
        "restart docker, and restore the previous daemon.json and docker.service.d/gpuswarm-node.conf "
        "(and reload systemd) if it does not come up healthy")


@pytest.mark.parametrize("settings, argv, conflicts", [
    ({"hosts": ["unix:///run/d.sock"]}, ["/usr/bin/dockerd", "-H", "fd://"], ["hosts"]),
    ({"containerd": "/run/c.sock"}, ["/usr/bin/dockerd", "--containerd=/run/c.sock"], ["containerd"]),
    ({"data-root": "/srv/docker"}, ["/usr/bin/dockerd", "-g", "/var/lib/docker"], ["data-root"]),
    ({"log-level": "warn"}, ["/usr/bin/dockerd", "-H", "fd://"], []),
    ({"hosts": ["unix:///run/d.sock"]}, ["/usr/bin/dockerd", "-Hfd://"], ["hosts"]),
    ({"default-runtime": "gpuswarm"}, ["/usr/bin/dockerd", "--default-runtime", "runc"], ["default-runtime"]),
    # dockerd merges runtimes from both places (skipDuplicates in moby's daemon/config).
    ({"runtimes": {"nvidia": {}}}, ["/usr/bin/dockerd", "--add-runtime=nvidia=/usr/bin/nvidia-container-runtime"], []),
])
def test_keys_set_both_as_flag_and_in_the_file(settings, argv, conflicts):
    args = [Arg(text, "/lib/systemd/system/docker.service") for text in argv[1:]]
    assert sorted({key for key, _arg in conflicting_args(settings, args)}) == conflicts


@pytest.mark.parametrize("arg, refused", [
    ("--live-restore", True), ("--live-restore=true", True), ("--live-restore=false", False),
    ("--cluster-store=consul://10.0.0.1:8500", True), ("--cluster-advertise=eth0:2376", True),
    ("--iptables=false", False),
])
def test_flags_that_keep_a_node_out_of_swarm_mode(arg, refused):
    assert bool(swarm_incompatible_args([Arg(arg, "/lib/systemd/system/docker.service")])) is refused

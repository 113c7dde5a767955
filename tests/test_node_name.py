"""The hub's gate knows its worker by host name: `hub bundle --cloud-init` sets the instance's host
name to the node name, records it as swarm.node_name, and setup's preflight refuses the join while
this machine's host name differs."""

from __future__ import annotations

import pytest

from gpuswarm_node import bundle, config
from gpuswarm_node.context import Context
from gpuswarm_node.preflight import HOSTNAME, node_name_problem

from .fakes import FakeDocker, FakeHost

MANAGER = {"manager": "198.18.0.1", "ssh_key": "/etc/gpuswarm-node/id_ed25519"}


def context(hostname: str | None, node_name: str = "gsn-w1", swarm: str = "inactive") -> Context:
    files = {HOSTNAME: hostname + "\n"} if hostname is not None else {}
    host = FakeHost.from_case({"files": files})
    docker = FakeDocker.from_case({"swarm": {"state": swarm}})
    return Context(config=config.from_tables({"swarm": {**MANAGER, "node_name": node_name}}), host=host,
                   docker_factory=lambda: docker)


def test_a_host_name_other_than_the_keys_node_is_refused_before_the_join():
    # Before: the worker joined as ip-10-0-0-5; the gate then refused its labels, drain and leave.
    problem = node_name_problem(context("ip-10-0-0-5"), {"swarm-join"})
    assert problem == ("this machine's host name is ip-10-0-0-5, but swarm.ssh_key is authorised for node gsn-w1 "
                       "(swarm.node_name), and the hub's gate acts only on the node of that name: set the host name "
                       "(`hostnamectl set-hostname gsn-w1`; `hub bundle --cloud-init` user-data sets it at boot), or "
                       "make a bundle for ip-10-0-0-5 on the hub (`hub bundle --node ip-10-0-0-5`)")


@pytest.mark.parametrize("hostname, node_name, names, swarm", [
    ("gsn-w1", "gsn-w1", {"swarm-join"}, "inactive"),           # the same name
    ("ip-10-0-0-5", "", {"swarm-join"}, "inactive"),            # no bundle name recorded: not checked
    ("ip-10-0-0-5", "gsn-w1", {"tmpfs"}, "inactive"),           # no join selected
])
def test_no_problem_where_the_names_agree_or_nothing_joins(hostname, node_name, names, swarm):
    assert node_name_problem(context(hostname, node_name, swarm), names) is None


def test_the_node_name_must_be_a_machines_host_name():
    with pytest.raises(config.ConfigError, match="node_name"):
        config.from_tables({"swarm": {"node_name": "a" * 65}})
    with pytest.raises(config.ConfigError, match="node_name"):
        config.from_tables({"swarm": {"node_name": "gsn_w1"}})


@pytest.mark.parametrize("node, keys", [
    ("gsn-w1", ["preserve_hostname: false", "hostname: gsn-w1", "prefer_fqdn_over_hostname: false",
                "manage_etc_hosts: localhost"]),
    # cloud-init cuts a dotted hostname at its first dot unless it is the fqdn and preferred
    ("w1.gpu.example.org", ["preserve_hostname: false", "hostname: w1.gpu.example.org", "fqdn: w1.gpu.example.org",
                            "prefer_fqdn_over_hostname: true", "manage_etc_hosts: localhost"]),
])
def test_the_user_data_sets_the_host_name_to_the_node_name(node, keys):
    text = bundle.user_data_text(node, {}, b"tool", None)
    lines = text.splitlines()
    assert lines[lines.index(keys[0]):lines.index(keys[0]) + len(keys)] == keys
    assert lines.index(keys[-1]) < lines.index("write_files:")

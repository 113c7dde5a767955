"""What swarm mode refuses, per Docker version (moby's IsSwarmCompatible), and how dockerd's flags
set it."""

import pytest

from gpuswarm_node import swarm_compat
from gpuswarm_node.swarm_compat import docker_version, flag_settings, refused
from tests.fakes import FakeHost
from gpuswarm_node import facts as F


def keys(daemon_json, words=(), version=None):
    return sorted((rule.key, where) for rule, where, _i in refused(daemon_json, flag_settings(list(words)), version))


@pytest.mark.parametrize("daemon_json, words, version, want", [
    ({"live-restore": True}, [], (20, 10), [("live-restore", "daemon.json")]),
    ({"live-restore": True}, [], (28, 5), [("live-restore", "daemon.json")]),
    ({"live-restore": False}, [], (28, 5), []),
    ({}, ["--live-restore"], (26, 1), [("live-restore", "flag")]),
    ({}, ["--live-restore=1"], (26, 1), [("live-restore", "flag")]),
    ({}, ["--live-restore=false"], (26, 1), []),
    # a bool flag takes no value word: "true" after it is another word, not its value
    ({}, ["--live-restore", "--iptables=false"], (26, 1), [("live-restore", "flag")]),
    ({"cluster-store": "consul://10.0.0.1:8500"}, [], (20, 10), [("cluster-store", "daemon.json")]),
    ({}, ["--cluster-advertise", "eth0:2376"], (20, 10), [("cluster-advertise", "flag")]),
    ({"cluster-store": ""}, [], (20, 10), []),
    # Docker 29: nftables with iptables on; off, or the feature on 29.6+, lets it pass
    ({"firewall-backend": "nftables"}, [], (29, 0), [("firewall-backend", "daemon.json")]),
    ({"firewall-backend": "iptables"}, [], (29, 0), []),
    ({"firewall-backend": "nftables", "iptables": False}, [], (29, 0), []),
    ({"firewall-backend": "nftables"}, ["--iptables=false"], (29, 0), []),
    ({}, ["--firewall-backend", "nftables"], (29, 1), [("firewall-backend", "flag")]),
    ({}, ["--firewall-backend=nftables", "--feature", "swarm-nftables"], (29, 6), []),
    ({}, ["--firewall-backend=nftables", "--feature=swarm-nftables=false"], (29, 6), [("firewall-backend", "flag")]),
    ({"firewall-backend": "nftables", "features": {"swarm-nftables": True}}, [], (29, 5),
     [("firewall-backend", "daemon.json")]),
    ({"firewall-backend": "nftables", "features": {"swarm-nftables": True}}, [], (29, 6), []),
    # Docker not installed yet: the feature is trusted, judged again once Docker is there
    ({"firewall-backend": "nftables", "features": {"swarm-nftables": True}}, [], None, []),
])
def test_refused_settings_per_docker_version(daemon_json, words, version, want):
    assert keys(daemon_json, words, version) == want


def test_every_refusal_names_its_upstream_source_and_dockers_words():
    for rule in swarm_compat.REFUSED:
        assert rule.source.startswith("moby ") and "IsSwarmCompatible" in rule.source
        assert "incompatible with swarm mode" in rule.dockerd
        assert rule.fix
    # Only what swarm needs off and the operator loses nothing by is taken away by the tool.
    assert [r.key for r in swarm_compat.REFUSED if r.removed] == ["live-restore"]


def test_flag_index_points_at_the_word_that_sets_it():
    flags = flag_settings(["-H", "fd://", "--firewall-backend", "nftables", "--live-restore"])
    assert flags["firewall-backend"] == ("nftables", 2)
    assert flags["live-restore"] == (True, 4)


@pytest.mark.parametrize("package, version, want", [
    ("docker.io", "20.10.24+dfsg1-1+deb12u1", (20, 10)),
    ("docker.io", "26.1.5+dfsg1-9+b9", (26, 1)),
    ("docker.io", "28.2.2-0ubuntu1~24.04.1", (28, 2)),
    ("docker-ce", "5:29.6.1-1~debian.13~trixie", (29, 6)),
])
def test_docker_version_from_dpkg(package, version, want):
    host = FakeHost(facts={"package_installed": {package: True}, "package_version": {package: version}})
    assert docker_version(F.Facts(host, given=host.facts)) == want


def test_docker_version_unknown_before_docker_is_installed():
    host = FakeHost()
    assert docker_version(F.Facts(host, given=host.facts)) is None

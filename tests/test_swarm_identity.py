"""A swarm is its cluster id, not an address: what the manager says over SSH (cluster id, the
address it advertises for joining), what a worker can tell of its own cluster (its swarm node
certificate), the TCP test that picks the join address, and the token staying out of everything."""

from __future__ import annotations

import datetime
import json
import re
import shlex
import socket

import pytest

from gpuswarm_node import config, manager
from gpuswarm_node.engine import State, converge
from gpuswarm_node.errors import ManagerUnreachable
from gpuswarm_node.manager import (ManagerSwarm, join_host_port, parse_swarm_info, port_problem,
                                   read_manager_swarm, split_host_port)
from gpuswarm_node.probes.docker import SdkDocker, certificate_organization
from gpuswarm_node.steps.swarm_join import SwarmJoinStep
from gpuswarm_node.context import Context, RunOptions

from .fakes import FakeDocker, FakeHost, FakeManager, FakePorts
from .test_engine_socket import FakeEngine, engine  # noqa: F401 - the engine fixture

CLUSTER = "8f1kq2m7x4v9d3w6b0r5t2y7n"
TOKEN = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"


def manager_info(**swarm) -> dict:
    """What SWARM_INFO_COMMAND prints on a manager advertising 10.0.0.5:2377."""
    return {"NodeID": "mgr1", "NodeAddr": "10.0.0.5", "LocalNodeState": "active", "ControlAvailable": True,
            "ClusterID": CLUSTER, "RemoteManagers": [{"NodeID": "mgr2", "Addr": "10.0.0.6:2377"},
                                                     {"NodeID": "mgr1", "Addr": "10.0.0.5:2377"}], **swarm}


# --- the manager's answer -----------------------------------------------------------------------

def test_the_join_address_is_the_managers_own_entry_in_its_manager_list():
    swarm = parse_swarm_info(json.dumps(manager_info()), "203.0.113.7")
    assert swarm == ManagerSwarm(CLUSTER, "10.0.0.5:2377")


def test_the_advertised_port_comes_with_the_address():
    info = manager_info(RemoteManagers=[{"NodeID": "mgr1", "Addr": "10.0.0.5:4567"}])
    assert split_host_port(parse_swarm_info(json.dumps(info), "203.0.113.7").join_addr)[1] == 4567


@pytest.mark.parametrize("node_addr, want", [("10.0.0.5", "10.0.0.5:2377"), ("2001:db8::5", "[2001:db8::5]:2377"),
                                             ("", "203.0.113.7:2377")])
def test_without_its_own_entry_the_node_address_and_the_swarm_port(node_addr, want):
    info = manager_info(NodeAddr=node_addr, RemoteManagers=None)
    assert parse_swarm_info(json.dumps(info), "203.0.113.7").join_addr == want


@pytest.mark.parametrize("info, says", [
    (manager_info(ControlAvailable=False, ClusterID=""), "203.0.113.7 is not a swarm manager (its swarm state is active)"),
    (manager_info(LocalNodeState="inactive", ControlAvailable=False, ClusterID="", NodeID=""),
     "its swarm state is inactive"),
])
def test_a_host_that_is_not_a_manager_is_refused(info, says):
    with pytest.raises(ManagerUnreachable) as raised:
        parse_swarm_info(json.dumps(info), "203.0.113.7")
    assert says in raised.value.message()


@pytest.mark.parametrize("text", ["", "Swarm: active", "[]", "{not json"])
def test_an_answer_that_is_not_the_json_is_refused(text):
    with pytest.raises(ManagerUnreachable, match="not the expected JSON"):
        parse_swarm_info(text, "203.0.113.7")


def test_the_info_command_is_one_template_that_renders_json():
    argv = shlex.split(manager.SWARM_INFO_COMMAND)
    assert argv[:3] == ["docker", "info", "--format"] and len(argv) == 4
    template = argv[3]
    # Render it as Go's text/template would for a worker (no Cluster) and for a manager.
    for cluster in (None, {"ID": CLUSTER}):
        swarm = {"NodeID": "n1", "NodeAddr": "10.0.0.5", "LocalNodeState": "active",
                 "ControlAvailable": cluster is not None, "Cluster": cluster, "RemoteManagers": None}
        text = re.sub(r"\{\{if \.Swarm\.Cluster\}\}(.*?)\{\{else\}\}(.*?)\{\{end\}\}",
                      lambda m: m.group(1) if cluster else m.group(2), template)
        text = re.sub(r"\{\{json \.Swarm\.Cluster\.ID\}\}", lambda m: json.dumps(cluster["ID"]), text)
        text = re.sub(r"\{\{json \.Swarm\.(\w+)\}\}", lambda m: json.dumps(swarm[m.group(1)]), text)
        text = text.replace("{{json .ServerVersion}}", json.dumps("26.1.5+dfsg1"))
        assert "{{" not in text
        assert json.loads(text)["ClusterID"] == (CLUSTER if cluster else "")
        assert json.loads(text)["ServerVersion"] == "26.1.5+dfsg1"


@pytest.mark.parametrize("version, parsed, blocked", [
    ("20.10.24+dfsg1", (20, 10, 24), True), ("17.06.2-ce", (17, 6, 2), True), ("23.0.1", (23, 0, 1), True),
    ("23.0.2", (23, 0, 2), False), ("24.0.7", (24, 0, 7), False), ("26.1.5+dfsg1", (26, 1, 5), False),
    ("28.2", (28, 2, 0), False), ("", None, False), ("dev", None, False),
])
def test_a_manager_engine_before_the_fixed_constraint_enforcer_is_named(version, parsed, blocked):
    assert manager.engine_version_tuple(version) == parsed
    swarm = parse_swarm_info(json.dumps(manager_info(ServerVersion=version)), "203.0.113.7")
    assert swarm.engine_version == version
    problem = manager.old_enforcer_problem(swarm, "203.0.113.7")
    assert bool(problem) == blocked
    if blocked:
        assert f"runs Docker {version}" in problem and "23.0.2 or later" in problem


class FakeSession(manager.ManagerSession):
    """ManagerSession's stand-in: the commands one session ran, and their answers."""

    sessions: list[list[str]] = []
    answers: dict[str, str] = {}

    def __init__(self, cfg, timeout: float = 15.0) -> None:
        self.cfg = cfg
        self.commands: list[str] = []
        self._gated = None

    def run(self, command: str) -> tuple[int, str, str]:
        # A hub without the gate: its shell has no such command (the session asks once).
        assert command == "gpuswarm-gate hello", command
        return 127, "", "sh: 1: gpuswarm-gate: not found\n"

    def __enter__(self) -> "FakeSession":
        FakeSession.sessions.append(self.commands)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def docker(self, command: str) -> str:
        self.commands.append(command)
        return FakeSession.answers[command]


@pytest.fixture
def session(monkeypatch):
    FakeSession.sessions = []
    FakeSession.answers = {manager.SWARM_INFO_COMMAND: json.dumps(manager_info()) + "\n",
                           manager.NODE_IDS_COMMAND: "mgr1\nmgr2\nn1\n",
                           manager.JOIN_TOKEN_COMMAND: TOKEN + "\n"}
    monkeypatch.setattr(manager, "ManagerSession", FakeSession)
    return FakeSession


def test_token_cluster_id_and_join_address_come_over_one_session(session):
    cfg = config.SwarmConfig(manager="203.0.113.7")
    swarm = read_manager_swarm(cfg, token=True)
    assert (swarm.cluster_id, swarm.join_addr, swarm.token) == (CLUSTER, "10.0.0.5:2377", TOKEN)
    assert session.sessions == [[manager.SWARM_INFO_COMMAND, manager.JOIN_TOKEN_COMMAND]]
    assert TOKEN not in repr(swarm) and TOKEN.rsplit("-", 1)[1] not in repr(swarm)


def test_a_check_reads_no_token(session):
    swarm = read_manager_swarm(config.SwarmConfig(manager="203.0.113.7"), node_id="n1")
    assert swarm.token == "" and swarm.node_known is True
    assert session.sessions == [[manager.SWARM_INFO_COMMAND, manager.NODE_IDS_COMMAND]]
    assert read_manager_swarm(config.SwarmConfig(manager="203.0.113.7"), node_id="n9").node_known is False


def test_something_that_is_not_a_token_is_refused_unprinted(session):
    session.answers[manager.JOIN_TOKEN_COMMAND] = "Error: SWMTKN-1-abc-def is not for you\n"
    with pytest.raises(ManagerUnreachable) as raised:
        read_manager_swarm(config.SwarmConfig(manager="203.0.113.7"), token=True)
    assert "not a swarm join token" in raised.value.message() and "SWMTKN" not in raised.value.message()


# --- the address -------------------------------------------------------------------------------

@pytest.mark.parametrize("address, split", [("10.0.0.5:2377", ("10.0.0.5", 2377)), ("[2001:db8::5]:4567", ("2001:db8::5", 4567)),
                                            ("2001:db8::5", ("2001:db8::5", 2377)), ("mgr.example", ("mgr.example", 2377)),
                                            ("[2001:db8::5]", ("2001:db8::5", 2377))])
def test_host_and_port(address, split):
    assert split_host_port(address) == split
    assert split_host_port(join_host_port(*split)) == split


def test_the_connect_test_tells_an_open_port_from_a_closed_one():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        assert port_problem("127.0.0.1", port, timeout=2) is None
    finally:
        listener.close()
    assert port_problem("127.0.0.1", port, timeout=2) == "Connection refused"


# --- the node's own cluster id -----------------------------------------------------------------

def swarm_certificate(org: str | None, path) -> None:
    """A swarm node certificate as swarmkit issues it: CN=node id, OU=role, O=cluster id."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-worker"),
             x509.NameAttribute(NameOID.COMMON_NAME, "n1")]
    if org is not None:
        names.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    subject = x509.Name(names)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=90)).sign(key, hashes.SHA256()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_a_worker_reads_its_cluster_id_from_its_certificate(engine, tmp_path):
    root = tmp_path / "docker-root"
    swarm_certificate(CLUSTER, root / "swarm" / "certificates" / "swarm-node.crt")
    FakeEngine.info = {"DockerRootDir": str(root),
                       "Swarm": {"LocalNodeState": "active", "NodeID": "n1", "ControlAvailable": False,
                                 "Cluster": None, "RemoteManagers": [{"NodeID": "mgr1", "Addr": "10.0.0.5:2377"}]}}
    assert SdkDocker().node_cluster_id() == CLUSTER


def test_a_manager_reports_its_cluster_id(engine, tmp_path):
    FakeEngine.info = {"DockerRootDir": str(tmp_path / "nothing-here"),
                       "Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "Cluster": {"ID": CLUSTER}}}
    assert SdkDocker().node_cluster_id() == CLUSTER


def test_no_certificate_no_cluster_id(engine, tmp_path):
    FakeEngine.info = {"DockerRootDir": str(tmp_path), "Swarm": {"LocalNodeState": "active"}}
    assert SdkDocker().node_cluster_id() == ""


def test_a_certificate_without_an_organisation_or_not_a_certificate(tmp_path):
    swarm_certificate(None, tmp_path / "no-org.crt")
    assert certificate_organization(str(tmp_path / "no-org.crt")) == ""
    (tmp_path / "junk.crt").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    assert certificate_organization(str(tmp_path / "junk.crt")) == ""


def test_a_remote_daemon_has_no_certificate_here(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://198.18.0.9:2375")
    docker = SdkDocker()
    monkeypatch.setattr(docker, "info", lambda: {"DockerRootDir": "/var/lib/docker", "Swarm": {}})
    assert docker.node_cluster_id() == ""


# --- the step, end to end through its seams ----------------------------------------------------

def context(docker: FakeDocker, mgr: FakeManager, ports: FakePorts, **options) -> Context:
    cfg = config.from_tables({"swarm": {"manager": "203.0.113.7"}})
    docker.cluster_after_join = mgr.cluster_id
    return Context(config=cfg, host=FakeHost(), docker_factory=lambda: docker, options=RunOptions(**options),
                   manager_reader=mgr.read, port_prober=ports.problem)


def test_the_token_stays_out_of_the_report_and_the_cache():
    docker = FakeDocker(manager_addr_after_join="10.0.0.5:2377")
    mgr = FakeManager({"info": manager_info(), "token": TOKEN})
    ctx = context(docker, mgr, FakePorts())
    report = converge(SwarmJoinStep(), ctx)
    assert report.state is State.OK and report.changed, report.detail
    assert docker.calls == ["join 10.0.0.5:2377"]
    text = json.dumps(report.as_json()) + " ".join(report.actions) + repr(ctx._manager)
    assert TOKEN not in text and TOKEN.rsplit("-", 1)[1] not in text
    assert ctx._manager[0].token == ""


def test_a_second_join_in_one_run_fetches_a_fresh_token():
    mgr = FakeManager({"info": manager_info(), "token": TOKEN})
    ctx = context(FakeDocker(), mgr, FakePorts())
    assert ctx.manager_swarm().token == ""
    assert ctx.manager_swarm(token=True).token == TOKEN
    assert ctx.manager_swarm(token=True).token == TOKEN
    assert ctx.manager_swarm().token == ""
    assert mgr.reads == ["info", "info+token", "info+token"]


def test_the_node_list_is_asked_again_for_another_node():
    mgr = FakeManager({"info": manager_info(), "nodes": ["n1"]})
    ctx = context(FakeDocker(), mgr, FakePorts())
    assert ctx.manager_swarm(node_id="n1").node_known is True
    assert ctx.manager_swarm(node_id="n1").node_known is True
    assert ctx.manager_swarm(node_id="node1").node_known is False
    assert mgr.reads == ["info+nodes", "info+nodes"]


def test_a_manager_spelled_as_the_node_lists_it_is_not_resolved(monkeypatch):
    from gpuswarm_node.steps import swarm_join

    asked: list[str] = []
    monkeypatch.setattr(swarm_join, "resolve_addresses", lambda host: asked.append(host) or {host, "198.18.0.7"})
    assert swarm_join.managed_by(("198.18.0.1:2377",), "198.18.0.1") and asked == []
    assert swarm_join.managed_by(("[fd00::1]:2377",), "fd00::1") and asked == []
    # A name is resolved, and matches through any of its addresses; a stranger does not.
    assert swarm_join.managed_by(("198.18.0.9:2377", "198.18.0.7:2377"), "hub.example.org") and asked == ["hub.example.org"]
    assert not swarm_join.managed_by(("198.18.0.9:2377",), "hub.example.org")

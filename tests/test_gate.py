"""The hub's gate (gate.py): what a gated worker key may ask, and `hub authorize`'s authorized_keys."""

from __future__ import annotations

import json
import subprocess

import pytest

from gpuswarm_node.errors import ConfigError
from gpuswarm_node.gate import REFUSED, Gate, authorize, parse_public_key

OWN = "a" * 25
OTHER = "b" * 25
TOKEN = "SWMTKN-1-abc123-def456"


class FakeHubDocker:
    """`docker ARGV` on the hub: two nodes, worker-1 (OWN) and worker-2 (OTHER)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.nodes = {OWN: {"ID": OWN, "Description": {"Hostname": "worker-1"}, "Status": {"State": "ready"},
                            "Spec": {"Availability": "active", "Labels": {"gpuswarm.gpu.count": "1", "team": "ml"}}},
                      OTHER: {"ID": OTHER, "Description": {"Hostname": "worker-2"}, "Status": {"State": "ready"},
                              "Spec": {"Availability": "active", "Labels": {}}}}

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        if argv[:2] == ["node", "inspect"]:
            node = self.nodes.get(argv[2])
            return (0, json.dumps(node), "") if node else (1, "", f"Error: No such node: {argv[2]}")
        if argv[:3] == ["swarm", "join-token", "-q"]:
            return 0, TOKEN + "\n", ""
        if argv[:2] == ["node", "ls"]:
            return 0, "\n".join(self.nodes) + "\n", ""
        return 0, "", ""


@pytest.fixture
def hub():
    return FakeHubDocker()


def test_hello_and_the_worker_verbs(hub):
    gate = Gate("worker-1", hub)
    assert gate.serve("gpuswarm-gate hello") == (0, "gpuswarm-gate 1 node=worker-1\n", "")
    assert gate.serve("gpuswarm-gate join-token")[1].strip() == TOKEN
    assert hub.calls[-1] == ["swarm", "join-token", "-q", "worker"]
    assert gate.serve(f"gpuswarm-gate node-known {OTHER}")[1] == "yes\n"
    status, out, _ = gate.serve(f"gpuswarm-gate node {OWN}")
    assert status == 0 and json.loads(out) == {"ID": OWN, "State": "ready", "Availability": "active",
                                               "Labels": {"gpuswarm.gpu.count": "1"}}
    assert gate.serve(f"gpuswarm-gate drain {OWN}")[0] == 0
    assert hub.calls[-1] == ["node", "update", "--availability", "drain", OWN]
    assert gate.serve(f"gpuswarm-gate pause {OWN}")[0] == 0
    assert hub.calls[-1] == ["node", "update", "--availability", "pause", OWN]
    assert gate.serve(f"gpuswarm-gate remove {OWN}")[0] == 0
    assert hub.calls[-1] == ["node", "rm", OWN]


def test_labels_are_set_exactly_and_only_gpuswarm_ones(hub):
    gate = Gate("worker-1", hub)
    assert gate.serve(f"gpuswarm-gate labels {OWN} gpuswarm.gpu.model=NVIDIA-A100 gpuswarm.slices=6")[0] == 0
    assert hub.calls[-1] == ["node", "update", "--label-rm", "gpuswarm.gpu.count",
                             "--label-add", "gpuswarm.gpu.model=NVIDIA-A100", "--label-add", "gpuswarm.slices=6", OWN]
    for bad in ("team=ml", "gpuswarm.x=a;b", "gpuswarm.x=$(id)", "node.role=manager"):
        status, out, err = gate.serve(f"gpuswarm-gate labels {OWN} {bad}")
        assert status == REFUSED and "refused" in err, bad


def test_the_health_label_is_allowed_for_the_own_node_only(hub):
    """watch sets gpuswarm.health=<slug> (and =ok) on its own node through the gate; the gate's
    ownership rule covers it like every gpuswarm.* label."""
    gate = Gate("worker-1", hub)
    assert gate.serve(f"gpuswarm-gate labels {OWN} gpuswarm.gpu.count=1 gpuswarm.health=xid-79")[0] == 0
    assert hub.calls[-1] == ["node", "update", "--label-add", "gpuswarm.gpu.count=1",
                             "--label-add", "gpuswarm.health=xid-79", OWN]
    status, _out, err = gate.serve(f"gpuswarm-gate labels {OTHER} gpuswarm.health=ok")
    assert status == REFUSED and "not worker-1" in err
    status, out, _err = gate.serve(f"gpuswarm-gate node {OWN}")
    assert json.loads(out)["Availability"] == "active"  # what watch reads to know who drained


@pytest.mark.parametrize("request_", [
    None, "", "id", "docker ps", "sh -c id", "gpuswarm-gate", "gpuswarm-gate shell",
    f"gpuswarm-gate drain {OTHER}", f"gpuswarm-gate pause {OTHER}", f"gpuswarm-gate remove {OTHER}",
    f"gpuswarm-gate tasks {OTHER}",
    f"gpuswarm-gate labels {OTHER} gpuswarm.a=b", "gpuswarm-gate drain worker-2", f"gpuswarm-gate drain {OWN} x",
    f"gpuswarm-gate drain {OWN};id", "gpuswarm-gate join-token manager", "gpuswarm-gate hello\nid",
    f"gpuswarm-gate drain {'c' * 25}",
])
def test_everything_else_is_refused_with_one_line(hub, request_):
    status, out, err = Gate("worker-1", hub).serve(request_)
    assert status == REFUSED and out == ""
    assert err.count("\n") == 1 and err.startswith("gpuswarm-gate: refused: ")
    assert not any(call[:2] in (["node", "update"], ["node", "rm"]) for call in hub.calls)
    assert not any("manager" in call for call in hub.calls)


def test_docker_failures_keep_their_status_and_mask_tokens():
    gate = Gate("worker-1", lambda argv: (1, "", f"error near {TOKEN}"))
    status, out, err = gate.serve("gpuswarm-gate join-token")
    assert status == 1 and TOKEN not in err and "SWMTKN-1-<redacted>" in err


def keypair(tmp_path, name="worker"):
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "w@x", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text()


def test_authorize_replaces_an_unrestricted_line_and_keeps_others(tmp_path):
    pub = keypair(tmp_path)
    other = keypair(tmp_path, "other")
    target = tmp_path / "ssh" / "authorized_keys"
    target.parent.mkdir()
    target.write_text(f"{other}{pub}")
    done = authorize(pub, "--key w.pub", "worker-1", target, "/usr/local/bin/gpuswarm-node")
    assert "unrestricted" in " ".join(done)
    lines = target.read_text().splitlines()
    blob = pub.split()[1]
    assert lines[0] == other.strip()
    assert lines[1] == (f'restrict,command="/usr/local/bin/gpuswarm-node hub gate --node worker-1" '
                        f"ssh-ed25519 {blob} gpuswarm-node:worker-1")
    assert target.stat().st_mode & 0o777 == 0o600
    again = authorize(pub, "--key w.pub", "worker-1", target, "/usr/local/bin/gpuswarm-node")
    assert "nothing changed" in again[0] and target.read_text().splitlines() == lines
    # sshd reads it: ssh-keygen -l parses every line of an authorized_keys file.
    assert subprocess.run(["ssh-keygen", "-lf", str(target)], capture_output=True).returncode == 0


@pytest.mark.parametrize("node,program,pub", [
    ("worker 1", "/usr/bin/gpuswarm-node", None), ("-oProxyCommand=x", "/usr/bin/gpuswarm-node", None),
    ('w"1', "/usr/bin/gpuswarm-node", None), ("worker-1", "gpuswarm-node", None),
    ("worker-1", '/usr/bin/g" x', None), ("worker-1", "/usr/bin/gpuswarm-node", "not a key"),
    ("worker-1", "/usr/bin/gpuswarm-node", 'command="sh" ssh-ed25519 AAAA x'),
])
def test_authorize_refuses_bad_input_and_writes_nothing(tmp_path, node, program, pub):
    target = tmp_path / "authorized_keys"
    with pytest.raises(ConfigError):
        authorize(pub or keypair(tmp_path), "--key w.pub", node, target, program)
    assert not target.exists()


def test_a_key_whose_blob_lies_about_its_type_is_refused():
    with pytest.raises(ConfigError, match="does not match"):
        parse_public_key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBkZ x\n", "k")


# --- hub-config --profiles: one profile per GPU model, from the node labels ----------------------

def test_profiles_group_ready_labelled_nodes_by_model():
    from gpuswarm_node.hub import gpu_profiles, hub_profiles

    def node(model, slices, mib, state="ready"):
        labels = {"gpuswarm.gpu.model": model, "gpuswarm.slices": slices, "gpuswarm.slice.memory_mib": mib} \
            if model else {}
        return {"Spec": {"Labels": labels}, "Status": {"State": state}}

    nodes = [node("NVIDIA-A100-SXM4-40GB", "6", "13653"), node("NVIDIA-A100-SXM4-40GB", "3", "13000"),
             node("Tesla-T4", "3", "5120"), node("Tesla-T4", "3", "5120", state="down"), node("", "", "")]
    profiles = gpu_profiles(nodes)
    assert list(profiles) == ["NVIDIA-A100-SXM4-40GB", "Tesla-T4"]
    assert profiles["NVIDIA-A100-SXM4-40GB"]["description"] == \
        "NVIDIA-A100-SXM4-40GB: 9 slice(s) on 2 node(s), 13000 MiB per slice"
    assert profiles["Tesla-T4"]["constraints"] == ["node.labels.gpuswarm.gpu.model==Tesla-T4"]
    text = hub_profiles(nodes)
    namespace = {"c": type("C", (), {"SwarmSpawner": type("S", (), {})()})()}
    exec(compile(text, "hub-profiles", "exec"), namespace)  # the printed lines are valid Python

    class Spawner:
        user_options = {"gpu": "Tesla-T4"}
        extra_placement_spec = {}

    spawner = Spawner()
    namespace["c"].SwarmSpawner.pre_spawn_hook(spawner)
    assert spawner.extra_placement_spec == {"constraints": ["node.labels.gpuswarm.gpu.model==Tesla-T4"]}
    assert 'value="Tesla-T4"' in namespace["c"].SwarmSpawner.options_form(spawner)

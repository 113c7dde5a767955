"""hub status and hub prune: the manager's answers in, the fleet's verdict out (gpuswarm_node/fleet.py).

The API objects below have the Engine API's shapes (GET /nodes, /tasks, /services of Docker 26,
trimmed to the fields the fleet reads plus some it must ignore)."""

from __future__ import annotations

import pytest

from gpuswarm_node import fleet
from gpuswarm_node.errors import StepFailed


def node(node_id: str, hostname: str, slices: int, state: str = "ready", availability: str = "active",
         role: str = "worker", labels: dict | None = None, updated: str = "2026-12-07T09:00:00.123456789Z") -> dict:
    resources = [{"NamedResourceSpec": {"Kind": "gpu", "Value": f"GPU-{hostname}-{i // 3}::{i % 3 + 1}"}}
                 for i in range(slices)]
    resources.append({"DiscreteResourceSpec": {"Kind": "other", "Value": 4}})  # not a slice
    return {"ID": node_id, "UpdatedAt": updated,
            "Spec": {"Role": role, "Availability": availability, "Labels": labels or {}},
            "Description": {"Hostname": hostname, "Resources": {"NanoCPUs": 8000000000, "GenericResources": resources}},
            "Status": {"State": state, "Addr": f"198.18.0.{len(hostname)}"}}


GPU_ASK = {"Resources": {"Reservations": {"GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 1}}]}}}


def task(task_id: str, service_id: str, node_id: str = "", state: str = "running", desired: str = "running",
         slice_value: str = "", err: str = "") -> dict:
    t = {"ID": task_id, "ServiceID": service_id, "DesiredState": desired, "Spec": GPU_ASK,
         "Status": {"State": state, "Message": state}}
    if node_id:
        t["NodeID"] = node_id
    if slice_value:  # the Engine's JSON name (moby api/types/swarm/task.go), not the swagger's
        t["GenericResources"] = [{"NamedResourceSpec": {"Kind": "gpu", "Value": slice_value}}]
    if err:
        t["Status"]["Err"] = err
    return t


SERVICES = [{"ID": f"svc{i}", "Spec": {"Name": f"jupyter-user{i}"}} for i in range(8)]


def lab_fleet() -> fleet.Fleet:
    nodes = [
        node("m1", "hub", 0, role="manager"),
        node("w1", "gsn-h1", 2, labels={"gpuswarm.gpu.model": "NVIDIA-L4", "other": "x"}),
        node("w2", "gsn-h2", 2, labels={"gpuswarm.gpu.model": "NVIDIA-L4"}),
        node("w3", "gsn-h3", 3, availability="drain"),
        node("w4", "gsn-h4", 3, state="down", updated="2026-12-07T08:00:00Z"),
        node("w5", "gsn-h5", 3, labels={"gpuswarm.health": "xid-79-gpu-fell-off-the-bus"}),
    ]
    tasks = [
        task("t1", "svc1", "w1", slice_value="GPU-gsn-h1-0::1"),
        task("t2", "svc2", "w1", state="starting", slice_value="GPU-gsn-h1-0::2"),
        task("t3", "svc3", "w2", slice_value="GPU-gsn-h2-0::1"),
        task("t4", "svc4", state="pending", err="no suitable node (insufficient resources on 2 nodes)"),
        task("t5", "svc5", "w2", state="shutdown", desired="shutdown", slice_value="GPU-gsn-h2-0::2"),  # history
        task("t6", "svc6", "w2", state="running", desired="shutdown", slice_value="GPU-gsn-h2-0::2"),  # stopping
    ]
    return fleet.fleet_from(nodes, tasks, SERVICES)


def test_each_worker_with_its_slices_servers_and_state():
    f = lab_fleet()
    by_host = {w.hostname: w for w in f.workers}
    assert [w.hostname for w in f.workers] == ["gsn-h1", "gsn-h2", "gsn-h3", "gsn-h4", "gsn-h5", "hub"]
    h1, h2 = by_host["gsn-h1"], by_host["gsn-h2"]
    assert (h1.slices_total, h1.slices_used, h1.slices_free, h1.servers) == (2, 2, 0, ("jupyter-user1", "jupyter-user2"))
    assert (h2.slices_total, h2.slices_used, h2.servers) == (2, 1, ("jupyter-user3",))
    assert h2.serves and not by_host["gsn-h3"].serves and not by_host["gsn-h4"].serves
    assert not by_host["gsn-h5"].serves  # marked unhealthy by its own watch: no new servers
    assert by_host["hub"].slices_total == 0
    # Free for a new user: gsn-h2's one slice only (drained, down and unhealthy nodes do not count).
    assert f.free_slices == 1 and f.can_take_a_user


def test_a_server_waiting_for_a_slice_is_named_with_swarms_reason():
    [waiting] = lab_fleet().pending
    assert (waiting.service, waiting.state) == ("jupyter-user4", "pending")
    assert waiting.reason == "no suitable node (insufficient resources on 2 nodes)"


def test_json_carries_the_whole_view_and_only_gpuswarm_labels():
    report = lab_fleet().as_json()
    assert report["ok"] is True and report["free_slices"] == 1 and report["down"] == ["w4"]
    assert report["slices"] == {"total": 13, "used": 3}
    h1 = report["workers"][0]
    assert h1["labels"] == {"gpuswarm.gpu.model": "NVIDIA-L4"} and h1["gpu_model"] == "NVIDIA-L4"
    assert h1["slices"] == {"total": 2, "used": 2, "free": 0}
    assert report["pending"] == [{"service": "jupyter-user4", "task": "t4", "state": "pending",
                                  "reason": "no suitable node (insufficient resources on 2 nodes)"}]


def test_a_full_fleet_cannot_take_a_user():
    nodes = [node("w1", "gsn-h1", 1)]
    tasks = [task("t1", "svc1", "w1", slice_value="GPU-gsn-h1-0::1")]
    f = fleet.fleet_from(nodes, tasks, SERVICES)
    assert f.free_slices == 0 and not f.can_take_a_user
    assert fleet.summary_line(f).endswith("a new user would wait.")
    # A task that lost its service still counts, under its service's id.
    assert fleet.fleet_from(nodes, tasks, []).workers[0].servers == ("svc1",)


def test_prune_takes_workers_down_long_enough_and_never_a_manager():
    nodes = [node("w4", "gsn-h4", 3, state="down", updated="2026-12-07T08:00:00Z"),
             node("w6", "gsn-h6", 3, state="down", updated="2026-12-07T08:55:00Z"),
             node("m2", "hub-2", 0, state="down", role="manager", updated="2026-12-07T07:00:00Z"),
             node("w7", "gsn-h7", 3, state="down", updated="")]
    f = fleet.fleet_from(nodes, [], [])
    now = fleet.api_time("2026-12-07T09:00:00Z")
    assert [w.node_id for w in fleet.prune_candidates(f, now)] == ["w4"]  # w6 down 5 min; w7 no time
    assert [w.node_id for w in fleet.prune_candidates(f, now, after=0)] == ["w4", "w6"]


def test_api_time_reads_docker_times():
    assert fleet.api_time("2026-12-07T21:04:05.123456789Z") == 1796677445.0
    assert fleet.api_time("0001-01-01T00:00:00Z") is not None
    assert fleet.api_time("garbage") is None and fleet.api_time("") is None


def test_prometheus_names_each_node_and_escapes_labels():
    text = fleet.prometheus(lab_fleet(), now=1.0)
    assert 'gpuswarm_fleet_node_slices{node="w1",hostname="gsn-h1",use="free"} 0' in text
    assert "gpuswarm_fleet_free_slices 1\n" in text and "gpuswarm_fleet_pending_servers 1\n" in text
    odd = fleet.fleet_from([node("w9", 'a"b\\c', 1)], [], [])
    assert 'hostname="a\\"b\\\\c"' in fleet.prometheus(odd, now=1.0)


def test_an_api_failure_is_one_sentence():
    class Broken:
        def nodes(self):
            raise ConnectionError("socket closed")

    with pytest.raises(StepFailed) as failure:
        fleet.read_fleet(Broken())
    assert failure.value.message() == ("the manager's Docker did not answer: socket closed. "
                                       "Check `docker node ls` on the manager.")


def test_the_swaggers_name_for_a_tasks_slices_is_read_too():
    held = task("t1", "svc1", "w1", slice_value="GPU-gsn-h1-0::1")
    held["AssignedGenericResources"] = held.pop("GenericResources")
    f = fleet.fleet_from([node("w1", "gsn-h1", 1)], [held], SERVICES)
    assert f.workers[0].slices_used == 1 and f.free_slices == 0

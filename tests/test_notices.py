"""Spot and maintenance notices (notices.py): each cloud's documents in, notices out; the HTTP
exchange (IMDSv2's token first) against a stand-in metadata service on loopback; and what watch
does with them: pause the node for a PAUSE notice and back, leave the swarm for a LEAVE notice
within its deadline."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from gpuswarm_node import config, notices as N
from gpuswarm_node.watch import HEALTH_LABEL, STATE, leave_timeout, notices_cloud

from .test_watch import Node, rounds, watcher

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


# --- the parsers ------------------------------------------------------------------------------------

def test_ec2_spot_interruption_is_leave_by_its_time():
    [n] = N.parse_ec2('{"action": "terminate", "time": "2023-11-14T22:15:20Z"}', None, None, NOW)
    assert (n.action, n.reason, n.deadline) == (N.LEAVE, "spot-interruption", NOW + 120)
    assert n.detail == "EC2 will terminate this spot instance at 2023-11-14 22:15:20 UTC"
    for action in ("stop", "hibernate"):
        assert N.parse_ec2(json.dumps({"action": action, "time": "2023-11-14T22:15:20Z"}), None, None, NOW)[0].action \
            == N.LEAVE


def test_ec2_rebalance_recommendation_is_pause():
    [n] = N.parse_ec2(None, '{"noticeTime": "2023-11-14T22:10:00Z"}', None, NOW)
    assert (n.action, n.reason, n.deadline) == (N.PAUSE, "rebalance-recommended", None)


def test_ec2_scheduled_maintenance_pauses_then_leaves_ahead_of_it():
    far = '[{"Code": "system-reboot", "NotBefore": "21 Nov 2023 09:00:43 GMT", "State": "active"}]'
    [n] = N.parse_ec2(None, None, far, NOW)
    assert (n.action, n.reason) == (N.PAUSE, "maintenance") and n.detail.startswith("EC2 scheduled system-reboot")
    soon = '[{"Code": "instance-stop", "NotBefore": "14 Nov 2023 22:20:00 GMT", "State": "active"}]'
    [n] = N.parse_ec2(None, None, soon, NOW)
    assert (n.action, n.deadline) == (N.LEAVE, NOW + 400)
    done = '[{"Code": "instance-stop", "NotBefore": "14 Nov 2023 22:20:00 GMT", "State": "canceled"}]'
    assert N.parse_ec2(None, None, done, NOW) == []


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '{"action": "reboot"}', '"terminate"', "<html>"])
def test_ec2_documents_that_say_nothing_or_are_damaged_are_no_notice(text):
    assert N.parse_ec2(text, None, text, NOW) == []


def test_gce_preemption_and_host_maintenance():
    [n] = N.parse_gce("TRUE", "NONE", NOW)
    assert (n.action, n.reason, n.deadline) == (N.LEAVE, "spot-interruption", NOW + 30)
    [n] = N.parse_gce("FALSE", "TERMINATE_ON_HOST_MAINTENANCE", NOW)
    assert (n.action, n.reason) == (N.LEAVE, "maintenance")
    assert N.parse_gce("FALSE", "MIGRATE_ON_HOST_MAINTENANCE", NOW) == []
    assert N.parse_gce(None, None, NOW) == []


def test_azure_scheduled_events_of_this_vm():
    events = {"DocumentIncarnation": 2, "Events": [
        {"EventId": "a", "EventType": "Preempt", "Resources": ["gpu-7"], "NotBefore": "Tue, 14 Nov 2023 22:13:50 GMT"},
        {"EventId": "b", "EventType": "Reboot", "Resources": ["other-vm"], "NotBefore": ""},
        {"EventId": "c", "EventType": "Freeze", "Resources": ["gpu-7"], "NotBefore": ""}]}
    [n] = N.parse_azure(json.dumps(events), "gpu-7", NOW)
    assert (n.action, n.reason, n.deadline) == (N.LEAVE, "spot-interruption", NOW + 30)
    assert [x.reason for x in N.parse_azure(json.dumps(events), None, NOW)] == ["spot-interruption", "maintenance"]
    assert N.parse_azure('{"Events": []}', "gpu-7", NOW) == [] and N.parse_azure("x", "gpu-7", NOW) == []


def test_a_leave_comes_before_a_pause_and_the_earliest_first():
    pause = N.Notice(N.PAUSE, "rebalance-recommended", None, "")
    late = N.Notice(N.LEAVE, "maintenance", NOW + 500, "")
    early = N.Notice(N.LEAVE, "spot-interruption", NOW + 100, "")
    assert N.first([pause, late, early]) is early and N.first([pause]) is pause and N.first([]) is None


@pytest.mark.parametrize("deadline, timeout", [(NOW + 120, 100.0), (NOW + 25, 10.0), (NOW - 5, 10.0),
                                               (NOW + 3600, 600.0), (None, 600.0)])
def test_the_leave_gets_the_time_up_to_the_deadline(deadline, timeout):
    assert leave_timeout(deadline, NOW) == timeout


# --- the HTTP exchange --------------------------------------------------------------------------------

class StandIn:
    """A metadata service on loopback answering by path; IMDSv2's token is required for EC2's GETs.
    `requests`: (method, path, headers with lower-case names)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.requests = answers, []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                stand_in.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(200, "TOKEN-1")
                else:
                    self._send(400, "")

            def do_GET(self):
                stand_in.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path.startswith("/latest/") and self.headers.get("X-aws-ec2-metadata-token") != "TOKEN-1":
                    self._send(401, "")
                elif self.path in stand_in.answers:
                    self._send(200, stand_in.answers[self.path])
                else:
                    self._send(404, "")

            def _send(self, status, body):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_ec2_notices_are_read_with_an_imdsv2_token():
    stand_in = StandIn({"/latest/meta-data/spot/instance-action": '{"action": "terminate", "time": "2023-11-14T22:15:20Z"}'})
    try:
        found, problem = N.read_notices("aws", N.http_fetch(stand_in.base), NOW)
    finally:
        stand_in.close()
    assert problem is None and [n.reason for n in found] == ["spot-interruption"]
    assert stand_in.requests[0][:2] == ("PUT", "/latest/api/token")
    assert all(r[2].get("x-aws-ec2-metadata-token") == "TOKEN-1" for r in stand_in.requests[1:])
    assert [r[1] for r in stand_in.requests[1:]] == ["/latest/meta-data/spot/instance-action",
                                                     "/latest/meta-data/events/recommendations/rebalance",
                                                     "/latest/meta-data/events/maintenance/scheduled"]


def test_gce_and_azure_send_their_headers():
    stand_in = StandIn({"/computeMetadata/v1/instance/preempted": "TRUE",
                        "/metadata/instance/compute/name?api-version=2021-02-01&format=text": "gpu-7",
                        "/metadata/scheduledevents?api-version=2020-07-01": json.dumps(
                            {"Events": [{"EventType": "Terminate", "Resources": ["gpu-7"], "NotBefore": ""}]})})
    try:
        gce, gce_problem = N.read_notices("gce", N.http_fetch(stand_in.base), NOW)
        azure, azure_problem = N.read_notices("azure", N.http_fetch(stand_in.base), NOW)
    finally:
        stand_in.close()
    assert (gce_problem, [n.reason for n in gce]) == (None, ["spot-interruption"])
    assert (azure_problem, [n.reason for n in azure]) == (None, ["maintenance"])
    assert {r[2].get("metadata-flavor") for r in stand_in.requests if "computeMetadata" in r[1]} == {"Google"}
    assert {r[2].get("metadata") for r in stand_in.requests if r[1].startswith("/metadata/")} == {"true"}


def test_a_service_that_does_not_answer_is_a_problem_not_a_notice():
    import socket

    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()
    found, problem = N.read_notices("aws", N.http_fetch(f"http://127.0.0.1:{port}", timeout=1), NOW)
    assert found == [] and problem.startswith("the metadata service did not answer")
    stand_in = StandIn({})
    try:
        found, problem = N.read_notices("gce", N.http_fetch(stand_in.base), NOW)
        assert (found, problem) == ([], None)  # 404 everywhere: nothing announced
    finally:
        stand_in.close()


# --- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("notices", "ec2", "notices must be auto, off, aws, gce or azure"),
    ("metadata_url", "https://169.254.169.254", "metadata_url must be http://HOST"),
    ("metadata_url", "http://169.254.169.254/latest", "metadata_url must be http://HOST"),
    ("metadata_url", "http://user@198.18.0.9", "metadata_url must be http://HOST"),
    ("metadata_url", "http://198.18.0.9:80;reboot", "metadata_url must be http://HOST"),
])
def test_notice_settings_are_validated(key, value, words):
    from gpuswarm_node.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        config.from_tables({"watch": {key: value}})
    assert words in info.value.message()
    for good in ("http://198.18.0.9", "http://198.18.0.9:8080", "http://[fd00:ec2::254]", "http://metadata.google.internal"):
        assert config.from_tables({"watch": {"metadata_url": good}}).watch.metadata_url == good


def test_which_clouds_notices_are_read():
    files = {"/run/cloud-init/cloud-id": "aws\n"}
    assert notices_cloud("auto", files.get) == "aws"
    assert notices_cloud("off", files.get) is None
    assert notices_cloud("gce", files.get) == "gce"
    assert notices_cloud("auto", {"/run/cloud-init/cloud-id": "hetzner\n"}.get) is None  # documents none
    assert notices_cloud("auto", {}.get) is None


# --- what watch does with them ------------------------------------------------------------------------

class Cloud:
    def __init__(self):
        self.notices: list[N.Notice] = []
        self.problem: str | None = None
        self.leaves: list[float] = []
        self.leave_status = 0

    def read(self, now):
        return list(self.notices), self.problem

    def leave(self, timeout):
        self.leaves.append(timeout)
        return self.leave_status, "" if self.leave_status == 0 else "error: 1 task(s) still run on this node"


def noticed(node: Node, cloud: Cloud, **watch):
    w = watcher(node, **watch)
    w.seams.notices, w.seams.leave = cloud.read, cloud.leave
    return w


REBALANCE = N.Notice(N.PAUSE, "rebalance-recommended", None, "EC2 recommends rebalancing")


def test_a_rebalance_recommendation_pauses_the_node_once_and_its_end_makes_it_active():
    node, cloud = Node(), Cloud()
    w = noticed(node, cloud)
    rounds(w, node, 2)
    assert node.manager.availability == {}
    cloud.notices = [REBALANCE]
    rounds(w, node, 3)
    assert node.manager.availability == {"n1": "pause"}
    assert node.manager.spec["labels"] == {HEALTH_LABEL: "rebalance-recommended"}
    assert node.manager.reads.count("availability n1 pause") == 1  # once, not every round
    assert [r["after"] for r in node.logs] == ["pause"]
    assert json.loads(node.files[STATE])["notice"] == {"paused": True, "seen": {
        "action": "pause", "reason": "rebalance-recommended", "detail": "EC2 recommends rebalancing"}}
    cloud.notices = []
    rounds(w, node, 2)
    assert node.manager.availability == {"n1": "active"}
    assert node.manager.spec["labels"] == {HEALTH_LABEL: "ok"}
    assert [r["after"] for r in node.logs] == ["pause", "ok"] and "notice" not in json.loads(node.files[STATE])


def test_a_node_an_operator_drained_is_not_paused_nor_activated():
    node, cloud = Node({"labels": {}, "availability": "drain"}), Cloud()
    w = noticed(node, cloud)
    cloud.notices = [REBALANCE]
    rounds(w, node, 2)
    cloud.notices = []
    rounds(w, node, 2)
    assert node.manager.availability == {} and node.manager.spec["labels"] == {}
    assert node.logs[0]["actions"] == ["node n1 is drain: left as it is"]


def test_a_failed_read_changes_nothing():
    node, cloud = Node(), Cloud()
    w = noticed(node, cloud)
    cloud.notices = [REBALANCE]
    rounds(w, node, 1)
    cloud.notices, cloud.problem = [], "the metadata service did not answer: timed out"
    rounds(w, node, 3)
    assert node.manager.availability == {"n1": "pause"}  # not made active on a failed read
    assert json.loads(node.files[STATE])["notice"]["problem"] == "the metadata service did not answer: timed out"


def test_a_spot_interruption_makes_the_node_leave_once_within_its_deadline():
    node, cloud = Node(), Cloud()
    w = noticed(node, cloud)
    cloud.notices = [N.Notice(N.LEAVE, "spot-interruption", node.now + 120, "EC2 will terminate this spot instance")]
    rounds(w, node, 3)
    assert cloud.leaves == [100.0]  # two minutes less the margin; only once
    assert node.logs[0]["actions"] == ["left the swarm (gpuswarm-node leave)"] and node.logs[0]["error"] is None
    state = json.loads(node.files[STATE])
    assert state["notice"]["left"] is True and state["notice"]["seen"]["reason"] == "spot-interruption"


def test_a_leave_that_failed_is_tried_again_and_recorded():
    node, cloud = Node(), Cloud()
    cloud.leave_status = 1
    w = noticed(node, cloud)
    cloud.notices = [N.Notice(N.LEAVE, "spot-interruption", node.now + 120, "EC2 will terminate this spot instance")]
    rounds(w, node, 2)
    assert len(cloud.leaves) == 2 and cloud.leaves[1] < cloud.leaves[0]  # the deadline nears
    assert node.logs[0]["error"] == "leave exited 1: error: 1 task(s) still run on this node"


def test_a_manager_that_refuses_the_pause_is_asked_again_a_minute_later_not_every_round():
    node, cloud = Node(), Cloud()
    w = noticed(node, cloud)
    node.manager.spec = {"labels": {}, "unreachable": "gpuswarm-gate: refused: unknown verb 'pause'"}
    cloud.notices = [REBALANCE]
    rounds(w, node, 10)  # 30 s
    assert sum("tried again in 60 s" in line for line in node.said) == 1
    node.manager.spec = {"labels": {}}
    rounds(w, node, 11)  # past the minute
    assert node.manager.availability == {"n1": "pause"}


def test_status_shows_the_notice_watch_acts_on():
    from gpuswarm_node.steps.watch import verdict_line

    node, cloud = Node(), Cloud()
    w = noticed(node, cloud)
    cloud.notices = [REBALANCE]
    rounds(w, node, 1)
    line, data = verdict_line(node.files[STATE])
    assert line.endswith("; cloud notice: EC2 recommends rebalancing (node paused)")
    assert data["watch_notice"] == "rebalance-recommended"
    cloud.problem = "the metadata service did not answer: timed out"
    rounds(w, node, 1)
    assert verdict_line(node.files[STATE])[0].endswith(
        "; cloud notices not read: the metadata service did not answer: timed out")


def test_a_leave_is_not_held_back_by_a_failed_pause_and_a_later_notice_is_acted_on_again():
    node, cloud = Node(), Cloud()
    w = noticed(node, cloud)
    node.manager.spec = {"labels": {}, "unreachable": "timed out"}
    cloud.notices = [REBALANCE]
    rounds(w, node, 1)  # the pause failed: the next try in a minute
    cloud.notices = [N.Notice(N.LEAVE, "spot-interruption", node.now + 120, "EC2 will stop this spot instance")]
    rounds(w, node, 1)
    assert len(cloud.leaves) == 1  # at once, not a minute later
    # Stopped and started again: the notice is gone, the node joined again (the boot unit's setup).
    cloud.notices, node.node = [], "n2"
    w.node = "n2"
    rounds(w, node, 1)
    assert "notice" not in json.loads(node.files[STATE])
    cloud.notices = [N.Notice(N.LEAVE, "spot-interruption", node.now + 120, "EC2 will terminate this spot instance")]
    rounds(w, node, 1)
    assert len(cloud.leaves) == 2

"""The stdlib reader of the Engine API over a unix socket, against a real HTTP server on a socket."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from gpuswarm_node.probes.docker import SdkDocker

from .fake_engine import UnixHTTPServer

IMAGE = "198.18.0.1:5000/gsn/notebook:test"


WORKER_INFO = {"Swarm": {"LocalNodeState": "active", "NodeID": "n1", "ControlAvailable": False,
                         "RemoteManagers": [{"Addr": "198.18.0.1:2377"}]}}


class FakeEngine(BaseHTTPRequestHandler):
    seen: list[str] = []
    info: dict = WORKER_INFO

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        FakeEngine.seen.append(self.path)
        if self.path == "/_ping":
            self._reply(200, b"OK", "text/plain")
        elif self.path == "/info":
            self._reply(200, json.dumps(FakeEngine.info).encode())
        elif self.path == f"/images/{IMAGE}/json":
            self._reply(200, b'{"Id": "sha256:abc"}')
        elif self.path.startswith("/containers/json"):  # larger than one read of the socket
            self._reply(200, json.dumps([{"Names": [f"/jupyter-{i}.1.x"]} for i in range(4000)]).encode())
        elif self.path == "/broken":
            self._reply(500, b'{"message": "boom"}')
        elif self.path == "/garbage":
            self.wfile.write(b"SSH-2.0-not-http\r\n")
        else:
            self._reply(404, b'{"message": "No such image"}')

    def _reply(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def engine(tmp_path, monkeypatch):
    path = tmp_path / "docker.sock"
    server = UnixHTTPServer(str(path), FakeEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    FakeEngine.seen = []
    FakeEngine.info = WORKER_INFO
    yield path
    server.shutdown()
    server.server_close()


def test_reads_go_over_the_socket_without_the_sdk(engine):
    docker = SdkDocker()
    assert docker.unreachable_reason() is None
    membership = docker.swarm()
    assert (membership.state, membership.node_id, membership.manager_addrs) == ("active", "n1", ("198.18.0.1:2377",))
    assert docker.image_present(IMAGE) is True
    assert docker.image_present("absent:1") is False
    assert FakeEngine.seen == ["/_ping", "/info", f"/images/{IMAGE}/json", "/images/absent:1/json"]
    assert docker._client is None  # the SDK was never loaded for reads


def test_a_daemon_that_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nobody.sock'}")
    assert SdkDocker().unreachable_reason() == f"the Docker daemon does not answer at unix://{tmp_path / 'nobody.sock'}"


def test_a_long_answer_is_read_to_its_end_and_errors_are_named(engine):
    from gpuswarm_node.errors import StepFailed
    from gpuswarm_node.probes.docker import EngineSocket

    reader = EngineSocket(str(engine))
    assert len(reader.get("/containers/json")) == 4000
    with pytest.raises(StepFailed, match=r"answered 500 to GET /broken: \{\"message\": \"boom\"\}"):
        reader.get("/broken")
    with pytest.raises(StepFailed, match="answered no HTTP to GET /garbage: 'SSH-2.0-not-http"):
        reader.get("/garbage")
    assert reader.get("/images/absent/json", missing_ok=True) is None


def test_info_begun_early_serves_the_first_read_once_and_later_reads_ask_again(engine, monkeypatch):
    from gpuswarm_node.probes import docker as probe

    monkeypatch.setattr(probe, "_early_info", None)
    probe.begin_info()
    probe._early_info._thread.join()
    assert FakeEngine.seen == ["/info"]  # asked before anything asked for it
    FakeEngine.info = {"Swarm": {"LocalNodeState": "inactive"}}  # the daemon changes meanwhile
    docker = SdkDocker()
    assert docker.info() == WORKER_INFO  # the answer of the moment it was asked, taken
    assert docker.info() == FakeEngine.info and FakeEngine.seen == ["/info", "/info"]  # then asked again
    assert probe._early_info is None


def test_info_begun_early_for_another_socket_or_failed_is_the_reads_own(engine, tmp_path, monkeypatch):
    from gpuswarm_node.errors import StepFailed
    from gpuswarm_node.probes import docker as probe

    monkeypatch.setattr(probe, "_early_info", None)
    probe.begin_info()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'other.sock'}")
    with pytest.raises(StepFailed, match="does not answer"):
        SdkDocker().info()  # another daemon's socket: asked there, not answered by the early read
    assert probe._early_info is None  # and the early answer dropped: it was not this daemon's

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nobody.sock'}")
    probe.begin_info()
    with pytest.raises(StepFailed, match="does not answer at unix://.*nobody.sock"):
        SdkDocker().info()  # the early read's error, raised where the read is made
    monkeypatch.setenv("DOCKER_HOST", "tcp://198.18.0.9:2375")
    probe.begin_info()  # not a unix socket: nothing begun (the SDK reads it)
    assert probe._early_info is None

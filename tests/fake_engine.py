"""A stand-in for the two Docker Engine API calls the runtime wrapper makes, on a unix socket: the
container list filtered by id, and an image's inspect. Used by the wrapper's tests and by
bench/runtime_wrapper.py."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import urllib.parse
from pathlib import Path

CONTAINER_ID = "5e6f708192a3" + "ab" * 26
IMAGE_ID = "sha256:" + "cd" * 32
IMAGE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NVIDIA_VISIBLE_DEVICES=all",
             "CUDA_VERSION=12.1.1"]


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """http.server on a unix socket (BaseHTTPRequestHandler wants a (host, port) client address)."""

    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class FakeEngine:
    """`containers` maps container id to image id, `images` image id to its ENV; every request
    path is kept in `requests`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.containers = {CONTAINER_ID: IMAGE_ID}
        self.images = {IMAGE_ID: list(IMAGE_ENV)}
        self.requests: list[str] = []
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                engine.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/containers/json":
                    wanted = json.loads(urllib.parse.parse_qs(url.query)["filters"][0])["id"]
                    body = [{"Id": c, "ImageID": i, "Image": "nb"} for c, i in engine.containers.items()
                            if any(c.startswith(w) for w in wanted)]
                elif url.path.startswith("/images/") and url.path.endswith("/json"):
                    image = url.path[len("/images/"):-len("/json")]
                    if image not in engine.images:
                        self.send_error(404)
                        return
                    body = {"Id": image, "Config": {"Env": engine.images[image]}}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = UnixHTTPServer(str(path), Handler)
        # A short poll: shutdown() waits for it, once per test.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

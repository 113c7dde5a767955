"""The lab's JupyterHub: the real hub, dockerspawner's SwarmSpawner and configurable-http-proxy on
the manager, as a site runs them, with the notebook image in the lab's TLS registry.

Where it runs: in production the hub is a container named ``jupyterhub`` on an attachable overlay
network on a manager. Here a small container of that name holds the place on that network (and
publishes the proxy's port 8000 at the manager's 198.18.0.1), and the hub, from the lab's cached
virtual environment (hub_build.py), runs in that container's network namespace, in a private
mount namespace whose /etc/resolv.conf names Docker's embedded DNS (127.0.0.11), as a container's
does: so the hub resolves the servers' service names and they reach it at its name. It talks to
the manager's dockerd through its socket (DOCKER_HOST). Started and stopped by pid; its log is
kept under the lab's directory (``jupyterhub.log``).

Its configuration is what ``gpuswarm-node hub-config`` prints, verbatim, followed by the lab's own
lines (each commented ``# lab:``): where its state lives, where configurable-http-proxy is, the
dummy authenticator and an admin service token for the tests.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from docker import errors as docker_errors

from . import hub_build
from .dockerd import alive, kill_and_wait, lab_env, tail, with_descendants
from .manager import ADDRESS, ManagerHost
from .util import Started, wait_for

NETWORK = "jupyterhub"
HUB_NAME = "jupyterhub"
PROXY_PORT = 8000
IMAGE_REPO = "gsn/singleuser"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

_NS_SCRIPT = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'


def push_notebook_image(manager: ManagerHost) -> str:
    """Import the cached notebook root filesystem on the manager, push it to the lab's registry, and
    return its name. The manager keeps the image: SwarmSpawner reads its CMD there."""
    tarball = hub_build.notebook_rootfs_tarball()
    repo = f"{manager.registry_address}/{IMAGE_REPO}"
    tag = hub_build.JUPYTERHUB
    changes = ['CMD ["jupyterhub-singleuser"]', "USER 1000", "WORKDIR /home/worker", "ENV HOME=/home/worker",
               "ENV LANG=C.UTF-8", "EXPOSE 8888"]
    manager.docker.api.import_image(src=str(tarball), repository=repo, tag=tag, changes=changes)
    for line in manager.docker.images.push(repo, tag=tag, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"pushing {repo}:{tag}: {line['error']}")
    return f"{repo}:{tag}"


def cleanup_stale() -> None:
    """Kill what a crashed run's hub left: jupyterhub and configurable-http-proxy run from the lab's
    cached hub environment (hub_build.py) in a network namespace of their own, so neither the
    lab network's cleanup (gsn-* namespaces) nor the manager's teardown finds them. Only one lab
    session runs at a time (the lab's lock), so every such process is a leftover."""
    marker = str(hub_build.rootfs.cache_dir() / "hub-").encode()
    stale = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # it ended while we looked
        if any(arg.startswith(marker) for arg in argv):
            stale.append(int(entry.name))
    if stale:
        kill_and_wait(with_descendants(stale))


class LabHub(Started):
    """The hub, for `config_text` (hub-config's output); use as a context manager."""

    def __init__(self, manager: ManagerHost, state_dir: Path, config_text: str) -> None:
        self.manager = manager
        self.state_dir = Path(state_dir)
        self.config_text = config_text
        self.token = secrets.token_hex(32)
        self.url = f"http://{ADDRESS}:{PROXY_PORT}"
        self.log_path = self.state_dir / "jupyterhub.log"
        self.config_path = self.state_dir / "jupyterhub_config.py"
        self.anchor = None
        self.network = None
        self._proc: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> "LabHub":
        cleanup_stale()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env_dir = hub_build.hub_env()
        docker = self.manager.docker
        # lab: this kernel has no IPVS (CONFIG_IP_VS), which Swarm's routing mesh needs on every node:
        # a worker that cannot set up the ingress network's sandbox never records its overlay
        # attachments, and rejects every task on an overlay network ("node is missing network
        # attachments"). The hub's servers need no routing mesh (dnsrr, internal addresses).
        for ingress in docker.networks.list(names=["ingress"]):
            ingress.remove()
        existing = docker.networks.list(names=[NETWORK])
        self.network = existing[0] if existing else docker.networks.create(NETWORK, driver="overlay",
                                                                           attachable=True)
        self.anchor = docker.containers.run(
            self.manager.image, ["sh", "-c", "trap 'exit 0' TERM; sleep 2147483647 & wait"], name=HUB_NAME,
            network=NETWORK, ports={f"{PROXY_PORT}/tcp": (ADDRESS, PROXY_PORT)}, detach=True)
        self.anchor.reload()
        pid = self.anchor.attrs["State"]["Pid"]

        resolv = self.state_dir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.11\noptions ndots:0\n")
        self.config_path.write_text(self.config_text + self.lab_lines(env_dir))
        env = {**lab_env(), "DOCKER_HOST": self.manager.dockerd.url,
               "PATH": f"{env_dir / 'venv/bin'}:{hub_build.chp_bin(env_dir)}:{lab_env().get('PATH', '/usr/bin:/bin')}"}
        argv = ["nsenter", f"--net=/proc/{pid}/ns/net", "unshare", "--mount", "--propagation", "private",
                "sh", "-c", _NS_SCRIPT, "sh", str(resolv),
                str(env_dir / "venv/bin/jupyterhub"), "-f", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(argv, cwd=self.state_dir, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for("the hub's API through the proxy", self._answers, timeout=READY_TIMEOUT,
                 explain=lambda: tail(self.log_path))
        return self

    def lab_lines(self, env_dir: Path) -> str:
        state = self.state_dir
        service = "lab-admin"
        return f"""
# lab: the hub's state under the lab's directory
c.JupyterHub.db_url = {f'sqlite:///{state}/jupyterhub.sqlite'!r}
c.JupyterHub.cookie_secret_file = {str(state / 'jupyterhub_cookie_secret')!r}
c.ConfigurableHTTPProxy.pid_file = {str(state / 'jupyterhub-proxy.pid')!r}
# lab: configurable-http-proxy from the lab's cache
c.ConfigurableHTTPProxy.command = [{str(hub_build.chp_bin(env_dir) / 'configurable-http-proxy')!r}]
# lab: the hub polls every server each second, so a poll lands in the middle of every move
c.Spawner.poll_interval = 1
# lab: any user name logs in; the tests act through an admin service's token
c.JupyterHub.authenticator_class = 'dummy'
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{'name': {service!r}, 'api_token': {self.token!r}}}]
c.JupyterHub.load_roles = [{{'name': {service!r}, 'services': [{service!r}],
                             'scopes': ['admin:users', 'admin:servers', 'access:servers', 'read:hub']}}]
"""

    def close(self) -> None:
        if self._proc:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)  # the hub stops its proxy and servers
                try:
                    self._proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    kill_and_wait([self._proc.pid])
            self._proc = None
        pid_file = self.state_dir / "jupyterhub-proxy.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip() or 0)
            if pid and alive(pid) and b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                kill_and_wait([pid])
        docker = self.manager.docker
        if self.anchor:
            self.anchor.remove(force=True)
            self.anchor = None
        if self.network:
            for service in docker.services.list():
                if service.name.startswith("jupyter-"):
                    service.remove()
            # The servers' tasks leave the network after their services are removed: until then
            # the manager refuses to remove it, and a hub started meanwhile would find a network
            # that is about to go ("network jupyterhub not found" when its container starts).
            def gone() -> bool:
                try:
                    self.network.remove()
                except docker_errors.NotFound:
                    return True
                except docker_errors.APIError:
                    return False
                return not docker.networks.list(names=[NETWORK])

            try:
                wait_for(f"network {NETWORK} removed", gone, timeout=60)
            finally:
                self.network = None

    # -- the hub's REST API ------------------------------------------------

    def _answers(self) -> bool:
        if self._proc.poll() is not None:
            raise RuntimeError(f"jupyterhub exited ({self._proc.returncode}):\n{tail(self.log_path)}")
        try:
            return self.api("GET", "/")[0] == 200
        except OSError:
            return False

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        """(status, JSON body) of a call to the hub's REST API, through the proxy."""
        return self.request(method, f"/hub/api{path}", body)

    def request(self, method: str, path: str, body: dict | None = None,
                timeout: float = 30) -> tuple[int, dict | None]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, {"text": raw.decode(errors="replace")}

    def progress(self, user: str, timeout: float = 300) -> list[dict]:
        """The spawn's progress events (the hub's event stream), until the last."""
        req = urllib.request.Request(f"{self.url}/hub/api/users/{user}/server/progress",
                                     headers={"Authorization": f"token {self.token}"})
        events = []
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for line in resp:
                if line.startswith(b"data:"):
                    events.append(json.loads(line[5:]))
        return events

    def logs(self) -> str:
        return tail(self.log_path, 80)

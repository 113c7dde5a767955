"""The lab's swarm manager host: netns gsn-mgr at 198.18.0.1.

It runs a swarm-manager dockerd (Debian 13's Docker Engine 26, engine.py: a
current manager, whose constraint enforcer keeps generic-resource tasks), an OpenSSH server whose ``docker`` talks to
that daemon, and a TLS docker-registry holding one small test image.

Notes:
- sshd runs in a private mount namespace with a tmpfs /run, because it needs
  /run/sshd and the host's /run must stay untouched.
- ``StrictModes no``: the authorized_keys file lives under /tmp, and sshd
  refuses key files below a world-writable directory otherwise.
- ``UsePAM no`` works for root only because root's shadow entry is ``*``
  (not ``!``, which sshd would treat as a locked account).
- ``SetEnv DOCKER_HOST=...`` (OpenSSH >= 7.8) points the session's ``docker``
  at the manager daemon.  That ``docker`` is whatever the login PATH finds
  (here the newer CLI in /usr/local/bin); it negotiates down to the
  daemon's API version.
- The host namespace *can* reach 198.18.0.1 (it owns 198.18.0.254 on the
  bridge); the tests still connect from a worker netns to be realistic.
"""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from . import engine
from .dockerd import LabDockerd, lab_env, private_mnt_ns, private_mount_ns_argv, stop_process, tail
from .network import LabNetwork
from .tlsca import TestCA
from .util import Started

NAME = "gsn-mgr"
ADDRESS = "198.18.0.1"
# A second address of the manager, the one workers are told to reach it by (as an elastic IP or a
# DNS name would be); it advertises ADDRESS for the swarm. sshd listens on both.
PUBLIC_ADDRESS = "198.18.0.101"
SSH_PORT = 22
REGISTRY_PORT = 5000
IMAGE_REPO = "gsn/notebook"
IMAGE_TAG = "test"
OVERLAY_POOL = "198.19.0.0/16"
READY_TIMEOUT = 30.0
BUSYBOX = Path("/bin/busybox")


def _ssh_keygen(path: Path, comment: str) -> None:
    # ssh-keygen writes the private key 0600 itself.
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True,
    )


def _fingerprint(pub_key: Path) -> str:
    """What an operator pins: the fingerprint `ssh-keygen -lf` prints ("256 SHA256:... comment (ED25519)")."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub_key)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


def _wait_for_log(proc: subprocess.Popen, log: Path, needle: str, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(log)}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {READY_TIMEOUT}s:\n{tail(log)}")


def busybox_image_tar() -> bytes:
    """A root filesystem of static busybox with all applet links, as a tar."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet != "bin/busybox":
                info = tarfile.TarInfo(applet)
                info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
                tar.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return buf.getvalue()


class ManagerHost(Started):
    """Swarm manager + sshd + TLS registry on gsn-mgr.  Use as a context manager."""

    def __init__(self, network: LabNetwork, state_dir: Path | None = None) -> None:
        self.network = network
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="gsn-mgr-"))
        self.address = ADDRESS
        self.ssh_port = SSH_PORT
        self.registry_address = f"{ADDRESS}:{REGISTRY_PORT}"
        self.image = f"{self.registry_address}/{IMAGE_REPO}:{IMAGE_TAG}"
        ssh = self.state_dir / "ssh"
        self.client_key_path = ssh / "client_ed25519"
        self.known_hosts_path = ssh / "known_hosts"
        self.host_key_fingerprint = ""
        self.ca_cert_path = self.state_dir / "ca" / "ca.crt"
        self.timings: dict[str, float] = {}
        self.host = None
        self.dockerd: LabDockerd | None = None
        self.docker = None
        self._sshd: tuple[subprocess.Popen, str | None] | None = None
        self._registry: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------

    def _phase(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 3)

    def start(self) -> "ManagerHost":
        t = time.monotonic()
        self.host = self.network.add_host(NAME, ADDRESS)
        subprocess.run(["ip", "-n", NAME, "addr", "add", f"{PUBLIC_ADDRESS}/32", "dev", "eth0"], check=True)
        self.public_address = PUBLIC_ADDRESS
        self._phase("network", t)

        t = time.monotonic()
        self.ca = TestCA(self.ca_cert_path.parent)
        etc_docker = self.state_dir / "dockerd" / "etc-docker"
        trust_ca(etc_docker, self.registry_address, self.ca_cert_path)
        self.dockerd = LabDockerd(self.host, self.state_dir / "dockerd", engine=engine.bin_dir())
        self.docker = self.dockerd.client()
        self._phase("dockerd_start", t)

        t = time.monotonic()
        self.docker.swarm.init(
            advertise_addr=ADDRESS, listen_addr="0.0.0.0:2377",
            default_addr_pool=[OVERLAY_POOL], subnet_size=24,
        )
        self._phase("swarm_init", t)

        t = time.monotonic()
        self._start_sshd()
        self._phase("sshd", t)

        t = time.monotonic()
        self._start_registry()
        self._phase("registry", t)

        t = time.monotonic()
        self._push_image()
        self._phase("image_push", t)
        return self

    def close(self) -> None:
        """Stop everything by pid and remove all state; tolerant of partial starts."""
        errors: list[BaseException] = []

        def step(fn, *args) -> None:
            try:
                fn(*args)
            except BaseException as e:  # keep tearing down, report the first failure
                errors.append(e)

        if self._registry:
            step(stop_process, self._registry, None)
            self._registry = None
        if self._sshd:
            step(stop_process, *self._sshd)
            self._sshd = None
        if self.docker:
            step(self.docker.close)
            self.docker = None
        if self.dockerd:
            step(self.dockerd.stop)
            self.dockerd = None
        if self.host:
            step(self.network.remove_host, NAME)
            self.host = None
        if self._own_state_dir and self.state_dir.exists():
            step(shutil.rmtree, self.state_dir)
        if errors:
            raise errors[0]

    # -- queries ---------------------------------------------------------

    def worker_join_token(self) -> str:
        self.docker.swarm.reload()
        return self.docker.swarm.attrs["JoinTokens"]["Worker"]

    def nodes(self) -> list[dict]:
        return [n.attrs for n in self.docker.nodes.list()]

    # -- parts -----------------------------------------------------------

    def _start_sshd(self) -> None:
        ssh = self.client_key_path.parent
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        host_key = ssh / "ssh_host_ed25519_key"
        _ssh_keygen(host_key, f"{NAME} host key")
        _ssh_keygen(self.client_key_path, "gpuswarm-node lab client")
        host_pub = host_key.with_suffix(".pub").read_text().strip()
        self.host_key_fingerprint = _fingerprint(host_key.with_suffix(".pub"))
        key_type, key_b64 = host_pub.split()[:2]
        self.known_hosts_path.write_text(f"{ADDRESS} {key_type} {key_b64}\n")
        authorized = ssh / "authorized_keys"
        shutil.copyfile(self.client_key_path.with_suffix(".pub"), authorized)
        config = ssh / "sshd_config"
        config.write_text(
            f"""\
Port {SSH_PORT}
ListenAddress {ADDRESS}
ListenAddress {PUBLIC_ADDRESS}
HostKey {host_key}
PidFile {ssh}/sshd.pid
AuthorizedKeysFile {authorized}
AllowUsers root
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv DOCKER_HOST={self.dockerd.url}
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
"""
        )
        log = ssh / "sshd.log"
        argv = ["sh", "-c", 'mkdir -m 0755 /run/sshd && exec "$@"', "sh",
                "/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                private_mount_ns_argv(self.host, None, argv),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=lab_env(), start_new_session=True,
            )
        self._sshd = (proc, None)
        _wait_for_log(proc, log, f"Server listening on {ADDRESS} port {SSH_PORT}", "sshd")
        self._sshd = (proc, private_mnt_ns(proc.pid))

    def _start_registry(self) -> None:
        reg = self.state_dir / "registry"
        storage = reg / "storage"
        storage.mkdir(parents=True)
        cert = self.ca.issue_server_cert(ADDRESS, stem="registry")
        config = reg / "config.yml"
        config.write_text(
            f"""\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {self.registry_address}
  secret: {secrets.token_hex(16)}
  tls:
    certificate: {cert.cert_path}
    key: {cert.key_path}
"""
        )
        log = reg / "registry.log"
        with open(log, "ab") as out:
            self._registry = subprocess.Popen(
                [*self.host.nsenter_prefix(), "docker-registry", "serve", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=lab_env(), start_new_session=True,
            )
        _wait_for_log(self._registry, log, f"listening on {self.registry_address}", "docker-registry")

    def _push_image(self) -> None:
        repo = f"{self.registry_address}/{IMAGE_REPO}"
        self.docker.api.import_image_from_data(
            busybox_image_tar(), repository=repo, tag=IMAGE_TAG, changes=['CMD ["/bin/sh"]']
        )
        for line in self.docker.images.push(repo, tag=IMAGE_TAG, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"pushing {self.image}: {line['error']}")


def trust_ca(etc_docker: Path, registry: str, ca_cert: Path) -> None:
    """Make the daemon using ``etc_docker`` trust ``ca_cert`` for ``registry``."""
    d = etc_docker / "certs.d" / registry
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_cert, d / "ca.crt")

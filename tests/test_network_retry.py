"""A first boot survives one bad minute: what setup reaches over the network is retried with
backoff within node.network_retry after a transient failure, each retry said in one line, and a
permanent failure (a refused key, an unknown host key, a name that does not exist) is never
retried (gpuswarm_node.retry). No test waits: the retries sleep on a fake clock (conftest)."""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import socket
import threading

import paramiko
import pytest

from gpuswarm_node import config, retry
from gpuswarm_node.context import Context, RunOptions
from gpuswarm_node.engine import Check, Plan, Preflight, State, needs_change, ok, run_plan, Call
from gpuswarm_node.errors import CommandFailed, ConfigError, ManagerUnreachable, StepFailed
from gpuswarm_node.manager import read_manager_swarm
from gpuswarm_node.steps import apt, image
from gpuswarm_node.steps.boot import unit_text

from .fakes import FakeClock, FakeDocker, FakeHost, FakeManager

MANAGER_INFO = {"NodeID": "mgr1", "NodeAddr": "198.18.0.1", "LocalNodeState": "active", "ControlAvailable": True,
                "ClusterID": "8f1kq2m7x4v9d3w6b0r5t2y7n", "RemoteManagers": [{"NodeID": "mgr1", "Addr": "198.18.0.1:2377"}],
                "ServerVersion": "26.1.5"}


class Lines:
    """A reporter that keeps the lines a run says (Reporter.action)."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def action(self, step: str, description: str) -> None:
        self.said.append(f"{step}: {description}")

    def __getattr__(self, name):  # the rest of the Reporter protocol: quiet
        from gpuswarm_node.context import QuietReporter

        return getattr(QuietReporter(), name)


def transient(reason: str = "Connection refused") -> ManagerUnreachable:
    error = ManagerUnreachable(f"cannot reach the manager at root@198.18.0.1:22: {reason}.",
                               "Check swarm.manager, swarm.ssh_port and the network.")
    error.transient = True
    return error


def flaky(failures: list[BaseException], answer="answer"):
    calls = []

    def attempt():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return answer
    return attempt, calls


# --- the retry itself -----------------------------------------------------------------------------

def test_fails_three_times_then_answers_saying_each_retry() -> None:
    clock, said = FakeClock(), []
    attempt, calls = flaky([transient(), transient(), transient("timed out")])
    assert retry.retrying("SSH to the manager", attempt, 120, said.append, clock=clock.monotonic,
                          sleep=clock.sleep) == "answer"
    assert len(calls) == 4 and clock.slept == [2, 4, 8]  # backoff
    assert len(said) == 3 and all("\n" not in line for line in said)
    assert said[0] == ("SSH to the manager failed: cannot reach the manager at root@198.18.0.1:22: Connection "
                       "refused; trying again in 2 s (retrying for 120 s more, node.network_retry)")


def test_a_permanent_failure_is_never_retried() -> None:
    clock, said = FakeClock(), []
    refused = ManagerUnreachable("the manager refused the SSH key /etc/gpuswarm-node/id_ed25519 for root@m:22.",
                                 "Add the key's public half to the manager's authorized_keys.")
    attempt, calls = flaky([refused])
    with pytest.raises(ManagerUnreachable) as info:
        retry.retrying("SSH", attempt, 120, said.append, clock=clock.monotonic, sleep=clock.sleep)
    assert info.value is refused and "tried" not in info.value.cause
    assert len(calls) == 1 and said == [] and clock.slept == []


def test_the_window_bounds_the_tries_and_the_last_error_names_cause_and_fix() -> None:
    clock, said = FakeClock(), []
    attempt, calls = flaky([transient() for _ in range(100)])
    with pytest.raises(ManagerUnreachable) as info:
        retry.retrying("SSH", attempt, 120, said.append, clock=clock.monotonic, sleep=clock.sleep)
    assert sum(clock.slept) == 120 and max(clock.slept) <= retry.MAX_DELAY  # never past the window
    message = info.value.message()
    assert f"(tried {len(calls)} times over 120 s)." in message and message.endswith("and the network.")
    assert len(said) == len(calls) - 1


# --- the run's seams: the manager, its sessions, status --------------------------------------------

def context(manager: FakeManager, diagnose: bool = False, retry_window: int = 120) -> tuple[Context, Lines]:
    lines = Lines()
    cfg = config.from_tables({"swarm": {"manager": "198.18.0.1"}, "node": {"network_retry": retry_window}})
    return Context(config=cfg, host=FakeHost(), options=RunOptions(diagnose=diagnose), manager_reader=manager.read,
                   manager_session_factory=manager.session, reporter=lines), lines


def test_setup_reads_the_manager_again_until_it_answers() -> None:
    manager = FakeManager({"info": MANAGER_INFO, "fails_first": ["Connection refused", "No route to host"]})
    ctx, lines = context(manager)
    assert ctx.manager_swarm().cluster_id == "8f1kq2m7x4v9d3w6b0r5t2y7n"
    assert manager.reads == ["info"] * 3
    assert [line.split(" failed: ")[0] for line in lines.said] == ["network: SSH to the manager 198.18.0.1"] * 2


def test_status_asks_once() -> None:
    manager = FakeManager({"info": MANAGER_INFO, "fails_first": ["Connection refused"]})
    ctx, lines = context(manager, diagnose=True)
    with pytest.raises(ManagerUnreachable):
        ctx.manager_swarm()
    assert manager.reads == ["info"] and lines.said == []


def test_zero_turns_the_retries_off() -> None:
    manager = FakeManager({"info": MANAGER_INFO, "fails_first": ["Connection refused"]})
    ctx, _lines = context(manager, retry_window=0)
    with pytest.raises(ManagerUnreachable):
        ctx.manager_swarm()
    assert manager.reads == ["info"]


def test_a_manager_session_is_opened_again_after_a_transient_failure() -> None:
    opened = []

    @contextlib.contextmanager
    def session():
        opened.append(1)
        if len(opened) < 3:
            raise transient()
        yield "session"

    ctx, lines = context(FakeManager({}))
    ctx.manager_session_factory = session
    with ctx.manager_session() as got:
        assert got == "session"
    assert len(opened) == 3 and len(lines.said) == 2


@pytest.mark.parametrize("value", [-1, 1801])
def test_network_retry_is_validated(value) -> None:
    with pytest.raises(ConfigError, match=r"network_retry must be from 0 to 1800 seconds"):
        config.from_tables({"node": {"network_retry": value}})


# --- SSH as paramiko meets it: transient or permanent, and never a traceback ----------------------

MANAGER = "127.0.0.1"
KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
PUBLIC = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()


@pytest.fixture
def swarm_files(tmp_path):
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text(KEY_TEXT)
    os.chmod(key, 0o600)
    known.write_text(f"{MANAGER} ssh-ed25519 {PUBLIC}\n")
    os.chmod(known, 0o644)
    for path in (key, known):
        os.chown(path, 0, 0)
    return key, known


@contextlib.contextmanager
def accept_and_close():
    """A TCP server that accepts each connection and closes it at once: no SSH banner ever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


# In a process of its own: pytest's log capture would hide what Python's last-resort handler prints.
BANNER_PROBE = """
import sys
from gpuswarm_node import config
from gpuswarm_node.errors import ManagerUnreachable
from gpuswarm_node.manager import read_manager_swarm
cfg = config.SwarmConfig(manager="127.0.0.1", ssh_port=int(sys.argv[1]), ssh_key=sys.argv[2], known_hosts=sys.argv[3])
try:
    read_manager_swarm(cfg, timeout=2)
except ManagerUnreachable as exc:
    sys.stdout.write(f"{exc.transient} {exc.message()}")
"""


def test_a_server_that_closes_before_the_banner_is_transient_and_prints_no_traceback(swarm_files) -> None:
    import subprocess
    import sys

    key, known = swarm_files
    with accept_and_close() as port:
        done = subprocess.run([sys.executable, "-c", BANNER_PROBE, str(port), str(key), str(known)],
                              capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("True SSH to root@127.0.0.1:") and "Error reading SSH protocol banner" in done.stdout
    assert "\n" not in done.stdout
    assert done.stderr == "", "paramiko printed to stderr"


def test_a_closed_port_is_transient(swarm_files) -> None:
    key, known = swarm_files
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nobody listens there now
    cfg = config.SwarmConfig(manager=MANAGER, ssh_port=port, ssh_key=str(key), known_hosts=str(known))
    with pytest.raises(ManagerUnreachable) as info:
        read_manager_swarm(cfg, timeout=2)
    # The kernel's reason, not paramiko's fixed "Unable to connect to port P on A" (connect_reason).
    assert info.value.transient is True and info.value.cause.endswith(f"127.0.0.1:{port}: Connection refused.")


def os_error(number: int) -> OSError:
    return OSError(number, os.strerror(number))


@pytest.mark.parametrize("raised, said", [
    # paramiko's wrapper of every address's ECONNREFUSED / EHOSTUNREACH (paramiko/client.py)
    (paramiko.ssh_exception.NoValidConnectionsError({("198.18.0.1", 22): os_error(errno.ECONNREFUSED)}),
     "Connection refused"),
    (paramiko.ssh_exception.NoValidConnectionsError({("198.18.0.1", 22): os_error(errno.EHOSTUNREACH)}),
     "No route to host"),
    (paramiko.ssh_exception.NoValidConnectionsError({("198.18.0.1", 22): os_error(errno.ECONNREFUSED),
                                                     ("2001:db8::1", 22, 0, 0): os_error(errno.ECONNREFUSED)}),
     "Connection refused"),
    (paramiko.ssh_exception.NoValidConnectionsError({("198.18.0.1", 22): os_error(errno.ECONNREFUSED),
                                                     ("2001:db8::1", 22, 0, 0): os_error(errno.EHOSTUNREACH)}),
     "198.18.0.1: Connection refused, 2001:db8::1: No route to host"),
    # what paramiko raises as it is: the other errnos, a time out, a name that does not resolve (yet)
    (os_error(errno.ENETUNREACH), "Network is unreachable"),
    (socket.timeout("timed out"), "timed out"),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "Temporary failure in name resolution"),
    (EOFError(), "EOFError"),
])
def test_an_unreachable_manager_is_said_in_the_kernels_words_and_retried(swarm_files, monkeypatch, raised,
                                                                          said) -> None:
    key, known = swarm_files

    def connect(self, *args, **kwargs):
        raise raised

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    cfg = config.SwarmConfig(manager=MANAGER, ssh_key=str(key), known_hosts=str(known))
    with pytest.raises(ManagerUnreachable) as info:
        read_manager_swarm(cfg, timeout=2)
    assert info.value.transient is True
    assert info.value.cause == f"cannot reach the manager at root@{MANAGER}:22: {said}."


@pytest.mark.parametrize("raised, said", [
    (paramiko.AuthenticationException("no"), "refused the SSH key"),
    (paramiko.BadHostKeyException("m", paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate")
                                  else paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)),
     "differs from the one in"),
    (paramiko.SSHException("Server '127.0.0.1' not found in known_hosts"), "refusing an unknown host key"),
])
def test_refused_keys_and_unknown_host_keys_are_permanent(swarm_files, monkeypatch, raised, said) -> None:
    key, known = swarm_files

    def connect(*args, **kwargs):
        raise raised

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    cfg = config.SwarmConfig(manager=MANAGER, ssh_key=str(key), known_hosts=str(known))
    with pytest.raises(ManagerUnreachable) as info:
        read_manager_swarm(cfg, timeout=2)
    assert said in info.value.cause and not retry.is_transient(info.value)


# --- the registry and the apt mirrors ------------------------------------------------------------

@pytest.mark.parametrize("error, again", [
    ("Get \"https://registry.hub:5000/v2/\": dial tcp 10.0.0.5:5000: connect: connection refused", True),
    ("Get \"https://registry.hub:5000/v2/\": net/http: TLS handshake timeout", True),
    ("Get \"https://registry.hub:5000/v2/\": dial tcp: lookup registry.hub on 127.0.0.53:53: no such host", True),
    ("received unexpected HTTP status: 503 Service Unavailable", True),
    ("manifest for registry.hub:5000/notebook:v9 not found: manifest unknown", False),
    ("Get \"https://registry.hub:5000/v2/\": x509: certificate signed by unknown authority", False),
    ("pull access denied for notebook, repository does not exist", False),
])
def test_registry_errors_are_classified(error, again) -> None:
    assert image.registry_transient(StepFailed(f"pulling notebook failed: {error}.", "")) is again


class FlakyRegistry(FakeDocker):
    failures: list

    def pull(self, name, on_progress):
        self.calls.append(f"pull {name}")
        if self.failures:
            raise StepFailed(f"pulling {name} failed: {self.failures.pop(0)}.", "Check the network.")
        self.images.add(name)


def test_the_image_pull_is_retried_until_the_registry_answers() -> None:
    docker = FlakyRegistry.from_case({})
    docker.failures = ["dial tcp 10.0.0.5:5000: connect: connection refused"] * 2
    lines = Lines()
    ctx = Context(config=config.from_tables({"image": {"name": "registry.hub:5000/notebook:v1"}}), host=FakeHost(),
                  docker_factory=lambda: docker, reporter=lines)
    check = image.ImageStep().check(ctx)
    assert check.state is State.NEEDS_CHANGE
    check.actions[0].execute(ctx)
    assert docker.calls == ["pull registry.hub:5000/notebook:v1"] * 3 and len(lines.said) == 2


@pytest.mark.parametrize("output, again", [
    ("E: Failed to fetch http://archive.ubuntu.com/ubuntu/dists/jammy/InRelease  Temporary failure resolving "
     "'archive.ubuntu.com'", True),
    ("E: Failed to fetch http://archive.ubuntu.com/ubuntu/pool/main/n/nfs-utils/nfs-common.deb  503  Service "
     "Unavailable [IP: 91.189.91.82 80]", True),
    ("E: Failed to fetch store:/var/lib/apt/lists/partial/x_InRelease  Hash Sum mismatch", True),
    ("E: Unable to locate package nvidia-container-toolkit", False),
    ("E: The repository 'https://nvidia.github.io/libnvidia-container/stable/deb/amd64 Release' is not signed.", False),
])
def test_mirror_errors_are_classified(output, again) -> None:
    assert apt.mirror_transient(CommandFailed(["apt-get", "update"], 100, output)) is again


def test_apt_get_is_run_again_when_the_mirror_fails_then_answers(tmp_path) -> None:
    resolving = {"rc": 100, "stderr": "E: Failed to fetch http://archive.ubuntu.com/ubuntu/dists/jammy/InRelease  "
                                      "Temporary failure resolving 'archive.ubuntu.com'"}
    host = FakeHost(effects={"apt-get -o DPkg::Lock::Timeout=600 update": {"fails_first": [resolving, dict(resolving)]}})
    lines = Lines()
    ctx = Context(config=config.from_tables({}), host=host, reporter=lines, log_dir=str(tmp_path))
    apt.update(ctx).execute(ctx)
    assert host.actions == ["run apt-get -o DPkg::Lock::Timeout=600 update"] * 3 and len(lines.said) == 2


# --- the boot unit: there whatever ends the run, and it tries again -------------------------------

class Recorded:
    def __init__(self, name: str) -> None:
        self.name, self.description, self.applied = name, name, False

    def files(self, ctx):
        return []

    def check(self, ctx) -> Check:
        if self.applied:
            return ok("done")
        return needs_change("to do", Call(f"apply {self.name}", lambda ctx: setattr(self, "applied", True)))


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_boot_unit_is_installed_even_when_a_preflight_refuses_the_run(dry_run) -> None:
    boot, join = Recorded("boot"), Recorded("swarm-join")
    plan = Plan("setup", (boot, join), (Preflight("manager", lambda ctx: "the manager does not answer"),),
                regardless=("boot",))
    report = run_plan(plan, Context(config=config.from_tables({}), host=FakeHost()), dry_run=dry_run)
    assert [p.problem for p in report.refused] == ["the manager does not answer"]
    assert boot.applied is not dry_run and join.applied is False


def test_setup_plan_keeps_the_boot_step_regardless() -> None:
    from gpuswarm_node.preflight import setup_plan
    from gpuswarm_node.steps import ALL_STEPS

    assert setup_plan(ALL_STEPS).regardless == ("boot",) and ALL_STEPS[0].name == "boot"


def test_the_boot_unit_runs_a_failed_setup_again_without_a_reboot() -> None:
    text = unit_text()
    for line in ("Restart=on-failure", "RestartSec=2min", "StartLimitIntervalSec=1h", "StartLimitBurst=4",
                 "RestartPreventExitStatus=2"):
        assert line in text.splitlines()


# setup's own plan on a fresh machine (Docker not installed yet), as a zero-touch first boot runs
# it: whatever ends the run before the join, the boot unit is in place (written and enabled) and
# nothing else was changed, so the next boot, or the unit's own restart, tries again.
BOOT_ACTIONS = ["write /var/lib/gpuswarm-node/boot-config.toml", "write /etc/systemd/system/gpuswarm-node-boot.service",
                "run systemctl daemon-reload", "run systemctl enable gpuswarm-node-boot.service"]


def never_answers(cfg, token, node_id):
    raise transient()


def refuses_the_key(cfg, token, node_id):
    raise ManagerUnreachable(f"the manager refused the SSH key {cfg.ssh_key} for root@198.18.0.1:22.",
                             "Add the key's public half to the manager's authorized_keys.")


def crashes(cfg, token, node_id):
    raise RuntimeError("a bug")


@pytest.mark.parametrize("reader, hostname, refused_by, said", [
    (never_answers, "gsn-c1", "manager-host-key", "Connection refused (tried "),
    (refuses_the_key, "gsn-c1", "manager-host-key", "refused the SSH key"),
    (crashes, "gsn-c1", "manager-host-key", "internal error: RuntimeError: a bug"),
    (lambda cfg, token, node_id: FakeManager({"info": MANAGER_INFO}).read(cfg, token, node_id), "localhost",
     "node-name", "but swarm.ssh_key is authorised for node gsn-c1"),
])
def test_whatever_refuses_a_first_boots_setup_the_boot_unit_is_installed_first(swarm_files, monkeypatch, reader,
                                                                                hostname, refused_by, said) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gpuswarm_node.preflight import setup_plan
    from gpuswarm_node.steps import ALL_STEPS

    monkeypatch.delenv("SUDO_USER", raising=False)
    key, known = swarm_files
    # A key the ssh-key preflight takes (an unencrypted OpenSSH private key), as `hub bundle` writes.
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    host = FakeHost.from_case({
        "files": {"/usr/local/bin/gpuswarm-node": "#!/bin/sh\n", "/proc/sys/kernel/hostname": hostname + "\n"},
        "effects": {"systemctl enable gpuswarm-node-boot.service":
                    {"facts": {"unit_file_state": {"gpuswarm-node-boot.service": "enabled"}}}},
        "facts": {"unit_file_state": {"gpuswarm-node-boot.service": ""}}})
    lines = Lines()
    cfg = config.from_tables({"swarm": {"manager": "198.18.0.1", "ssh_key": str(key), "known_hosts": str(known),
                                        "node_name": "gsn-c1"}})
    ctx = Context(config=cfg, host=host, reporter=lines, docker_factory=lambda: FakeDocker(reachable=False),
                  manager_reader=reader, given_facts=host.facts)
    report = run_plan(setup_plan(ALL_STEPS), ctx)
    assert [p.name for p in report.refused] == [refused_by], report.refused
    assert said in report.refused[0].problem
    assert host.actions == BOOT_ACTIONS  # the boot unit, and nothing else
    assert [(s.name, s.state) for s in report.steps][0] == ("boot", State.OK)
    network = [line for line in lines.said if line.startswith("network: ")]
    if reader is never_answers:  # each try said, for node.network_retry (120 s), then the unit installed
        assert len(network) == 7 and all("Connection refused; trying again in" in line for line in network)
        assert "(tried 8 times over 120 s)" in report.refused[0].problem
        assert lines.said == network + [f"boot: {a.replace('write', 'create')}" for a in BOOT_ACTIONS]
    else:  # a permanent refusal (or a bug) is not tried again
        assert network == []

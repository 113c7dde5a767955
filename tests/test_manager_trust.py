"""swarm.known_hosts and swarm.ssh_key are the root of trust for the join: each is refused, before
any SSH, unless only root can change it (and, for the key, read it), and a symbolic link is never
followed. What paramiko reads is the very file that was checked."""

from __future__ import annotations

import base64
import os

import paramiko
import pytest

from gpuswarm_node import config
from gpuswarm_node.engine import State, converge
from gpuswarm_node.errors import ManagerUnreachable
from gpuswarm_node.manager import read_manager_swarm
from gpuswarm_node.steps.swarm_join import SwarmJoinStep
from gpuswarm_node.context import Context

from .fakes import FakeDocker, FakeHost

MANAGER = "198.18.0.1"
KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
# A well-formed ed25519 public key blob (SSH wire format), so paramiko parses the known_hosts line.
PUBLIC = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()


def make(path, text: str, mode: int, uid: int = 0):
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, uid, 0)
    return path


@pytest.fixture
def files(tmp_path):
    key = make(tmp_path / "id_ed25519", KEY_TEXT, 0o600)
    known = make(tmp_path / "known_hosts", f"{MANAGER} ssh-ed25519 {PUBLIC}\n", 0o644)
    return key, known


@pytest.fixture
def no_connect(monkeypatch):
    def connect(*args, **kwargs):
        raise AssertionError("a refused file must stop the join before any SSH")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)


def swarm(key, known, **more) -> config.SwarmConfig:
    return config.SwarmConfig(manager=MANAGER, ssh_key=str(key), known_hosts=str(known), **more)


def refusal(cfg: config.SwarmConfig) -> str:
    with pytest.raises(ManagerUnreachable) as info:
        read_manager_swarm(cfg, timeout=1)
    message = info.value.message()
    assert "\n" not in message
    return message


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o622, 0o777])
def test_known_hosts_writable_by_others_is_refused(files, no_connect, mode):
    key, known = files
    os.chmod(known, mode)
    message = refusal(swarm(key, known))
    assert f"swarm.known_hosts {known} is writable by other users (mode {mode:o})" in message
    assert "refusing to trust the host keys in it" in message and "chmod 644" in message


def test_known_hosts_not_owned_by_root_is_refused(files, no_connect):
    key, known = files
    os.chown(known, 65534, 0)
    assert f"swarm.known_hosts {known} is owned by neither root nor the user running the tool" in refusal(swarm(key, known))


@pytest.mark.parametrize("target_mode", [0o644, 0o666])
def test_known_hosts_symlink_is_refused_whatever_it_points_to(tmp_path, files, no_connect, target_mode):
    key, known = files
    os.chmod(known, target_mode)
    link = tmp_path / "linked_known_hosts"
    link.symlink_to(known)
    message = refusal(swarm(key, link))
    assert f"swarm.known_hosts {link} is a symbolic link" in message and "not a link" in message


def test_dangling_known_hosts_symlink_is_refused_not_taken_for_absent(tmp_path, files, no_connect):
    key, _known = files
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    # Even with a pinned fingerprint (absent known_hosts is fine then), a link is not "absent".
    message = refusal(swarm(key, link, host_key_fingerprint="SHA256:" + "A" * 43))
    assert "is a symbolic link" in message


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_known_hosts_that_is_no_regular_file_is_refused(tmp_path, files, no_connect, kind):
    key, _known = files
    odd = tmp_path / kind
    os.mkdir(odd, 0o755) if kind == "directory" else os.mkfifo(odd, 0o644)
    assert f"swarm.known_hosts {odd} is not a regular file" in refusal(swarm(key, odd))


def test_a_pinned_fingerprint_does_not_excuse_a_loose_known_hosts(files, no_connect):
    # paramiko accepts any key listed in known_hosts without asking the pin.
    key, known = files
    os.chmod(known, 0o666)
    message = refusal(swarm(key, known, host_key_fingerprint="SHA256:" + "A" * 43))
    assert "is writable by other users" in message


def test_ssh_key_symlink_is_refused(tmp_path, files, no_connect):
    key, known = files
    link = tmp_path / "key_link"
    link.symlink_to(key)
    message = refusal(swarm(link, known))
    assert f"swarm.ssh_key {link} is a symbolic link" in message and "chmod 600" in message
    assert "not-a-real-key" not in message


def test_ssh_key_writable_only_by_others_is_refused(files, no_connect):
    key, known = files
    os.chmod(key, 0o602)
    assert "is accessible to other users (mode 602)" in refusal(swarm(key, known))


def test_a_good_pair_reaches_ssh_reading_the_checked_files(tmp_path, files, monkeypatch):
    key, known = files
    seen = {}

    def connect(self, hostname, key_filename=None, **kwargs):
        # Swapping the files after the check changes nothing: paramiko reads the open files.
        make(tmp_path / "evil_key", "evil", 0o600)
        os.replace(tmp_path / "evil_key", key)
        make(tmp_path / "evil_known", f"{MANAGER} ssh-ed25519 AAAAevil\n", 0o644)
        os.replace(tmp_path / "evil_known", known)
        with open(key_filename) as f:
            seen["key"] = f.read()
        seen["host_keys"] = {h: [k.get_base64() for k in keys.values()] for h, keys in self.get_host_keys().items()}
        raise paramiko.AuthenticationException("no")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    message = refusal(swarm(key, known))
    assert "refused the SSH key" in message
    assert seen["key"] == KEY_TEXT
    assert seen["host_keys"] == {MANAGER: [PUBLIC]}


def test_absent_known_hosts_with_a_pin_reaches_ssh(tmp_path, files, monkeypatch):
    key, _known = files
    monkeypatch.setattr(paramiko.SSHClient, "connect",
                        lambda *a, **k: (_ for _ in ()).throw(paramiko.AuthenticationException("no")))
    assert "refused the SSH key" in refusal(swarm(key, tmp_path / "absent",
                                                  host_key_fingerprint="SHA256:" + "A" * 43))


def test_the_swarm_join_step_fails_naming_the_file_and_the_fix(files, no_connect):
    key, known = files
    os.chmod(known, 0o666)
    cfg = config.from_tables({"swarm": {"manager": MANAGER, "ssh_key": str(key), "known_hosts": str(known)}})
    docker = FakeDocker()
    ctx = Context(config=cfg, host=FakeHost(), docker_factory=lambda: docker)
    report = converge(SwarmJoinStep(), ctx)
    assert report.state is State.FAILED
    assert f"swarm.known_hosts {known} is writable by other users (mode 666)" in report.detail
    assert "chmod 644" in report.detail
    assert docker.calls == []

"""The private key for the manager is refused unless only root can read it (checked before any SSH)."""

from __future__ import annotations

import os

import pytest

from gpuswarm_node.config import SwarmConfig
from gpuswarm_node.errors import ManagerUnreachable
from gpuswarm_node.manager import read_manager_swarm


def key_file(tmp_path, mode: int, uid: int = 0):
    path = tmp_path / "id_ed25519"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n")
    os.chmod(path, mode)
    os.chown(path, uid, 0)
    return path


@pytest.mark.parametrize("mode, uid, fragment", [
    (0o644, 0, "readable by other users (mode 644)"),
    (0o640, 0, "readable by other users (mode 640)"),
    (0o600, 65534, "is owned by neither root nor the user running the tool"),
])
def test_loose_key_is_refused(tmp_path, mode, uid, fragment):
    key = key_file(tmp_path, mode, uid)
    cfg = SwarmConfig(manager="198.18.0.1", ssh_key=str(key), known_hosts=str(tmp_path / "known_hosts"))
    with pytest.raises(ManagerUnreachable) as info:
        read_manager_swarm(cfg, timeout=1)
    assert fragment in info.value.message()
    assert "chmod 600" in info.value.message()
    assert "not-a-real-key" not in info.value.message()


def test_missing_key_is_named(tmp_path):
    cfg = SwarmConfig(manager="198.18.0.1", ssh_key=str(tmp_path / "absent"))
    with pytest.raises(ManagerUnreachable) as info:
        read_manager_swarm(cfg, timeout=1)
    assert f"{tmp_path / 'absent'} does not exist" in info.value.message()


def test_missing_known_hosts_refuses_before_connecting(tmp_path):
    key = key_file(tmp_path, 0o600)
    cfg = SwarmConfig(manager="198.18.0.1", ssh_key=str(key), known_hosts=str(tmp_path / "absent"))
    with pytest.raises(ManagerUnreachable) as info:
        read_manager_swarm(cfg, timeout=1)
    assert "cannot be verified" in info.value.message()

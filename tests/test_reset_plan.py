"""reset's plan, from journal entries: what setup recorded in, what reset undoes out."""

from __future__ import annotations

from gpuswarm_node.reset import Undo, plan

FRESH_SETUP = [
    {"kind": "mkdir", "path": "/mnt/tmpfs"},
    {"kind": "write", "path": "/etc/fstab", "backup": "/var/backups/gpuswarm-node/etc__fstab.1"},
    {"kind": "run", "step": "tmpfs", "argv": ["systemctl", "daemon-reload"]},
    {"kind": "run", "step": "tmpfs", "argv": ["mount", "/mnt/tmpfs"]},
    {"kind": "run", "step": "docker-group", "argv": ["groupadd", "--system", "docker"]},
    {"kind": "run", "step": "docker-group", "argv": ["usermod", "--append", "--groups", "docker", "alice"]},
    {"kind": "run", "step": "docker", "argv": ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "--yes",
                                               "--no-install-recommends", "docker.io"]},
    {"kind": "run", "step": "docker", "argv": ["systemctl", "enable", "--now", "docker"]},
    {"kind": "write", "path": "/etc/docker/daemon.json", "backup": None},
    {"kind": "run", "step": "docker-daemon", "argv": ["systemctl", "restart", "docker"]},
    {"kind": "write", "path": "/etc/docker/certs.d/hub:5000/ca.crt", "backup": None},
    {"kind": "call", "step": "image", "action": "pull hub:5000/nb:1"},
    {"kind": "call", "step": "swarm-join", "action": "fetch a worker join token over SSH and join hub:2377"},
    # A later repair rewrote daemon.json: reset must still go back to before the first write.
    {"kind": "write", "path": "/etc/docker/daemon.json", "backup": "/var/backups/gpuswarm-node/daemon.2"},
]


def test_fresh_setup_is_undone_in_safe_order():
    assert plan(FRESH_SETUP) == [
        Undo("leave-swarm"),
        Undo("remove-image", "hub:5000/nb:1"),
        Undo("umount", "/mnt/tmpfs"),
        Undo("remove", "/etc/docker/daemon.json"),
        Undo("remove", "/etc/docker/certs.d/hub:5000/ca.crt"),
        Undo("note", "docker left enabled and running"),
        Undo("note", "packages left installed: docker.io (remove with apt-get purge)"),
        Undo("run", argv=("gpasswd", "--delete", "alice", "--", "docker")),
        Undo("note", "group docker left in place (the docker package uses it)"),
        Undo("restore", "/etc/fstab", "/var/backups/gpuswarm-node/etc__fstab.1"),
        Undo("rmdir", "/mnt/tmpfs"),
        Undo("restart-docker"),
    ]


def test_a_repeated_repair_is_undone_once():
    twice = FRESH_SETUP + [FRESH_SETUP[3], FRESH_SETUP[5], FRESH_SETUP[12]]
    undo = plan(twice)
    assert len(undo) == len(set(undo)) and set(undo) == set(plan(FRESH_SETUP))


def test_nothing_recorded_nothing_to_do():
    assert plan([]) == []


def test_a_removed_file_comes_back_from_its_backup():
    entries = [{"kind": "remove", "path": "/etc/systemd/system/docker.service.d/gpuswarm-node.conf",
                "backup": "/b/dropin"}]
    assert plan(entries) == [Undo("restore", "/etc/systemd/system/docker.service.d/gpuswarm-node.conf", "/b/dropin"),
                             Undo("restart-docker")]

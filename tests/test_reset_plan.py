"""reset's plan, from journal entries: what setup recorded in, what reset undoes out, newest first,
read from each entry's undo record and never from an action's wording."""

from __future__ import annotations

from gpuswarm_node.journal import Undo, keep
from gpuswarm_node.reset import plan

B = "/var/backups/gpuswarm-node"
FRESH_SETUP = [
    {"kind": "mkdir", "path": "/mnt/tmpfs", "undo": {"op": "rmdir", "path": "/mnt/tmpfs"}},
    {"kind": "write", "path": "/etc/fstab", "backup": f"{B}/etc__fstab.1",
     "undo": {"op": "restore", "path": "/etc/fstab", "backup": f"{B}/etc__fstab.1"}},
    {"kind": "run", "step": "tmpfs", "argv": ["systemctl", "daemon-reload"]},
    {"kind": "run", "step": "tmpfs", "argv": ["mount", "/mnt/tmpfs"], "undo": {"op": "umount", "path": "/mnt/tmpfs"}},
    {"kind": "run", "step": "docker-group", "argv": ["groupadd", "--system", "--", "docker"],
     "undo": {"op": "keep", "note": "group docker left in place (the docker package uses it)"}},
    {"kind": "run", "step": "docker-group", "argv": ["usermod", "--append", "--groups", "docker", "--", "alice"],
     "undo": {"op": "leave-group", "user": "alice", "group": "docker"}},
    {"kind": "run", "step": "docker", "argv": ["apt-get", "install", "--yes", "docker.io"],
     "undo": {"op": "keep", "note": "packages left installed: docker.io (remove with apt-get purge)"}},
    {"kind": "write", "path": "/etc/docker/daemon.json", "backup": None,
     "undo": {"op": "remove", "path": "/etc/docker/daemon.json"}},
    {"kind": "run", "step": "docker-daemon", "argv": ["systemctl", "restart", "docker"]},
    # The wording of an action says nothing to reset: only its undo record counts.
    {"kind": "call", "step": "image", "action": "fetch it, whatever this says",
     "undo": {"op": "remove-image", "image": "hub:5000/nb:1"}},
    {"kind": "call", "step": "swarm-join", "action": "pull hub:5000/other:1", "undo": {"op": "leave-swarm"}},
    # A later repair rewrote daemon.json: reset must still go back to before the first write.
    {"kind": "write", "path": "/etc/docker/daemon.json", "backup": f"{B}/daemon.2",
     "undo": {"op": "restore", "path": "/etc/docker/daemon.json", "backup": f"{B}/daemon.2"}},
]


def test_a_fresh_setup_is_replayed_newest_first():
    assert plan(FRESH_SETUP) == [
        Undo("remove", "/etc/docker/daemon.json"),
        Undo("leave-swarm"),
        Undo("remove-image", image="hub:5000/nb:1"),
        keep("packages left installed: docker.io (remove with apt-get purge)"),
        Undo("leave-group", user="alice", group="docker"),
        keep("group docker left in place (the docker package uses it)"),
        Undo("umount", "/mnt/tmpfs"),
        Undo("restore", "/etc/fstab", f"{B}/etc__fstab.1"),
        Undo("rmdir", "/mnt/tmpfs"),
    ]


def test_a_repeated_repair_is_undone_once():
    twice = FRESH_SETUP + [FRESH_SETUP[3], FRESH_SETUP[5], FRESH_SETUP[10]]
    undo = plan(twice)
    assert len(undo) == len(set(undo)) and set(undo) == set(plan(FRESH_SETUP))


def test_nothing_recorded_nothing_to_do():
    assert plan([]) == []


def test_a_removed_file_comes_back_from_its_backup():
    entries = [{"kind": "remove", "path": "/etc/systemd/system/docker.service.d/gpuswarm-node.conf",
                "backup": "/b/dropin"}]
    assert plan(entries) == [Undo("restore", "/etc/systemd/system/docker.service.d/gpuswarm-node.conf", "/b/dropin")]


def test_journals_of_older_versions_are_read_from_their_fields():
    entries = [{"kind": "write", "path": "/etc/fstab", "backup": "/b/fstab"},
               {"kind": "run", "step": "tmpfs", "argv": ["mount", "/mnt/tmpfs"]},
               {"kind": "call", "step": "image", "action": "pull hub:5000/nb:1"}]
    undo = plan(entries)
    assert undo[1:] == [Undo("umount", "/mnt/tmpfs"), Undo("restore", "/etc/fstab", "/b/fstab")]
    # Without an undo record a call is kept and said so: its wording is never parsed.
    assert undo[0].op == "keep" and "undo it by hand" in undo[0].note

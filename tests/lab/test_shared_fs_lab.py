"""A share cannot become a root door: a setuid-root file and a device node written onto a share
from a notebook give nothing to a local user of the worker, nor to another container.

The lab's kernel has no NFS (README, "The hub side"), so each share is a local directory mounted
as the shared-fs step mounts a share: on itself, with nosuid,nodev (read-only for the tutorial
share). What is proven is the mount options' effect and that each bind of a share into a
container keeps them (Docker's read-only bind is remounted by runc with the options Docker gives;
the runtime wrapper adds the source's nosuid,nodev), for a notebook the hub spawns and for a
plain `docker run`. The controls show the machine honours a setuid bit and a device node where
the flags are absent, so the checks can fail.
"""

from __future__ import annotations

import pytest

from .test_hub import (hub, notebook_image, spawn, stop_every_server, task_of, wait_ready,  # noqa: F401
                       workers, NODE_IDS, SHARED)

USER = "sam"


@pytest.fixture(scope="module")
def shares_mounted_nosuid_nodev(workers):  # noqa: F811
    for worker in workers.values():
        for path, mode in SHARED.items():
            options = ",".join(["remount", "bind", "nosuid", "nodev"] + (["ro"] if mode == "ro" else []))
            worker.machine.run(["sh", "-c", f"mount --bind {path} {path} && mount -o {options} {path}"])
            assert {"nosuid", "nodev"} <= set(mount_options(worker, path))
    yield workers


def mount_options(worker, path: str, container: str = "") -> list[str]:
    """Per-mount options of the mount at `path`, on the worker or inside `container`."""
    prefix = f"docker exec {container} " if container else ""
    text = worker.sh(f"{prefix}cat /proc/self/mountinfo").stdout
    [line] = [line for line in text.splitlines() if line.split()[4] == path][-1:]
    return line.split()[5].split(",")


def test_setuid_files_and_device_nodes_on_a_share_give_nothing(hub, shares_mounted_nosuid_nodev, manager):  # noqa: F811
    workers = shares_mounted_nosuid_nodev
    spawn(hub, USER)
    wait_ready(hub, USER, manager)
    task = task_of(manager, USER)
    [name] = [n for n, node_id in NODE_IDS.items() if node_id == task["NodeID"]]
    worker = workers[name]
    cid = task["Status"]["ContainerStatus"]["ContainerID"]

    # Inside the notebook, both shares keep nosuid,nodev (the tutorial one is also read-only).
    for path in SHARED:
        assert {"nosuid", "nodev"} <= set(mount_options(worker, path, cid)), path

    # The notebook's root writes a setuid-root program and a world-openable device node.
    worker.sh(f"docker exec -u 0 {cid} sh -c 'cp \"$(command -v id)\" /srv/shared/data/id-suid && "
              "chown 0:0 /srv/shared/data/id-suid && chmod 4755 /srv/shared/data/id-suid && "
              "mknod -m 666 /srv/shared/data/null-node c 1 3'")

    # Controls: the same on the worker's own /tmp is honoured, so the checks below can fail.
    worker.sh("install -m 4755 -o 0 -g 0 /srv/shared/data/id-suid /tmp/id-suid && "
              "cp -a /srv/shared/data/null-node /tmp/null-node")
    assert worker.as_user("/tmp/id-suid -u").stdout.strip() == "0"
    assert worker.as_user(": < /tmp/null-node").returncode == 0

    # A local user of the worker gets nothing from the share.
    assert worker.as_user("/srv/shared/data/id-suid -u").stdout.strip() != "0"
    opened = worker.as_user(": < /srv/shared/data/null-node")
    assert opened.returncode != 0 and "Permission denied" in opened.stderr

    # Nor does a non-root process of another container: a plain docker run, the share read-only.
    image = worker.sh(f"docker inspect --format '{{{{.Config.Image}}}}' {cid}").stdout.strip()
    run = worker.sh(f"docker run --rm -u 1000 -v /srv/shared/data:/data:ro {image} "
                    "sh -c 'grep \" /data \" /proc/self/mountinfo; /data/id-suid -u'")
    mountinfo, euid = run.stdout.strip().splitlines()[-2:]
    assert {"nosuid", "nodev"} <= set(mountinfo.split()[5].split(","))
    assert euid != "0"

    worker.sh("rm -f /tmp/id-suid /tmp/null-node /srv/shared/data/id-suid /srv/shared/data/null-node")
    stop_every_server(hub, manager)

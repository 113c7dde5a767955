"""The lab's shared parts, built once per test session and torn down after it, also on failure.

The lab needs root. When it cannot be built, its tests fail (they never skip): CI must not pass
without having run them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .manager import ManagerHost
from .network import LabNetwork, cleanup_stale
from .util import timed

# The lab's names (namespaces, machines, cgroups) are fixed and cleanup_stale() removes what another
# run left, so two test sessions on one machine would tear down each other's lab: the second waits.
LAB_LOCK = Path("/run/lock/gpuswarm-node-lab.lock")


@pytest.fixture(scope="session")
def lab_tmp():
    if os.geteuid() != 0:
        pytest.fail("the lab needs root: run the suite as root (./run-tests.sh)")
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LAB_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = Path(tempfile.mkdtemp(prefix="gsn-lab-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def network(lab_tmp):
    cleanup_stale()
    net = LabNetwork()
    try:
        with timed("lab network"):
            net.start()
        yield net
    finally:
        net.close()


@pytest.fixture(scope="session")
def manager(network, lab_tmp):
    mgr = ManagerHost(network, lab_tmp / "mgr")
    try:
        with timed("lab manager (dockerd, swarm, sshd, registry, image)"):
            mgr.start()
        yield mgr
    finally:
        mgr.close()


@pytest.fixture(scope="session")
def toolkit_repo(lab_tmp) -> Path:
    """The stand-in nvidia-container-toolkit package in a flat apt repository."""
    from .toolkit_deb import build_repo

    return build_repo(lab_tmp / "toolkit-repo")

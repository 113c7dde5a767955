"""The lab's fresh worker: a real Debian 12 booted with systemd in its own netns.

Checked against real state inside the machine, so the product's tests can
trust that `sudo ./setup.sh` meets what it would meet on a new cloud machine.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from . import machine as lab_machine
from .machine import FreshMachine

pytestmark = pytest.mark.lab

NAME = "gsn-w9"
ADDRESS = "198.18.0.19"
BUSYBOX = Path("/bin/busybox")
FSTAB_LINE = "tmpfs /mnt/gsn-scratch tmpfs size=16m,mode=1777 0 0"


@pytest.fixture(scope="module")
def worker(network):
    lab_machine.cleanup_stale()
    network.enable_outbound_nat()  # apt inside needs a way out
    tmp = Path(tempfile.mkdtemp(prefix="gsn-lab-"))
    host = network.add_host(NAME, ADDRESS)
    m = FreshMachine(host, tmp / NAME, name=NAME)
    try:
        with m:
            yield m
    finally:
        network.remove_host(NAME)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"\nfresh machine timings (s): {m.timings}")


@pytest.fixture(scope="module")
def worker_with_docker(worker):
    started = time.monotonic()
    worker.run(
        "apt-get update -q && apt-get install -y -q -o DPkg::Lock::Timeout=120 docker.io",
        env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=900,
    )
    worker.timings["apt install docker.io"] = round(time.monotonic() - started, 2)
    return worker


def test_fresh_machine_runs_systemd_and_has_nothing_but_python(worker):
    assert worker.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert worker.boot_state in ("running", "degraded")
    assert worker.run(["hostname"]).stdout.strip() == NAME
    assert f"inet {ADDRESS}/24" in worker.run(["ip", "-4", "addr", "show", "eth0"]).stdout
    assert worker.run(["python3", "-c", "import venv, ssl; print('ok')"]).stdout.strip() == "ok"
    assert worker.run("command -v docker", check=False).returncode != 0
    assert worker.run(["dpkg-query", "-W", "docker.io"], check=False).returncode != 0
    # The cloud login user, with passwordless sudo.
    assert worker.run(["runuser", "-u", "worker", "--", "sudo", "-n", "id", "-u"]).stdout.strip() == "0"
    machine_id = worker.read_file("/etc/machine-id").strip()
    assert len(machine_id) == 32 and machine_id == worker.path("/etc/machine-id").read_text().strip()


def test_copy_in_reaches_the_machines_own_view(worker, tmp_path):
    tree = tmp_path / "project"
    (tree / "sub").mkdir(parents=True)
    (tree / "setup.sh").write_text("#!/bin/sh\necho set-up\n")
    (tree / "setup.sh").chmod(0o755)
    (tree / "sub" / "data.txt").write_text("payload\n")
    (tree / ".git").mkdir()
    worker.copy_in(tree, "/home/worker/project", exclude=(".git",), owner="worker")
    assert worker.run(["/home/worker/project/setup.sh"]).stdout == "set-up\n"
    assert worker.read_file("/home/worker/project/sub/data.txt") == "payload\n"
    assert worker.run(["stat", "-c", "%U", "/home/worker/project/sub/data.txt"]).stdout.strip() == "worker"
    assert worker.run(["test", "-e", "/home/worker/project/.git"], check=False).returncode == 1
    # A file below a mount made inside the machine: invisible via path().
    worker.run("mkdir -p /mnt/inner && mount -t tmpfs tmpfs /mnt/inner")
    worker.copy_in(tree / "sub" / "data.txt", "/mnt/inner/data.txt")
    assert worker.read_file("/mnt/inner/data.txt") == "payload\n"
    assert not worker.path("/mnt/inner/data.txt").exists()
    worker.run("umount /mnt/inner")


def test_apt_installs_docker_and_systemd_runs_it(worker_with_docker):
    w = worker_with_docker
    assert w.run(["systemctl", "is-active", "docker"]).stdout.strip() == "active"
    pid = int(w.run(["systemctl", "show", "-p", "MainPID", "--value", "docker"]).stdout)
    assert w.run(["cat", f"/proc/{pid}/comm"]).stdout.strip() == "dockerd"
    assert "Cgroup Version: 1" in w.run(["docker", "info"]).stdout


def test_docker_runs_a_container(worker_with_docker):
    w = worker_with_docker
    w.copy_in(BUSYBOX, "/root/busybox-image/bin/busybox")
    w.run("cd /root/busybox-image/bin && ln -sf busybox sh && ln -sf busybox echo && "
          "tar -C /root/busybox-image -c . | docker import - gsn-lab/busybox:test")
    out = w.run(["docker", "run", "--rm", "gsn-lab/busybox:test", "/bin/echo", "hello from busybox"])
    assert out.stdout == "hello from busybox\n"
    # dockerd's cgroups land below the machine's own, not at the host's root.
    assert any((d / "docker").is_dir() for d in w.cgroups)


def test_fstab_tmpfs_mounts_and_survives_reboot(worker_with_docker):
    w = worker_with_docker
    w.run(f"mkdir -p /mnt/gsn-scratch && echo '{FSTAB_LINE}' >> /etc/fstab && mount -a")
    assert w.run(["findmnt", "-n", "-o", "FSTYPE", "/mnt/gsn-scratch"]).stdout.strip() == "tmpfs"
    boot_id = w.read_file("/proc/sys/kernel/random/boot_id")
    w.reboot()
    assert w.read_file("/proc/sys/kernel/random/boot_id") != boot_id
    assert w.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert w.run(["findmnt", "-n", "-o", "FSTYPE", "/mnt/gsn-scratch"]).stdout.strip() == "tmpfs"
    # Docker came back by itself and still runs containers after the reboot.
    assert w.run(["systemctl", "is-active", "docker"]).stdout.strip() == "active"
    out = w.run(["docker", "run", "--rm", "gsn-lab/busybox:test", "/bin/echo", "after reboot"]).stdout
    assert out == "after reboot\n"

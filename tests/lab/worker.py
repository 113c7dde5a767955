"""A fresh worker machine, provisioned as a user would find it before `sudo ./setup.sh`.

Shared by the lab's tests (test_fresh_worker.py, test_fault_injection.py) and the benchmark
(bench/run.py): one fresh Debian 12 under systemd-nspawn at 198.18.0.11 with two fake A100s and an
operator's daemon.json. Then either (`readme=False`) the project's files in the user's home, the
manager's SSH key, known_hosts and registry CA in /etc/gpuswarm-node and a node.toml pointing at
the lab's manager; or (`readme=True`) only what README.md's quick start says the user copies to
the machine (the tool's tarball, the registry's CA, the SSH key), for `Worker.quick_start` to run
the README's own commands. Nothing of the product runs here; that is the caller's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Iterator

from gpuswarm_node import __version__

from . import driver_deb, fake_nvml
from . import machine as lab_machine
from .machine import FreshMachine
from .manager import ManagerHost
from .network import LabNetwork
from .util import TIMINGS, timed

REPO = Path(__file__).resolve().parents[2]
NAME, ADDRESS = "gsn-w1", "198.18.0.11"
USER = "worker"
HOME = f"/home/{USER}"
CONFIG = f"{HOME}/node.toml"
TMPFS = "/mnt/tmpfs"

GPUS = [
    fake_nvml.FakeGpu("GPU-0a0a0a0a-1111-2222-3333-444444444444", "NVIDIA A100-SXM4-40GB", 40960),
    fake_nvml.FakeGpu("GPU-0b0b0b0b-5555-6666-7777-888888888888", "NVIDIA A100-SXM4-40GB", 40960),
]
SLICES_PER_GPU = 3
# Interleaved: slice 1 of each GPU before slice 2 of any.
EXPECTED_SLICES = [f"{g.uuid}::{n}" for n in range(1, SLICES_PER_GPU + 1) for g in GPUS]

# Docker on the worker would pick 172.17/16 and friends; the lab keeps every address in
# 198.18.0.0/15. The operator's own keys must survive setup (asserted by the tests).
PRESEEDED_DAEMON_JSON = {
    "bip": "198.18.130.1/24",
    "default-address-pools": [{"base": "198.18.160.0/19", "size": 24}],
    "log-level": "warn",
}


def project_tree(dest: Path) -> Path:
    """The project's files as a user would copy them: what git tracks, plus new unignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
            (dest / name).chmod(src.stat().st_mode & 0o777)
    return dest


# Debian's runc (1.1.x in Debian 12 and 13) has no fix for runc's November 2025 advisories, and the
# lab reaches no other source: its workers accept them, as README's quick start does on Debian.
ACCEPTED_ADVISORIES = "CVE-2025-31133,CVE-2025-52565,CVE-2025-52881"


def node_toml(manager: ManagerHost, address: str = ADDRESS, slices_per_gpu: int = SLICES_PER_GPU,
              image: str | None = None) -> str:
    return f"""\
[nvidia]
toolkit_apt_source = "deb [trusted=yes] file:/srv/toolkit-repo ./"

[docker]
accept_advisories = "{ACCEPTED_ADVISORIES}"

[gpu]
slices_per_gpu = {slices_per_gpu}

[registry]
address = "{manager.registry_address}"
ca_cert = "/etc/gpuswarm-node/registry-ca.crt"

[image]
name = "{image or manager.image}"

[swarm]
manager = "{manager.address}"
advertise_addr = "{address}"
"""


README = REPO / "README.md"
QUICK_START = re.compile(r"<!-- quick-start:start -->\n```sh\n(.*?)```\n<!-- quick-start:end -->", re.S)
# The lab's one departure from a cloud machine: NVIDIA's apt repository is out of its reach, so
# the machine's environment names the stand-in toolkit's local repository, through the tool's own
# GPUSWARM_<SECTION>_<KEY> override (kept by sudo), as a site could for a mirror.
LAB_ENVIRONMENT = {"GPUSWARM_NVIDIA_TOOLKIT_APT_SOURCE": "deb [trusted=yes] file:/srv/toolkit-repo ./"}


def quick_start_script(manager: ManagerHost) -> str:
    """README.md's quick-start commands, exactly, with the lab's addresses in place of the
    README's: its image, its registry and its SSH host (in that order, each name containing the
    next)."""
    match = QUICK_START.search(README.read_text())
    assert match, "README.md has no quick start between <!-- quick-start:start --> and <!-- quick-start:end -->"
    script = match.group(1)
    for theirs, ours in (("hub.example.org:5000/singleuser-torch-nvidia:latest", manager.image),
                         ("hub.example.org:5000", manager.registry_address),
                         ("hub.example.org", manager.address)):
        assert theirs in script, f"the quick start no longer names {theirs}"
        script = script.replace(theirs, ours)
    return script


class Worker:
    """The fresh machine plus a record of everything the product printed on it."""

    def __init__(self, machine: FreshMachine) -> None:
        self.machine = machine
        self.outputs: list[str] = []

    def quick_start(self, script: str, umask: str = "022") -> subprocess.CompletedProcess:
        """The quick start's commands, typed by the machine's user in a login shell, stopping at
        the first that fails; everything (sudo included) under `umask`."""
        sudoers = "/etc/sudoers.d/lab-umask"
        # sudo's umask is the union of the user's and sudoers' (default 0022): 0 lets the user's through.
        self.sh(f"echo 'Defaults umask=0{umask}' > {sudoers} && chmod 0440 {sudoers}")
        try:
            result = self.machine.run(["runuser", "-u", USER, "--", "bash", "-lec", f"cd && umask {umask}\n{script}"],
                                      check=False, timeout=1800)
        finally:
            self.sh(f"rm -f {sudoers}")
        self.outputs += [result.stdout, result.stderr]
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.machine.run(script, check=check, timeout=timeout)

    def as_user(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """`sudo COMMAND` typed by the machine's user, as on a new cloud instance."""
        script = f"cd {HOME}/gpuswarm-node && {command}"
        result = self.machine.run(["runuser", "-u", USER, "--", "bash", "-lc", script], check=False,
                                  timeout=timeout)
        self.outputs += [result.stdout, result.stderr]
        return result

    def gsn(self, *args: str) -> subprocess.CompletedProcess:
        return self.as_user("sudo gpuswarm-node " + shlex.join(args))

    def status(self) -> tuple[int, dict[str, str]]:
        result = self.gsn("status", "--json", "--config", CONFIG)
        report = json.loads(result.stdout)
        return result.returncode, {s["name"]: s["state"] for s in report["steps"]}

    def docker_pid(self) -> str:
        return self.sh("systemctl show --property=MainPID --value docker").stdout.strip()

    def node_id(self) -> str:
        return self.sh("docker info --format '{{.Swarm.NodeID}}'").stdout.strip()


@contextlib.contextmanager
def provisioned_worker(network: LabNetwork, manager: ManagerHost, work_dir: Path, toolkit_repo: Path,
                       nvml_lib_dir: Path, name: str = NAME, address: str = ADDRESS,
                       suite: str = lab_machine.rootfs.SUITE, readme: bool = False,
                       gpus: list[fake_nvml.FakeGpu] = GPUS, slices_per_gpu: int = SLICES_PER_GPU,
                       image: str | None = None, first: bool = True,
                       driver_repo: Path | None = None) -> Iterator[Worker]:
    """Boot and provision the fresh worker (`readme`: as README.md's quick start expects, see the
    module's doc); on exit remove it from the swarm, power it off, and remove its netns, also when
    provisioning failed half-way. `image` (default: the manager's test image) is what its node.toml
    pulls; `first=False` for a second worker beside a running one (the first removes what a crashed
    run left). `driver_repo` (driver_deb.build_repo, the benchmark's): the GPUs are on the PCI bus
    with no driver, which the nvidia-driver step installs from that repository; by default the
    driver is there (the fake NVML installed), as the tests want it."""
    if first:
        lab_machine.cleanup_stale()
    network.enable_outbound_nat()  # apt and pip inside need the package registries
    host = network.add_host(name, address)
    machine = FreshMachine(host, work_dir / name, name=name, suite=suite)
    try:
        with timed("fresh machine: unpack and boot"):
            machine.start()
        if driver_repo is not None:
            # The GPUs with no driver yet: setup installs it (and with it the fake NVML).
            driver_deb.install_into(machine, driver_repo, gpus)
        else:
            # The "hardware": two GPUs behind the fake libnvidia-ml.so.1.
            fake_nvml.install_into(machine.rootfs, gpus, lib_dir=nvml_lib_dir)
        machine.copy_in(toolkit_repo, "/srv/toolkit-repo")
        machine.run(["sh", "-c", "mkdir -p /etc/docker && cat > /etc/docker/daemon.json"],
                    input=json.dumps(PRESEEDED_DAEMON_JSON, indent=2))
        if readme:
            # What the quick start's scp brought: the release tarball as tools/release.sh names it,
            # with its .sha256 (here made from the working tree, uncommitted files included), the
            # registry's CA, the SSH key.
            tree = project_tree(work_dir / f"project-{name}")
            release = work_dir / f"release-{name}"
            release.mkdir(exist_ok=True)
            tarball = release / f"gpuswarm-node-{__version__}.tar.gz"
            subprocess.run(["tar", "-czf", str(tarball), "-C", str(tree), "."], check=True)
            digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
            (release / f"{tarball.name}.sha256").write_text(f"{digest}  {tarball.name}\n")  # as sha256sum writes it
            for src, dest in ((tarball, tarball.name), (release / f"{tarball.name}.sha256", f"{tarball.name}.sha256"),
                              (manager.ca_cert_path, "registry-ca.crt"), (manager.client_key_path, "id_ed25519")):
                machine.copy_in(src, f"{HOME}/{dest}", owner=USER)
            machine.run(["chmod", "0600", f"{HOME}/id_ed25519"])
            exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in LAB_ENVIRONMENT.items())
            machine.run(["sh", "-c", "cat > /etc/profile.d/gpuswarm-lab.sh"], input=exports)
            machine.run(["sh", "-c", "cat > /etc/sudoers.d/gpuswarm-lab && chmod 0440 /etc/sudoers.d/gpuswarm-lab"],
                        input=f'Defaults env_keep += "{" ".join(LAB_ENVIRONMENT)}"\n')
        else:
            machine.copy_in(project_tree(work_dir / f"project-{name}"), f"{HOME}/gpuswarm-node", owner=USER)
            machine.copy_in(manager.client_key_path, "/etc/gpuswarm-node/id_ed25519")
            machine.copy_in(manager.known_hosts_path, "/etc/gpuswarm-node/known_hosts")
            machine.copy_in(manager.ca_cert_path, "/etc/gpuswarm-node/registry-ca.crt")
            machine.run(["sh", "-c", f"cat > {CONFIG} && chown {USER}: {CONFIG}"],
                        input=node_toml(manager, address, slices_per_gpu, image))
        yield Worker(machine)
    finally:
        try:
            for node in manager.nodes():
                if node["Status"].get("Addr") == address:
                    manager.docker.nodes.get(node["ID"]).remove(force=True)
        finally:
            try:
                machine.close()
            finally:
                network.remove_host(name)
                TIMINGS.update({f"fresh machine {k}": v for k, v in machine.timings.items() if k in ("close",)})

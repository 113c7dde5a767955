"""Zero-touch: a fresh Debian 12 machine with Debian's cloud-init and a NoCloud seed made by
`hub bundle --cloud-init --tool-url` boots, downloads the tool over HTTPS from the hub, joins the
lab's swarm through the gate and converges, with no command run inside it before the assertions
(which only read). The user-data fits EC2's 16 KB limit. Then a reboot: the boot unit setup
installed runs setup again by itself.

That first boot also meets one bad minute: the hub's sshd refuses the machine from before it boots
until a minute has passed and setup has met the refusal (HubOutage), then answers again. setup
rides it out by itself (node.network_retry), saying each retry, with no traceback.

The machine is the lab's (systemd-nspawn, fake GPUs behind the fake libnvidia-ml.so.1, the
stand-in NVIDIA toolkit in a local apt repository), its root filesystem a cached variant with the
`cloud-init` package. What a cloud would give it, the test puts in its root before the first boot:
the NoCloud seed (/var/lib/cloud/seed/nocloud/{user-data,meta-data}) as a cloud's datasource
would serve it. The hub side is the lab's manager: its sshd's host key and authorized_keys, and the
gate run by this checkout's CLI.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from . import fake_nvml
from . import machine as lab_machine
from .machine import FreshMachine
from .dockerd import kill_and_wait, lab_env
from .network import PortBlock
from .util import TIMINGS, gate_program, wait_for
from .worker import ACCEPTED_ADVISORIES, GPUS, PRESEEDED_DAEMON_JSON

REPO = Path(__file__).resolve().parents[2]
NAME, ADDRESS = "gsn-c1", "198.18.0.51"
# Where the hub serves the tool's tarball to new workers (the README's --tool-url).
TOOL_PORT = 8443
# An HTTPS file server for one directory (argv: directory, port, cert, key), as a site serves the
# tarball from any web server it has.
TOOL_SERVER = """\
import functools, http.server, ssl, sys
directory, port, cert, key = sys.argv[1:]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
server = http.server.ThreadingHTTPServer(("198.18.0.1", int(port)), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
SEED = "var/lib/cloud/seed/nocloud"
# First boot: cloud-init, then setup.sh (pip), setup (apt: Docker and the toolkit; the image).
FIRST_BOOT_TIMEOUT = 1200.0
# Lab-only cloud-init settings, each because the lab is not a cloud:
LAB_CLOUD_CFG = """\
# Lab only: the seed directory is the datasource; no cloud's metadata service is probed.
datasource_list: [NoCloud, None]
# Lab only: the lab configures the machine's network from outside (its netns); cloud-init's
# fallback DHCP configuration would fight it.
network: {config: disabled}
# Lab only: the rootfs generated no locale; Debian's locale-gen ignores the one cloud-init names
# (en_US.UTF-8), so its update-locale would fail. C.UTF-8 is built into libc.
locale: C.UTF-8
"""

# The bad minute: the hub's sshd refuses the machine for at least this long from before its first
# boot, and until setup has said this many retries of its SSH to the hub (setup starts after
# cloud-init and pip, so a minute alone could be over before setup meets it).
OUTAGE_SECONDS = 60.0
OUTAGE_RETRIES = 2
# setup's line for each retry (gpuswarm_node/retry.py, the "network" reporter action of its
# preflight's SSH to the manager): (the cause, the wait in seconds).
RETRY_LINE = re.compile(r"SSH to the manager \S+ failed: (.+); trying again in (\d+) s "
                        r"\(retrying for \d+ s more, node\.network_retry\)")
OUTPUT_LOG = "var/log/cloud-init-output.log"


class HubOutage:
    """The hub's SSH port refusing one machine (PortBlock) from `start`, before the machine boots,
    until its boot (the console log's creation: nspawn starting) is OUTAGE_SECONDS old and its
    cloud-init output log holds OUTAGE_RETRIES retry lines, or until `close`. Both logs are read
    from the host, through the machine's disk. Records what it saw, in seconds from the boot."""

    def __init__(self, block: PortBlock, console: Path, log: Path) -> None:
        self.block, self.console, self.log = block, console, log
        self.booted: float | None = None  # time.monotonic() when the boot began
        self.lifted_after: float | None = None  # when the hub answered again
        self.refused = 0  # connection attempts the hub refused meanwhile
        self.retries_seen: list[float] = []  # when each retry line appeared, while the hub refused
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hub outage", daemon=True)

    def start(self) -> "HubOutage":
        self.block.start()
        self._thread.start()
        return self

    def _since_boot(self) -> float:
        return time.monotonic() - self.booted if self.booted is not None else 0.0

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if self.booted is None:
                if not self.console.exists():
                    continue
                self.booted = time.monotonic()
            try:
                seen = len(RETRY_LINE.findall(self.log.read_text(errors="replace")))
            except OSError:
                seen = 0  # not written yet
            self.retries_seen += [round(self._since_boot(), 1)] * (seen - len(self.retries_seen))
            if self._since_boot() >= OUTAGE_SECONDS and seen >= OUTAGE_RETRIES:
                self._lift()
                return

    def _lift(self) -> None:
        if self.lifted_after is None:
            self.refused = self.block.refused()
            self.block.close()
            self.lifted_after = round(self._since_boot(), 1)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self._lift()
        finally:
            self.block.close()


def slim_tool(dest: Path) -> Path:
    """The tool as README's user-data section makes it (setup.sh, pyproject.toml, the package and
    its templates), from the working tree, uncommitted files included."""
    tree = dest / "tool"
    for name in ("setup.sh", "pyproject.toml"):
        tree.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    for name in ("gpuswarm_node", "templates"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    tarball = dest / "gpuswarm-node.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(tree), "."], check=True)
    return tarball


@pytest.fixture(scope="module")
def tool_url(manager, lab_tmp):
    """The slim tool tarball, served over HTTPS from the manager's address with a certificate of
    the lab's CA; yields (its URL, the tarball)."""
    served = lab_tmp / "cloud-init-tool"
    served.mkdir()
    tarball = slim_tool(served)
    cert = manager.ca.issue_server_cert(manager.address, stem="tool-server")
    log = open(lab_tmp / "tool-server.log", "ab")
    server = subprocess.Popen([*manager.host.nsenter_prefix(), sys.executable, "-c", TOOL_SERVER, str(served),
                               str(TOOL_PORT), str(cert.cert_path), str(cert.key_path)],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=lab_env(),
                              start_new_session=True)
    try:
        url = f"https://{manager.address}:{TOOL_PORT}/{tarball.name}"

        def listening() -> bool:
            try:
                socket.create_connection((manager.address, TOOL_PORT), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for("the tool server listening", listening, timeout=30)
        yield url, tarball
    finally:
        kill_and_wait([server.pid])
        log.close()


@pytest.fixture(scope="module")
def bundle(manager, lab_tmp, tool_url):
    """`hub bundle --cloud-init --tool-url` run as on the hub, against the manager's sshd files;
    the manager's authorized_keys is restored afterwards."""
    url, tarball = tool_url
    ssh = manager.client_key_path.parent
    authorized = ssh / "authorized_keys"
    original = authorized.read_text()
    work = lab_tmp / "cloud-init-hub"
    work.mkdir()
    program = gate_program(work)
    out = work / NAME
    argv = [sys.executable, "-m", "gpuswarm_node.cli", "hub", "bundle", "--node", NAME, "--out", str(out),
            "--manager", manager.address, "--ssh-user", "root", "--ssh-port", str(manager.ssh_port),
            "--registry", manager.registry_address, "--registry-ca", str(manager.ca_cert_path),
            "--image", manager.image, "--host-key", str(ssh / "ssh_host_ed25519_key.pub"),
            "--authorized-keys", str(authorized), "--program", str(program), "--worker-config", "/dev/null",
            "--cloud-init", "--tool", str(tarball), "--tool-url", url,
            # Lab only: NVIDIA's repository is out of the lab's reach; the stand-in toolkit's is
            # on the machine (as a site's mirror would be), named through the worker's config.
            "--set", "nvidia.toolkit_apt_source=deb [trusted=yes] file:/srv/toolkit-repo ./",
            # The lab's addresses: Docker would pick another interface's otherwise.
            "--set", f"swarm.advertise_addr={ADDRESS}",
            "--set", "node.reboot=auto", "--set", f"docker.accept_advisories={ACCEPTED_ADVISORIES}"]
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"authorised the key for node {NAME}" in done.stdout
        yield out, done
    finally:
        authorized.write_text(original)


@pytest.fixture(scope="module")
def machine(network, manager, lab_tmp, toolkit_repo, nvml_lib_dir, bundle):
    """The fresh machine, booted once with the seed in place; the first boot is over (systemd
    running or degraded) when this returns, so cloud-init's run of setup has ended."""
    out, _ = bundle
    lab_machine.cleanup_stale()
    network.enable_outbound_nat()  # apt and pip inside need the package registries
    host = network.add_host(NAME, ADDRESS)

    class SeededMachine(FreshMachine):
        def _prepare(self) -> None:
            super()._prepare()
            root = self.rootfs
            # The "hardware" and the site: fake GPUs, the stand-in toolkit's repository, the
            # operator's daemon.json keeping Docker's networks in the lab's range (worker.py).
            fake_nvml.install_into(root, GPUS, lib_dir=nvml_lib_dir)
            shutil.copytree(toolkit_repo, root / "srv/toolkit-repo")
            (root / "etc/docker").mkdir(parents=True, exist_ok=True)
            (root / "etc/docker/daemon.json").write_text(json.dumps(PRESEEDED_DAEMON_JSON, indent=2))
            # What the cloud serves: the seed, and the lab-only cloud-init settings.
            (root / SEED).mkdir(parents=True)
            shutil.copyfile(out / "user-data", root / SEED / "user-data")
            (root / SEED / "meta-data").write_text(f"instance-id: {NAME}-1\nlocal-hostname: {NAME}\n")
            (root / "etc/cloud/cloud.cfg.d/99-lab.cfg").write_text(LAB_CLOUD_CFG)
            # Lab only: a cloud image trusts the public CAs a site's tool URL is signed by; this
            # machine trusts the lab's CA, which signed the manager's tool server.
            with open(root / "etc/ssl/certs/ca-certificates.crt", "a") as bundle_file:
                bundle_file.write(manager.ca_cert_path.read_text())

    # A Debian cloud image has locales too: without it cloud-init's locale module fails (update-locale).
    m = SeededMachine(host, lab_tmp / NAME, name=NAME, extra_packages=("cloud-init", "locales"))
    m.boot_timeout = FIRST_BOOT_TIMEOUT
    m.hub_outage = HubOutage(PortBlock(manager.host, host, manager.ssh_port), m.console_log,
                             m.rootfs / OUTPUT_LOG)
    try:
        m.hub_outage.start()
        try:
            m.start()
        finally:
            m.hub_outage.close()
        yield m
    finally:
        try:
            for node in manager.nodes():
                if node["Description"].get("Hostname") == NAME:
                    manager.docker.nodes.get(node["ID"]).remove(force=True)
        finally:
            m.close()
            network.remove_host(NAME)


def test_the_user_data_fits_ec2_and_passes_cloud_inits_own_schema_check(machine, bundle, tool_url):
    out, made = bundle
    size = (out / "user-data").stat().st_size
    assert size < 16384, f"user-data is {size} bytes"  # EC2's limit
    assert f"cloud-init user-data: {out / 'user-data'} ({size} bytes)" in made.stdout
    assert "over EC2" not in made.stdout
    # The first boot's script (which fetches the tool from the URL) is on the machine as written.
    script = machine.run(["cat", "/usr/local/sbin/gpuswarm-node-firstboot"]).stdout
    assert tool_url[0] in script and script.startswith("#!/bin/sh\n")
    done = machine.run(["cloud-init", "schema", "--config-file", f"/{SEED}/user-data"], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid" in done.stdout


def test_the_user_data_that_carries_the_tool_passes_the_schema_check_too(machine, manager, lab_tmp, tool_url):
    # Without --tool-url the tarball rides in the user-data (NoCloud, clouds that take ~200 KB).
    out = lab_tmp / "cloud-init-embedded"
    done = subprocess.run([sys.executable, "-m", "gpuswarm_node.cli", "hub", "bundle", "--node", "gsn-c2",
                           "--out", str(out), "--manager", manager.address, "--ssh-user", "root",
                           "--host-key", str(manager.client_key_path.parent / "ssh_host_ed25519_key.pub"),
                           "--authorized-keys", str(lab_tmp / "embedded-authorized_keys"),
                           "--program", str(lab_tmp / "cloud-init-hub" / "gpuswarm-node"),
                           "--worker-config", "/dev/null", "--cloud-init", "--tool", str(tool_url[1])],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "over EC2's 16384-byte user-data limit; give --tool-url URL" in done.stdout
    shutil.copyfile(out / "user-data", machine.rootfs / "root/embedded-user-data")
    check = machine.run(["cloud-init", "schema", "--config-file", "/root/embedded-user-data"], check=False)
    assert check.returncode == 0 and "Valid" in check.stdout, check.stdout + check.stderr


def test_first_boot_joins_and_converges_with_nothing_run_inside(machine, manager, bundle):
    out, made = bundle
    log = machine.run(["cat", "/var/log/cloud-init-output.log"], check=False).stdout
    result = machine.run(["cloud-init", "status", "--long"], check=False)
    assert "status: done" in result.stdout, result.stdout + log[-4000:]
    # The files are where the config says, with their modes, root's.
    modes = machine.run(["stat", "-c", "%n %a %U", "/etc/gpuswarm-node/id_ed25519", "/etc/gpuswarm-node/known_hosts",
                         "/etc/gpuswarm-node/config.toml", "/etc/gpuswarm-node/registry-ca.crt"]).stdout.split("\n")
    assert modes[:4] == ["/etc/gpuswarm-node/id_ed25519 600 root", "/etc/gpuswarm-node/known_hosts 644 root",
                         "/etc/gpuswarm-node/config.toml 644 root", "/etc/gpuswarm-node/registry-ca.crt 644 root"]
    # The manager's swarm has the node, ready, under its host name: it joined through the gate.
    node = next((n for n in manager.nodes() if n["Description"].get("Hostname") == NAME), None)
    assert node is not None, log[-4000:]
    assert node["Status"]["State"] == "ready" and node["Status"]["Addr"] == ADDRESS
    assert node["Spec"]["Labels"].get("gpuswarm.gpu.model") == "NVIDIA-A100-SXM4-40GB"
    # Read-only: every check of the node is ok, the boot unit among them.
    status = machine.run(["gpuswarm-node", "status", "--json"], check=False)
    states = {s["name"]: s["state"] for s in json.loads(status.stdout)["steps"]}
    assert status.returncode == 0, states
    assert states["boot"] == "ok" and states["swarm-join"] == "ok"
    # Nothing secret in cloud-init's log of setup's run.
    key = (out / "id_ed25519").read_text().splitlines()[1]
    assert key not in log and not re.search(r"SWMTKN-1-(?!<redacted>)", log)
    assert manager.worker_join_token() not in log
    assert made.stdout.count("SHA256:") == 1 and key not in made.stdout


def test_first_boot_rode_out_a_hub_that_did_not_answer_for_its_first_minute(machine):
    outage = machine.hub_outage
    log = machine.run(["cat", "/" + OUTPUT_LOG]).stdout
    retries = RETRY_LINE.findall(log)
    # The hub refused this machine's SSH from before its boot for the first minute at least, and
    # until setup had met the refusal: its connections were refused, each retry said in one line.
    assert outage.lifted_after is not None and outage.lifted_after >= OUTAGE_SECONDS, \
        (outage.lifted_after, outage.retries_seen, outage.refused)
    assert len(outage.retries_seen) >= OUTAGE_RETRIES and outage.refused >= OUTAGE_RETRIES, log[-4000:]
    assert all(cause.endswith("Connection refused") for cause, _wait in retries), retries
    # What the bad minute cost the boot: setup's waits between its tries (a refused try takes no time).
    TIMINGS["cloud-init first boot, with the hub's bad minute"] = machine.timings["boot"]
    TIMINGS["  of which setup waited for the hub (its retries)"] = sum(int(wait) for _cause, wait in retries)
    TIMINGS["  setup's first retry, after the boot began"] = outage.retries_seen[0]
    TIMINGS["  the hub answered again, after the boot began"] = outage.lifted_after
    # No traceback from paramiko or any library, in setup's output nor anywhere in the boot's journal.
    assert "Traceback" not in log, log[-4000:]
    journal = machine.run(["journalctl", "-b", "--no-pager", "-o", "cat"]).stdout
    assert "Traceback" not in journal and "Exception (client)" not in journal
    # It converged by itself, in that one run: no setup ran again (the boot unit did not need to),
    # and every step of the run is ok.
    records = [json.loads(line) for line in machine.read_file("/var/log/gpuswarm-node/runs.jsonl").splitlines()]
    assert len({r["run"] for r in records}) == 1, records
    assert {r["step"]: r["after"] for r in records if r["after"] not in ("ok", "skipped")} == {}
    assert any(r["step"] == "swarm-join" and r["changed"] for r in records)


def test_after_a_reboot_the_boot_unit_runs_setup_again(machine, manager):
    before = machine.run(["systemctl", "show", "-p", "InvocationID", "--value",
                          "gpuswarm-node-boot.service"]).stdout.strip()
    assert machine.run(["systemctl", "is-enabled", "gpuswarm-node-boot.service"]).stdout.strip() == "enabled"
    # The user-data's own unit, which would run the first boot's script again had it ended before
    # setup installed its boot unit, is enabled too (cloud-init's runcmd does that first).
    assert machine.run(["systemctl", "is-enabled", "gpuswarm-node-firstboot.service"]).stdout.strip() == "enabled"
    machine.boot_timeout = lab_machine.BOOT_TIMEOUT
    machine.reboot()

    def finished() -> str | None:
        show = machine.run(["systemctl", "show", "-p", "ActiveState", "-p", "Result", "-p", "ExecMainStatus",
                            "-p", "InvocationID", "gpuswarm-node-boot.service"]).stdout
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        if props.get("InvocationID") and props["ActiveState"] in ("inactive", "failed"):
            return json.dumps(props)
        return None

    props = json.loads(wait_for("the boot unit's setup to end", finished, timeout=600))
    assert props["InvocationID"] != before
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), \
        machine.run(["journalctl", "-u", "gpuswarm-node-boot.service", "--no-pager"], check=False).stdout[-4000:]
    node = next(n for n in manager.nodes() if n["Description"].get("Hostname") == NAME)
    assert node["Status"]["State"] == "ready"
    # setup's own reboot was not needed: the driver (fake NVML) was there from the start.
    assert machine.run(["test", "-e", "/var/lib/gpuswarm-node/auto-reboot"], check=False).returncode == 1
    # The boot unit exists, so the first boot's unit stood aside: systemd checked its condition
    # at this boot (no ordering cycle kept it from being considered) and did not run it.
    firstboot = machine.run(["systemctl", "show", "-p", "ConditionResult", "-p", "ConditionTimestampMonotonic",
                             "-p", "ExecMainStartTimestampMonotonic", "gpuswarm-node-firstboot.service"]).stdout
    props = dict(line.split("=", 1) for line in firstboot.splitlines() if "=" in line)
    assert props["ConditionResult"] == "no" and props["ConditionTimestampMonotonic"] != "0", props
    assert props["ExecMainStartTimestampMonotonic"] == "0", props
    cycle = machine.run(["journalctl", "-b", "--no-pager", "-o", "cat", "--grep", "ordering cycle"], check=False)
    assert "firstboot" not in cycle.stdout, cycle.stdout

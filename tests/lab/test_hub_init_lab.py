"""`hub init` on a bare lab machine (Debian 13, booted with systemd): `sudo ./setup.sh hub init`
from a copy of the project, as an operator runs it, then everything asserted on real state: the
swarm it manages, the overlay network, the CA and the keys' owners and modes, the registry serving
TLS with the hub's certificate, an image pushed to it, a second run that changes nothing, a reboot
it survives, and `hub reset`.

Debian 13: its docker.io (26) is recent enough for a manager (Debian 12's 20.10 is not; the lab
reaches no docker-ce). The registry is Debian's docker-registry package, so no image from the
internet is needed; the two image builds (bases from quay.io and Docker Hub) and so the JupyterHub
service are turned off (hub.notebook_base, hub.jupyterhub_base empty) and a one-file image is
pushed instead. hub.name is the machine's
address, so no DNS is needed either.
"""

from __future__ import annotations

import json
import shlex

import pytest

from . import machine as lab_machine
from .machine import FreshMachine
from .util import timed
from .worker import ACCEPTED_ADVISORIES, project_tree

NAME, ADDRESS = "gsn-hub1", "198.18.0.33"
SRC = "/root/gpuswarm-node"
CONFIG = "/root/hub.toml"
REGISTRY = f"{ADDRESS}:5000"
HUB_TOML = f"""\
[hub]
name = "{ADDRESS}"
notebook_base = ""  # the lab may reach no image registry; a one-file image is pushed below instead
jupyterhub_base = ""  # likewise: JupyterHub's image needs a Python image from Docker Hub

[swarm]
advertise_addr = "{ADDRESS}"

[docker]
accept_advisories = "{ACCEPTED_ADVISORIES}"
"""


@pytest.fixture(scope="module")
def hub(network, lab_tmp):
    lab_machine.cleanup_stale()
    network.enable_outbound_nat()  # apt and pip inside need the package registries
    host = network.add_host(NAME, ADDRESS)
    machine = FreshMachine(host, lab_tmp / NAME, name=NAME, suite="trixie")
    try:
        with timed("hub machine: unpack and boot"):
            machine.start()
        machine.copy_in(project_tree(lab_tmp / f"project-{NAME}"), SRC)
        machine.run(["sh", "-c", f"cat > {CONFIG}"], input=HUB_TOML)
        yield machine
    finally:
        try:
            machine.close()
        finally:
            network.remove_host(NAME)


def sh(machine: FreshMachine, script: str):
    return machine.run(script, check=False, timeout=1800)


def hub_init(machine: FreshMachine, *args: str):
    return sh(machine, f"cd {SRC} && ./setup.sh hub init --config {CONFIG} {' '.join(map(shlex.quote, args))}")


@pytest.fixture(scope="module")
def first_run(hub):
    dry = hub_init(hub, "--dry-run", "--json")
    with timed("hub init on a bare machine: sudo ./setup.sh hub init"):
        real = hub_init(hub)
    return dry, real


def test_a_dry_run_on_the_bare_machine_says_what_it_would_do(first_run):
    dry, _real = first_run
    assert dry.returncode == 0, dry.stdout[-4000:] + dry.stderr[-4000:]
    plan = json.loads(dry.stdout)
    states = {s["name"]: s["state"] for s in plan["steps"]}
    assert states["docker"] == "needs-change" and states["hub-ca"] == "needs-change"
    assert states["hub-swarm"] == "pending" and states["hub-certificate"] == "pending"


def test_the_bare_machine_becomes_a_hub(hub, first_run):
    _dry, real = first_run
    assert real.returncode == 0, real.stdout[-4000:] + real.stderr[-4000:]
    assert real.stdout.rstrip().endswith("hub converged.")
    info = json.loads(sh(hub, "docker info --format '{{json .Swarm}}'").stdout)
    assert info["LocalNodeState"] == "active" and info["ControlAvailable"] and info["NodeAddr"] == ADDRESS
    network = json.loads(sh(hub, "docker network inspect --format '{{json .}}' jupyterhub").stdout)
    assert network["Driver"] == "overlay" and network["Attachable"] is True


def test_the_keys_are_roots_alone(hub, first_run):
    modes = sh(hub, "stat -c '%n %a %U' /etc/gpuswarm-node/hub/private /etc/gpuswarm-node/hub/private/ca.key "
                    "/etc/gpuswarm-node/hub/private/registry.key /etc/gpuswarm-node/hub/ca.crt").stdout.split("\n")
    assert modes[:4] == ["/etc/gpuswarm-node/hub/private 700 root", "/etc/gpuswarm-node/hub/private/ca.key 600 root",
                         "/etc/gpuswarm-node/hub/private/registry.key 600 root",
                         "/etc/gpuswarm-node/hub/ca.crt 644 root"]


def test_the_registry_serves_tls_with_the_hubs_certificate_and_takes_a_push(hub, first_run):
    # What a worker does: trust the CA hub bundle ships, and reach the registry by its name.
    answer = sh(hub, f"python3 -c \"import ssl, urllib.request; print(urllib.request.urlopen("
                     f"'https://{REGISTRY}/v2/', context=ssl.create_default_context("
                     f"cafile='/etc/gpuswarm-node/hub/ca.crt')).status)\"")
    assert answer.stdout.strip() == "200", answer.stderr
    # A one-file image, imported (no image from the internet) and pushed through the hub's Docker.
    push = sh(hub, f"set -e; d=$(mktemp -d); echo hello > $d/hello; tar -C $d -cf - hello | docker import - "
                   f"{REGISTRY}/probe:1 >/dev/null; docker push {REGISTRY}/probe:1")
    assert push.returncode == 0, push.stdout + push.stderr


def test_a_second_run_changes_nothing_and_status_says_converged(hub, first_run):
    again = hub_init(hub, "--json")
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout)["changed"] == []
    status = sh(hub, f"gpuswarm-node hub init --status --config {CONFIG}")
    assert status.returncode == 0, status.stdout + status.stderr


def test_the_registry_survives_a_reboot(hub, first_run):
    hub.reboot()
    assert sh(hub, "systemctl is-active docker-registry.service").stdout.strip() == "active"
    status = sh(hub, f"gpuswarm-node hub init --status --config {CONFIG}")
    assert status.returncode == 0, status.stdout + status.stderr


def test_hub_reset_reverts_what_hub_init_made(hub, first_run):
    done = sh(hub, f"gpuswarm-node hub reset --yes --config {CONFIG}")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sh(hub, "systemctl is-enabled docker-registry.service").stdout.strip() != "enabled"
    assert sh(hub, "docker info --format '{{.Swarm.LocalNodeState}}'").stdout.strip() == "inactive"
    assert sh(hub, "test -e /etc/gpuswarm-node/hub/private/ca.key").returncode != 0

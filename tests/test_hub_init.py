"""`hub init` as a plan of the engine: the dry run on a fresh machine, a run on a machine with
Docker that converges and a second run that changes nothing, the preflight checks by name, `hub
reset` from the hub's own journal, and bad input on the command line (one sentence, exit 2, no
traceback, nothing written)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from gpuswarm_node import config, hub_init, hub_tls
from gpuswarm_node.context import Context
from gpuswarm_node.engine import State, run_plan
from gpuswarm_node.hub_init import (CA_CERT, REGISTRY_CERT, REGISTRY_UNIT, HUB_STEP_NAMES, PREFLIGHT, hub_steps,
                                    init_plan)
from gpuswarm_node.journal import Journal, Undo
from gpuswarm_node.reset import UndoStep, plan as undo_plan
from gpuswarm_node.steps import apt
from gpuswarm_node.steps.hub_notebook import HubJupyterhubImageStep, HubNotebookImageStep, notebook_image

from .fakes import FakeClock, FakeDocker, FakeHost

HUB = {"hub": {"name": "hub.example.org"}}
INSTALL = "apt-get -o DPkg::Lock::Timeout=600 install --yes --no-install-recommends docker-registry"
NETWORK = "docker network create --driver overlay --attachable -- jupyterhub"


def hub_machine(tables=None, docker_running=True, **facts):
    """A machine as hub init finds it: systemd, Docker 26 installed and running (or not yet), in
    no swarm, nothing of the hub's; the registry's effects as systemd and apt would leave them."""
    # The tool as setup.sh installs it (the gate workers' keys are forced to run).
    host = FakeHost(dirs={"/run/systemd/system"}, files={"/opt/gpuswarm-node/venv/bin/gpuswarm-node": "#!python\n"},
                    links={"/usr/local/bin/gpuswarm-node": "/opt/gpuswarm-node/venv/bin/gpuswarm-node"}, facts={
        "package_installed": {"docker.io": docker_running, "docker-ce": False, "docker-registry": False},
        "unit_file_state": {"docker": "enabled" if docker_running else "disabled", REGISTRY_UNIT: "disabled"},
        "active_state": {"docker": "active" if docker_running else "inactive", REGISTRY_UNIT: "inactive"},
        "package_version": {"runc": "1.3.3+ds1-1"},
        "apt_candidate": {"docker.io": "26.1.5+dfsg1-9"},
        "apt_shows": {"docker-cli": False},
        "listening_ports": [22],
        "units_show": {}, "one_unit_show": {"docker": ""},
        "docker_network": {"jupyterhub": None},
        **facts})
    host.effects = {
        INSTALL: {"facts": {"package_installed": {"docker-registry": True}}},
        f"systemctl enable {REGISTRY_UNIT}": {"facts": {"unit_file_state": {REGISTRY_UNIT: "enabled"}}},
        f"systemctl restart {REGISTRY_UNIT}": {"facts": {"active_state": {REGISTRY_UNIT: "active"}}},
        NETWORK: {"facts": {"docker_network": {"jupyterhub": {"Driver": "overlay", "Attachable": True}}}},
    }
    docker = FakeDocker(reachable=docker_running, daemon_info={"ServerVersion": "26.1.5"})
    ctx = Context(config=config.from_tables(HUB if tables is None else tables), host=host, docker_factory=lambda: docker,
                  given_facts=host.facts)
    # The registry holds neither image until it is pushed; the hub answers once its service is made.
    for step in (HubNotebookImageStep(), HubJupyterhubImageStep()):
        image, tag = step.image(ctx), step.tag(ctx)
        asked = f"{hub_init.registry_address(ctx)} {step.repository} {tag} {CA_CERT}"
        host.facts.setdefault("registry_manifest", {})[asked] = {"missing": f"the registry has no {step.repository}"}
        host.effects[f"docker push -- {image}"] = {"facts": {"registry_manifest": {asked: {"digest": "sha256:0123"}}}}
    host.facts.setdefault("docker_service", {"jupyterhub": None})
    host.facts["hub_api"] = {"127.0.0.1:8000": {"problem": "JupyterHub does not answer (Connection refused)"}}
    swarm_runs_the_hub(host)
    return ctx, host, docker


def swarm_runs_the_hub(host: FakeHost) -> None:
    """`docker service create` makes the service with the label it was given, and JupyterHub then
    answers; `docker service rm` removes it."""
    run = host.run

    def running(argv, **kw):
        result = run(argv, **kw)
        if argv[:3] == ["docker", "service", "create"]:
            label = argv[argv.index("--label") + 1].partition("=")[2]
            host.facts["docker_service"]["jupyterhub"] = {"Spec": {"Labels": {"org.gpuswarm-node.spec": label}}}
            host.facts["hub_api"]["127.0.0.1:8000"] = {"version": "6.1.1"}
        elif argv[:3] == ["docker", "service", "rm"]:
            host.facts["docker_service"]["jupyterhub"] = None
            host.facts["hub_api"]["127.0.0.1:8000"] = {"problem": "JupyterHub does not answer (Connection refused)"}
        return result

    host.run = running


@pytest.fixture(autouse=True)
def no_apt_waits(monkeypatch):
    monkeypatch.setattr(apt, "time", FakeClock())


def registry_serves_its_file(host: FakeHost) -> None:
    """The registry serves the certificate file as it was when its unit was last (re)started
    (systemd's LoadCredential copies it then)."""
    run = host.run

    def restarting(argv, **kw):
        result = run(argv, **kw)
        if argv[:2] == ["systemctl", "restart"] and argv[-1] == REGISTRY_UNIT:
            host.served["127.0.0.1:5000"] = {"sha256": hub_tls.fingerprint(host.files[REGISTRY_CERT])}
        return result

    host.run = restarting


def test_the_plan_names_its_steps_in_order():
    assert tuple(s.name for s in hub_steps()) == HUB_STEP_NAMES
    assert [name for name, _ in PREFLIGHT] == ["hub-name", "docker-version", "swarm-role", "registry-port",
                                               "tls-files", "authenticator", "hub-port"]


def test_a_dry_run_on_a_fresh_machine_says_what_it_would_do_and_changes_nothing():
    ctx, host, docker = hub_machine(docker_running=False)
    report = run_plan(init_plan(), ctx, dry_run=True)
    states = {s.name: s.state for s in report.steps}
    assert states == {"docker": State.NEEDS_CHANGE, "hub-swarm": State.PENDING, "hub-network": State.PENDING,
                      "hub-ca": State.NEEDS_CHANGE, "hub-certificate": State.PENDING,
                      "hub-registry": State.NEEDS_CHANGE, "hub-registry-trust": State.PENDING,
                      "hub-notebook-image": State.PENDING, "hub-jupyterhub-image": State.PENDING,
                      "hub-gate": State.OK, "hub-jupyterhub": State.PENDING}
    assert report.plan_ok and not report.refused
    assert host.actions == [] and docker.calls == []
    registry = next(s for s in report.steps if s.name == "hub-registry")
    assert "+LoadCredential=registry.key:/etc/gpuswarm-node/hub/private/registry.key" in registry.diff


def test_a_machine_with_docker_converges_and_a_second_run_changes_nothing():
    ctx, host, docker = hub_machine()
    registry_serves_its_file(host)
    report = run_plan(init_plan(), ctx)
    assert report.ok, [(s.name, s.state.value, s.detail) for s in report.stoppers]
    assert report.changed == ["hub-swarm", "hub-network", "hub-ca", "hub-certificate", "hub-registry",
                              "hub-registry-trust", "hub-notebook-image", "hub-jupyterhub-image", "hub-jupyterhub"]
    assert docker.calls == ["init"]
    summary = hub_tls.summary(host.files[REGISTRY_CERT], host.read_bytes(hub_init.REGISTRY_KEY), host.files[CA_CERT])
    assert summary["names"] == ["hub.example.org"] and summary["signed_by_ca"] and summary["key_matches"]
    assert host.files["/etc/docker/certs.d/hub.example.org:5000/ca.crt"] == host.files[CA_CERT]
    host.actions.clear()
    again = run_plan(init_plan(), ctx)
    assert again.ok and again.changed == [] and host.actions == []
    assert all(s.detail for s in again.steps), "a converged step says why"


def test_a_new_address_issues_the_certificate_again_and_restarts_the_registry_and_the_hub():
    ctx, host, docker = hub_machine()
    registry_serves_its_file(host)
    assert run_plan(init_plan(), ctx).ok
    ca = host.files[CA_CERT]
    ctx.config = config.from_tables({"hub": {"name": "hub.example.org", "addresses": "10.0.0.5"}})
    ctx.facts.forget()
    report = run_plan(init_plan(), ctx)
    assert report.ok and report.changed == ["hub-certificate", "hub-registry", "hub-jupyterhub"]
    assert "run docker service rm -- jupyterhub" in host.actions  # JupyterHub serves the new certificate
    assert host.files[CA_CERT] == ca, "the CA workers trust is never replaced"
    assert hub_tls.summary(host.files[REGISTRY_CERT], None)["names"] == ["10.0.0.5", "hub.example.org"]


def test_the_run_journals_what_hub_reset_undoes(tmp_path):
    ctx, host, docker = hub_machine()
    ctx.journal = Journal(str(tmp_path / "hub-changes.jsonl"))
    registry_serves_its_file(host)
    assert run_plan(init_plan(), ctx).ok
    undo = undo_plan(ctx.journal.entries())
    ops = [(u.op, u.unit or u.network or u.service or u.image or u.note) for u in undo]
    image, hub_image = notebook_image(ctx), HubJupyterhubImageStep().image(ctx)
    assert ops == [("remove-service", "jupyterhub"),
                   ("keep", f"{hub_image} left in the hub's registry"), ("remove-image", hub_image),
                   ("keep", f"{image} left in the hub's registry"), ("remove-image", image),
                   ("stop-unit", REGISTRY_UNIT), ("disable-unit", REGISTRY_UNIT),
               ("keep", "packages left installed: docker-registry (remove with apt-get purge)"),
               ("remove-network", "jupyterhub"), ("leave-swarm", "")]
    # The network is still there: hub reset removes it, then finds it gone.
    step = UndoStep(Undo("remove-network", network="jupyterhub"))
    check = step.check(ctx)
    assert check.state is State.NEEDS_CHANGE
    assert [a.describe() for a in check.actions] == ["run docker network rm -- jupyterhub"]
    host.facts["docker_network"]["jupyterhub"] = None
    ctx.facts.forget()
    assert step.check(ctx).state is State.OK


# --- preflight --------------------------------------------------------------------------------------

def problem(name: str, ctx) -> str | None:
    return dict(PREFLIGHT)[name](ctx)


def test_hub_name_from_a_host_name_the_certificate_cannot_carry():
    ctx, host, _ = hub_machine({}, **{"file": {"/proc/sys/kernel/hostname": "ip_10_0_0_5\n"}})
    found = problem("hub-name", ctx)
    assert found.startswith("hub.name is empty, so the registry's certificate would carry this machine's host name "
                            "'ip_10_0_0_5', but label 'ip_10_0_0_5' must be 1-63 letters, digits and '-'")
    assert found.endswith("set hub.name to the DNS name (or IP address) workers and browsers reach the hub at")
    ctx, *_ = hub_machine({}, **{"file": {"/proc/sys/kernel/hostname": "hub-1\n"}})
    assert problem("hub-name", ctx) is None


@pytest.mark.parametrize("running, facts, source, fragment", [
    (False, {"apt_candidate": {"docker.io": "20.10.24+dfsg1-1+deb12u1"}}, "distro",
     "apt would install the distribution's docker.io 20.10.24+dfsg1-1+deb12u1, and a swarm manager before Docker "
     "23.0.2 rejects"),
    (False, {"package_installed": {"docker.io": True, "docker-ce": False},
             "package_version": {"docker.io": "20.10.24+dfsg1-1+deb12u1"}}, "distro",
     "remove docker.io (`apt-get purge docker.io`) and set docker.source = \"docker-ce\""),
    (False, {"package_installed": {"docker.io": False, "docker-ce": True},
             "package_version": {"docker-ce": "5:23.0.1-1~debian.12~bookworm"}}, "docker-ce", "Docker 23.0.1"),
])
def test_docker_version_before_23_0_2_is_refused_with_the_fix(running, facts, source, fragment):
    ctx, *_ = hub_machine({**HUB, "docker": {"source": source}}, docker_running=running, **facts)
    found = problem("docker-version", ctx)
    assert found is not None and fragment in found and found.endswith("then run hub init again")


@pytest.mark.parametrize("running, facts, source", [
    (True, {}, "distro"),  # the running daemon's 26.1.5
    (False, {}, "distro"),  # apt would install 26.1.5
    (False, {"apt_candidate": {"docker.io": ""}}, "distro"),  # apt knows none yet: hub-swarm checks it later
    (False, {"apt_candidate": {"docker.io": "20.10.24"}}, "docker-ce"),  # Docker's current release comes instead
])
def test_docker_version_that_works_or_cannot_be_told_yet_passes(running, facts, source):
    ctx, *_ = hub_machine({**HUB, "docker": {"source": source}}, docker_running=running, **facts)
    assert problem("docker-version", ctx) is None


def test_a_worker_of_another_swarm_is_refused_before_anything_changes():
    from gpuswarm_node.probes.docker import SwarmMembership

    ctx, host, docker = hub_machine()
    docker.membership = SwarmMembership("active", "w1", False, ("198.18.0.1:2377",))
    assert problem("swarm-role", ctx).startswith("this node is a worker of another swarm (managers: 198.18.0.1:2377)")
    report = run_plan(init_plan(), ctx)
    assert [p.name for p in report.refused] == ["swarm-role"] and host.actions == [] and docker.calls == []


def test_the_registry_port_in_use_by_another_program():
    ctx, *_ = hub_machine(listening_ports=[22, 5000])
    assert problem("registry-port", ctx) == ("TCP port 5000 is in use by another program (`ss -ltnp 'sport = :5000'` "
                                             "names it): stop it, or set hub.registry_port to a free port")
    # The registry itself holds it: hub init converges its configuration.
    ctx, *_ = hub_machine(listening_ports=[5000], active_state={"docker": "active", REGISTRY_UNIT: "active"})
    assert problem("registry-port", ctx) is None


def test_listening_ports_are_read_from_proc_net_tcp():
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    tcp = header + ("   0: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
                    "   1: 0100007F:0016 0100007F:D2C2 01 00000000:00000000 00:00000000 00000000     0        0 2\n")
    tcp6 = header + "   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0 0 0 0 0 3\n"
    host = FakeHost(files={"/proc/net/tcp": tcp, "/proc/net/tcp6": tcp6})
    ctx = Context(config=config.from_tables(HUB), host=host)
    assert ctx.fact(hub_init.LISTENING_PORTS) == {5000, 443}  # 0x16 is established, not listening


def test_the_operators_tls_files_follow_the_trust_rule(tmp_path, as_root):
    cert, key = hub_tls.make_ca("operator")
    paths = {}
    for name, text, mode in (("hub.crt", cert, 0o644), ("hub.key", key.decode(), 0o644), ("ca.crt", cert, 0o644)):
        (tmp_path / name).write_text(text)
        os.chmod(tmp_path / name, mode)
        paths[name] = str(tmp_path / name)
    ctx, *_ = hub_machine({"hub": {"name": "hub.example.org", "tls_cert": paths["hub.crt"],
                                   "tls_key": paths["hub.key"], "tls_ca": paths["ca.crt"]}})
    report = run_plan(init_plan(), ctx, dry_run=True)
    [refused] = report.refused
    assert refused.name == "tls-files"
    assert refused.problem == (f"hub.tls_key {paths['hub.key']} is readable by other users (mode 644); refusing to "
                               "trust it. Make it a file of root's, readable by root only, not a link.")
    os.chmod(paths["hub.key"], 0o600)
    assert problem("tls-files", ctx) is None


@pytest.mark.parametrize("authenticator", ["dummy", "github"])
def test_an_authenticator_without_its_secret_file_is_refused_before_anything_changes(tmp_path, as_root, authenticator):
    secret = tmp_path / "secret"
    tables = {"hub": {"name": "hub.example.org", "authenticator": authenticator, "secret_file": str(secret),
                      **({"github_client_id": "Iv1abcdef12", "github_org": "my-org"} if authenticator == "github" else {})}}
    ctx, host, docker = hub_machine(tables)
    report = run_plan(init_plan(), ctx)
    [refused] = report.refused
    assert refused.name == "authenticator" and host.actions == [] and docker.calls == []
    assert refused.problem == (f"hub.secret_file {secret} does not exist; refusing to trust it. Make it a file of "
                               "root's, readable by root only, not a link.")
    secret.write_text("\n")
    os.chmod(secret, 0o600)
    assert problem("authenticator", ctx).startswith(f"hub.secret_file {secret} is empty, but the {authenticator} "
                                                    "authenticator needs")
    secret.write_text("hunter2-but-longer\n")
    assert problem("authenticator", ctx) is None
    report = run_plan(init_plan(), ctx, dry_run=True)
    hub = next(s for s in report.steps if s.name == "hub-jupyterhub")
    assert "hunter2" not in json.dumps(report.as_json()), "a secret in the output"
    assert hub.state is State.PENDING


def test_the_hub_port_in_use_by_another_program():
    ctx, *_ = hub_machine(listening_ports=[22, 8000])
    assert problem("hub-port", ctx) == ("TCP port 8000 is in use by another program (`ss -ltnp 'sport = :8000'` names "
                                        "it): stop it, or set hub.port to a free port")
    ctx, *_ = hub_machine(listening_ports=[8000], docker_service={"jupyterhub": {"Spec": {"Name": "jupyterhub"}}})
    assert problem("hub-port", ctx) is None  # the hub's own service publishes it


# --- the command line ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sets, sentence", [
    (["hub.name=hub_1.example.org"], "[hub] name cannot be carried by the registry's certificate, got "
                                     "'hub_1.example.org': label 'hub_1' must be 1-63 letters, digits and '-'"),
    (["hub.addresses=10.0.0.5, [2001:db8::1]"], "[hub] addresses holds '[2001:db8::1]', which the registry's "
                                                "certificate cannot carry"),
    (["hub.registry_port=70000"], "[hub] registry_port must be a TCP port (1-65535), got 70000."),
    (["hub.network=-net"], "[hub] network must be a Docker network name"),
    (["hub.tls_cert=/etc/ssl/hub.crt"], "[hub] tls_cert is set, but hub.tls_key and hub.tls_ca not"),
    (["hub.tls_cert=/etc/ssl/hub.crt", "hub.tls_key=/etc/ssl/my key", "hub.tls_ca=/etc/ssl/ca.crt"],
     "[hub] tls_key must be a path without spaces or '%'"),
    (["hub.tls_cert=hub.crt", "hub.tls_key=/k", "hub.tls_ca=/c"], "[hub] tls_cert must be an absolute path"),
    (["hub.authenticator=dummy"], "[hub] secret_file must name the file holding the shared password (authenticator "
                                  "= dummy). Write it to a file of root's, readable by root only"),
    (["hub.authenticator=github", "hub.github_org=my-org"], "[hub] github_client_id must be set with authenticator = "
                                                             "github"),
    (["hub.authenticator=ldap"], "[hub] authenticator (--set hub.authenticator) must be one of native, dummy, "
                                 "github, got 'ldap'."),
    (["hub.admin_users=alice,-rf"], "[hub] admin_users holds '-rf', which is not a user name"),
    (["hub.port=5000"], "[hub] port must differ from hub.registry_port (5000)"),
    (["hub.max_age=60"], "[hub] max_age must be 0 or from 600 to 2678400 seconds, got 60."),
])
def test_bad_hub_configuration_is_one_sentence_with_the_fix_and_nothing_written(gsn, tmp_path, sets, sentence):
    args = [a for s in sets for a in ("--set", s)]
    done = gsn("hub", "init", "--config", os.devnull, *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and sentence in line and "Traceback" not in done.stderr
    assert not (tmp_path / "host-state" / "var" / "lib" / "upper" / "gpuswarm-node").exists()


def test_a_port_in_use_refuses_hub_init_before_anything_changes(gsn, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = gsn("hub", "init", "--config", os.devnull, "--set", "hub.name=hub.example.org", "--set",
                   f"hub.registry_port={port}", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    refused = {p["name"]: p.get("detail") for p in report["preflight"] if not p["ok"]}
    assert refused["registry-port"] == (f"TCP port {port} is in use by another program (`ss -ltnp 'sport = :{port}'` "
                                        "names it): stop it, or set hub.registry_port to a free port")
    assert report["changed"] == [] and "Traceback" not in done.stderr
    state = tmp_path / "host-state" / "var" / "lib" / "upper" / "gpuswarm-node"
    assert not (state / "hub-changes.jsonl").exists()


def test_status_checks_every_hub_step_and_changes_nothing(gsn, tmp_path):
    done = gsn("hub", "init", "--status", "--json", "--config", os.devnull, "--set", "hub.name=hub.example.org")
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert [s["name"] for s in report["steps"]] == list(HUB_STEP_NAMES)
    assert all(s["detail"] for s in report["steps"]) and "dry_run" not in report
    assert done.returncode == (0 if report["ok"] else 1)
    assert not (tmp_path / "host-state" / "var" / "lib" / "upper" / "gpuswarm-node" / "hub-changes.jsonl").exists()


def test_hub_reset_with_nothing_recorded(gsn):
    done = gsn("hub", "reset", "--config", os.devnull)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "nothing to revert: no changes recorded in /var/lib/gpuswarm-node/hub-changes.jsonl"


def test_hub_bundle_ships_the_ca_hub_init_made_unless_told_otherwise(tmp_path):
    from pathlib import Path

    from gpuswarm_node.bundle import default_registry_ca

    worker = config.from_tables({"registry": {"address": "hub.example.org:5000", "ca_cert": "/etc/gpuswarm-node/r.crt"}})
    own = tmp_path / "ca.crt"
    assert default_registry_ca(worker, None, str(own)) is None  # no hub init here: bundle asks for --registry-ca
    own.write_text(hub_tls.make_ca("hub")[0])
    assert default_registry_ca(worker, None, str(own)) == own
    assert default_registry_ca(worker, Path("/given.crt"), str(own)) == Path("/given.crt")
    assert default_registry_ca(config.from_tables({}), None, str(own)) is None  # a worker without a registry


def test_debians_registry_serves_tls_as_the_drop_in_runs_it(tmp_path):
    """The configuration and the drop-in's ExecStart as hub-registry writes them, run with Debian's
    docker-registry (the suite's prerequisite, tests/prepare.sh): TLS from the credentials directory
    systemd makes, the certificate the files hold."""
    import subprocess
    import time

    from gpuswarm_node.hub_init import REGISTRY_CONFIG, REGISTRY_DROPIN
    from gpuswarm_node.steps.hub_registry import HubRegistryStep

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ctx, *_ = hub_machine({"hub": {"name": "127.0.0.1", "registry_port": port}})
    files = {p.path: p.content for p in HubRegistryStep().files(ctx)}
    (tmp_path / "registry.yml").write_text(files[REGISTRY_CONFIG])
    [exec_start] = [line.partition("=")[2] for line in files[REGISTRY_DROPIN].splitlines()
                    if line.startswith("ExecStart=") and line != "ExecStart="]
    ca_cert, ca_key = hub_tls.make_ca("test")
    cert, key = hub_tls.issue(ca_cert, ca_key, ["127.0.0.1"])
    credentials = tmp_path / "credentials"  # what LoadCredential= gives the service
    credentials.mkdir()
    (credentials / "registry.crt").write_text(cert)
    (credentials / "registry.key").write_bytes(key)
    (tmp_path / "ca.crt").write_text(ca_cert)
    command = exec_start.replace(REGISTRY_CONFIG, str(tmp_path / "registry.yml"))
    env = {"PATH": os.environ["PATH"], "CREDENTIALS_DIRECTORY": str(credentials),
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "storage")}
    with open(tmp_path / "registry.log", "wb") as log:
        registry = subprocess.Popen(["sh", "-c", f"exec {command}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "sha256" not in (served := hub_tls.served_fingerprint("127.0.0.1", port, timeout=2)):
            assert registry.poll() is None and time.monotonic() < deadline, (tmp_path / "registry.log").read_text()
            time.sleep(0.2)
        assert served == {"sha256": hub_tls.fingerprint(cert)}
        assert hub_tls.manifest_digest(f"127.0.0.1:{port}", "notebook", "abc", str(tmp_path / "ca.crt")) == {
            "missing": "the registry has no notebook:abc"}
    finally:
        registry.terminate()
        registry.wait(10)

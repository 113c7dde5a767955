"""`hub bundle` and `hub revoke` (bundle.py, gate.revoke): the files a new worker gets, their modes,
the key authorised through the gate, the user-data cloud-init reads, and nothing secret printed."""

from __future__ import annotations

import base64
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from gpuswarm_node import config
from gpuswarm_node.bundle import user_data_text
from gpuswarm_node.gate import revoke

from .conftest import REPO

PROGRAM = "/usr/local/bin/gpuswarm-node"


def host_keys(tmp_path: Path) -> list[Path]:
    keys = []
    for kind in ("ed25519", "ecdsa"):
        key = tmp_path / f"ssh_host_{kind}_key"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
        keys.append(key.with_suffix(".pub"))
    return keys


@pytest.fixture
def hub(tmp_path):
    """A hub's files: host keys, a CA certificate, the SSH user's authorized_keys, the tool's tarball."""
    ca = tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout", str(tmp_path / "ca.key"),
                    "-out", str(ca), "-subj", "/CN=lab ca", "-days", "2"], check=True, capture_output=True)
    tool = tmp_path / "gpuswarm-node.tar.gz"
    subprocess.run(["tar", "-czf", str(tool), "-C", str(REPO), "setup.sh", "pyproject.toml"], check=True)
    ak = tmp_path / "authorized_keys"
    ak.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorOperatorOperatorOperatorOperatorOp admin\n")
    return {"keys": host_keys(tmp_path), "ca": ca, "tool": tool, "ak": ak, "dir": tmp_path}


def bundle_args(hub, out: Path, *extra: str) -> list[str]:
    args = ["hub", "bundle", "--node", "worker-7", "--out", str(out), "--manager", "hub.example.org",
            "--registry", "hub.example.org:5000", "--registry-ca", str(hub["ca"]), "--image",
            "hub.example.org:5000/notebook:latest", "--ssh-user", "root", "--authorized-keys", str(hub["ak"]),
            "--program", PROGRAM, "--worker-config", "/dev/null"]
    for key in hub["keys"]:
        args += ["--host-key", str(key)]
    return args + list(extra)


def test_bundle_writes_the_workers_files_root_only_and_authorises_its_key(gsn, hub):
    out = hub["dir"] / "worker-7"
    result = gsn(*bundle_args(hub, out, "--set", "swarm.ssh_port=2222", "--set", "node.reboot=auto"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "id_ed25519", "id_ed25519.pub", "known_hosts",
                                                     "registry-ca.crt"]
    assert out.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.iterdir())
    # The worker's config, as setup reads and validates it.
    cfg = config.load(out / "config.toml", env={})
    assert (cfg.swarm.manager, cfg.swarm.ssh_port, cfg.swarm.ssh_user) == ("hub.example.org", 2222, "root")
    assert (cfg.swarm.ssh_key, cfg.swarm.known_hosts) == ("/etc/gpuswarm-node/id_ed25519",
                                                          "/etc/gpuswarm-node/known_hosts")
    assert (cfg.registry.address, cfg.registry.ca_cert) == ("hub.example.org:5000",
                                                            "/etc/gpuswarm-node/registry-ca.crt")
    assert cfg.image.name == "hub.example.org:5000/notebook:latest" and cfg.node.reboot == "auto"
    assert cfg.swarm.node_name == "worker-7"  # the key's node: setup's preflight compares the host name
    # The hub's host keys, under the name and port the worker connects to.
    known = (out / "known_hosts").read_text().splitlines()
    assert [line.split()[0] for line in known] == ["[hub.example.org]:2222"] * 2
    assert {line.split(maxsplit=1)[1] for line in known} == {" ".join(k.read_text().split()[:2]) for k in hub["keys"]}
    assert (out / "registry-ca.crt").read_text() == hub["ca"].read_text()
    # The key pair is one, OpenSSH reads it, and the hub has its public half, gated.
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(out / "id_ed25519")], capture_output=True, text=True,
                             check=True).stdout.split()[:2]
    blob = (out / "id_ed25519.pub").read_text().split()[1]
    assert derived == ["ssh-ed25519", blob]
    lines = hub["ak"].read_text().splitlines()
    assert lines[0].endswith(" admin")
    assert lines[1] == f'restrict,command="{PROGRAM} hub gate --node worker-7" ssh-ed25519 {blob} gpuswarm-node:worker-7'
    # The tarball holds the same files with the same modes, owned by root.
    with tarfile.open(out.with_name("worker-7.tar.gz")) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["worker-7/id_ed25519"].mode == 0o600 and members["worker-7/id_ed25519"].uid == 0
        assert tar.extractfile("worker-7/id_ed25519").read() == (out / "id_ed25519").read_bytes()
    assert out.with_name("worker-7.tar.gz").stat().st_mode & 0o777 == 0o600
    # Nothing secret in the output: the private key's base64 body is in neither stream.
    body = "".join((out / "id_ed25519").read_text().splitlines()[1:-1])
    for chunk in (body[i:i + 20] for i in range(0, len(body), 20)):
        assert chunk not in result.stdout + result.stderr
    assert "SHA256:" in result.stdout and str(out) in result.stdout


def firstboot_script(user_data: str) -> str:
    """The first boot's script, as write_files puts it on the worker."""
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    return base64.b64decode(files["/usr/local/sbin/gpuswarm-node-firstboot"]["content"]).decode()


def test_user_data_is_cloud_config_with_the_files_modes_and_the_tool(gsn, hub):
    out = hub["dir"] / "w7"
    result = gsn(*bundle_args(hub, out, "--cloud-init", "--tool", str(hub["tool"])))
    assert result.returncode == 0, result.stderr
    text = (out / "user-data").read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    files = {f["path"]: f for f in data["write_files"]}
    assert {p: f["permissions"] for p, f in files.items()} == {
        "/etc/gpuswarm-node/config.toml": "0644", "/etc/gpuswarm-node/id_ed25519": "0600",
        "/etc/gpuswarm-node/known_hosts": "0644", "/etc/gpuswarm-node/registry-ca.crt": "0644",
        "/usr/local/src/gpuswarm-node.tar.gz": "0600", "/usr/local/sbin/gpuswarm-node-firstboot": "0700",
        "/etc/systemd/system/gpuswarm-node-firstboot.service": "0644"}
    decoded = {p: base64.b64decode(f["content"]) for p, f in files.items()}
    assert decoded["/etc/gpuswarm-node/id_ed25519"] == (out / "id_ed25519").read_bytes()
    assert decoded["/etc/gpuswarm-node/config.toml"] == (out / "config.toml").read_bytes()
    assert decoded["/usr/local/src/gpuswarm-node.tar.gz"] == hub["tool"].read_bytes()
    assert all(f["owner"] == "root:root" and f["encoding"] == "b64" for f in files.values())
    # The instance's host name is the node name the key is authorised for (the gate's name for it).
    assert (data["hostname"], data["preserve_hostname"], data["prefer_fqdn_over_hostname"]) == ("worker-7", False, False)
    # The unit is enabled before the script runs: whatever ends this first run, the next boot
    # runs the script again, until setup has installed its own boot unit.
    assert data["runcmd"] == [["systemctl", "enable", "gpuswarm-node-firstboot.service"],
                              ["/usr/local/sbin/gpuswarm-node-firstboot"]]
    script = decoded["/usr/local/sbin/gpuswarm-node-firstboot"].decode()
    assert script.startswith("#!/bin/sh\n") and script.endswith(
        "/usr/local/src/gpuswarm-node/setup.sh --config /etc/gpuswarm-node/config.toml\n")
    unit = decoded["/etc/systemd/system/gpuswarm-node-firstboot.service"].decode()
    assert "\nExecStart=/usr/local/sbin/gpuswarm-node-firstboot\n" in unit
    assert "\nConditionPathExists=!/etc/systemd/system/gpuswarm-node-boot.service\n" in unit
    # cloud-final (runcmd) is ordered after multi-user.target: wanted by it, the unit would make a cycle.
    assert "\nAfter=network-online.target cloud-final.service\n" in unit and "\nWantedBy=cloud-init.target\n" in unit
    assert f"({len(text.encode())} bytes)" in result.stdout


def test_user_data_can_fetch_the_tool_by_url_checked_by_its_digest(hub):
    import hashlib

    tool = hub["tool"].read_bytes()
    text = user_data_text("w", {"/etc/gpuswarm-node/config.toml": (b"[swarm]\n", 0o644)}, tool,
                          "https://example.org/gpuswarm-node.tar.gz")
    data = yaml.safe_load(text)
    assert [f["path"] for f in data["write_files"]] == ["/etc/gpuswarm-node/config.toml",
                                                        "/usr/local/sbin/gpuswarm-node-firstboot",
                                                        "/etc/systemd/system/gpuswarm-node-firstboot.service"]
    assert f"echo '{hashlib.sha256(tool).hexdigest()}  /usr/local/src/gpuswarm-node.tar.gz' | sha256sum -c -" \
        in firstboot_script(text)
    assert len(text) < 16384


@pytest.mark.parametrize("change,says", [
    (["--node", "bad name"], "not a host name"),
    (["--node", "w" * 30 + "." + "w" * 34], "a machine's host name has at most 64"),
    (["--manager", ""], "swarm.manager is not set"),
    (["--registry-ca", "/nonexistent/ca.crt"], "cannot be read"),
    (["--set", "swarm.manager=hub.example.org\nevil"], "control character"),
    (["--cloud-init"], "needs the tool's source tarball"),
    (["--cloud-init", "--tool", "/etc/hostname"], "not a gzip'd tar"),
    (["--tool-url", "http://plain.example/x.tar.gz"], "not an https:// URL"),
    (["--set", "nope.key=1"], "Unknown section"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(gsn, hub, change, says):
    out = hub["dir"] / "w7"
    before = hub["ak"].read_text()
    args = bundle_args(hub, out)
    # The later flag wins (typer keeps the last of a repeated option); --set adds.
    result = gsn(*args, *change)
    assert result.returncode == 2, result.stdout
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not out.with_name("w7.tar.gz").exists()
    assert hub["ak"].read_text() == before
    assert [p.name for p in hub["dir"].iterdir() if p.name.startswith(".w7")] == []


def test_an_existing_bundle_is_never_overwritten(gsn, hub):
    out = hub["dir"] / "w7"
    assert gsn(*bundle_args(hub, out)).returncode == 0
    key = (out / "id_ed25519").read_bytes()
    again = gsn(*bundle_args(hub, out))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (out / "id_ed25519").read_bytes() == key


def test_the_worker_config_template_is_read_and_the_bundle_paths_win(gsn, hub):
    template = hub["dir"] / "worker.toml"
    template.write_text('[swarm]\nmanager = "hub.lan"\nssh_key = "/root/elsewhere"\n[gpu]\nslices_per_gpu = 2\n')
    out = hub["dir"] / "w7"
    args = bundle_args(hub, out)
    del args[args.index("--manager"):args.index("--manager") + 2]
    result = gsn(*args, "--worker-config", str(template))  # the last --worker-config wins
    assert result.returncode == 0, result.stderr
    cfg = config.load(out / "config.toml", env={})
    assert (cfg.swarm.manager, cfg.swarm.ssh_key, cfg.gpu.slices_per_gpu) == ("hub.lan",
                                                                              "/etc/gpuswarm-node/id_ed25519", 2)


def test_revoke_removes_only_that_nodes_gated_keys(gsn, hub, tmp_path):
    for node in ("worker-7", "worker-8"):
        assert gsn(*bundle_args(hub, tmp_path / node, "--node", node)).returncode == 0
    result = gsn("hub", "revoke", "--node", "worker-7", "--authorized-keys", str(hub["ak"]))
    assert result.returncode == 0 and "revoked 1 key(s) of node worker-7" in result.stdout
    lines = hub["ak"].read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" admin") and "--node worker-8" in lines[1]
    assert hub["ak"].stat().st_mode & 0o777 == 0o600
    again = revoke("worker-7", hub["ak"])
    assert "nothing changed" in again[0]
    with pytest.raises(config.ConfigError):
        revoke("worker-7\nx", hub["ak"])


def test_tables_round_trip_through_toml():
    cfg = config.from_tables({"swarm": {"manager": "h.example", "advertise_addr": "198.18.0.9"},
                              "tmpfs": {"fraction": 0.25, "enabled": False}, "image": {"name": "a/b:c"}})
    assert config.from_tables(tomllib.loads(config.to_toml(config.tables(cfg)))) == cfg
    assert config.from_tables(tomllib.loads(config.to_toml(config.tables(cfg, every_key=True)))) == cfg



def test_shared_mounts_round_trip_through_toml_as_arrays_of_tables():
    # The boot unit's config and a bundle's config.toml carry a node's shares as they were given.
    mounts = [{"source": "fs-1.efs.example:/tutorial", "path": "/srv/shared/tutorial", "options": "ro"},
              {"source": "fs-1.efs.example:/data", "path": "/srv/shared/data", "options": ""}]
    cfg = config.from_tables({"shared": {"mounts": mounts}, "image": {"name": "a/b:c"}})
    text = config.to_toml(config.tables(cfg))
    assert "[[shared.mounts]]" in text
    assert config.from_tables(tomllib.loads(text)) == cfg
    assert config.from_tables(tomllib.loads(config.to_toml(config.tables(cfg, every_key=True)))) == cfg


def test_user_data_fetch_says_each_failed_try_in_one_line_and_the_fix_at_the_end(hub, tmp_path):
    import socket
    import subprocess

    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nobody answers there: every try fails
    text = user_data_text("w", {"/etc/gpuswarm-node/config.toml": (b"[swarm]\n", 0o644)}, hub["tool"].read_bytes(),
                          f"http://127.0.0.1:{port}/gpuswarm-node.tar.gz")
    script = firstboot_script(text)
    assert "$(seq 1 20)" in script and "sleep 6;" in script and "timeout=30" in script
    # Two tries without their waits, into a scratch path: the same commands, quickly.
    target = tmp_path / "tool.tar.gz"
    script = script.replace("$(seq 1 20)", "1 2").replace("sleep 6;", "true;").replace(
        "/usr/local/src/gpuswarm-node.tar.gz", str(target)).split(" && echo '")[0]
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["gpuswarm-node"] * 5
    assert "fetching the tool failed: <urlopen error [Errno 111] Connection refused>" in lines[0]
    assert lines[1] == "gpuswarm-node: try 1 of 20; trying again in 6 s"
    assert lines[-1].startswith("gpuswarm-node: could not fetch the tool for 2 minutes; check that the hub serves")

"""What a new user meets first: a node that remembers the configuration of its last setup, and
user-input errors that are one sentence with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuswarm_node import config


def remember(tmp_path: Path, text: str) -> Path:
    """The boot config a setup wrote, as the CLI run by `gsn` sees it: in the upper layer of its
    private /var/lib (conftest.private_state)."""
    path = tmp_path / "host-state" / "var" / "lib" / "upper" / "gpuswarm-node" / "boot-config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


# --- the configuration of the last setup ----------------------------------------------------------

@pytest.fixture
def last_setup(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "boot-config.toml"
    monkeypatch.setattr(config, "LAST_SETUP_CONFIG", path)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    path.write_text('[swarm]\nmanager = "hub.example.org"\n')
    return path


def test_without_a_named_file_a_node_command_reads_the_last_setups_configuration(last_setup):
    cfg = config.load(env={}, remember=True)
    assert cfg.swarm.manager == "hub.example.org" and cfg.source == str(last_setup)
    assert str(last_setup) in config.remembered_note(cfg)


def test_a_named_file_the_environment_and_set_win_over_the_last_setup(last_setup, tmp_path):
    other = tmp_path / "node.toml"
    other.write_text('[swarm]\nmanager = "other.example.org"\n')
    assert config.load(other, env={}, remember=True).swarm.manager == "other.example.org"
    assert config.load(env={"GPUSWARM_CONFIG": str(other)}, remember=True).swarm.manager == "other.example.org"
    cfg = config.load(env={}, overrides=["swarm.manager=flag.example.org"], remember=True)
    assert cfg.swarm.manager == "flag.example.org" and config.remembered_note(cfg)


def test_the_default_file_wins_over_the_last_setup_and_commands_off_the_node_never_read_it(last_setup, monkeypatch,
                                                                                           tmp_path):
    assert config.load(env={}).source == "defaults"  # hub-config, gpus, render: not this node's record
    default = tmp_path / "config.toml"
    default.write_text('[swarm]\nmanager = "default.example.org"\n')
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", default)
    cfg = config.load(env={}, remember=True)
    assert cfg.swarm.manager == "default.example.org" and config.remembered_note(cfg) is None


@pytest.mark.parametrize("module", ["gpuswarm_node.entry", "gpuswarm_node.cli"])
def test_status_without_config_checks_the_last_setups_configuration_and_says_so(gsn, tmp_path, module):
    """After `setup.sh --config ~/node.toml`, a plain `sudo gpuswarm-node status` checks that
    configuration (its fast path and the CLI alike), and says where it came from on stderr."""
    scratch = tmp_path / "scratch-of-the-last-setup"
    remember(tmp_path, f'[tmpfs]\npath = "{scratch}"\n')
    result = gsn("status", "--json", module=module)
    assert result.returncode in (0, 1), result.stderr
    [note] = result.stderr.splitlines()
    assert note.startswith("note: using the configuration of the last setup (/var/lib/gpuswarm-node/boot-config.toml)")
    tmpfs = next(s for s in json.loads(result.stdout)["steps"] if s["name"] == "tmpfs")
    assert str(scratch) in tmpfs["detail"]


def test_config_shows_the_last_setups_values_and_a_named_file_or_set_wins(gsn, tmp_path):
    remember(tmp_path, '[gpu]\nslices_per_gpu = 5\n')
    shown = json.loads(gsn("config", "--json").stdout)
    key = next(k for k in shown["keys"] if k["key"] == "gpu.slices_per_gpu")
    assert key["value"] == 5 and "boot-config.toml" in key["origin"]
    assert shown["file"] == "/var/lib/gpuswarm-node/boot-config.toml"
    flagged = gsn("config", "--json", "--set", "gpu.slices_per_gpu=2")
    assert next(k for k in json.loads(flagged.stdout)["keys"] if k["key"] == "gpu.slices_per_gpu")["value"] == 2
    named = tmp_path / "node.toml"
    named.write_text("")
    result = gsn("config", "--json", "--config", str(named))
    assert "last setup" not in result.stderr
    assert next(k for k in json.loads(result.stdout)["keys"] if k["key"] == "gpu.slices_per_gpu")["value"] == 3


@pytest.mark.parametrize("argv", [("setup", "--dry-run", "--only", "tmpfs"), ("leave", "--dry-run"),
                                  ("reset",)])
def test_setup_leave_and_reset_without_config_use_the_last_setups_configuration(gsn, tmp_path, argv):
    scratch = tmp_path / "scratch-of-the-last-setup"
    remember(tmp_path, f'[tmpfs]\npath = "{scratch}"\n')
    result = gsn(*argv, "--json")
    notes = [line for line in result.stderr.splitlines() if "configuration of the last setup" in line]
    if argv[0] == "reset":  # nothing recorded to revert: no configuration is read at all
        assert notes == [] and result.returncode == 0, result.stderr
        return
    assert len(notes) == 1, result.stderr
    if argv[0] == "setup":
        [tmpfs] = json.loads(result.stdout)["steps"]
        assert str(scratch) in tmpfs["detail"] + json.dumps(tmpfs["actions"])


# --- root ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["gpuswarm_node.entry", "gpuswarm_node.cli"])
@pytest.mark.parametrize("argv", [("status",), ("status", "--json"), ("setup", "--dry-run"), ("setup",),
                                  ("leave", "--dry-run"), ("reset",)])
def test_a_node_command_without_root_says_so_in_one_line_and_exits_2(argv, module):
    """Not misleading tables, not `internal error: PermissionError`: one line naming the fix.
    Run as `nobody` (setpriv), which can change nothing here even where the check is missing."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_"))}
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                             "-m", module, *argv], cwd=Path(__file__).resolve().parent.parent, env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, ""), result.stdout
    assert result.stderr == (f"error: {argv[0]} needs root: it reads root's files, the Docker socket and iptables. "
                             f"Run it as `sudo gpuswarm-node {' '.join(argv)}`.\n")


# --- user-input errors: one sentence with the fix --------------------------------------------------

def one_usage_error(result) -> str:
    """The one line a usage error prints (exit 2, nothing on stdout, no traceback)."""
    assert (result.returncode, result.stdout) == (2, ""), (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "Traceback" not in line and "Errno" not in line
    return line[len("error: "):]


INVENTORY_FIX = "Save what `gpuswarm-node gpus --json` prints on a GPU node to a file and give that."


@pytest.mark.parametrize("content, cause", [
    (b"\xff\xfe", "is not UTF-8 text (byte 0)"),
    ("not json", "is not JSON (Expecting value at line 1, column 1)"),
    ("[]", 'is not a GPU inventory: it is not an object with a "gpus" list'),
    ('{"gpus": [{"name": "x"}]}', 'is not a GPU inventory: gpus[0] has no "uuid"'),
    ('{"gpus": [7]}', "is not a GPU inventory: gpus[0] is 7, not an object"),
    ('{"gpus": [{"uuid": "GPU-1", "memory_bytes": "12"}]}',
     'is not a GPU inventory: gpus[0].memory_bytes is "12", not a whole number'),
    ('{"gpus": [{"uuid": "GPU-1", "memory_bytes": 1, "mig_devices": [{"uuid": "MIG-1"}]}]}',
     'is not a GPU inventory: gpus[0].mig_devices[0] has no "memory_bytes"'),
])
def test_render_with_a_bad_inventory_file_says_what_is_wrong_and_the_fix(gsn, tmp_path, content, cause):
    path = tmp_path / "gpus.json"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert one_usage_error(gsn("render", "--inventory", str(path))) == f"--inventory {path} {cause}. {INVENTORY_FIX}"


@pytest.mark.parametrize("make, line", [
    (lambda path: None, "--inventory {path} cannot be read: does not exist. Check the path."),
    (lambda path: path.mkdir(), "--inventory {path} is not a regular file; refusing to trust it."),
])
def test_render_with_an_inventory_file_that_is_missing_or_no_file_says_so_in_one_sentence(gsn, tmp_path, make, line):
    path = tmp_path / "gpus.json"
    make(path)
    assert one_usage_error(gsn("render", "--inventory", str(path))).startswith(line.format(path=path))


def keygen(path: Path, *options: str) -> Path:
    """A key pair made by ssh-keygen (PATH and PATH.pub); `options`, e.g. -N passphrase or -m PEM."""
    import subprocess

    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "worker", "-f", str(path), *options]
    if "-N" in options:
        argv[5:7] = []
    if "-t" in options:
        argv[3:5] = []
    subprocess.run(argv, check=True)
    return path


@pytest.mark.parametrize("options", [(), ("-t", "rsa", "-b", "2048", "-m", "PEM"), ("-N", "secret"),
                                     ("-t", "ecdsa", "-m", "PKCS8")])
def test_hub_authorize_given_a_private_key_names_its_kind_and_the_pub_file(gsn, tmp_path, options):
    """Not 'holds 7 keys': the private key is named as such, and nothing is written."""
    key = keygen(tmp_path / "worker", *options)
    target = tmp_path / "authorized_keys"
    line = one_usage_error(gsn("hub", "authorize", "--key", str(key), "--node", "worker-7",
                               "--authorized-keys", str(target), "--program", "/usr/local/bin/gpuswarm-node"))
    assert line == (f"--key {key} is a private key, not a public one. Give the .pub file beside it (ssh-keygen "
                    "writes KEY and KEY.pub), and keep the private key where it is.")
    assert not target.exists()


def test_hub_authorize_given_an_rfc4716_public_key_says_how_to_convert_it(gsn, tmp_path):
    import subprocess

    key = keygen(tmp_path / "worker")
    ssh2 = tmp_path / "worker.ssh2"
    ssh2.write_text(subprocess.run(["ssh-keygen", "-e", "-f", f"{key}.pub"], capture_output=True, text=True,
                                   check=True).stdout)
    line = one_usage_error(gsn("hub", "authorize", "--key", str(ssh2), "--node", "worker-7", "--authorized-keys",
                               str(tmp_path / "authorized_keys"), "--program", "/usr/local/bin/gpuswarm-node"))
    assert line.startswith(f"--key {ssh2} is an RFC 4716 (SSH2) public key") and "ssh-keygen -i -f" in line


def ssh_key_preflight(path: Path) -> str | None:
    from gpuswarm_node import preflight
    from gpuswarm_node.context import Context

    from .fakes import FakeDocker, FakeHost

    docker = FakeDocker.from_case({"reachable": False})  # a fresh machine: the join comes later in the run
    cfg = config.from_tables({"swarm": {"manager": "hub.example.org", "ssh_key": str(path),
                                        "host_key_fingerprint": "SHA256:" + "A" * 43}})
    ctx = Context(config=cfg, host=FakeHost(), docker_factory=lambda: docker)
    return preflight.ssh_key_problem(ctx, {"swarm-join"})


@pytest.mark.parametrize("options, make, problem", [
    ((), lambda key: key, None),
    (("-t", "rsa", "-b", "2048", "-m", "PEM"), lambda key: key, None),
    ((), lambda key: key.with_name(key.name + ".pub"), "is a public key, not the private key"),
    (("-N", "secret"), lambda key: key, "is protected by a passphrase"),
    (("-N", "secret", "-t", "rsa", "-b", "2048", "-m", "PEM"), lambda key: key, "is protected by a passphrase"),
    (("-N", "secret", "-t", "ecdsa", "-m", "PKCS8"), lambda key: key, "is protected by a passphrase"),
])
def test_the_ssh_key_preflight_refuses_a_public_or_passphrase_protected_key_with_the_fix(tmp_path, options, make,
                                                                                         problem):
    key = make(keygen(tmp_path / "node-key", *options))
    key.chmod(0o600)
    found = ssh_key_preflight(key)
    if problem is None:
        assert found is None
    else:
        assert found.startswith(f"swarm.ssh_key {key} {problem}") and ": " in found, found


def test_the_ssh_key_preflight_refuses_a_file_that_holds_no_key(tmp_path):
    key = tmp_path / "node-key"
    key.write_text("hub.example.org ssh-ed25519\n")
    key.chmod(0o600)
    assert ssh_key_preflight(key) == (f"swarm.ssh_key {key} holds no private key: give the OpenSSH private key file "
                                      "(ssh-keygen writes it)")


def test_hub_config_without_an_image_is_an_error_naming_the_key_and_how_to_set_it(gsn, tmp_path):
    line = one_usage_error(gsn("hub-config"))
    assert line == ("hub-config needs the notebook image, and image.name is empty. Set it with --set "
                    "image.name=REGISTRY/IMAGE:TAG, GPUSWARM_IMAGE_NAME or [image] name in the --config file "
                    "(the workers' image).")
    result = gsn("hub-config", "--set", "image.name=hub.example.org:5000/nb:latest")
    assert result.returncode == 0 and "c.SwarmSpawner.image = 'hub.example.org:5000/nb:latest'\n" in result.stdout
    result = gsn("hub-config", env={"GPUSWARM_IMAGE_NAME": "hub.example.org:5000/nb:latest"})
    assert result.returncode == 0, result.stderr


# --- every --json names the version and its commit -------------------------------------------------

@pytest.mark.parametrize("argv, module", [
    (("status", "--json"), "gpuswarm_node.entry"), (("status", "--json"), "gpuswarm_node.cli"),
    (("setup", "--dry-run", "--json", "--only", "tmpfs"), "gpuswarm_node.cli"),
    (("leave", "--dry-run", "--json"), "gpuswarm_node.cli"), (("reset", "--json"), "gpuswarm_node.cli"),
    (("gpus", "--json"), "gpuswarm_node.cli"), (("config", "--json"), "gpuswarm_node.cli"),
])
def test_every_json_output_names_the_version_and_commit_first(gsn, tmp_path, argv, module):
    from gpuswarm_node import version

    node = tmp_path / "node.toml"
    node.write_text(f'[tmpfs]\npath = "{tmp_path / "scratch"}"\n')
    result = gsn(*argv, "--config", str(node), module=module)
    data = json.loads(result.stdout)
    assert next(iter(data)) == "version" and data["version"] == version(), result.stderr
    assert gsn("--version").stdout == f"gpuswarm-node {version()}\n"

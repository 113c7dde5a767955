"""Trust files (trust.py): every file the configuration or a flag names that the tool reads as
root follows one rule (a regular file, not a link, root's, writable by root only; a secret
readable by root only), and only what it is meant to hold is taken from it. The lists are derived
from the configuration's schema and the CLI's options, so a new path key or PATH option fails
here until its reader follows the rule."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
import typer

from gpuswarm_node import config, facts, trust
from gpuswarm_node.cli import app
from gpuswarm_node.errors import GpuswarmError
from gpuswarm_node.host import LocalHost
from gpuswarm_node.hub_init import open_hub_file
from gpuswarm_node.manager import open_trust_file

from .test_bundle import bundle_args, hub  # noqa: F401  (the fixture)

# Keys whose value is a path the tool never reads as a file.
NOT_READ = {"tmpfs.path": "a mount point setup creates and mounts on",
            "watch.metadata_url": "a URL (its help says it has no path), never a file"}


def schema_keys() -> dict[str, dataclasses.Field]:
    return {f"{section.name}.{f.name}": f for section in dataclasses.fields(config.Config)
            if dataclasses.is_dataclass(section.type if not isinstance(section.type, str) else
                                        getattr(config, section.type, None))
            for f in dataclasses.fields(getattr(config, section.type) if isinstance(section.type, str)
                                        else section.type)}


def path_options() -> dict[str, list[str]]:
    """{option: [commands]} for every option of every command whose value is a path."""
    found: dict[str, list[str]] = {}

    def walk(command, name: str) -> None:
        for param in command.params:
            # typer makes every pathlib.Path option a click Path (typer vendors click).
            if type(param).__name__ == "Option" and type(param.type).__name__ == "Path":
                for opt in param.opts:
                    found.setdefault(opt, []).append(name)
        for sub_name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{name} {sub_name}".strip())

    walk(typer.main.get_command(app), "")
    return found


# How each trusted configuration key is read by the code that reads it as root.
def _read_ca(path: str) -> None:
    pem, why = facts._certificate(path)(LocalHost())
    if pem is None:
        raise GpuswarmError(why)


CONFIG_READERS = {
    "registry.ca_cert": _read_ca,
    "swarm.ssh_key": lambda path: os.close(open_trust_file(path, "swarm.ssh_key", secret=True)),
    "swarm.known_hosts": lambda path: os.close(open_trust_file(path, "swarm.known_hosts", secret=False)),
    "hub.tls_cert": lambda path: os.close(open_hub_file(path, "hub.tls_cert", secret=False)),
    "hub.tls_key": lambda path: os.close(open_hub_file(path, "hub.tls_key", secret=True)),
    "hub.tls_ca": lambda path: os.close(open_hub_file(path, "hub.tls_ca", secret=False)),
    "hub.secret_file": lambda path: os.close(open_hub_file(path, "hub.secret_file", secret=True)),
}


def test_every_path_key_of_the_schema_is_a_trust_file_or_never_read():
    keys = schema_keys()
    looks_like_path = {name for name, f in keys.items()
                       if isinstance(f.default, str) and (f.default.startswith("/") or
                                                          any(w in f.metadata["help"].lower()
                                                              for w in ("path", " file", "key used")))}
    trusted = {name for name, f in keys.items() if f.metadata.get("trust")}
    assert looks_like_path - set(NOT_READ) <= trusted, looks_like_path - trusted
    assert trusted == set(CONFIG_READERS)
    assert keys["swarm.ssh_key"].metadata["trust"] == "secret"


def good_file(tmp_path: Path, name: str, text: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout", str(d / "ca.key"),
                    "-out", str(d / "ca.crt"), "-subj", "/CN=t", "-days", "2"], check=True, capture_output=True)
    return (d / "ca.crt").read_text()


REASONS = {"group-writable": "is writable by other users (mode 664)",
           "world-writable": "is writable by other users (mode 646)",
           "other owner": "is owned by neither root nor the user running the tool",
           "symlink": "is a symbolic link", "fifo": "is not a regular file"}


def bad_variants(path: Path) -> dict[str, Path]:
    """The same file made untrustworthy in each way the rule names."""
    data = path.read_bytes()
    out = {}
    for name, mode, uid in (("group-writable", 0o664, 0), ("world-writable", 0o646, 0), ("other owner", 0o644, 65534)):
        p = path.with_name(f"{path.name}.{name.replace(' ', '-')}")
        p.write_bytes(data)
        os.chown(p, uid, 0)
        os.chmod(p, mode)
        out[name] = p
    link = path.with_name(f"{path.name}.link")
    link.symlink_to(path)
    out["symlink"] = link
    fifo = path.with_name(f"{path.name}.fifo")
    os.mkfifo(fifo, 0o644)
    out["fifo"] = fifo
    return out


@pytest.mark.parametrize("key", sorted(CONFIG_READERS))
def test_each_trusted_config_file_is_refused_unless_it_follows_the_rule(key, tmp_path, ca_pem, as_root):
    key_text = subprocess.run(["sh", "-c", f"ssh-keygen -q -t ed25519 -N '' -f {tmp_path}/k && cat {tmp_path}/k"],
                              capture_output=True, text=True, check=True).stdout
    text = {"registry.ca_cert": ca_pem, "swarm.ssh_key": key_text, "hub.tls_cert": ca_pem, "hub.tls_ca": ca_pem,
            "hub.tls_key": key_text, "hub.secret_file": "a shared password\n",
            "swarm.known_hosts": "hub ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorOperatorOperatorOperatorOperatorOp\n"}[key]
    secret = schema_keys()[key].metadata["trust"] == "secret"
    good = good_file(tmp_path, "file", text, 0o600 if secret else 0o644)
    CONFIG_READERS[key](str(good))  # accepted
    for name, bad in bad_variants(good).items():
        with pytest.raises(GpuswarmError) as info:
            CONFIG_READERS[key](str(bad))
        want = REASONS[name].replace("writable", "readable") if secret and "writable" in name else REASONS[name]
        assert want in info.value.message(), (name, info.value.message())
    if secret:
        with pytest.raises(GpuswarmError, match="readable by other users"):
            CONFIG_READERS[key](str(good_file(tmp_path, "open", text, 0o644)))


def test_the_ca_file_gives_only_its_certificates(tmp_path, ca_pem):
    key = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
           "-----END PRIVATE KEY-----\n")
    both = good_file(tmp_path, "ca.crt", "notes\n" + key + ca_pem + ca_pem, 0o644)
    pem, why = facts._certificate(str(both))(LocalHost())
    assert why == "" and "PRIVATE" not in pem and "notes" not in pem and pem.count("BEGIN CERTIFICATE") == 2
    assert trust.certificates(key) == ""


# How each trusted option is given in a command line; FILE is replaced by the file under test.
def option_cases(hub, tmp_path):  # noqa: F811
    out = tmp_path / "w"
    base = bundle_args(hub, out)
    pub = hub["keys"][0]

    def bundle_with(option, value):
        args = list(base)
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
        return args

    worker = good_file(tmp_path, "worker.toml", '[swarm]\nmanager = "hub.example.org"\n', 0o644)
    inventory = good_file(tmp_path, "gpus.json", '{"driver_version": null, "gpus": []}', 0o644)
    return {
        "--config": (["status", "--config", "FILE"], good_file(tmp_path, "node.toml", "", 0o644)),
        "--worker-config": (bundle_with("--worker-config", "FILE"), worker),
        "--registry-ca": (bundle_with("--registry-ca", "FILE"), hub["ca"]),
        "--host-key": ([a for a in base if a not in [str(k) for k in hub["keys"]] and a != "--host-key"]
                       + ["--host-key", "FILE"], pub),
        "--tool": (bundle_with("--cloud-init", "--tool") + ["FILE"], hub["tool"]),
        "--key": (["hub", "authorize", "--key", "FILE", "--node", "worker-7", "--program", "/usr/bin/true",
                   "--authorized-keys", str(tmp_path / "ak")], pub),
        "--inventory": (["render", "--config", str(good_file(tmp_path, "r.toml", "", 0o644)), "--inventory", "FILE"],
                        inventory),
    }


def test_every_path_option_of_the_cli_is_a_trust_file_or_named_otherwise(hub, tmp_path):  # noqa: F811
    options = path_options()
    assert set(options) <= set(trust.TRUSTED_OPTIONS) | set(trust.UNTRUSTED_OPTIONS), options
    assert set(option_cases(hub, tmp_path)) == set(trust.TRUSTED_OPTIONS)


@pytest.mark.parametrize("option", sorted(trust.TRUSTED_OPTIONS))
def test_each_trusted_option_refuses_a_file_that_others_could_change(gsn, hub, tmp_path, option, as_root):  # noqa: F811
    argv, good = option_cases(hub, tmp_path)[option]
    bad = bad_variants(good)["group-writable"]
    result = gsn(*[str(bad) if a == "FILE" else a for a in argv])
    assert result.returncode == 2, (option, result.stdout, result.stderr)
    assert "refusing to trust it" in result.stderr and "Traceback" not in result.stderr, result.stderr
    link = good.with_name(good.name + ".link")
    result = gsn(*[str(link) if a == "FILE" else a for a in argv])
    assert result.returncode == 2 and "symbolic link" in result.stderr, (option, result.stderr)


@pytest.mark.parametrize("sudo_uid, mode, verdict", [
    ("1000", 0o644, None),  # the operator's own node.toml, given to `sudo setup --config`
    ("1000", 0o600, None),
    ("1001", 0o644, "is owned by neither root nor the user running the tool"),  # another user's
    ("", 0o644, "is owned by neither root nor the user running the tool"),  # the boot unit, cloud-init
    ("1000", 0o664, "is writable by other users (mode 664)"),
    ("1000", 0o666, "is writable by other users (mode 666)"),
])
def test_a_file_of_the_user_who_ran_sudo_is_theirs_to_vouch_for(monkeypatch, sudo_uid, mode, verdict):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", sudo_uid)
    status = trust.FileStatus(uid=1000, gid=1000, mode=mode, is_symlink=False)
    assert trust.problem(status) == verdict


def test_sudo_uid_counts_only_for_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1002)
    monkeypatch.setenv("SUDO_UID", "1000")
    assert trust.problem(trust.FileStatus(uid=1000, gid=1000, mode=0o644, is_symlink=False)) is not None

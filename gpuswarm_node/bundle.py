"""`hub bundle`: everything a new worker needs, made on the hub, as a directory, a tarball and
(optionally) cloud-init user-data.

A bundle for node NAME holds

| file | installed on the worker as | mode there |
|---|---|---|
| `config.toml` | `/etc/gpuswarm-node/config.toml` (setup's default config) | 0644 |
| `id_ed25519`, `id_ed25519.pub` | `/etc/gpuswarm-node/id_ed25519` (swarm.ssh_key) | 0600 |
| `known_hosts` | `/etc/gpuswarm-node/known_hosts`: the hub's own SSH host keys | 0644 |
| `registry-ca.crt` | `/etc/gpuswarm-node/registry-ca.crt` (registry.ca_cert), when there is a registry | 0644 |
| `user-data` | (with `--cloud-init`) the instance's user-data | - |

The key pair is made here (Ed25519, with `cryptography`, which paramiko depends on) and its public
half authorised through the gate (`gate.authorize`, bound to NAME) before the bundle appears under
its name: a bundle on disk always holds a key the hub accepts, gated. Every file is the running
user's with mode 0600, the directory 0700, the tarball 0600; nothing secret is printed.

The user-data is `#cloud-config` (cloud-init's "Cloud config examples" and its module reference
for `set_hostname`, `write_files` and `runcmd`): the instance's host name is set to NAME, the name
the gate knows the worker by (config.toml records it as swarm.node_name, which setup's preflight
compares with the host name); `write_files` puts the files above in place with their modes and
the tool's source tarball beside it; `runcmd` unpacks it to
/usr/local/src/gpuswarm-node and runs its `setup.sh` (first boot only: runcmd is per instance;
later boots are the job of the boot unit setup installs). The tarball is embedded base64 (about
190 KB for `git archive HEAD setup.sh pyproject.toml gpuswarm_node templates`: over EC2's 16 KB
user-data limit, fine for NoCloud and clouds that take that much), or, with `--tool-url`,
downloaded there and checked against the SHA-256 of the given tarball.
"""

from __future__ import annotations

import base64
import getpass
import glob
import hashlib
import io
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import trust
from .errors import ConfigError, GpuswarmError
from .steps.boot import UNIT as BOOT_UNIT

ETC = "/etc/gpuswarm-node"
KEY_NAME = "id_ed25519"
# What setup's config names on the worker (and where the user-data writes the files).
WORKER_PATHS = {"swarm.ssh_key": f"{ETC}/{KEY_NAME}", "swarm.known_hosts": f"{ETC}/known_hosts",
                "registry.ca_cert": f"{ETC}/registry-ca.crt"}
HOST_KEY_GLOB = "/etc/ssh/ssh_host_*_key.pub"
DEFAULT_WORKER_CONFIG = Path(ETC) / "worker.toml"
TOOL_ON_WORKER = "/usr/local/src/gpuswarm-node.tar.gz"
SOURCE_ON_WORKER = "/usr/local/src/gpuswarm-node"
# The first boot's script (fetch or unpack the tool, run setup.sh), and the unit that runs it again
# at each later boot until setup has installed its own boot unit: runcmd runs once per instance,
# so without it a first boot that failed before setup existed would stay failed for good.
FIRSTBOOT_SCRIPT = "/usr/local/sbin/gpuswarm-node-firstboot"
FIRSTBOOT_UNIT_NAME = "gpuswarm-node-firstboot.service"
FIRSTBOOT_UNIT = f"/etc/systemd/system/{FIRSTBOOT_UNIT_NAME}"
# EC2 refuses user-data over 16 KB (before base64): "Run commands when you launch an EC2 instance
# with user data input", the user-data limits.
EC2_USER_DATA_LIMIT = 16384
URL = re.compile(r"https://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+")


@dataclass(frozen=True)
class Bundle:
    """What `make` wrote: the directory, the tarball, the user-data (or None), the key's SHA256
    fingerprint (public) and what authorising the key did."""

    directory: Path
    tarball: Path
    user_data: Path | None
    fingerprint: str
    authorised: list[str]
    user_data_bytes: int = 0


def worker_config(template: Path | None, overrides: list[str], ssh_user: str) -> config_mod.Config:
    """The worker's configuration: the hub-side template (`template`, or /etc/gpuswarm-node/worker.toml
    when it exists), then `overrides` (section.key=value), then the bundle's own paths. Validated
    as setup validates it; ConfigError when swarm.manager is missing or a value is bad. The hub's
    GPUSWARM_* environment is not read: it configures the hub, not its workers."""
    explicit = template is not None
    chosen = template or DEFAULT_WORKER_CONFIG
    path = chosen if explicit or chosen.exists() else None
    cfg = config_mod.load(path if path is not None else Path(os.devnull), env={}, overrides=list(overrides))
    data = config_mod.tables(cfg)
    swarm = data.setdefault("swarm", {})
    if not cfg.swarm.manager:
        raise ConfigError("the worker's swarm.manager is not set, so the worker would not know its hub.",
                          "Give --manager HOST (the name workers reach this hub's SSH on), or set it in "
                          f"{DEFAULT_WORKER_CONFIG}.")
    if "swarm.ssh_user" not in cfg.origins:
        swarm["ssh_user"] = ssh_user  # the user whose authorized_keys gets the key
    for dotted, where in WORKER_PATHS.items():
        section, name = dotted.split(".")
        if dotted == "registry.ca_cert" and not cfg.registry.address:
            data.get("registry", {}).pop("ca_cert", None)
            continue
        data.setdefault(section, {})[name] = where
    swarm.pop("host_key_fingerprint", None)  # known_hosts holds the hub's keys
    return config_mod.from_tables(data, "the bundle's worker configuration")


def known_hosts_text(manager: str, port: int, host_keys: list[Path]) -> str:
    """known_hosts lines naming `manager` (as `[manager]:port` when port is not 22, as OpenSSH
    and paramiko look it up) for each host public key. ConfigError when a file is not one key."""
    from .gate import parse_public_key

    name = manager if port == 22 else f"[{manager}]:{port}"
    if not host_keys:
        raise ConfigError(f"no SSH host key found ({HOST_KEY_GLOB}).",
                          "Run this on the hub itself, or give its public host keys with --host-key FILE.")
    lines = []
    for path in host_keys:
        try:
            text = trust.read(path, "--host-key").decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--host-key {path} cannot be read: {exc}.",
                              "Give the hub's public host key files (/etc/ssh/ssh_host_*_key.pub).") from None
        key_type, blob = parse_public_key(text, f"host key {path}")
        lines.append(f"{name} {key_type} {blob}\n")
    return "".join(lines)


def registry_ca_text(cfg: config_mod.Config, ca: Path | None) -> str | None:
    if not cfg.registry.address:
        if ca is not None:
            raise ConfigError("--registry-ca is given but the worker has no registry.address.",
                              "Give --registry HOST:PORT too, or leave --registry-ca out.")
        return None
    if ca is None:
        raise ConfigError(f"the worker's registry is {cfg.registry.address} but no CA certificate is given.",
                          "Give --registry-ca FILE: the PEM CA that signed the registry's certificate.")
    text = trust.read(ca, "--registry-ca").decode(errors="replace")
    if not trust.certificates(text) or "PRIVATE KEY" in text:
        raise ConfigError(f"--registry-ca {ca} is not a PEM certificate (or also holds a private key).",
                          "Give the CA certificate alone (ca.crt), never its key.")
    return trust.certificates(text)


def new_key_pair(node: str) -> tuple[bytes, str]:
    """(OpenSSH private key, public key line) of a fresh Ed25519 key, unencrypted (setup reads it
    unattended), the public line commented gpuswarm-node:NODE."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} gpuswarm-node:{node}\n"


def fingerprint(public_line: str) -> str:
    """SHA256:... as `ssh-keygen -lf` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def tool_bytes(tool: Path) -> bytes:
    """The tool's source tarball (`git archive --format=tar.gz`), checked to be one: a gzip'd tar
    with setup.sh at its top. ConfigError otherwise."""
    fix = ("Give the release tarball `tools/release.sh` builds in a checkout (or what "
           "`git archive --format=tar.gz -o gpuswarm-node.tar.gz HEAD` makes there).")
    data = trust.read(tool, "--tool")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = {n.lstrip("./") for n in tar.getnames()}
    except (tarfile.TarError, OSError, EOFError):
        raise ConfigError(f"--tool {tool} is not a gzip'd tar archive.", fix) from None
    if "setup.sh" not in names or "pyproject.toml" not in names:
        raise ConfigError(f"--tool {tool} has no setup.sh and pyproject.toml at its top.", fix)
    return data


def _b64(data: bytes, indent: str) -> str:
    text = base64.b64encode(data).decode()
    return "\n".join(indent + text[i:i + 76] for i in range(0, len(text), 76))


def hostname_keys(node: str) -> list[str]:
    """cloud-init keys that make the instance's host name `node` exactly (cc_set_hostname and
    cc_update_hostname, at every boot; cc_update_etc_hosts so that it resolves): the hub's gate
    acts only on the node whose host name is the key's node name, and a cloud's own name
    (ip-10-0-0-5) would never be it. A name with a dot is given as the fqdn too, and preferred:
    cloud-init otherwise cuts a dotted `hostname` at its first dot (util.get_hostname_fqdn)."""
    dotted = "." in node
    return ["preserve_hostname: false", f"hostname: {node}",
            *([f"fqdn: {node}"] if dotted else []),
            f"prefer_fqdn_over_hostname: {'true' if dotted else 'false'}",
            "manage_etc_hosts: localhost"]


def user_data_text(node: str, files: dict[str, tuple[bytes, int]], tool: bytes, tool_url: str | None) -> str:
    """#cloud-config user-data: the instance's host name set to `node` (hostname_keys), `files`
    ({path on the worker: (content, mode)}) and the tool's tarball written by write_files (base64:
    no YAML quoting of content), with FIRSTBOOT_SCRIPT (installs the tool and runs setup) and
    FIRSTBOOT_UNIT; runcmd enables the unit, then runs the script. With `tool_url` the tarball is
    fetched from there instead, and checked against the SHA-256 of `tool`."""
    lines = ["#cloud-config",
             f"# gpuswarm-node worker {node}, made by `gpuswarm-node hub bundle` on the hub.",
             "# It holds the worker's SSH key: the instance's metadata service serves it to anyone on the",
             "# instance (containers are kept out by the metadata-guard step); see docs/hub.md, Fleet.",
             "# The host name is the node name the key is authorised for: the hub's gate knows the worker by it.",
             *hostname_keys(node),
             "write_files:"]
    entries = dict(files)
    if tool_url is None:
        entries[TOOL_ON_WORKER] = (tool, 0o600)
    entries[FIRSTBOOT_SCRIPT] = (firstboot_script(tool, tool_url).encode(), 0o700)
    entries[FIRSTBOOT_UNIT] = (FIRSTBOOT_UNIT_TEXT.encode(), 0o644)
    for path, (content, mode) in entries.items():
        lines += [f"  - path: {path}", "    owner: root:root", f"    permissions: '0{mode:o}'",
                  "    encoding: b64", "    content: |", _b64(content, "      ")]
    # Enabled first, so that whatever ends this run, the next boot tries again.
    lines += ["runcmd:", f"  - [systemctl, enable, {FIRSTBOOT_UNIT_NAME}]", f"  - [{FIRSTBOOT_SCRIPT}]", ""]
    return "\n".join(lines)


# Ordered after cloud-final (where runcmd runs the script on the first boot: never both at once)
# and wanted by cloud-init.target, which cloud-init reaches at every boot; multi-user.target would
# make a cycle, since cloud-final is ordered after it.
FIRSTBOOT_UNIT_TEXT = f"""\
# Written by cloud-init from `gpuswarm-node hub bundle --cloud-init`'s user-data.
[Unit]
Description=gpuswarm-node: install the tool and run setup, until setup has installed its boot unit
Wants=network-online.target
After=network-online.target cloud-final.service
ConditionPathExists=!{BOOT_UNIT}

[Service]
Type=oneshot
ExecStart={FIRSTBOOT_SCRIPT}

[Install]
WantedBy=cloud-init.target
"""


def firstboot_script(tool: bytes, tool_url: str | None) -> str:
    """FIRSTBOOT_SCRIPT's text (sh): fetch the tool from `tool_url` (checked against the SHA-256 of
    `tool`) or use the tarball write_files put there, unpack it and run its setup.sh."""
    digest = hashlib.sha256(tool).hexdigest()
    fetch = []
    if tool_url is not None:
        # First boot: the network (or the server) may answer a little later: tries for about two
        # minutes (node.network_retry's default), each bounded (a server that accepts and never
        # answers), each failure one line (no traceback), then one line naming cause and fix; the
        # digest check refuses anything else than the tarball made here.
        quoted = shlex.quote(tool_url)
        fetch = [f"for try in $(seq 1 20); do python3 -c 'import shutil, sys, urllib.request as u; "
                 "sys.excepthook = lambda t, e, b: print(\"gpuswarm-node: fetching the tool failed:\", e, "
                 "file=sys.stderr); shutil.copyfileobj(u.urlopen(sys.argv[1], timeout=30), open(sys.argv[2], \"wb\"))' "
                 f"{quoted} {TOOL_ON_WORKER} && break; echo \"gpuswarm-node: try $try of 20; trying again in 6 s\" >&2; "
                 "sleep 6; done",
                 f"{{ [ -s {TOOL_ON_WORKER} ] || {{ echo \"gpuswarm-node: could not fetch the tool for 2 minutes; "
                 "check that the hub serves its URL, then reboot the instance (it tries again at each boot) or replace it\" "
                 ">&2; false; }; }",
                 f"echo '{digest}  {TOOL_ON_WORKER}' | sha256sum -c -"]
    install = [*fetch,
               f"rm -rf {SOURCE_ON_WORKER}", f"install -d -m 0755 {SOURCE_ON_WORKER}",
               f"tar -xzf {TOOL_ON_WORKER} -C {SOURCE_ON_WORKER} --no-same-owner",
               f"{SOURCE_ON_WORKER}/setup.sh --config {ETC}/config.toml"]
    return "#!/bin/sh\n# gpuswarm-node's first boot, from `hub bundle --cloud-init`.\n" + " && ".join(install) + "\n"


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _tarball(directory: Path, target: Path) -> None:
    """A gzip'd tar of the directory's files under `<name>/`, owned by root, modes kept; target
    created exclusively, mode 0600."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in [directory, *sorted(directory.iterdir())]:
            info = tar.gettarinfo(str(path), arcname=directory.name if path == directory
                                  else f"{directory.name}/{path.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = int(time.time())
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    _write(target, buffer.getvalue())


def make(node: str, out: Path, cfg: config_mod.Config, host_keys: list[Path], registry_ca: Path | None,
         authorized_keys: Path, program: str, cloud_init: bool = False, tool: Path | None = None,
         tool_url: str | None = None) -> Bundle:
    """Write the bundle for `node` to `out` (which must not exist) and `out`.tar.gz, authorising
    its key in `authorized_keys` (gate.authorize). Everything is checked before anything is
    written; ConfigError names the bad input, and then nothing is written."""
    from .gate import NODE_NAME, authorize

    if not NODE_NAME.fullmatch(node):
        raise ConfigError(f"--node {node[:80]!r} is not a host name.",
                          "Give the worker's host name (what `hostname` will print on it).")
    if len(node) > config_mod.HOST_NAME_MAX:
        raise ConfigError(f"--node {node[:80]!r} is {len(node)} characters; a machine's host name has at most "
                          f"{config_mod.HOST_NAME_MAX}, so no worker could be that node.",
                          "Give a shorter node name.")
    out = Path(os.path.abspath(out))
    tarball = out.with_name(out.name + ".tar.gz")
    for path in (out, tarball):
        if os.path.lexists(path):
            raise ConfigError(f"{path} already exists; a bundle is written once (it holds a key).",
                              "Give a new --out DIR, or remove the old bundle (and `hub revoke` its node).")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent} is not a directory.", "Give --out DIR in an existing directory.")
    if tool_url is not None and not URL.fullmatch(tool_url):
        raise ConfigError(f"--tool-url {tool_url[:80]!r} is not an https:// URL of plain characters.",
                          "Give the https URL the worker downloads the tool's tarball from.")
    if (cloud_init or tool_url) and tool is None:
        raise ConfigError("--cloud-init needs the tool's source tarball (--tool FILE) to install it on the worker.",
                          "Make it with `git archive --format=tar.gz -o gpuswarm-node.tar.gz HEAD` in a checkout.")
    known = known_hosts_text(cfg.swarm.manager, cfg.swarm.ssh_port, host_keys)
    ca = registry_ca_text(cfg, registry_ca)
    source = tool_bytes(tool) if cloud_init and tool is not None else None  # --cloud-init needs --tool
    data = config_mod.tables(cfg)
    # The name the key is authorised for: setup's preflight compares it with the host name.
    data.setdefault("swarm", {})["node_name"] = node
    config_text = (f"# gpuswarm-node worker {node}: made by `gpuswarm-node hub bundle`.\n"
                   + config_mod.to_toml(data))
    private, public = new_key_pair(node)
    files: dict[str, bytes] = {"config.toml": config_text.encode(), KEY_NAME: private,
                               f"{KEY_NAME}.pub": public.encode(), "known_hosts": known.encode()}
    if ca is not None:
        files["registry-ca.crt"] = ca.encode()
    on_worker = {f"{ETC}/config.toml": (files["config.toml"], 0o644), f"{ETC}/{KEY_NAME}": (private, 0o600),
                 f"{ETC}/known_hosts": (files["known_hosts"], 0o644)}
    if ca is not None:
        on_worker[f"{ETC}/registry-ca.crt"] = (files["registry-ca.crt"], 0o644)
    user_data = user_data_text(node, on_worker, source, tool_url).encode() if source is not None else None
    if user_data is not None:
        files["user-data"] = user_data

    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700
    try:
        for name, content in files.items():
            _write(work / name, content)
        authorised = authorize(public, "the bundle's new key", node, authorized_keys, program)
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        _tarball(out, tarball)
    except OSError as exc:
        raise GpuswarmError(f"the bundle is in {out}, but its tarball {tarball} cannot be written: {exc.strerror}.",
                            f"Make it yourself: tar -czf {tarball} -C {out.parent} {out.name}") from None
    return Bundle(out, tarball, out / "user-data" if user_data is not None else None, fingerprint(public),
                  authorised, len(user_data or b""))


def default_host_keys() -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(HOST_KEY_GLOB))]


def default_ssh_user() -> str:
    return getpass.getuser()


def authorized_keys_of(user: str) -> Path:
    """~USER/.ssh/authorized_keys; ConfigError when the hub has no such user."""
    import pwd

    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        raise ConfigError(f"the worker's swarm.ssh_user {user!r} is no user on this hub.",
                          "Set swarm.ssh_user to the hub user workers log in as, or give --authorized-keys FILE.") \
            from None
    return Path(home) / ".ssh" / "authorized_keys"


def flag_overrides(manager: str | None, registry: str | None, image: str | None, ssh_user: str | None,
                   ssh_port: int | None, sets: list[str]) -> list[str]:
    """The flags as --set overrides (the later --set wins over a flag, as it is written later)."""
    pairs: list[tuple[str, Any]] = [("swarm.manager", manager), ("registry.address", registry),
                                    ("image.name", image), ("swarm.ssh_user", ssh_user), ("swarm.ssh_port", ssh_port)]
    out = [f"{key}={value}" for key, value in pairs if value is not None]
    if registry is not None:
        out.append(f"registry.ca_cert={WORKER_PATHS['registry.ca_cert']}")  # validated together
    return out + list(sets)


def report_lines(bundle: Bundle, node: str) -> list[str]:
    """What `hub bundle` prints: paths and the public fingerprint, never a secret."""
    lines = [*bundle.authorised,
             f"bundle for {node}: {bundle.directory}/ and {bundle.tarball} (key {bundle.fingerprint}; they hold the "
             "worker's private key: give them only to that worker, then delete them)"]
    if bundle.user_data is not None:
        lines.append(f"cloud-init user-data: {bundle.user_data} ({bundle.user_data_bytes} bytes)")
        if bundle.user_data_bytes > EC2_USER_DATA_LIMIT:
            lines.append(f"note: over EC2's {EC2_USER_DATA_LIMIT}-byte user-data limit; give --tool-url URL to have "
                         "the worker download the tool instead of carrying it")
    return lines


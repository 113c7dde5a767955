"""A stand-in nvidia-container-toolkit Debian package in a local apt repository.

The product installs "nvidia-container-toolkit" with apt and points Docker at
/usr/bin/nvidia-container-runtime.  In the lab that package comes from here:
a real .deb, served by a real (flat, file:) apt repository, whose runtime
records what Docker asked of it - argv and, on "create", the container's
environment (NVIDIA_VISIBLE_DEVICES, DOCKER_RESOURCE_*) - and then execs the
real runc, so containers really run.  Tests read the records with
``read_calls``.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

PACKAGE = "nvidia-container-toolkit"
RUNTIME_PATH = "/usr/bin/nvidia-container-runtime"
CALL_LOG = "/var/log/fake-nvidia-runtime/calls.jsonl"
CALL_LOG_ENV = "FAKE_NVIDIA_RUNTIME_LOG"

MODEL = Path(__file__).resolve().parent.parent / "nvidia_hook_model.py"
CONFIG_ROOT_ENV = "FAKE_NVIDIA_CONFIG_ROOT"  # tests outside a machine: where /etc and /run are


def runtime_script(version: str) -> str:
    """The stand-in's program: records each call; on create also what the NVIDIA hook of this
    package version would give the container (tests/nvidia_hook_model.py, included whole), from
    the final config.json and the config.toml that hook version reads."""
    model = MODEL.read_text().replace("from __future__ import annotations\n", "")
    return f'''#!/usr/bin/python3
"""Stand-in nvidia-container-runtime (gpuswarm-node test lab), package version {version}.

Appends one JSON line per call to {CALL_LOG}
(or ${CALL_LOG_ENV}), then execs runc with the same arguments.
"""
from __future__ import annotations

import json
import os
import sys
import time
import tomllib

VERSION = {version!r}
LOG = os.environ.get("{CALL_LOG_ENV}") or "{CALL_LOG}"
ROOT = os.environ.get("{CONFIG_ROOT_ENV}", "")
# runc's global and "create" flags that take a separate value.
GLOBAL_VALUE_FLAGS = {{"--root", "--log", "--log-format", "--criu", "--rootless"}}
CREATE_VALUE_FLAGS = {{"--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds"}}

# --- the NVIDIA hook's device selection (tests/nvidia_hook_model.py) ---
{{model}}
# --- the stand-in ---


def split_command(args):
    i = 0
    while i < len(args):
        if not args[i].startswith("-"):
            return args[i], args[i + 1:]
        i += 2 if args[i] in GLOBAL_VALUE_FLAGS else 1
    return None, []


def parse_create(args):
    bundle, container_id, i = ".", None, 0  # runc's default bundle is the cwd
    while i < len(args):
        arg = args[i]
        if arg in ("--bundle", "-b") and i + 1 < len(args):
            bundle = args[i + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
        elif not arg.startswith("-"):
            container_id = arg
        i += 2 if arg in CREATE_VALUE_FLAGS else 1
    return os.path.abspath(bundle), container_id


def hook_config():
    path = config_path(VERSION, lambda p: os.path.exists(ROOT + p))
    try:
        with open(ROOT + path, "rb") as f:
            return path, tomllib.load(f)
    except FileNotFoundError:
        return path, {{}}


def describe(argv):
    call = {{"time": time.time(), "pid": os.getpid(), "argv": argv}}
    call["command"], rest = split_command(argv[1:])
    if call["command"] == "create":
        call["bundle"], call["id"] = parse_create(rest)
        try:
            with open(os.path.join(call["bundle"], "config.json")) as f:
                spec = json.load(f)
            env = dict(item.split("=", 1) for item in spec["process"].get("env", []) if "=" in item)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            call["spec_error"] = repr(exc)
            spec, env = None, {{}}
        call["env"] = env
        call["nvidia_visible_devices"] = env.get("NVIDIA_VISIBLE_DEVICES")
        call["docker_resources"] = {{
            k: v for k, v in env.items() if k.startswith("DOCKER_RESOURCE_")
        }}
        if spec is not None:
            try:
                call["hook_config"], config = hook_config()
                call["hook_devices"] = visible_devices(spec, config)
                call["hook_grants"] = grants(spec, config)
            except Exception as exc:
                call["hook_error"] = repr(exc)
    return call


def record(call):
    line = (json.dumps(call, sort_keys=True) + "\\n").encode()
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)  # one write: concurrent calls never interleave
    finally:
        os.close(fd)


def main():
    try:
        record(describe(sys.argv))
    except Exception as exc:  # a broken log must never break a container
        print(f"fake nvidia-container-runtime: call not recorded: {{exc!r}}", file=sys.stderr)
    try:
        os.execvp("runc", ["runc"] + sys.argv[1:])
    except OSError as exc:
        print(f"fake nvidia-container-runtime: cannot run runc: {{exc}}", file=sys.stderr)
        sys.exit(127)


main()
'''.replace("{model}", model)


def _control(version: str) -> str:
    return (
        f"Package: {PACKAGE}\n"
        f"Version: {version}\n"
        "Architecture: all\n"
        "Maintainer: gpuswarm-node test lab <lab@localhost>\n"
        "Depends: runc, python3\n"
        "Section: utils\n"
        "Priority: optional\n"
        "Description: stand-in NVIDIA Container Toolkit (gpuswarm-node test lab)\n"
        f" Installs {RUNTIME_PATH}, which records each call in\n"
        f" {CALL_LOG} and then runs the container with runc.\n"
    )


def build_deb(out_dir: Path, version: str = "1.17.8-1") -> Path:
    """Build the package into out_dir; return the .deb's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{PACKAGE}_{version}_all.deb"
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        runtime = tree / RUNTIME_PATH.lstrip("/")
        (tree / "DEBIAN").mkdir(parents=True)
        runtime.parent.mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text(_control(version))
        runtime.write_text(runtime_script(version))
        # Modes go into the package as they are here, whatever the umask.
        for path in [tree, *tree.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        runtime.chmod(0o755)
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
            check=True,
            capture_output=True,
        )
    return deb


def build_repo(out_dir: Path, version: str = "1.17.8-1") -> Path:
    """Build the package and a flat apt repository around it in out_dir.

    Returns out_dir (absolute); use ``apt_source_line`` for sources.list.
    """
    repo = Path(out_dir).resolve()
    build_deb(repo, version)
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", ".", "/dev/null"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    (repo / "Packages").write_bytes(packages)
    with gzip.GzipFile(repo / "Packages.gz", "wb", mtime=0) as f:
        f.write(packages)
    (repo / "Release").write_text(_release(repo, ["Packages", "Packages.gz"]))
    return repo


def _release(repo: Path, names: list[str], origin: str = "gpuswarm-node-lab") -> str:
    # With a Release naming its indexes, apt fetches just those instead of
    # probing for Packages.xz, .bz2, ... and logging an error for each.
    # The origin is what apt preferences can pin a repository by.
    lines = [
        f"Origin: {origin}",
        f"Label: {origin}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
    ]
    for field, algorithm in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        lines.append(f"{field}:")
        for name in names:
            data = (repo / name).read_bytes()
            lines.append(f" {hashlib.new(algorithm, data).hexdigest()} {len(data)} {name}")
    return "\n".join(lines) + "\n"


def apt_source_line(repo_dir: Path | PurePosixPath | str) -> str:
    """The sources.list line for a repository, as the machine using it sees it."""
    path = PurePosixPath(repo_dir)
    if not path.is_absolute():
        raise ValueError(f"apt needs an absolute repository path, got {repo_dir}")
    return f"deb [trusted=yes] file:{path} ./"


def read_calls(log_text: str) -> list[dict]:
    """The runtime's records, oldest first, from the text of its call log."""
    return [json.loads(line) for line in log_text.splitlines() if line.strip()]


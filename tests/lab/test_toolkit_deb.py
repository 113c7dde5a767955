"""The stand-in nvidia-container-toolkit package, its apt repository and its runtime.

The runtime is tested as shipped: extracted from the built .deb and run as a
program, with runc replaced on PATH by a script that records how it was run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import toolkit_deb

VERSION = "1.17.8-1"
GPU = "GPU-4f7a1c2e-8b3d-4e5f-9a6b-7c8d9e0f1a2b"


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def control_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line[0].isspace():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toolkit_deb.build_repo(tmp_path_factory.mktemp("toolkit-repo"))


@pytest.fixture(scope="session")
def deb(repo: Path) -> Path:
    return repo / f"nvidia-container-toolkit_{VERSION}_all.deb"


@pytest.fixture(scope="session")
def runtime(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toolkit-extracted")
    run("dpkg-deb", "-x", str(deb), str(root))
    return root / "usr" / "bin" / "nvidia-container-runtime"


FAKE_RUNC = """#!{python}
import json, os, sys
with open(os.environ["FAKE_RUNC_RECORD"], "a") as f:
    f.write(json.dumps({{"pid": os.getpid(), "argv": sys.argv}}) + "\\n")
sys.exit(int(os.environ.get("FAKE_RUNC_EXIT", "0")))
"""


@pytest.fixture
def lab(tmp_path: Path):
    """A fake runc first on PATH, and where both programs record their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runc = bin_dir / "runc"
    runc.write_text(FAKE_RUNC.format(python=sys.executable))
    runc.chmod(0o755)

    class Lab:
        log = tmp_path / "log" / "calls.jsonl"
        runc_record = tmp_path / "runc.jsonl"
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            toolkit_deb.CALL_LOG_ENV: str(tmp_path / "log" / "calls.jsonl"),
            "FAKE_RUNC_RECORD": str(tmp_path / "runc.jsonl"),
        }

        def calls(self) -> list[dict]:
            return toolkit_deb.read_calls(self.log.read_text())

        def runc_calls(self) -> list[dict]:
            return toolkit_deb.read_calls(self.runc_record.read_text())

    return Lab()


def make_bundle(path: Path, env: list[str]) -> Path:
    path.mkdir(parents=True)
    spec = {"ociVersion": "1.0.2", "process": {"args": ["sleep", "1"], "env": env}}
    (path / "config.json").write_text(json.dumps(spec))
    return path


def test_deb_fields(deb: Path) -> None:
    fields = control_fields(run("dpkg-deb", "-f", str(deb)).stdout)
    assert fields["Package"] == "nvidia-container-toolkit"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == "all"
    assert fields["Depends"] == "runc, python3"
    assert fields["Description"].startswith("stand-in NVIDIA Container Toolkit")


def test_deb_version_is_a_parameter(tmp_path: Path) -> None:
    repo = toolkit_deb.build_repo(tmp_path, version="1.16.2-1")
    deb = repo / "nvidia-container-toolkit_1.16.2-1_all.deb"
    assert run("dpkg-deb", "-f", str(deb), "Version").stdout.strip() == "1.16.2-1"


def test_deb_ships_executable_runtime_owned_by_root(deb: Path, runtime: Path) -> None:
    listing = run("dpkg-deb", "-c", str(deb)).stdout.splitlines()
    [entry] = [line for line in listing if line.endswith(" ./usr/bin/nvidia-container-runtime")]
    mode, owner = entry.split()[:2]
    assert (mode, owner) == ("-rwxr-xr-x", "root/root")
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o755
    script = runtime.read_text()
    assert script.startswith("#!/usr/bin/python3\n")
    assert f'"{toolkit_deb.CALL_LOG}"' in script


def test_packages_index_and_release(repo: Path, deb: Path) -> None:
    packages = (repo / "Packages").read_bytes()
    fields = control_fields(packages.decode())
    assert fields["Package"] == "nvidia-container-toolkit"
    assert fields["Version"] == VERSION
    assert fields["Filename"] == f"./{deb.name}"
    assert fields["SHA256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert gzip.decompress((repo / "Packages.gz").read_bytes()) == packages
    release = (repo / "Release").read_text()
    assert f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n" in release


def test_apt_sees_the_package(repo: Path, tmp_path: Path) -> None:
    # apt with its own sources and state, so the host's apt is left alone.
    for d in ("lists/partial", "cache/archives/partial", "parts", "prefs"):
        (tmp_path / d).mkdir(parents=True)
    sources = tmp_path / "sources.list"
    sources.write_text(toolkit_deb.apt_source_line(repo) + "\n")
    options = []
    for key, value in {
        "Dir::Etc::SourceList": sources,
        "Dir::Etc::SourceParts": tmp_path / "parts",
        "Dir::Etc::PreferencesParts": tmp_path / "prefs",
        "Dir::State::Lists": tmp_path / "lists",
        "Dir::Cache": tmp_path / "cache",
        "APT::Sandbox::User": "root",
    }.items():
        options += ["-o", f"{key}={value}"]
    update = run("apt-get", *options, "update")
    assert "Err" not in update.stdout
    policy = run("apt-cache", *options, "policy", "nvidia-container-toolkit").stdout
    assert f"Candidate: {VERSION}" in policy
    plan = run("apt-get", *options, "install", "--simulate", "nvidia-container-toolkit").stdout
    assert f"Inst nvidia-container-toolkit ({VERSION}" in plan


def test_apt_source_line() -> None:
    assert toolkit_deb.apt_source_line("/srv/repo") == "deb [trusted=yes] file:/srv/repo ./"
    with pytest.raises(ValueError):
        toolkit_deb.apt_source_line("relative/repo")


@pytest.mark.parametrize("bundle_form", ["--bundle DIR", "-b DIR", "--bundle=DIR", "cwd"])
def test_runtime_records_create_then_execs_runc(runtime, lab, tmp_path, bundle_form) -> None:
    bundle = make_bundle(
        tmp_path / "bundle",
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"NVIDIA_VISIBLE_DEVICES={GPU}",
            f"DOCKER_RESOURCE_NVIDIA-GPU={GPU}",
            "JUPYTERHUB_SERVICE_URL=http://0.0.0.0:8888/user/ada/?a=b",
        ],
    )
    bundle_args = {
        "--bundle DIR": ["--bundle", str(bundle)],
        "-b DIR": ["-b", str(bundle)],
        "--bundle=DIR": [f"--bundle={bundle}"],
        "cwd": [],
    }[bundle_form]
    args = [
        "--root", "/var/run/docker/runtime-runc/moby",
        "--log", str(tmp_path / "runc-log.json"),
        "--log-format", "json",
        "--systemd-cgroup",
        "create", *bundle_args,
        "--pid-file", str(tmp_path / "init.pid"),
        "--console-socket", str(tmp_path / "console.sock"),
        "c0ffee",
    ]
    proc = subprocess.run(
        [str(runtime), *args], env=lab.env, cwd=bundle, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""

    [call] = lab.calls()
    assert call["argv"] == [str(runtime), *args]
    assert call["command"] == "create"
    assert call["id"] == "c0ffee"
    assert Path(call["bundle"]).resolve() == bundle.resolve()
    assert call["nvidia_visible_devices"] == GPU
    assert call["docker_resources"] == {"DOCKER_RESOURCE_NVIDIA-GPU": GPU}
    assert call["env"]["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8888/user/ada/?a=b"
    assert "spec_error" not in call

    [runc] = lab.runc_calls()
    assert runc["argv"][1:] == args
    assert Path(runc["argv"][0]).name == "runc"
    # Same pid: runc replaced the runtime (exec), it was not a child.
    assert runc["pid"] == call["pid"]


def test_runtime_passes_other_commands_and_runc_exit_status(runtime, lab) -> None:
    env = {**lab.env, "FAKE_RUNC_EXIT": "3"}
    for args in (["--root", "/run/x", "state", "c0ffee"], ["--version"]):
        proc = subprocess.run([str(runtime), *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 3, proc.stderr
    calls = lab.calls()
    assert [(c["command"], c["argv"][1:]) for c in calls] == [
        ("state", ["--root", "/run/x", "state", "c0ffee"]),
        (None, ["--version"]),
    ]
    assert all("env" not in c for c in calls)
    assert [r["argv"][1:] for r in lab.runc_calls()] == [c["argv"][1:] for c in calls]


def test_runtime_runs_container_when_log_cannot_be_written(runtime, lab, tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bundle = make_bundle(tmp_path / "bundle", [f"NVIDIA_VISIBLE_DEVICES={GPU}"])
    env = {**lab.env, toolkit_deb.CALL_LOG_ENV: str(blocker / "calls.jsonl")}
    args = ["create", "--bundle", str(bundle), "c0ffee"]
    proc = subprocess.run([str(runtime), *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0
    assert "call not recorded" in proc.stderr
    assert [r["argv"][1:] for r in lab.runc_calls()] == [args]


def test_runtime_records_unreadable_bundle_and_still_runs(runtime, lab, tmp_path) -> None:
    args = ["create", "--bundle", str(tmp_path / "missing"), "c0ffee"]
    proc = subprocess.run([str(runtime), *args], env=lab.env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [call] = lab.calls()
    assert (call["env"], call["nvidia_visible_devices"]) == ({}, None)
    assert "FileNotFoundError" in call["spec_error"]
    assert [r["argv"][1:] for r in lab.runc_calls()] == [args]


def test_runtime_appends_one_line_per_call(runtime, lab, tmp_path) -> None:
    for n in range(3):
        bundle = make_bundle(tmp_path / f"bundle{n}", [f"NVIDIA_VISIBLE_DEVICES={n}"])
        subprocess.run(
            [str(runtime), "create", "--bundle", str(bundle), f"c{n}"], env=lab.env, check=True
        )
    lines = lab.log.read_text().splitlines()
    assert len(lines) == 3
    assert [(c["id"], c["nvidia_visible_devices"]) for c in lab.calls()] == [
        ("c0", "0"), ("c1", "1"), ("c2", "2"),
    ]


def test_read_calls_skips_blank_lines() -> None:
    text = '{"command": "create", "id": "a"}\n\n{"command": "delete", "id": "a"}\n'
    assert toolkit_deb.read_calls(text) == [
        {"command": "create", "id": "a"},
        {"command": "delete", "id": "a"},
    ]


@pytest.mark.parametrize("files, env, mounts, devices, reads", [
    ({}, [f"NVIDIA_VISIBLE_DEVICES={GPU}"], [], [GPU], "/etc"),
    ({}, ["NVIDIA_VISIBLE_DEVICES=void"], [], [], "/etc"),
    ({}, ["CUDA_VERSION=12.1"], [], ["all"], "/etc"),  # a legacy CUDA image without the variable
    ({"/etc": 'swarm-resource = "DOCKER_RESOURCE_FOO"\n'},
     ["NVIDIA_VISIBLE_DEVICES=void", "DOCKER_RESOURCE_FOO=all"], [], ["all"], "/etc"),
    ({"/etc": "accept-nvidia-visible-devices-as-volume-mounts = true\n"},
     ["NVIDIA_VISIBLE_DEVICES=void"], ["/var/run/nvidia-container-devices/all"], ["all"], "/etc"),
    ({"/etc": "accept-nvidia-visible-devices-envvar-when-unprivileged = false\n"},
     [f"NVIDIA_VISIBLE_DEVICES={GPU}"], [], [], "/etc"),
    # Up to 1.17 the hook prefers the driver container's copy of the settings.
    ({"/etc": "", "/run/nvidia/driver/etc": 'swarm-resource = "X"\n'},
     ["NVIDIA_VISIBLE_DEVICES=void", f"X={GPU}"], [], [GPU], "/run/nvidia/driver/etc"),
], ids=["visible", "void", "legacy-image", "swarm-resource", "volume-mounts", "envvar-unprivileged-off",
        "driver-config"])
def test_runtime_records_what_the_hook_would_give(runtime, lab, tmp_path, files, env, mounts, devices, reads):
    root = tmp_path / "root"
    for where, text in files.items():
        config = root / where.lstrip("/") / "nvidia-container-runtime" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(text)
    bundle = make_bundle(tmp_path / "bundle", env)
    spec = json.loads((bundle / "config.json").read_text())
    spec["mounts"] = [{"destination": m, "source": "/dev/null", "type": "bind"} for m in mounts]
    (bundle / "config.json").write_text(json.dumps(spec))
    proc = subprocess.run([str(runtime), "create", "--bundle", str(bundle), "c0ffee"],
                          env={**lab.env, toolkit_deb.CONFIG_ROOT_ENV: str(root)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [call] = lab.calls()
    assert call["hook_devices"] == devices
    assert call["hook_config"] == f"{reads}/nvidia-container-runtime/config.toml"

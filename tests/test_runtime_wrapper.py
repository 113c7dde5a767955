"""The slice-aware runtime wrapper, run as Docker runs it: the rendered sh front, executed through
its own #! line, which starts the rendered Python program beside it with /usr/bin/python3 for a
`create`; a stand-in nvidia-container-runtime on PATH records what it was given.

Only the paths of the program and the slice map differ from what setup installs. Every class of
DOCKER_RESOURCE_<KIND> input is here: one slice, several slices of one GPU, slices of several
GPUs, MIG, none, malformed and unknown; then the OCI command lines (calls that never start Python,
the bundle forms), and the failure paths, which must stop the container rather than pass it
through.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gpuswarm_node.nvidia_hook import wrapper_policy
from gpuswarm_node.render import render
from gpuswarm_node.slices import slice_map_text
from gpuswarm_node.steps.docker_daemon import (NVIDIA_RUNTIME, WRAPPER_PYTHON, wrapper_bytecode,
                                               wrapper_program_text, wrapper_text)

from .fake_engine import CONTAINER_ID, FakeEngine

G0 = "GPU-00000000-1111-4222-8333-444444444444"
G1 = "GPU-00000001-1111-4222-8333-444444444444"
MIG = "MIG-11111111-aaaa-5bbb-8ccc-000000000001"
ADVERTISED = [f"{G0}::1", f"{G1}::1", MIG, f"{G0}::2", f"{G1}::2", f"{G0}::3", f"{G1}::3"]
BUNDLE_CONFIG = Path(__file__).parent / "data" / "docker-bundle-config.json"
STAND_IN = """#!/bin/sh
# nvidia-container-runtime stand-in: record the arguments, NUL-terminated so that any argument
# (empty, with a newline) comes back exactly.
printf '%s\\0' "$0" "$@" > "$RECORD/argv"
exit "${STAND_IN_RC:-0}"
"""
# Put where the front runs the program: it records that Python ran, then fails the call.
PYTHON_TRIPWIRE = """import json, os, sys
with open(os.path.join(os.environ["RECORD"], "python"), "w") as fh:
    json.dump({"argv": sys.argv[1:], "executable": sys.executable, "isolated": sys.flags.isolated,
               "no_site": sys.flags.no_site}, fh)
sys.exit(99)
"""


def render_program(slice_map: Path, docker_socket: Path, toolkit_configs: tuple[str, ...] = ()) -> str:
    return render("gpuswarm-runtime.j2", slice_map=str(slice_map), runtime=NVIDIA_RUNTIME["path"],
                  docker_socket=str(docker_socket), toolkit_configs=toolkit_configs,
                  hook_policy=wrapper_policy())


class Node:
    """The wrapper's front and program as setup lays them out (0755 and 0644), its slice map, a
    stand-in NVIDIA runtime, a stand-in Docker Engine API and a bundle named by its container id,
    all under tmp_path. The NVIDIA toolkit's settings are read from tmp_path/toolkit/*.toml."""

    def __init__(self, tmp_path: Path, kind: str = "gpu", slices: list[str] = ADVERTISED) -> None:
        self.tmp = tmp_path
        self.slice_map = tmp_path / "slices.json"
        self.slice_map.write_text(slice_map_text(kind, slices))
        self.slice_map.chmod(0o644)
        self.engine = FakeEngine(tmp_path / "docker.sock")
        toolkit = tmp_path / "toolkit"
        toolkit.mkdir()
        self.driver_toolkit_config = toolkit / "driver-config.toml"
        self.toolkit_config = toolkit / "config.toml"
        self.program = tmp_path / "gpuswarm-runtime.py"
        self.program.write_text(render_program(self.slice_map, self.engine.path,
                                               (str(self.driver_toolkit_config), str(self.toolkit_config))))
        self.program.chmod(0o644)
        # The program's bytecode, as setup writes it beside the installed program.
        self.bytecode = tmp_path / "__pycache__" / f"gpuswarm-runtime.{sys.implementation.cache_tag}.pyc"
        self.bytecode.parent.mkdir()
        self.bytecode.write_bytes(wrapper_bytecode(self.program.read_text(), str(self.program)))
        self.wrapper = tmp_path / "gpuswarm-runtime"
        self.wrapper.write_text(wrapper_text(program=str(self.program)))
        self.wrapper.chmod(0o755)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        runtime = bin_dir / "nvidia-container-runtime"
        runtime.write_text(STAND_IN)
        runtime.chmod(0o755)
        self.path = f"{bin_dir}:/usr/bin:/bin"
        self.record = tmp_path / "record"
        self.record.mkdir()
        self.bundle = tmp_path / CONTAINER_ID
        self.bundle.mkdir()
        self.config = self.bundle / "config.json"

    def spec(self, env: list[str] | None = None, **changes) -> dict:
        spec = json.loads(BUNDLE_CONFIG.read_text())
        if env is not None:
            spec["process"]["env"] = env
        spec.update(changes)
        self.config.write_text(json.dumps(spec, separators=(",", ":")))
        return spec

    def run(self, *args: str, cwd: Path | None = None, path: str | None = None,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
        env = {"PATH": path or self.path, "RECORD": str(self.record), **(extra_env or {})}
        return subprocess.run([str(self.wrapper), *args], env=env, cwd=cwd or self.tmp,
                              capture_output=True, text=True, timeout=30)

    def create(self, **kw) -> subprocess.CompletedProcess:
        return self.run("--root", "/run/docker/runtime-runc/moby", "--log", str(self.bundle / "log.json"),
                        "--log-format", "json", "create", "--bundle", str(self.bundle),
                        "--pid-file", str(self.bundle / "init.pid"), "c0ffee", **kw)

    def forwarded(self) -> list[str] | None:
        path = self.record / "argv"
        return path.read_text().split("\0")[1:-1] if path.exists() else None

    def python_call(self) -> dict | None:
        """What the tripwire program recorded, if Python was started."""
        path = self.record / "python"
        return json.loads(path.read_text()) if path.exists() else None

    def env_after(self) -> list[str]:
        return json.loads(self.config.read_text())["process"]["env"]

    def visible(self) -> list[str]:
        return [e for e in self.env_after() if e.startswith("NVIDIA_VISIBLE_DEVICES")]


def resource_env(value: str | None, variable: str = "DOCKER_RESOURCE_GPU") -> list[str]:
    base = [e for e in json.loads(BUNDLE_CONFIG.read_text())["process"]["env"]
            if not e.startswith("DOCKER_RESOURCE_")]
    return base if value is None else base + [f"{variable}={value}"]


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path)
    yield node
    node.engine.close()


# --- the rewrite, for every input class -----------------------------------------------------------

def share_env(percent: int | None) -> list[str]:
    """The frameworks' memory settings the wrapper adds for a share of a GPU (None: none)."""
    if percent is None:
        return []
    return ["TF_FORCE_GPU_ALLOW_GROWTH=true", f"XLA_PYTHON_CLIENT_MEM_FRACTION={percent / 100:.2f}",
            f"XLA_CLIENT_MEM_FRACTION={percent / 100:.2f}", f"CUPY_GPU_MEMORY_LIMIT={percent}%"]


# The node's map: three slices of each of G0 and G1, and a MIG device. The memory share is the
# smallest over the container's GPUs, rounded down; a MIG device is a whole device.
@pytest.mark.parametrize("value, visible, percent", [
    (f"{G0}::2", G0, 33),                                    # one slice
    (f"{G0}::1,{G0}::3", G0, 66),                            # several slices of one GPU: the GPU once
    (f"{G1}::1,{G0}::2", f"{G1},{G0}", 33),                  # slices of several GPUs, in Swarm's order
    (f"{G0}::1,{G1}::2,{G0}::3", f"{G0},{G1}", 33),
    (MIG, MIG, None),                                        # a MIG device is its own device
    (f"{MIG},{G1}::2", f"{MIG},{G1}", 33),
    (f"{G1}::3,{G1}::1,{G1}::2", G1, None),                  # all of a GPU's slices: the whole GPU
], ids=["one", "two-on-one-gpu", "two-gpus", "three-on-two-gpus", "mig", "mig-and-gpu", "whole-gpu"])
def test_reserved_slices_become_exactly_their_devices(node, value, visible, percent):
    before = node.spec(resource_env(value))
    result = node.create()
    assert result.returncode == 0, result.stderr
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={visible}"]
    # The image's NVIDIA_VISIBLE_DEVICES=all is gone, its driver capabilities pinned (as the
    # image asked: compute,utility), the frameworks' memory settings added for a share of a GPU;
    # everything else is as it was, in order.
    old_env = [e for e in before["process"]["env"]
               if not e.startswith(("NVIDIA_VISIBLE_DEVICES=", "NVIDIA_DRIVER_CAPABILITIES="))]
    assert node.env_after() == old_env + [f"NVIDIA_VISIBLE_DEVICES={visible}",
                                          "NVIDIA_DRIVER_CAPABILITIES=compute,utility"] + share_env(percent)
    after = json.loads(node.config.read_text())
    for spec in (before, after):
        del spec["process"]["env"]
    assert after == before


@pytest.mark.parametrize("env", [
    resource_env(None),                                   # reserved nothing
    resource_env(""),                                     # an empty reservation
    [e for e in resource_env(None) if not e.startswith("NVIDIA_")],   # a plain image
    None,                                                 # no env at all
], ids=["unset", "empty", "no-nvidia-variables", "no-env"])
def test_no_reservation_sees_no_gpu(node, env):
    spec = node.spec()
    if env is None:
        del spec["process"]["env"]
        node.config.write_text(json.dumps(spec))
    else:
        node.spec(env)
    result = node.create()
    assert result.returncode == 0, result.stderr
    assert node.visible() == ["NVIDIA_VISIBLE_DEVICES=void"]


@pytest.mark.parametrize("value, shown", [
    (f"{G0}::0", f"{G0}::0"),
    (f"{G0}::x", f"{G0}::x"),
    (f"{G0}::1,,{G0}::2", ""),
    (f"{G0}::1,", ""),
    (f" {G0}::1", f" {G0}::1"),
    (f"{G0}::1;reboot", f"{G0}::1;reboot"),
    ("all", "all"),
    ("0", "0"),
    (f"{MIG}::1", f"{MIG}::1"),
    (f"{G0}::1\nNVIDIA_VISIBLE_DEVICES=all", f"{G0}::1\nNVIDIA_VISIBLE_DEVICES=all"),
], ids=["zero", "not-a-number", "empty-item", "trailing-comma", "space", "shell", "all", "index", "mig-suffix",
        "newline"])
def test_malformed_slice_fails_the_start(node, value, shown):
    node.spec(resource_env(value))
    before = node.config.read_bytes()
    result = node.create()
    assert result.returncode == 1
    assert result.stderr == (f"gpuswarm-runtime: slice {shown!r} in DOCKER_RESOURCE_GPU is malformed "
                             "(expected GPU-<uuid>::<n> or MIG-<uuid>)\n")
    assert node.forwarded() is None, "the NVIDIA runtime must not run"
    assert node.config.read_bytes() == before


@pytest.mark.parametrize("value, bad", [
    (f"{G0}::9", f"{G0}::9"),                                          # beyond this GPU's slices
    ("GPU-ffffffff-1111-4222-8333-444444444444::1", "GPU-ffffffff-1111-4222-8333-444444444444::1"),
    (f"{G0}::1,MIG-22222222-aaaa-5bbb-8ccc-000000000009", "MIG-22222222-aaaa-5bbb-8ccc-000000000009"),
    (G0, G0),                                                          # a whole GPU was never advertised
], ids=["slice-beyond-count", "unknown-gpu", "unknown-mig", "bare-gpu-uuid"])
def test_unknown_slice_fails_the_start(node, value, bad):
    node.spec(resource_env(value))
    result = node.create()
    assert result.returncode == 1
    assert result.stderr == f"gpuswarm-runtime: slice {bad!r} in DOCKER_RESOURCE_GPU is not advertised on this node\n"
    assert node.forwarded() is None


def test_a_very_long_hostile_value_is_cut_in_the_message(node):
    node.spec(resource_env("GPU-" + "a" * 5000 + "::1"))
    result = node.create()
    assert result.returncode == 1
    assert len(result.stderr) < 250 and result.stderr.count("\n") == 1


def test_conflicting_duplicates_are_refused_identical_ones_accepted(node):
    node.spec(resource_env(f"{G0}::1") + [f"DOCKER_RESOURCE_GPU={G1}::1"])
    result = node.create()
    assert result.returncode == 1
    assert "DOCKER_RESOURCE_GPU is set more than once, with different values" in result.stderr
    node.spec(resource_env(f"{G0}::1") + [f"DOCKER_RESOURCE_GPU={G0}::1"])
    assert node.create().returncode == 0
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={G0}"]


def test_every_nvidia_visible_devices_entry_is_replaced(node):
    node.spec(resource_env(f"{G1}::2") + ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES"])
    assert node.create().returncode == 0
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={G1}"]


def test_the_kind_comes_from_the_slice_map(tmp_path):
    node = Node(tmp_path, kind="nvslice")
    node.spec(resource_env(f"{G0}::1", "DOCKER_RESOURCE_NVSLICE") + [f"DOCKER_RESOURCE_GPU={G1}::1"])
    assert node.create().returncode == 0
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={G0}"]
    node.spec(resource_env(f"{G1}::1", "DOCKER_RESOURCE_GPU"))
    assert node.create().returncode == 0
    assert node.visible() == ["NVIDIA_VISIBLE_DEVICES=void"]


def test_spec_survives_the_round_trip(node):
    spec = node.spec(resource_env(f"{G0}::1") + ["GREETING=h\u00e9llo \u2603", 'QUOTE="a\\b"'])
    spec["linux"]["resources"]["memory"]["limit"] = 18446744073709551615
    spec["annotations"] = {"ratio": 0.1, "deep": [[{"x": None}]], "empty": {}}
    node.config.write_text(json.dumps(spec))
    node.config.chmod(0o600)
    assert node.create().returncode == 0
    after = json.loads(node.config.read_text())
    assert after["linux"]["resources"]["memory"]["limit"] == 18446744073709551615
    assert after["annotations"] == spec["annotations"]
    assert "GREETING=h\u00e9llo \u2603" in after["process"]["env"] and 'QUOTE="a\\b"' in after["process"]["env"]
    assert stat.S_IMODE(node.config.stat().st_mode) == 0o600
    assert sorted(p.name for p in node.bundle.iterdir()) == ["config.json"], "no temporary file is left"


# --- the command line -----------------------------------------------------------------------------

NOT_CREATE = [
    ["--root", "/run/docker/runtime-runc/moby", "--log", "/x/log.json", "--log-format", "json", "start", "c0ffee"],
    ["--root", "/run/x", "delete", "--force", "c0ffee"],
    ["state", "c0ffee"],
    ["kill", "c0ffee", "9"],
    ["--version"],
    [],
    ["state", "", "a b", "*", "$HOME", "x\ny", "--bundle=create", "-b", "--", "'", "\\", "created", " create"],
]
NOT_CREATE_IDS = ["start", "delete", "state", "kill", "version", "no-arguments", "odd-arguments"]


@pytest.mark.parametrize("args", NOT_CREATE, ids=NOT_CREATE_IDS)
@pytest.mark.parametrize("program", ["tripwire", "absent"])
def test_other_commands_never_start_python(node, args, program):
    if program == "absent":
        node.program.unlink()
    else:
        node.program.write_text(PYTHON_TRIPWIRE)
    result = node.run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert node.python_call() is None
    assert node.forwarded() == args


def test_create_starts_python_isolated_with_the_same_arguments(node):
    # The counterpart of the test above: the tripwire does catch a Python start.
    node.program.write_text(PYTHON_TRIPWIRE)
    args = ["--root", "/run/x", "create", "--bundle", str(node.bundle), "", "a b", "x\ny", "c0ffee"]
    result = node.run(*args)
    assert result.returncode == 99
    assert node.python_call() == {"argv": args, "executable": WRAPPER_PYTHON, "isolated": 1, "no_site": 1}
    assert node.forwarded() is None


def test_an_argument_named_create_that_is_not_the_command_passes_through(node):
    # The front sends it to Python; Python sees no create and must not read any JSON.
    node.slice_map.write_text("this is not JSON")
    args = ["--bundle", "create", "start", "c0ffee"]
    result = node.run(*args)
    assert result.returncode == 0, result.stderr
    assert node.forwarded() == args


def test_the_front_needs_nothing_on_path_but_the_runtime(node):
    node.spec(resource_env(f"{G0}::1"))
    bin_only = str(node.tmp / "bin")
    assert node.create(path=bin_only).returncode == 0
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={G0}"]
    result = node.run("start", "c0ffee", path=bin_only)
    assert result.returncode == 0, result.stderr
    assert node.forwarded() == ["start", "c0ffee"]


def test_paths_that_need_quoting(tmp_path):
    (tmp_path / "a b'c$d").mkdir()
    node = Node(tmp_path / "a b'c$d")
    node.spec(resource_env(f"{G1}::1"))
    assert node.create().returncode == 0
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={G1}"]


def test_exit_status_of_the_nvidia_runtime_is_kept(node):
    result = node.run("start", "c0ffee", extra_env={"STAND_IN_RC": "3"})
    assert result.returncode == 3
    node.spec(resource_env(f"{G0}::1"))
    assert node.create(extra_env={"STAND_IN_RC": "4"}).returncode == 4


@pytest.mark.parametrize("form", ["--bundle DIR", "-b DIR", "--bundle=DIR", "-b=DIR", "cwd"])
def test_bundle_forms(node, form):
    node.spec(resource_env(f"{G1}::1"))
    if form == "cwd":
        args, cwd = ["create", "c0ffee"], node.bundle
    else:
        flag = form.replace("DIR", str(node.bundle))
        args, cwd = ["--systemd-cgroup", "create", *flag.split(" "), "--console-socket", "/x.sock", "c0ffee"], None
    result = node.run(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert node.forwarded() == args
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={G1}"]


def test_create_forwards_every_argument(node):
    node.spec(resource_env(f"{G0}::1"))
    assert node.create().returncode == 0
    assert node.forwarded() == ["--root", "/run/docker/runtime-runc/moby", "--log", str(node.bundle / "log.json"),
                                "--log-format", "json", "create", "--bundle", str(node.bundle),
                                "--pid-file", str(node.bundle / "init.pid"), "c0ffee"]


# --- failing closed -------------------------------------------------------------------------------

def test_refusal_is_also_logged_where_containerd_looks(node):
    node.spec(resource_env(f"{G0}::7"))
    result = node.create()
    record = json.loads((node.bundle / "log.json").read_text().splitlines()[-1])
    assert record["level"] == "error"
    assert record["msg"] == result.stderr.strip()
    assert record["time"].endswith("Z") and record["time"][10] == "T"


@pytest.mark.parametrize("damage, message", [
    (lambda n: n.slice_map.unlink(), "cannot read slice map"),
    (lambda n: n.slice_map.write_text('{"kind": "gpu"}'), "is damaged; run gpuswarm-node setup"),
    (lambda n: n.slice_map.write_text("[1, 2"), "is not valid JSON"),
    (lambda n: n.config.write_text('{"process": {"env": ["A=1"]}'), "container config"),
    (lambda n: n.config.write_text('{"process": {"env": "A=1"}}'), "is not a list of strings"),
    (lambda n: n.config.write_text('{"ociVersion": "1.0.2"}'), "has no process to start"),
    (lambda n: n.config.unlink(), "cannot read container config"),
    (lambda n: n.config.write_text('{"process": {"env": []}} trailing'), "is not valid JSON"),
    (lambda n: n.config.write_text('{"process": {"env": [], "x": NaN}}'), "is not valid JSON"),
], ids=["map-missing", "map-damaged", "map-not-json", "config-truncated", "env-not-list", "no-process",
        "config-missing", "trailing-data", "nan"])
def test_anything_unreadable_fails_the_start(node, damage, message):
    node.spec(resource_env(f"{G0}::1"))
    damage(node)
    result = node.create()
    assert result.returncode == 1
    assert result.stderr.startswith("gpuswarm-runtime: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert node.forwarded() is None


def test_create_runs_the_bytecode_setup_compiled(node):
    # Bytecode whose header matches the program's text but whose code is the tripwire's: that it
    # runs shows the front uses the bytecode instead of compiling the program.
    node.bytecode.write_bytes(node.bytecode.read_bytes()[:16] + wrapper_bytecode(PYTHON_TRIPWIRE)[16:])
    node.spec(resource_env(f"{G0}::1"))
    result = node.create()
    assert result.returncode == 99, result.stderr
    assert node.python_call()["argv"][-1] == "c0ffee"


@pytest.mark.parametrize("bytecode", ["stale", "absent"])
def test_create_without_current_bytecode_compiles_the_program(node, bytecode):
    # Bytecode of another text (an older program) is ignored, as is none: the program as it is now
    # runs, and nothing is written beside it (the front runs Python with -B).
    if bytecode == "stale":
        node.bytecode.write_bytes(wrapper_bytecode(PYTHON_TRIPWIRE))
    else:
        node.bytecode.unlink()
    before = node.bytecode.read_bytes() if bytecode == "stale" else None
    node.spec(resource_env(f"{G0}::2"))
    result = node.create()
    assert result.returncode == 0, result.stderr
    assert node.python_call() is None
    assert f"NVIDIA_VISIBLE_DEVICES={G0}" in node.config.read_text()
    assert (node.bytecode.read_bytes() if node.bytecode.exists() else None) == before
    assert sorted(p.name for p in node.bytecode.parent.iterdir()) == ([node.bytecode.name] if before else [])


def test_refusal_comes_through_the_front_as_python_gave_it(node):
    node.spec(resource_env(f"{G0}::9"))
    through_front = node.create()
    direct = subprocess.run([WRAPPER_PYTHON, "-IS", str(node.program), "create", "--bundle", str(node.bundle)],
                            env={"PATH": node.path}, capture_output=True, text=True, timeout=30)
    assert through_front.returncode == direct.returncode == 1
    assert through_front.stderr == direct.stderr == (
        f"gpuswarm-runtime: slice '{G0}::9' in DOCKER_RESOURCE_GPU is not advertised on this node\n")
    assert through_front.stdout == direct.stdout == ""


def test_missing_program_fails_create(node):
    node.spec(resource_env(f"{G0}::1"))
    before = node.config.read_bytes()
    node.program.unlink()
    result = node.create()
    assert result.returncode != 0
    assert "No module named 'gpuswarm-runtime'" in result.stderr  # its bytecode alone is never run
    assert node.forwarded() is None
    assert node.config.read_bytes() == before


def test_missing_nvidia_runtime_is_named(node):
    node.spec(resource_env(f"{G0}::1"))
    result = node.create(path=str(node.tmp / "empty"))
    assert result.returncode == 1
    assert result.stderr == "gpuswarm-runtime: cannot run nvidia-container-runtime: No such file or directory\n"
    result = node.run("start", "c0ffee", path=str(node.tmp / "empty"))
    assert result.returncode == 127
    assert "nvidia-container-runtime: not found" in result.stderr


def test_the_nvidia_runtime_is_found_on_path_as_execvp_finds_it(node):
    """A directory without it, one whose copy cannot be run, then the real one: the real one runs;
    with only the copy that cannot be run, the create fails naming why."""
    empty, unrunnable = node.tmp / "empty", node.tmp / "unrunnable"
    empty.mkdir()
    unrunnable.mkdir()
    (unrunnable / "nvidia-container-runtime").write_text("#!/bin/sh\nexit 0\n")  # mode 0644
    node.spec(resource_env(f"{G0}::1"))
    bin_dir = node.path.split(":")[0]
    result = node.create(path=f"{empty}:{unrunnable}:{node.tmp / 'no-such-dir'}:{bin_dir}")
    assert result.returncode == 0, result.stderr
    assert node.forwarded() is not None and "create" in node.forwarded()
    node.spec(resource_env(f"{G0}::1"))
    result = node.create(path=f"{empty}:{unrunnable}")
    assert result.returncode == 1
    assert result.stderr == "gpuswarm-runtime: cannot run nvidia-container-runtime: Permission denied\n"


def test_installed_front_is_minimal_and_program_compiles(tmp_path):
    front = wrapper_text()
    assert front.startswith("#!/bin/sh\n")
    # All of it, to keep it minimal: syntax and builtins only, no subshell, no external program.
    assert [line.strip() for line in front.splitlines() if not line.lstrip().startswith("#")] == [
        'for arg in "$@"; do',
        "case $arg in",
        "create) exec /usr/bin/python3 -IS -B -c 'import sys; sys.path.append(\"/usr/local/lib/gpuswarm-node\"); "
        "__import__(\"gpuswarm-runtime\").main(sys.argv)' \"$@\" ;;",
        "esac",
        "done",
        'exec nvidia-container-runtime "$@"',
    ]
    (tmp_path / "front").write_text(front)
    result = subprocess.run(["sh", "-n", str(tmp_path / "front")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    program = wrapper_program_text()
    assert "SLICE_MAP = '/etc/gpuswarm-node/slices.json'" in program
    compile(program, "gpuswarm-runtime.py", "exec")


# --- the JSON codec: C accelerator, and the json module when that is unusable ------------------------

def load_wrapper(tmp_path: Path):
    path = tmp_path / "gpuswarm_runtime.py"
    path.write_text(render_program(tmp_path / "slices.json", tmp_path / "docker.sock"))
    spec = importlib.util.spec_from_file_location("gpuswarm_runtime_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fast_codec_matches_the_json_module(tmp_path):
    module = load_wrapper(tmp_path)
    loads, dumps = module.codec()
    text = BUNDLE_CONFIG.read_text()
    assert loads.__name__ == "loads", "the C accelerator is used on this Python"
    assert loads(text) == json.loads(text)
    assert dumps(json.loads(text)) == json.dumps(json.loads(text), separators=(",", ":"))
    for bad in ("", "{", '{"a": 1} {}', "[NaN]", '{"a": Infinity}'):
        with pytest.raises(ValueError):
            loads(bad)


def test_codec_falls_back_to_the_json_module(tmp_path, monkeypatch):
    module = load_wrapper(tmp_path)
    monkeypatch.setitem(sys.modules, "_json", None)
    loads, dumps = module.codec()
    assert loads.__name__ == "<lambda>", "the json module is used"
    text = BUNDLE_CONFIG.read_text()
    assert loads(text) == json.loads(text)
    assert dumps({"a": [1, "\u00e9"]}) == '{"a":[1,"\\u00e9"]}'
    with pytest.raises(ValueError):
        loads("[NaN]")



def test_bytecode_is_current_only_when_it_is_the_programs_own_code():
    """A valid header (magic, hash-checked flags, the program's source hash: all public) in front
    of other code is not the program's bytecode: Python would run that code without reading the
    program."""
    from gpuswarm_node.steps.docker_daemon import (bytecode_current, bytecode_header, wrapper_bytecode,
                                                   wrapper_program_text)
    import marshal

    program = wrapper_program_text()
    own = wrapper_bytecode(program)
    assert bytecode_current(own, program)
    other = compile("import os\ndef main(argv):\n    os.execv('/bin/sh', ['sh'])\n", "x", "exec")
    assert not bytecode_current(bytecode_header(program) + marshal.dumps(other), program)
    assert not bytecode_current(own[:16] + own[16:-1], program)  # truncated: marshal fails
    assert not bytecode_current(wrapper_bytecode(program + "\n# changed\n"), program)
    assert not bytecode_current(None, program)


# --- what it costs: posix instead of os -------------------------------------------------------------

def test_a_create_with_slices_imports_only_what_it_needs(node):
    """Every module a create loads is paid on every container start: beyond what Python starts
    with, only the program, errno and the C modules for JSON and the Engine API's socket (no os,
    json or socket). The wrapper's own Python, as the front runs it."""
    node.spec(resource_env(f"{G0}::1"))
    code = (f"import sys; before = set(sys.modules); sys.path.append({str(node.tmp)!r}); "
            f"__import__('gpuswarm-runtime').restrict({str(node.bundle)!r}); "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    result = subprocess.run([WRAPPER_PYTHON, "-IS", "-B", "-c", code], capture_output=True, text=True,
                            env={"PATH": node.path}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={G0}"]
    loaded = set(result.stdout.split())
    has_c_normpath = subprocess.run([WRAPPER_PYTHON, "-IS", "-c", "import posix; print(hasattr(posix, '_path_normpath'))"],
                                    capture_output=True, text=True).stdout.strip() == "True"
    assert has_c_normpath, "this test's Python has posix._path_normpath (3.11 and later)"
    assert loaded == {"gpuswarm-runtime", "errno", "_json", "_socket"}


@pytest.mark.parametrize("path", ["/", "//", "///a//b/", "/a/./b/../c", "a/../../b", "", ".", "/..", "x/y/..",
                                  "/var/run/../run/nvidia-container-devices/./GPU-1", "/\u00e9/\udcff/..//z"])
def test_normpath_is_os_paths(tmp_path, path):
    module = load_wrapper(tmp_path)
    assert module.normpath(path) == posixpath.normpath(path)
    assert module.normpath("/" + path).lstrip("/") == posixpath.normpath("/" + path).lstrip("/")


@pytest.mark.parametrize("head", ["", "/", "/bundle", "/bundle/", "rel", "a//b"])
def test_join_is_os_paths_for_a_relative_tail(tmp_path, head):
    module = load_wrapper(tmp_path)
    for tail in ("config.json", "nvidia-container-runtime/config.toml"):
        assert module.join(head, tail) == os.path.join(head, tail)


def test_getenv_decodes_as_os_environ_does(tmp_path):
    name = "GPUSWARM_WRAPPER_TEST"
    value = "caf\u00e9 \udcff"
    code = (f"import sys; sys.path.append({str(tmp_path)!r}); m = __import__('gpuswarm_runtime'); "
            f"import os; print(ascii(m.getenv({name!r})), ascii(os.environ.get({name!r})), m.getenv('UNSET_X'), sep='|')")
    load_wrapper(tmp_path)
    env = {name: value, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([WRAPPER_PYTHON, "-IS", "-c", code], capture_output=True, text=True,
                            env={k: os.fsencode(v) for k, v in env.items()}, timeout=30)
    assert result.returncode == 0, result.stderr
    mine, theirs, unset = result.stdout.strip().split("|")
    assert mine == theirs == ascii(value)
    assert unset == "None"


# --- the frameworks' memory settings ---------------------------------------------------------------

@pytest.mark.parametrize("own, added", [
    ([], share_env(33)),
    (["TF_FORCE_GPU_ALLOW_GROWTH=false"], share_env(33)[1:]),
    (["XLA_PYTHON_CLIENT_PREALLOCATE=false"], [share_env(33)[0], share_env(33)[3]]),
    (["XLA_CLIENT_MEM_FRACTION=.9"], [share_env(33)[0], share_env(33)[3]]),
    (["CUPY_GPU_MEMORY_LIMIT=1073741824", "TF_FORCE_GPU_ALLOW_GROWTH"], share_env(33)[1:3]),
], ids=["none-set", "tensorflow-set", "jax-preallocate-set", "jax-new-name-set", "cupy-and-bare-tf-set"])
def test_a_frameworks_setting_the_container_made_is_its_own(node, own, added):
    """The image or the service sets a group's variable (even with no value): the group is left as
    it is; the others are added."""
    env = resource_env(f"{G0}::1") + own
    node.spec(env)
    assert node.create().returncode == 0
    after = node.env_after()
    assert [e for e in after if e not in env and not e.startswith("NVIDIA_")] == added
    assert all(e in after for e in own)


def test_the_wrapper_and_the_package_agree_on_memory_settings(tmp_path):
    """The wrapper's memory_share is slices.memory_share_percent and memory_share_env, over maps of
    one to seven slices per GPU, MIG devices, and every reservation of up to three slices."""
    import itertools

    from gpuswarm_node.slices import MEMORY_SHARE_GROUPS, memory_share_env, memory_share_percent

    module = load_wrapper(tmp_path)
    names = [name for group in MEMORY_SHARE_GROUPS for name in group]
    for per_gpu in range(1, 8):
        slices = {f"{g}::{n}": g for g in (G0, G1) for n in range(1, per_gpu + 1)} | {MIG: MIG}
        for size in (1, 2, 3):
            for held in itertools.combinations(slices, size):
                for present in ((), names[:1], names[1:2], names[3:]):
                    theirs = memory_share_env(memory_share_percent(held, slices), present)
                    assert module.memory_share(list(held), slices, set(present)) == theirs, (held, present)

"""No container gets a GPU it did not reserve: every way the NVIDIA hook can pick devices, tried
against the real wrapper (front and program, as in test_runtime_wrapper.py), its output fed to a
model of the hook's device selection (tests/nvidia_hook_model.py).

The classes: variables named by the toolkit's swarm-resource, device lists as volume mounts, CDI
annotations and device nodes, spec keys that only Go reads as OCI fields (letter case, repeats),
a reservation carried by the image's ENV instead of Swarm, and a slice map that is not root's or
maps to something other than one GPU.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest

from . import nvidia_hook_model as hook
from .fake_engine import CONTAINER_ID, IMAGE_ENV, IMAGE_ID
from .test_runtime_wrapper import BUNDLE_CONFIG, G0, G1, MIG, Node, load_wrapper, resource_env


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path)
    yield node
    node.engine.close()


def refused(result, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("gpuswarm-runtime: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert result.stderr.isascii()


def hook_devices(node: Node, config: dict | None = None) -> list[str]:
    return hook.visible_devices(json.loads(node.config.read_text()), config or {})


# --- 1. swarm-resource: any variable, any kind, in any file the hook reads -------------------------

@pytest.mark.parametrize("line", [
    'swarm-resource = "DOCKER_RESOURCE_GPU"',
    'swarm-resource = "DOCKER_RESOURCE_FOO"',
    'swarm-resource = "X,DOCKER_RESOURCE_GPU"',
    '  "swarm-resource"="MY_GPUS"   # hand-tuned',
    "'swarm-resource' = 'A'",
    'swarm-resource = """\nDOCKER_RESOURCE_GPU"""',
    '"swarm\\u002dresource" = "DOCKER_RESOURCE_GPU"',
])
@pytest.mark.parametrize("file", ["toolkit_config", "driver_toolkit_config"])
def test_swarm_resource_refuses_every_start(node, line, file):
    getattr(node, file).write_text(f"disable-require = false\n{line}\n\n[nvidia-container-cli]\nldconfig = \"x\"\n")
    for env in (resource_env(f"{G0}::1") + ["DOCKER_RESOURCE_FOO=all", "MY_GPUS=all", "A=all"], resource_env(None)):
        node.spec(env)
        refused(node.create(), "sets swarm-resource", str(getattr(node, file)))
        assert node.forwarded() is None


@pytest.mark.parametrize("line", ['swarm-resource = ""', "#swarm-resource = \"DOCKER_RESOURCE_GPU\"",
                                  "swarm-resource = ''  # off"])
def test_swarm_resource_unset_or_commented_is_fine(node, line):
    node.toolkit_config.write_text(f"{line}\naccept-nvidia-visible-devices-as-volume-mounts = false\n")
    node.spec(resource_env(f"{G1}::1"))
    assert node.create().returncode == 0
    assert hook_devices(node) == [G1]


def test_swarm_resource_from_the_runtime_environment_is_read(node):
    # The toolkit honours NVIDIA_CTK_CONFIG_FILE_PATH and XDG_CONFIG_HOME (GetConfigFilePath).
    other = node.tmp / "xdg" / "nvidia-container-runtime"
    other.mkdir(parents=True)
    (other / "config.toml").write_text('swarm-resource = "DOCKER_RESOURCE_GPU"\n')
    node.spec(resource_env(f"{G0}::1"))
    refused(node.create(extra_env={"XDG_CONFIG_HOME": str(node.tmp / "xdg")}), "sets swarm-resource")
    refused(node.create(extra_env={"NVIDIA_CTK_CONFIG_FILE_PATH": str(other / "config.toml")}), "sets swarm-resource")


# --- 1. device lists as volume mounts ------------------------------------------------------------

@pytest.mark.parametrize("destination", [
    "/var/run/nvidia-container-devices/all",
    "/var/run/nvidia-container-devices/GPU-00000001-1111-4222-8333-444444444444",
    "//var/run/nvidia-container-devices/all",
    "/var/run/./nvidia-container-devices/all/",
    "/var/run/x/../nvidia-container-devices/0",
    "/var/run/nvidia-container-devices",
    "/var/run/nvidia-container-devicesall",
    "/run/nvidia-container-devices/all",
    "var/run/nvidia-container-devices/all",
])
def test_device_list_as_volume_mounts_is_refused(node, destination):
    spec = node.spec(resource_env(None))
    spec["mounts"].append({"destination": destination, "type": "bind", "source": "/dev/null",
                           "options": ["rbind", "ro"]})
    node.config.write_text(json.dumps(spec))
    # Without the wrapper, the hook (with the setting on) would give this container a GPU or all.
    assert hook.visible_devices(spec, {"accept-nvidia-visible-devices-as-volume-mounts": True}) or \
        destination.endswith(("devices", "devices/"))
    refused(node.create(), "volume mounts")
    assert node.forwarded() is None


def test_cdi_annotations_and_nvidia_device_nodes_are_refused(node):
    spec = node.spec(resource_env(None))
    spec["annotations"] = {"cdi.k8s.io/gpus": "nvidia.com/gpu=all"}
    node.config.write_text(json.dumps(spec))
    refused(node.create(), "CDI device request")
    spec["annotations"] = {"org.example/ok": "1"}
    spec["linux"]["devices"] = [{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]
    node.config.write_text(json.dumps(spec))
    refused(node.create(), "device node '/dev/nvidia0'")
    spec["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    node.config.write_text(json.dumps(spec))
    assert node.create().returncode == 0


# --- 1. keys only Go reads as OCI fields -------------------------------------------------------------

def spec_text(node: Node, env: list[str], transform) -> str:
    spec = node.spec(env)
    return transform(json.dumps(spec))


@pytest.mark.parametrize("transform, what", [
    (lambda t: t.replace('"process":', '"Process":', 1), "'Process'"),
    (lambda t: t.replace('"env":', '"Env":', 1), "'Env'"),
    (lambda t: t.replace('"env":', '"ENV":', 1), "'ENV'"),
    (lambda t: t.replace('"process":', '"proce\\u017fs":', 1), "'proce\\u017fs'"),   # long s folds to s in Go
    (lambda t: t.replace('"mounts":', '"Mounts":', 1), "'Mounts'"),
    (lambda t: t.replace('"destination":', '"Destination":', 1), "'Destination'"),
    (lambda t: t.replace('"linux":', '"LINUX":', 1), "'LINUX'"),
    (lambda t: t[:-1] + ',"Process":{"env":["NVIDIA_VISIBLE_DEVICES=all"]}}', "twice"),
    (lambda t: t[:-1] + ',"process":{"env":["NVIDIA_VISIBLE_DEVICES=all"],"args":["sh"]}}', "twice"),
    (lambda t: t.replace('"env":', '"env":["NVIDIA_VISIBLE_DEVICES=all"],"eNv":', 1), "twice"),
], ids=["Process", "Env", "ENV", "long-s", "Mounts", "Destination", "LINUX", "Process-after", "process-twice",
        "env-twice"])
def test_keys_that_differ_only_by_case_are_refused(node, transform, what):
    text = spec_text(node, resource_env(None), transform)
    node.config.write_text(text)
    # What the hook alone would have done with it: a GPU for a container that reserved none.
    assert hook.visible_devices(json.loads(text), {}) == ["all"]
    refused(node.create(), what)
    assert node.forwarded() is None


# --- 3. the image is not Swarm ----------------------------------------------------------------------

def test_a_reservation_from_the_image_env_is_refused(node):
    node.engine.images[IMAGE_ID] = IMAGE_ENV + [f"DOCKER_RESOURCE_GPU={G0}::1,{G1}::1"]
    # What Docker hands the runtime: the image's ENV merged into the container's.
    node.spec(resource_env(f"{G0}::1,{G1}::1"))
    refused(node.create(), "sets DOCKER_RESOURCE_GPU in its ENV", IMAGE_ID[7:19])
    assert node.forwarded() is None
    # Also when Swarm's value overrides the image's: the image itself is refused.
    node.spec(resource_env(f"{G1}::2"))
    refused(node.create(), "in its ENV")
    # The image's other variables are its own business.
    node.engine.images[IMAGE_ID] = IMAGE_ENV + ["DOCKER_RESOURCE_GPUS=x", "DOCKER_RESOURCE_GP=y"]
    assert node.create().returncode == 0
    assert hook_devices(node) == [G1]


def test_the_engine_is_asked_only_for_a_reservation_and_without_the_container_lock(node):
    node.spec(resource_env(None))
    assert node.create().returncode == 0
    assert node.engine.requests == []
    node.spec(resource_env(f"{G0}::2"))
    assert node.create().returncode == 0
    assert node.engine.requests == [
        f"/containers/json?all=1&filters=%7B%22id%22%3A%5B%22{CONTAINER_ID}%22%5D%7D", f"/images/{IMAGE_ID}/json"]


@pytest.mark.parametrize("break_it, message", [
    (lambda n: n.engine.close() or os.unlink(n.engine.path), "cannot ask Docker"),
    (lambda n: n.engine.containers.clear(), "does not report container"),
    (lambda n: n.engine.containers.update({CONTAINER_ID: "sha256:../../x"}), "does not report container"),
    (lambda n: n.engine.images.clear(), "Docker answered"),
], ids=["engine-down", "unknown-container", "odd-image-id", "image-gone"])
def test_a_reservation_whose_origin_cannot_be_checked_is_refused(node, break_it, message):
    node.spec(resource_env(f"{G0}::2"))
    break_it(node)
    refused(node.create(), message)
    assert node.forwarded() is None


def test_a_bundle_that_is_not_a_docker_container_cannot_carry_a_reservation(tmp_path):
    node = Node(tmp_path)
    try:
        other = tmp_path / "not-docker"
        node.bundle.rename(other)
        node.bundle = other
        node.config = other / "config.json"
        node.spec(resource_env(f"{G0}::2"))
        refused(node.create(), "is not a Docker container's")
        node.spec(resource_env(None))
        assert node.create().returncode == 0
    finally:
        node.engine.close()


# --- 4. the slice map is root's and maps to single devices -------------------------------------------

@pytest.mark.parametrize("damage, message", [
    (lambda n: os.chown(n.slice_map, 65534, 0), "not root's alone (owner uid 65534"),
    (lambda n: n.slice_map.chmod(0o664), "mode 0664"),
    (lambda n: n.slice_map.chmod(0o646), "mode 0646"),
    (lambda n: (n.slice_map.rename(n.tmp / "real.json"), n.slice_map.symlink_to(n.tmp / "real.json")),
     "is a symbolic link"),
    (lambda n: n.slice_map.write_text(json.dumps(
        {"variable": "DOCKER_RESOURCE_GPU", "slices": {f"{G0}::1": "all"}})), "not a GPU or MIG UUID"),
    (lambda n: n.slice_map.write_text(json.dumps(
        {"variable": "DOCKER_RESOURCE_GPU", "slices": {f"{G0}::1": f"{G0},{G1}"}})), "not a GPU or MIG UUID"),
    (lambda n: n.slice_map.write_text(json.dumps(
        {"variable": "DOCKER_RESOURCE_GPU", "slices": {f"{G0}::1": f"{G0}::1"}})), "not a GPU or MIG UUID"),
    (lambda n: n.slice_map.write_text(json.dumps(
        {"variable": "DOCKER_RESOURCE_GPU", "slices": {f"{G0}::1": 0}})), "not a GPU or MIG UUID"),
    (lambda n: n.slice_map.write_text(json.dumps(
        {"variable": "PATH", "slices": {}})), "is damaged"),
], ids=["not-root", "group-writable", "other-writable", "symlink", "all", "list", "slice-as-device", "index",
        "variable"])
def test_an_untrusted_slice_map_refuses_every_start(node, damage, message):
    node.spec(resource_env(f"{G0}::1"))
    damage(node)
    refused(node.create(), message)
    assert node.forwarded() is None


# --- the whole chain: whatever the spec, the hook acts on reserved devices only ----------------------

HOSTILE_ENV = [[], ["NVIDIA_VISIBLE_DEVICES=all"], ["NVIDIA_VISIBLE_DEVICES=0,1"], ["CUDA_VERSION=12.1"],
               ["DOCKER_RESOURCE_FOO=all"], ["NVIDIA_VISIBLE_DEVICES"]]
RESERVATIONS = [None, f"{G0}::1", f"{G1}::2,{G0}::3", MIG]
MOUNTS = [None, "/var/run/nvidia-container-devices/all", "/tmp/x"]
CONFIGS = [{}, {"accept-nvidia-visible-devices-as-volume-mounts": True},
           {"swarm-resource": "DOCKER_RESOURCE_FOO"}, {"accept-nvidia-visible-devices-envvar-when-unprivileged": False}]


def toml_of(config: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items())


def test_every_combination_gives_reserved_devices_or_no_start(node):
    starts = 0
    for extra, reserved, mount, config in itertools.product(HOSTILE_ENV, RESERVATIONS, MOUNTS, CONFIGS):
        node.toolkit_config.write_text(toml_of(config))
        env = [e for e in resource_env(reserved) if not e.startswith("NVIDIA_VISIBLE_DEVICES")] + extra
        spec = node.spec(env)
        if mount:
            spec["mounts"].append({"destination": mount, "type": "bind", "source": "/dev/null", "options": ["rbind"]})
            node.config.write_text(json.dumps(spec))
        result = node.create()
        allowed = {s.partition("::")[0] for s in (reserved or "").split(",") if s}
        if result.returncode != 0:
            assert node.forwarded() is None
            continue
        starts += 1
        got = hook_devices(node, config)
        assert set(got) <= allowed, (extra, reserved, mount, config, got)
        if config == {} and not mount:
            assert set(got) == allowed
        (node.record / "argv").unlink()
    assert starts > 50  # the guard is not simply refusing everything


# --- every container-settable input of the hook (nvidia_hook.HOOK_INPUTS) ------------------------

from gpuswarm_node import nvidia_hook as policy  # noqa: E402

# What a hostile image or service sets for each input of HOOK_INPUTS: (env, mounts, annotations).
HOSTILE = {
    "NVIDIA_VISIBLE_DEVICES": (["NVIDIA_VISIBLE_DEVICES=all"], [], {}),
    "DOCKER_RESOURCE_": (["DOCKER_RESOURCE_FOO=all"], [], {}),
    "NVIDIA_DRIVER_CAPABILITIES": (["NVIDIA_DRIVER_CAPABILITIES=all"], [], {}),
    "NVIDIA_MIG_CONFIG_DEVICES": (["NVIDIA_MIG_CONFIG_DEVICES=all"], [], {}),
    "NVIDIA_MIG_MONITOR_DEVICES": (["NVIDIA_MIG_MONITOR_DEVICES=all"], [], {}),
    "NVIDIA_IMEX_CHANNELS": (["NVIDIA_IMEX_CHANNELS=0,1"], [], {}),
    "NVIDIA_GDS": (["NVIDIA_GDS=enabled"], [], {}),
    "NVIDIA_MOFED": (["NVIDIA_MOFED=enabled"], [], {}),
    "NVIDIA_NVSWITCH": (["NVIDIA_NVSWITCH=enabled"], [], {}),
    "NVIDIA_GDRCOPY": (["NVIDIA_GDRCOPY=enabled"], [], {}),
    "NVIDIA_REQUIRE_JETPACK": (["NVIDIA_REQUIRE_JETPACK=csv-mounts=all"], [], {}),
    "NVIDIA_REQUIRE_": (["NVIDIA_REQUIRE_ARCH=arch=x86_64"], [], {}),
    "NVIDIA_DISABLE_REQUIRE": (["NVIDIA_DISABLE_REQUIRE=true"], [], {}),
    "CUDA_VERSION": (["CUDA_VERSION=12.1"], [], {}),
    "/var/run/nvidia-container-devices": ([], ["/var/run/nvidia-container-devices/imex/0",
                                               "/run/nvidia-container-devices/cdi/nvidia.com/gpu/all"], {}),
    "cdi.k8s.io/": ([], [], {"cdi.k8s.io/x": "nvidia.com/gpu=all", "nvidia.cdi.k8s.io/y": "nvidia.com/gpu=all"}),
    "CAP_SYS_ADMIN": ([], [], {}),
}
ALL_CONFIG = {"accept-nvidia-visible-devices-as-volume-mounts": True}
NOTHING_SHARED = {"mig_config": "", "mig_monitor": "", "imex_channels": [], "gated": [], "csv_mounts_all": False,
                  "cdi_annotations": []}


def test_the_list_is_complete_and_sourced():
    """Every variable the hook model reads is decided, and each decision names where in which
    toolkit versions the input is read."""
    names = {i.name for i in policy.HOOK_INPUTS}
    assert set(hook.ENV_READ) | set(hook.ENV_PREFIXES_READ) <= names
    assert names == set(HOSTILE)
    for entry in policy.HOOK_INPUTS:
        assert entry.action in (policy.STRIP, policy.PIN, policy.REFUSE, policy.KEEP)
        assert "v1.14.0" in entry.source or "v1.15.0" in entry.source or "v1.16.0" in entry.source, entry
        assert "v1.20.0" in entry.source or "v1.17.8" in entry.source, entry
        assert ".go" in entry.source and entry.why


def hostile_spec(node: Node, reserved: str | None, name: str, privileged: bool = False) -> dict:
    env, mounts, annotations = HOSTILE[name]
    base = [e for e in resource_env(reserved) if not e.startswith("NVIDIA_DRIVER_CAPABILITIES")]
    spec = node.spec(base + env)
    for destination in mounts:
        spec["mounts"].append({"destination": destination, "type": "bind", "source": "/dev/null",
                               "options": ["rbind"]})
    if annotations:
        spec["annotations"] = annotations
    if privileged:
        spec["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    node.config.write_text(json.dumps(spec))
    return spec


@pytest.mark.parametrize("entry", policy.HOOK_INPUTS, ids=lambda e: e.name)
@pytest.mark.parametrize("reserved", [None, f"{G0}::1"], ids=["none", "one-slice"])
def test_each_input_gives_the_slice_and_nothing_shared(node, entry, reserved):
    hostile_spec(node, reserved, entry.name, privileged=entry.name == "CAP_SYS_ADMIN")
    if entry.name == "DOCKER_RESOURCE_":  # read only where swarm-resource names it
        node.toolkit_config.write_text('swarm-resource = "DOCKER_RESOURCE_FOO"\n')
    result = node.create()
    if entry.action == policy.REFUSE:
        refused(result)
        assert node.forwarded() is None
        return
    assert result.returncode == 0, result.stderr
    got = hook.grants(json.loads(node.config.read_text()), ALL_CONFIG)
    assert got["devices"] == ([G0] if reserved else [])
    assert set(got["capabilities"]) <= set(policy.ALLOWED_CAPABILITIES)
    assert {k: got[k] for k in NOTHING_SHARED} == NOTHING_SHARED
    env = node.env_after()
    if entry.action == policy.STRIP:
        assert not [e for e in env if e.partition("=")[0] == entry.name]
    if entry.action == policy.KEEP and entry.kind == "env" or entry.name == "NVIDIA_REQUIRE_":
        assert set(HOSTILE[entry.name][0]) <= set(env)  # kept: the image's own constraints still apply


def test_without_the_wrapper_the_model_grants_what_is_shared(node):
    """The model is not blind: the same hostile spec, not passed through the wrapper, is read by
    it as a request for everything the list strips."""
    spec = node.spec(resource_env(f"{G0}::1") + [e for n in ("NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES",
                                                            "NVIDIA_IMEX_CHANNELS", "NVIDIA_GDS", "NVIDIA_MOFED",
                                                            "NVIDIA_NVSWITCH", "NVIDIA_GDRCOPY",
                                                            "NVIDIA_REQUIRE_JETPACK", "NVIDIA_DRIVER_CAPABILITIES")
                                                 for e in HOSTILE[n][0]])
    spec["annotations"] = HOSTILE["cdi.k8s.io/"][2]
    got = hook.grants(spec, ALL_CONFIG)
    assert all(got[k] for k in NOTHING_SHARED), got
    assert "display" in got["capabilities"]


@pytest.mark.parametrize("asked, pinned", [
    (None, "compute,utility"),
    ("", "compute,utility"),
    ("all", "compute,compat32,graphics,utility,video"),
    ("display,compute", "compute"),
    ("display", "compute,utility"),
    ("utility,video,bogus", "utility,video"),
], ids=["unset", "empty", "all", "display-dropped", "only-display", "unknown-dropped"])
def test_driver_capabilities_are_pinned(node, asked, pinned):
    env = [e for e in resource_env(f"{G0}::1") if not e.startswith("NVIDIA_DRIVER_CAPABILITIES")]
    node.spec(env + ([f"NVIDIA_DRIVER_CAPABILITIES={asked}"] if asked is not None else []) + ["CUDA_VERSION=12.1"])
    assert node.create().returncode == 0
    caps = [e for e in node.env_after() if e.startswith("NVIDIA_DRIVER_CAPABILITIES")]
    assert caps == [f"NVIDIA_DRIVER_CAPABILITIES={pinned}"]


def test_stripped_variables_go_in_every_spelling_the_hook_reads(node):
    # No "=" (Docker passes a bare name on) and repeats (Go's map keeps the last) both go.
    node.spec(resource_env(f"{G0}::1") + ["NVIDIA_GDS", "NVIDIA_IMEX_CHANNELS=0", "NVIDIA_IMEX_CHANNELS=1"])
    assert node.create().returncode == 0
    assert not [e for e in node.env_after() if e.startswith(("NVIDIA_GDS", "NVIDIA_IMEX"))]


# --- shares in notebooks: a bind keeps nosuid/nodev of its source --------------------------------

SHARE = "/srv/shared/data"


@pytest.mark.parametrize("options", [["rbind", "ro", "rprivate"], ["rbind", "rprivate"]], ids=["ro", "rw"])
def test_a_bind_keeps_nosuid_nodev_of_its_source(tmp_path, monkeypatch, options):
    """A share is mounted nosuid,nodev on the worker; Docker's bind of it into a notebook carries
    options without them, and runc's read-only remount would set exactly those. The wrapper adds
    the source's flags (statvfs), for a share and for nothing else."""
    module = load_wrapper(tmp_path)
    real = os.statvfs

    def statvfs(path):
        if path == SHARE:  # as the shared-fs step mounts it
            return os.statvfs_result((4096, 4096, 1, 1, 1, 1, 1, 1, os.ST_NOSUID | os.ST_NODEV | os.ST_RELATIME, 255))
        return real(path)

    monkeypatch.setattr(module.posix, "statvfs", statvfs)  # the posix module is os.statvfs's home
    spec = json.loads(BUNDLE_CONFIG.read_text())
    spec["mounts"] += [{"destination": "/efs", "type": "bind", "source": SHARE, "options": list(options)},
                       {"destination": "/missing", "type": "bind", "source": str(tmp_path / "gone"),
                        "options": list(options)}]
    before = json.loads(json.dumps(spec))
    assert module.keep_source_flags(spec) is True
    by_destination = {m["destination"]: m for m in spec["mounts"]}
    assert by_destination["/efs"]["options"] == options + ["nosuid", "nodev"]
    assert by_destination["/missing"]["options"] == options
    for old, new in zip(before["mounts"], spec["mounts"]):
        if old["destination"] not in ("/efs",):
            flags = real(old["source"]).f_flag if old["type"] == "bind" and os.path.exists(old["source"]) else 0
            added = [o for bit, o in ((os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev"))
                     if flags & bit and o not in old["options"]]
            assert new["options"] == old["options"] + added
    assert module.keep_source_flags(spec) is False  # once is enough


def test_the_wrapper_rewrites_binds_of_a_share(node, monkeypatch):
    # Through the front, end to end: the spec Docker wrote for a notebook binds a directory; the
    # options that reach runc carry what the source's mount has (nothing added where it has none).
    spec = node.spec(resource_env(f"{G0}::1"))
    binds = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert node.create().returncode == 0
    after = {m["destination"]: m for m in json.loads(node.config.read_text())["mounts"]}
    for mount in binds:
        flags = os.statvfs(mount["source"]).f_flag if os.path.exists(mount["source"]) else 0
        wanted = {o for bit, o in ((os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev")) if flags & bit}
        assert set(after[mount["destination"]]["options"]) == set(mount["options"]) | wanted


# --- nothing of the image's environment reaches what runs on the host ------------------------------

LOADER_VARIABLES = ["LD_PRELOAD=/proc/self/cwd/evil.so", "LD_LIBRARY_PATH=.:/proc/self/cwd", "LD_AUDIT=evil.so",
                    "GCONV_PATH=/proc/self/cwd", "PYTHONPATH=/proc/self/cwd", "PYTHONSTARTUP=/proc/self/cwd/x.py"]


def test_the_images_loader_variables_never_reach_the_host_side(node):
    """The wrapper runs on the host with the runtime's environment and hands nvidia-container-runtime
    the same: an image's LD_PRELOAD-style variables stay in process.env (the container's own),
    and the NVIDIA hooks get their own environment from toolkit 1.17.8 on (CVE-2025-23266; the
    floor in gpuswarm_node/floors.py)."""
    runtime = node.tmp / "bin" / "nvidia-container-runtime"
    runtime.write_text('#!/bin/sh\nprintf \'%s\\0\' "$0" "$@" > "$RECORD/argv"\nenv > "$RECORD/env"\n')
    node.spec(resource_env(f"{G0}::1") + LOADER_VARIABLES)
    result = node.create(extra_env={"LANG": "C"})
    assert result.returncode == 0, result.stderr
    seen = dict(line.partition("=")[::2] for line in (node.record / "env").read_text().splitlines())
    assert not {v.partition("=")[0] for v in LOADER_VARIABLES} & set(seen)
    assert {k: seen[k] for k in ("PATH", "RECORD", "LANG")} == {"PATH": node.path, "RECORD": str(node.record),
                                                                "LANG": "C"}
    assert set(LOADER_VARIABLES) <= set(node.env_after())  # the container keeps its own

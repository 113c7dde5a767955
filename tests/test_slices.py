"""Slices: how many each GPU yields (slices_per_gpu, slice_memory, MIG), their order, the slice map,
and the device behind a slice ID as cuda-env and the hub config see it."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from unittest import mock

import pytest

from gpuswarm_node import config, hub, slices
from gpuswarm_node.errors import ConfigError
from gpuswarm_node.probes.gpu import Gpu, MigDevice
from gpuswarm_node.slices import compute_slices

GiB = 2**30
MiB = 2**20


def gpu(index: int, memory: int, mig: tuple[str, ...] = (), name: str = "NVIDIA Test GPU") -> Gpu:
    return Gpu(index, f"GPU-{index:08d}-1111-4222-8333-444444444444", name, memory,
               mig_enabled=bool(mig), mig_devices=tuple(MigDevice(u, 10 * GiB) for u in mig))


def cfg(**gpu_keys) -> config.GpuConfig:
    return config.from_tables({"gpu": gpu_keys}).gpu


def uuid(index: int) -> str:
    return f"GPU-{index:08d}-1111-4222-8333-444444444444"


# --- slices_per_gpu and interleaving ---------------------------------------------------------------

def test_interleaves_slice_one_of_every_gpu_before_slice_two():
    got = compute_slices([gpu(0, 12 * GiB), gpu(1, 12 * GiB), gpu(2, 12 * GiB)], 2)
    assert got == [f"{uuid(0)}::1", f"{uuid(1)}::1", f"{uuid(2)}::1",
                   f"{uuid(0)}::2", f"{uuid(1)}::2", f"{uuid(2)}::2"]


def test_slices_per_gpu_ignores_memory():
    got = compute_slices([gpu(0, 12 * GiB), gpu(1, 80 * GiB)], 3)
    assert [s for s in got if s.startswith(uuid(1))] == [f"{uuid(1)}::{n}" for n in (1, 2, 3)]
    assert len(got) == 6


def test_no_gpus_no_slices():
    assert compute_slices([], 3) == []


# --- slice_memory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("memory, slice_memory, count", [
    (12 * GiB, "4GiB", 3),
    (12 * GiB - 1, "4GiB", 2),           # rounded down: a slice must fit whole
    (15360 * MiB, "4GiB", 3),            # a T4 as NVML reports it: 15 GiB
    (81559 * MiB, "4GiB", 19),           # an H100 80GB as NVML reports it: a little under 80 GiB
    (40960 * MiB, "10GiB", 4),
    (40960 * MiB, "10240MiB", 4),
    (40960 * MiB, "1.5GiB", 26),
    (24 * GiB, str(6 * GiB), 4),         # plain bytes
    (2 * GiB, "4GiB", 0),                # smaller than one slice
    (4 * GiB, "4GiB", 1),
])
def test_slice_memory_gives_as_many_slices_as_fit(memory, slice_memory, count):
    got = slices.for_config([gpu(0, memory)], cfg(slice_memory=slice_memory))
    assert got == [f"{uuid(0)}::{n}" for n in range(1, count + 1)]


def test_slice_memory_mixed_inventory_interleaves_fair_counts():
    gpus = [gpu(0, 24 * GiB), gpu(1, 8 * GiB), gpu(2, 12 * GiB), gpu(3, 3 * GiB)]
    got = slices.for_config(gpus, cfg(slice_memory="4GiB", slices_per_gpu=1))
    assert got == [f"{uuid(0)}::1", f"{uuid(1)}::1", f"{uuid(2)}::1",
                   f"{uuid(0)}::2", f"{uuid(1)}::2", f"{uuid(2)}::2",
                   f"{uuid(0)}::3", f"{uuid(2)}::3",
                   f"{uuid(0)}::4", f"{uuid(0)}::5", f"{uuid(0)}::6"]
    assert slices.notes(gpus, cfg(slice_memory="4GiB")) == [
        "GPU 3 (NVIDIA Test GPU, 3.0 GiB) is smaller than gpu.slice_memory = 4GiB: no slices"]


# --- the maximum per GPU ----------------------------------------------------------------------------

def test_a_gpu_that_holds_more_slices_than_the_maximum_advertises_the_maximum():
    h200 = gpu(0, 143771 * MiB, name="NVIDIA H200")  # as NVML reports it: 140.4 GiB
    got = slices.for_config([h200, gpu(1, 16 * GiB)], cfg(slice_memory="1GiB"))
    assert [s for s in got if s.startswith(uuid(0))] == [f"{uuid(0)}::{n}" for n in range(1, 65)]
    assert len([s for s in got if s.startswith(uuid(1))]) == 16
    assert slices.notes([h200, gpu(1, 16 * GiB)], cfg(slice_memory="1GiB")) == [
        "GPU 0 (NVIDIA H200, 140.4 GiB) holds 140 slices of gpu.slice_memory = 1GiB: it advertises the maximum "
        "of 64, each with 2.2 GiB"]


def test_the_maximum_holds_whatever_the_caller_passes():
    # Configuration refuses these values; the slice list is bounded even without it.
    assert len(compute_slices([gpu(0, 1 * MiB)], 3, slice_memory=1)) == config.MAX_SLICES_PER_GPU
    assert len(compute_slices([gpu(0, 1 * MiB), gpu(1, 1 * MiB)], 10**5)) == 2 * config.MAX_SLICES_PER_GPU


# --- MIG ------------------------------------------------------------------------------------------

def test_mig_gpu_gives_its_mig_devices_whatever_the_slice_settings():
    migs = ("MIG-aaaaaaaa-0000-5000-8000-000000000001", "MIG-aaaaaaaa-0000-5000-8000-000000000002")
    gpus = [gpu(0, 80 * GiB, migs), gpu(1, 12 * GiB)]
    for settings in ({"slices_per_gpu": 3}, {"slice_memory": "40GiB"}, {"slice_memory": "1GiB"}):
        got = slices.for_config(gpus, cfg(**settings))
        assert [s for s in got if s.startswith("MIG-")] == list(migs)
    assert slices.for_config(gpus, cfg(slices_per_gpu=3)) == [
        migs[0], f"{uuid(1)}::1", migs[1], f"{uuid(1)}::2", f"{uuid(1)}::3"]


def test_mig_gpu_without_mig_devices_is_noted():
    bare = Gpu(0, uuid(0), "NVIDIA A100", 80 * GiB, mig_enabled=True)
    assert slices.for_config([bare], cfg()) == []
    assert slices.notes([bare], cfg()) == ["GPU 0 (NVIDIA A100) is in MIG mode without MIG devices: no slices"]


# --- the slice map and devices ----------------------------------------------------------------------

def test_slice_map_maps_every_slice_to_its_device():
    mig = "MIG-aaaaaaaa-0000-5000-8000-000000000001"
    data = json.loads(slices.slice_map_text("nvslice", [f"{uuid(0)}::1", mig, f"{uuid(0)}::2"]))
    assert data["kind"] == "nvslice" and data["variable"] == "DOCKER_RESOURCE_NVSLICE"
    assert data["slices"] == {f"{uuid(0)}::1": uuid(0), mig: mig, f"{uuid(0)}::2": uuid(0)}


@pytest.mark.parametrize("kind, variable", [("gpu", "DOCKER_RESOURCE_GPU"), ("nvidia-gpu", "DOCKER_RESOURCE_NVIDIA-GPU"),
                                            ("Gpu_2", "DOCKER_RESOURCE_GPU_2")])
def test_env_variable_is_swarmkits(kind, variable):
    assert slices.env_variable(kind) == variable


def test_known_devices_include_mig_devices():
    mig = "MIG-aaaaaaaa-0000-5000-8000-000000000001"
    assert slices.known_devices([gpu(0, GiB, (mig,)), gpu(1, GiB)]) == {uuid(0), uuid(1), mig}


# --- CUDA_VISIBLE_DEVICES ------------------------------------------------------------------------

@pytest.mark.parametrize("value, want", [
    (f"{uuid(0)}::2", uuid(0)),
    (f"{uuid(0)}::1,{uuid(0)}::3", uuid(0)),
    (f"{uuid(1)}::1,{uuid(0)}::2,{uuid(1)}::2", f"{uuid(1)},{uuid(0)}"),
    ("MIG-aaaaaaaa-0000-5000-8000-000000000001", "MIG-aaaaaaaa-0000-5000-8000-000000000001"),
    ("MIG-GPU-aaaaaaaa-0000-5000-8000-000000000001/1/0", "MIG-GPU-aaaaaaaa-0000-5000-8000-000000000001/1/0"),
    (uuid(3), uuid(3)),
    ("", ""),
])
def test_cuda_visible_devices(value, want):
    assert slices.cuda_visible_devices(value, "DOCKER_RESOURCE_GPU") == want


def test_cuda_env_prints_sh_for_eval():
    assert slices.cuda_env({"DOCKER_RESOURCE_GPU": f"{uuid(0)}::1"}, "gpu") == \
        f"export CUDA_VISIBLE_DEVICES={uuid(0)}\nexport TF_FORCE_GPU_ALLOW_GROWTH=true\n" \
        "export XLA_PYTHON_CLIENT_PREALLOCATE=false\n"
    assert slices.cuda_env({}, "gpu") == "export CUDA_VISIBLE_DEVICES=''\n"
    assert slices.cuda_env({"DOCKER_RESOURCE_NVSLICE": "MIG-x1"}, "nvslice") == "export CUDA_VISIBLE_DEVICES=MIG-x1\n"


@pytest.mark.parametrize("value", ["GPU-a::0", "GPU-a::x", "GPU-a::1,", ",GPU-a::1", "GPU-a::1;ls", " GPU-a::1",
                                   "all", "0", "MIG-a::1", "GPU-", "GPU-a::01", "GPU-a:b::1", "GPU-\u00e9::1"])
def test_cuda_visible_devices_refuses_malformed(value):
    with pytest.raises(ValueError, match="is malformed"):
        slices.cuda_visible_devices(value, "DOCKER_RESOURCE_GPU")


# --- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("4GiB", 4 * GiB), ("4 GiB", 4 * GiB), ("512MiB", 512 * MiB), ("1.5GiB", 3 * GiB // 2),
    ("2TiB", 2 * 2**40), ("64KiB", 65536), ("4294967296", 4 * GiB), ("100B", 100),
])
def test_parse_size(text, size):
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["4GB", "4gib", "4 G", "GiB", "-1GiB", "0", "0.1B", "1e9", "four", "1..5GiB", "4GiB!"])
def test_bad_slice_memory_names_the_key(text):
    with pytest.raises(ConfigError) as info:
        config.from_tables({"gpu": {"slice_memory": text}})
    assert info.value.message().startswith("[gpu] slice_memory must be a size")
    assert repr(text) in info.value.message() and info.value.exit_code == 2


def test_slice_memory_must_be_a_string():
    with pytest.raises(ConfigError, match=r"\[gpu\] slice_memory"):
        config.from_tables({"gpu": {"slice_memory": 4}})


def test_resource_kind_is_ascii():
    with pytest.raises(ConfigError, match=r"\[gpu\] resource"):
        config.from_tables({"gpu": {"resource": "gp\u00fc"}})


# --- the hub side -----------------------------------------------------------------------------------

def test_hub_config_asks_for_this_nodes_kind():
    text = hub.hub_config(config.from_tables({"gpu": {"resource": "nvslice"},
                                              "image": {"name": "hub.example.org:5000/nb:latest"}}))
    namespace = _exec_hub_config(text)
    spawner = namespace["c"].SwarmSpawner
    assert spawner.extra_resources_spec == {"generic_resources": {"nvslice": 1}}
    assert spawner.image == "hub.example.org:5000/nb:latest"
    assert spawner.network_name == "jupyterhub" and spawner.extra_endpoint_spec == {"mode": "dnsrr"}
    assert namespace["c"].JupyterHub.hub_connect_ip == "jupyterhub"
    assert namespace["c"].JupyterHub.spawner_class.__name__ == "GpuSliceSpawner"
    assert namespace["c"].JupyterHub.spawner_class.slice_wait == 60


def test_hub_config_takes_the_hubs_own_facts():
    text = hub.hub_config(config.from_tables({}), hub.HubSide(hub_address="10.0.0.5", network="nb-net",
                                                               slice_wait=20, start_timeout=300))
    namespace = _exec_hub_config(text)
    assert namespace["c"].JupyterHub.hub_connect_ip == "10.0.0.5"
    assert namespace["c"].SwarmSpawner.network_name == "nb-net"
    assert namespace["c"].SwarmSpawner.start_timeout == 300
    assert namespace["c"].JupyterHub.spawner_class.slice_wait == 20


@pytest.mark.parametrize("side, flag", [
    (dict(hub_address="hub;rm"), "--hub-address"), (dict(network="a b"), "--network"),
    (dict(slice_wait=0), "--slice-wait"), (dict(slice_wait=600, start_timeout=600), "--slice-wait"),
])
def test_hub_config_refuses_what_would_not_work(side, flag):
    with pytest.raises(ConfigError, match=flag):
        hub.hub_config(config.from_tables({}), hub.HubSide(**side))


def _exec_hub_config(text: str) -> dict:
    """Run the printed config as a hub would, with a stand-in for dockerspawner (not a test dependency)."""
    fake = types.ModuleType("dockerspawner")
    fake.SwarmSpawner = _SwarmSpawner
    namespace = {"c": _Config()}
    with mock.patch.dict(sys.modules, {"dockerspawner": fake}):
        exec(text, namespace)  # noqa: S102 - the lines are Python a hub runs; check they are
    return namespace


def _task(created: str, desired: str, state: str) -> dict:
    return {"CreatedAt": f"2026-11-29T21:00:{created}Z", "DesiredState": desired, "Status": {"State": state}}


@pytest.mark.parametrize("tasks, polled", [
    # A move: the old task is shut down by Swarm (the node drained or left); the new one waits
    # its restart delay, or is on its way to another node.
    ([_task("01", "shutdown", "running"), _task("02", "ready", "ready")], None),
    ([_task("01", "shutdown", "shutdown"), _task("02", "running", "assigned")], None),
    ([_task("01", "shutdown", "shutdown"), _task("02", "running", "preparing")], None),
    # The server ended by itself (exited, or its node refused it): dockerspawner's poll decides.
    ([_task("01", "shutdown", "complete"), _task("02", "ready", "ready")], "super"),
    ([_task("01", "shutdown", "failed"), _task("02", "running", "assigned")], "super"),
    # Nothing on its way.
    ([_task("01", "shutdown", "shutdown")], "super"),
    ([], "super"),
])
def test_hub_config_keeps_a_server_that_swarm_moves(tasks, polled):
    namespace = _exec_hub_config(hub.hub_config(config.from_tables({})))
    spawner = namespace["c"].JupyterHub.spawner_class()
    spawner.tasks = tasks
    assert asyncio.run(spawner.poll()) == polled
    assert spawner.asked == [("tasks", {"filters": {"service": "jupyter-ann"}})]


def _stamp(seconds_ago: float) -> str:
    import datetime

    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.123456789Z")


@pytest.mark.parametrize("pending_for, removed", [(55, False), (65, True)])
def test_hub_config_withdraws_a_moved_server_that_finds_no_slice_for_slice_wait(pending_for, removed):
    """A server Swarm moved whose new task waits for a slice is kept for slice_wait seconds (60),
    as a start would wait; then its service is removed and poll says why, so the hub marks it
    stopped instead of showing it running while its proxy answers 503 (the hub stops a server only
    when poll says it runs)."""
    namespace = _exec_hub_config(hub.hub_config(config.from_tables({})))
    spawner = namespace["c"].JupyterHub.spawner_class()
    err = "no suitable node (insufficient resources on 2 nodes)"
    spawner.tasks = [_task("01", "shutdown", "shutdown"),
                     {"CreatedAt": _stamp(pending_for + 5), "DesiredState": "running",
                      "Status": {"State": "pending", "Timestamp": _stamp(pending_for), "Err": err}}]
    polled = asyncio.run(spawner.poll())
    if removed:
        assert polled.startswith("no GPU slice was free for 60 s after the server was moved") and err in polled
        assert spawner.removed == 1 and "waited 60 s for a free gpu slice" in spawner.warned[0]
    else:
        assert polled is None and not spawner.removed and not spawner.warned


def test_hub_config_polls_a_gone_service_as_dockerspawner_does():
    namespace = _exec_hub_config(hub.hub_config(config.from_tables({})))
    spawner = namespace["c"].JupyterHub.spawner_class()
    spawner.service = None
    assert asyncio.run(spawner.poll()) == "super" and spawner.asked == []


def test_hub_config_without_image_sets_none():
    assert "c.SwarmSpawner.image" not in hub.hub_config(config.from_tables({}))


class _SwarmSpawner:
    """dockerspawner's SwarmSpawner as far as the printed subclass uses it: the service, the
    Docker API call for its tasks (recorded), and a poll that says it was the one asked."""

    service_name = "jupyter-ann"
    service = {"ID": "s1"}
    tasks: list = []

    def __init__(self):
        self.asked = []
        self.removed = 0
        self.warned: list[str] = []
        spawner = self

        class Log:
            def warning(self, message, *args):
                spawner.warned.append(message % args)

            def debug(self, message, *args):
                pass

        self.log = Log()

    async def remove_object(self):
        if self.service is None:
            raise _NotFound()
        self.removed += 1
        self.service = None

    async def get_object(self):
        return self.service

    async def docker(self, method, **kwargs):
        self.asked.append((method, kwargs))
        return list(self.tasks)

    async def poll(self):
        return "super"


class _NotFound(Exception):
    """docker.errors.APIError for a service that is gone."""

    status_code = 404


def test_hub_config_removes_a_service_removed_already_without_error():
    namespace = _exec_hub_config(hub.hub_config(config.from_tables({})))
    spawner = namespace["c"].JupyterHub.spawner_class()
    asyncio.run(spawner.remove_object())
    asyncio.run(spawner.remove_object())  # a stop after poll withdrew it: gone, no error
    assert spawner.removed == 1


class _Config:
    """Enough of traitlets' config object for `c.Section.key = value`."""

    def __getattr__(self, name):
        section = type(name, (), {})()
        setattr(self, name, section)
        return section


# --- the frameworks' memory settings ------------------------------------------------------------

@pytest.mark.parametrize("per_gpu, percent, fraction", [
    (1, None, None), (2, 50, "0.50"), (3, 33, "0.33"), (4, 25, "0.25"), (5, 20, "0.20"), (6, 16, "0.16"),
    (7, 14, "0.14"), (48, 2, "0.02"),
])
def test_one_slice_gets_its_share_of_the_gpu_rounded_down(per_gpu, percent, fraction):
    from gpuswarm_node.slices import memory_share_env, memory_share_percent

    gpu = "GPU-00000000-1111-4222-8333-444444444444"
    slices = {f"{gpu}::{n}": gpu for n in range(1, per_gpu + 1)}
    assert memory_share_percent([f"{gpu}::1"], slices) == (percent or 100)
    assert memory_share_percent(list(slices), slices) == 100  # every slice: the whole GPU
    expected = [] if percent is None else [
        ("TF_FORCE_GPU_ALLOW_GROWTH", "true"), ("XLA_PYTHON_CLIENT_MEM_FRACTION", fraction),
        ("XLA_CLIENT_MEM_FRACTION", fraction), ("CUPY_GPU_MEMORY_LIMIT", f"{percent}%")]
    assert memory_share_env(memory_share_percent([f"{gpu}::1"], slices), ()) == expected
    # Shares of one GPU never add up to more than it has.
    assert per_gpu * (percent or 100) <= 100


def test_an_unknown_share_sets_only_what_needs_none():
    from gpuswarm_node.slices import memory_share_env

    assert memory_share_env(None, ()) == [("TF_FORCE_GPU_ALLOW_GROWTH", "true"),
                                          ("XLA_PYTHON_CLIENT_PREALLOCATE", "false")]
    assert memory_share_env(None, {"XLA_CLIENT_MEM_FRACTION"}) == [("TF_FORCE_GPU_ALLOW_GROWTH", "true")]

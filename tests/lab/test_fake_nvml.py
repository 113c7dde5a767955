"""The fake libnvidia-ml.so.1, seen through NVIDIA's unchanged pynvml.

Each test describes GPUs in a config, runs a fresh Python process that loads
the library the way the product does (pynvml's CDLL("libnvidia-ml.so.1")),
and checks what NVML reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import fake_nvml
from tests.lab.fake_nvml import FakeGpu, FakeMigDevice

GIB = 1024**3
MIB = 1024**2

# Walks NVML the way device plugins do and prints everything as JSON.
PROBE = r"""
import json, sys
import pynvml

def err(e):
    return type(e).__name__

def text(value):  # pynvml versions differ in decoding char arrays
    return value if isinstance(value, str) else value.decode()

try:
    pynvml.nvmlInit()
except pynvml.NVMLError as e:
    print(json.dumps({"init_error": err(e), "code": e.value, "message": str(e)}))
    sys.exit(0)

out = {
    "driver": pynvml.nvmlSystemGetDriverVersion(),
    "nvml": pynvml.nvmlSystemGetNVMLVersion(),
    "cuda": pynvml.nvmlSystemGetCudaDriverVersion(),
    "cuda_v2": pynvml.nvmlSystemGetCudaDriverVersion_v2(),
    "gpus": [],
}
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    gpu = {
        "index": pynvml.nvmlDeviceGetIndex(h),
        "uuid": pynvml.nvmlDeviceGetUUID(h),
        "name": pynvml.nvmlDeviceGetName(h),
        "total": mem.total, "free": mem.free, "used": mem.used,
        "total_v2": mem2.total, "free_v2": mem2.free,
        "bus_id": text(pci.busId), "bus_id_legacy": text(pci.busIdLegacy),
        "bus": pci.bus,
        "minor": pynvml.nvmlDeviceGetMinorNumber(h),
        "is_mig": pynvml.nvmlDeviceIsMigDeviceHandle(h).value,
        "max_mig": pynvml.nvmlDeviceGetMaxMigDeviceCount(h),
        "by_uuid": pynvml.nvmlDeviceGetIndex(
            pynvml.nvmlDeviceGetHandleByUUID(pynvml.nvmlDeviceGetUUID(h))),
        "migs": [],
    }
    try:
        gpu["mig_mode"] = pynvml.nvmlDeviceGetMigMode(h)
    except pynvml.NVMLError as e:
        gpu["mig_mode"] = err(e)
    for j in range(gpu["max_mig"]):
        try:
            m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
        except pynvml.NVMLError_NotFound:
            continue
        parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
        gpu["migs"].append({
            "index": pynvml.nvmlDeviceGetIndex(m),
            "uuid": pynvml.nvmlDeviceGetUUID(m),
            "name": pynvml.nvmlDeviceGetName(m),
            "total": pynvml.nvmlDeviceGetMemoryInfo(m).total,
            "total_v2": pynvml.nvmlDeviceGetMemoryInfo(m, version=pynvml.nvmlMemory_v2).total,
            "is_mig": pynvml.nvmlDeviceIsMigDeviceHandle(m).value,
            "parent_uuid": pynvml.nvmlDeviceGetUUID(parent),
        })
    out["gpus"].append(gpu)
pynvml.nvmlShutdown()
print(json.dumps(out))
"""


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def probe(env: dict[str, str]) -> dict:
    proc = run_python(PROBE, env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def gpu_uuid(n: int) -> str:
    return f"GPU-{n:08x}-1111-2222-3333-{n:012x}"


@pytest.fixture(scope="session")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_nvml.build(tmp_path_factory.mktemp("fake-nvml-build"))


@pytest.fixture
def nvml(lib_dir: Path, tmp_path: Path):
    """Write a config and return what NVML reports for it."""

    def run(gpus, **kwargs) -> dict:
        config = fake_nvml.write_config(tmp_path / "config", gpus, **kwargs)
        return probe(fake_nvml.env_for(lib_dir, config))

    return run


def test_build_is_cached_and_has_nvml_soname(lib_dir: Path) -> None:
    lib = lib_dir / "libnvidia-ml.so.1"
    assert fake_nvml.build(lib_dir.parent) == lib_dir
    before = lib.stat().st_mtime_ns
    assert fake_nvml.build(lib_dir.parent) == lib_dir
    assert lib.stat().st_mtime_ns == before
    dynamic = subprocess.run(
        ["objdump", "-p", str(lib)], check=True, capture_output=True, text=True
    ).stdout
    assert "SONAME               libnvidia-ml.so.1" in dynamic
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(lib)], check=True, capture_output=True, text=True
    ).stdout.split()
    for name in ("nvmlInit", "nvmlInit_v2", "nvmlInitWithFlags", "nvmlDeviceGetCount_v2",
                 "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetPciInfo_v3"):
        assert name in symbols
    assert "load_config" not in symbols


def test_zero_gpus(nvml) -> None:
    report = nvml([], driver_version="535.161.08", cuda_version=12020)
    assert report == {
        "driver": "535.161.08",
        "nvml": "12.535.161.08",
        "cuda": 12020,
        "cuda_v2": 12020,
        "gpus": [],
    }


def test_one_gpu(nvml) -> None:
    gpu = FakeGpu(gpu_uuid(1), "NVIDIA GeForce RTX 4090", 24564, pci_bus_id="00000000:3B:00.0")
    [seen] = nvml([gpu])["gpus"]
    assert seen == {
        "index": 0,
        "uuid": gpu_uuid(1),
        "name": "NVIDIA GeForce RTX 4090",
        "total": 24564 * MIB, "free": 24564 * MIB, "used": 0,
        "total_v2": 24564 * MIB, "free_v2": 24564 * MIB,
        "bus_id": "00000000:3B:00.0", "bus_id_legacy": "0000:3B:00.0", "bus": 0x3B,
        "minor": 0,
        "is_mig": 0,
        "max_mig": 0,
        "by_uuid": 0,
        "migs": [],
        "mig_mode": "NVMLError_NotSupported",
    }


def test_eight_gpus(nvml) -> None:
    gpus = [FakeGpu(gpu_uuid(n), "NVIDIA H100 80GB HBM3", 81559) for n in range(8)]
    seen = nvml(gpus)["gpus"]
    assert [g["uuid"] for g in seen] == [gpu_uuid(n) for n in range(8)]
    assert [g["index"] for g in seen] == list(range(8))
    assert [g["minor"] for g in seen] == list(range(8))
    assert [g["by_uuid"] for g in seen] == list(range(8))
    assert [g["bus_id"] for g in seen] == [f"00000000:{n + 1:02X}:00.0" for n in range(8)]
    assert {g["total"] for g in seen} == {81559 * MIB}


def test_mixed_memory(nvml) -> None:
    report = nvml([
        FakeGpu(gpu_uuid(1), "NVIDIA GeForce RTX 3060", 12 * 1024),
        FakeGpu(gpu_uuid(2), "NVIDIA A100-SXM4-80GB", 80 * 1024),
    ])
    assert [(g["name"], g["total"], g["total_v2"]) for g in report["gpus"]] == [
        ("NVIDIA GeForce RTX 3060", 12 * GIB, 12 * GIB),
        ("NVIDIA A100-SXM4-80GB", 80 * GIB, 80 * GIB),
    ]


def test_mig_gpu_with_three_mig_devices(nvml) -> None:
    migs = (
        FakeMigDevice("MIG-11111111-aaaa-5555-8888-000000000001", 19968, "2g.20gb"),
        FakeMigDevice("MIG-11111111-aaaa-5555-8888-000000000002", 19968, "2g.20gb"),
        FakeMigDevice("MIG-11111111-aaaa-5555-8888-000000000003", 9856, "1g.10gb"),
    )
    report = nvml([
        FakeGpu(gpu_uuid(1), "NVIDIA A100-SXM4-80GB", 81920, mig_devices=migs),
        FakeGpu(gpu_uuid(2), "NVIDIA A100-SXM4-80GB", 81920, mig_mode="off"),
    ])
    mig_gpu, plain_gpu = report["gpus"]
    assert mig_gpu["mig_mode"] == [1, 1]
    assert mig_gpu["max_mig"] == 7
    assert mig_gpu["migs"] == [
        {
            "index": i,
            "uuid": m.uuid,
            "name": f"NVIDIA A100-SXM4-80GB MIG {m.profile}",
            "total": m.memory_mib * MIB,
            "total_v2": m.memory_mib * MIB,
            "is_mig": 1,
            "parent_uuid": gpu_uuid(1),
        }
        for i, m in enumerate(migs)
    ]
    assert (plain_gpu["mig_mode"], plain_gpu["max_mig"], plain_gpu["migs"]) == ([0, 0], 0, [])


def test_mig_mode_change_pending(nvml) -> None:
    gpu = FakeGpu(gpu_uuid(1), "NVIDIA H100 80GB HBM3", 81559, mig_mode="off", mig_pending="on")
    [seen] = nvml([gpu])["gpus"]
    assert (seen["mig_mode"], seen["max_mig"]) == ([0, 1], 0)


ERROR_CASES = r"""
import json, pynvml
def code(f, *a):
    try:
        f(*a)
        return "ok"
    except pynvml.NVMLError as e:
        return type(e).__name__
pynvml.nvmlInit()
plain = pynvml.nvmlDeviceGetHandleByIndex(0)
out = {
    "bad_index": code(pynvml.nvmlDeviceGetHandleByIndex, 1),
    "mig_mode_on_plain": code(pynvml.nvmlDeviceGetMigMode, plain),
    "mig_handle_on_plain": code(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, plain, 0),
    "parent_of_plain": code(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, plain),
    "unknown_uuid": code(pynvml.nvmlDeviceGetHandleByUUID, "GPU-nope"),
    "memory_v2_wrong_version": code(pynvml.nvmlDeviceGetMemoryInfo, plain, 0x01000028),
    "by_bus_id": pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByPciBusId("0000:3b:00.0")),
    "error_string": pynvml.nvmlErrorString(pynvml.NVML_ERROR_DRIVER_NOT_LOADED),
}
pynvml.nvmlShutdown()
out["after_shutdown"] = code(pynvml.nvmlDeviceGetCount)
out["second_shutdown"] = code(pynvml.nvmlShutdown)
print(json.dumps(out))
"""


def test_error_codes(lib_dir: Path, tmp_path: Path) -> None:
    gpu = FakeGpu(gpu_uuid(7), "Tesla T4", 15360, pci_bus_id="00000000:3B:00.0")
    config = fake_nvml.write_config(tmp_path / "config", [gpu])
    proc = run_python(ERROR_CASES, fake_nvml.env_for(lib_dir, config))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "bad_index": "NVMLError_InvalidArgument",
        "mig_mode_on_plain": "NVMLError_NotSupported",
        "mig_handle_on_plain": "NVMLError_NotSupported",
        "parent_of_plain": "NVMLError_InvalidArgument",
        "unknown_uuid": "NVMLError_NotFound",
        "memory_v2_wrong_version": "NVMLError_ArgumentVersionMismatch",
        "by_bus_id": gpu_uuid(7),
        "error_string": "Driver Not Loaded",
        "after_shutdown": "NVMLError_Uninitialized",
        "second_shutdown": "NVMLError_Uninitialized",
    }


def test_init_variants_through_ctypes(lib_dir: Path, tmp_path: Path) -> None:
    config = fake_nvml.write_config(tmp_path / "config", [FakeGpu(gpu_uuid(1), "Tesla T4", 15360)])
    code = (
        "import ctypes; lib = ctypes.CDLL('libnvidia-ml.so.1'); n = ctypes.c_uint()\n"
        "print(lib.nvmlInit_v2(), lib.nvmlInit(), lib.nvmlInitWithFlags(1),"
        " lib.nvmlDeviceGetCount_v2(ctypes.byref(n)), n.value,"
        " lib.nvmlShutdown(), lib.nvmlShutdown(), lib.nvmlShutdown(), lib.nvmlShutdown())"
    )
    proc = run_python(code, fake_nvml.env_for(lib_dir, config))
    assert proc.returncode == 0, proc.stderr
    # Init is reference counted: three inits, three good shutdowns, then Uninitialized (1).
    assert proc.stdout.split() == ["0", "0", "0", "0", "1", "0", "0", "0", "1"]


@pytest.mark.parametrize(
    ("mode", "error", "code"),
    [
        ("driver-not-loaded", "NVMLError_DriverNotLoaded", 9),
        ("no-permission", "NVMLError_NoPermission", 4),
        ("version-mismatch", "NVMLError_LibRmVersionMismatch", 18),
    ],
)
def test_error_modes(nvml, mode: str, error: str, code: int) -> None:
    report = nvml([FakeGpu(gpu_uuid(1), "Tesla T4", 15360)], mode=mode)
    assert (report["init_error"], report["code"]) == (error, code)


def test_missing_config_means_driver_not_loaded(lib_dir: Path, tmp_path: Path) -> None:
    report = probe(fake_nvml.env_for(lib_dir, tmp_path / "no-such-config"))
    assert report["init_error"] == "NVMLError_DriverNotLoaded"
    assert report["message"] == "Driver Not Loaded"


def test_broken_config_fails_init_and_says_where(lib_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("driver 550.54.15\ngpu GPU-1 lots 0000:01:00.0 none Tesla T4\n")
    proc = run_python(PROBE, fake_nvml.env_for(lib_dir, config))
    assert json.loads(proc.stdout)["init_error"] == "NVMLError_Unknown"
    assert f"fake-nvml: {config}:2: GPU memory must be a positive number of MiB" in proc.stderr


def test_library_missing(tmp_path: Path) -> None:
    system_dirs = ["/lib", "/usr/lib", f"/lib/{fake_nvml.multiarch()}", f"/usr/lib/{fake_nvml.multiarch()}"]
    ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    # Precondition of the lab, not of the product: this machine has no NVIDIA driver.
    assert "libnvidia-ml.so.1" not in ldconfig
    assert not any(Path(d, "libnvidia-ml.so.1").exists() for d in system_dirs)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_CONFIG"}
    env["LD_LIBRARY_PATH"] = str(empty)
    report = probe(env)
    assert (report["init_error"], report["code"]) == ("NVMLError_LibraryNotFound", 12)


def test_install_into_root(lib_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    gpu = FakeGpu(gpu_uuid(3), "NVIDIA L4", 23034)
    lib = fake_nvml.install_into(root, [gpu], driver_version="550.90.07", lib_dir=lib_dir)
    multiarch = fake_nvml.multiarch()
    assert lib == root / "usr" / "lib" / multiarch / "libnvidia-ml.so.1"
    assert lib.read_bytes() == (lib_dir / "libnvidia-ml.so.1").read_bytes()
    config = root / "etc" / "fake-nvml" / "config"
    assert "gpu GPU-00000003-1111-2222-3333-000000000003 23034 00000000:01:00.0 none NVIDIA L4" in (
        config.read_text().splitlines()
    )
    report = probe(fake_nvml.env_for(lib.parent, config))
    assert report["driver"] == "550.90.07"
    assert [(g["uuid"], g["total"]) for g in report["gpus"]] == [(gpu_uuid(3), 23034 * MIB)]


def test_config_rejects_mig_devices_without_mig_mode_on(tmp_path: Path) -> None:
    mig = FakeMigDevice("MIG-00000000-0000-0000-0000-000000000001", 9856)
    with pytest.raises(ValueError, match="mig_mode 'on'"):
        fake_nvml.write_config(
            tmp_path / "config", [FakeGpu(gpu_uuid(1), "A100", 40960, mig_devices=(mig,), mig_mode="off")]
        )

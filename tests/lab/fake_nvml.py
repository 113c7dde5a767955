"""Fake NVIDIA GPUs for the test lab: build and configure a fake libnvidia-ml.so.1.

The library (``fake_nvml/fake_nvml.c``) is the lab's only fake: NVIDIA's own
``pynvml`` loads it unchanged and the product's NVML code runs for real
against GPUs described in a small text config.  Point a process at it with
``env_for`` (LD_LIBRARY_PATH) or install it into a machine's root file system
with ``install_into``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SOURCE = Path(__file__).resolve().parent / "fake_nvml" / "fake_nvml.c"
SONAME = "libnvidia-ml.so.1"
# The same library answers the CUDA driver API's readiness calls (cuInit, cuDeviceGetCount) as
# libcuda.so.1: a link to it beside it, and a copy of it installed beside NVML.
CUDA_NAME = "libcuda.so.1"
CONFIG_ENV = "FAKE_NVML_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/fake-nvml/config"
# Faults a test injects while the process runs (fake_nvml.c's header: lost, xid, retired-pending,
# remap-pending, remap-failure lines); read again at every call concerned, no file: no fault.
FAULTS_ENV = "FAKE_NVML_FAULTS"
DEFAULT_FAULTS_PATH = "/etc/fake-nvml/faults"
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-Wl,-soname,{SONAME}")

Mode = Literal["ok", "driver-not-loaded", "no-permission", "version-mismatch"]
MigMode = Literal["on", "off"]


@dataclass(frozen=True)
class FakeMigDevice:
    uuid: str  # "MIG-..."
    memory_mib: int
    profile: str = ""  # e.g. "1g.10gb"; NVML then names it "<GPU> MIG 1g.10gb"


@dataclass(frozen=True)
class FakeGpu:
    uuid: str  # "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    name: str
    memory_mib: int
    pci_bus_id: str | None = None  # None: derived from the GPU's index
    mig_devices: tuple[FakeMigDevice, ...] = ()
    # None: "on" when mig_devices are given, else the GPU cannot do MIG.
    mig_mode: MigMode | None = None
    mig_pending: MigMode | None = None  # None: same as mig_mode


def build(out_dir: Path) -> Path:
    """Compile the library; return the directory holding libnvidia-ml.so.1.

    Builds are keyed by source and flags, so repeated calls are cheap.
    """
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    lib_dir = Path(out_dir) / f"fake-nvml-{key}"
    lib = lib_dir / SONAME
    if lib.exists():
        return lib_dir
    lib_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent caller never loads
    # a half-written library.
    tmp = lib_dir / f".{SONAME}.{os.getpid()}"
    subprocess.run(["gcc", *CFLAGS, "-o", str(tmp), str(SOURCE)], check=True)
    link = lib_dir / f".{CUDA_NAME}.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(SONAME)
    os.replace(link, lib_dir / CUDA_NAME)
    os.replace(tmp, lib)  # last: its presence says the directory is complete
    return lib_dir


def multiarch() -> str:
    """The Debian multiarch triplet of this machine, e.g. x86_64-linux-gnu."""
    out = subprocess.run(
        ["gcc", "-print-multiarch"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if not out:
        raise RuntimeError("gcc -print-multiarch printed nothing")
    return out


def _mig_field(gpu: FakeGpu) -> str:
    current = gpu.mig_mode or ("on" if gpu.mig_devices else None)
    if current is None:
        if gpu.mig_pending is not None:
            raise ValueError(f"{gpu.uuid}: mig_pending needs mig_mode")
        return "none"
    if gpu.mig_devices and current != "on":
        raise ValueError(f"{gpu.uuid}: MIG devices need mig_mode 'on'")
    pending = gpu.mig_pending or current
    return current if pending == current else f"{current}/{pending}"


def _check_token(what: str, value: str) -> str:
    if not value or any(c.isspace() or c == "#" for c in value):
        raise ValueError(f"{what} must be one word without '#': {value!r}")
    return value


def render_config(
    gpus: Iterable[FakeGpu],
    driver_version: str = "550.54.15",
    cuda_version: int = 12040,
    mode: Mode = "ok",
    cuda_init: int = 0,
) -> str:
    """The config text the C library parses (format in fake_nvml.c); `cuda_init` is the CUresult
    cuInit answers (802: an NVSwitch machine without Fabric Manager)."""
    lines = [
        "# fake libnvidia-ml.so.1 config, written by tests/lab/fake_nvml.py",
        f"mode {_check_token('mode', mode)}",
        f"driver {_check_token('driver_version', driver_version)}",
        f"cuda {int(cuda_version)}",
        *([f"cuda-init {int(cuda_init)}"] if cuda_init else []),
    ]
    for index, gpu in enumerate(gpus):
        bus_id = gpu.pci_bus_id or f"00000000:{index + 1:02X}:00.0"
        if int(gpu.memory_mib) <= 0 or any(int(m.memory_mib) <= 0 for m in gpu.mig_devices):
            raise ValueError(f"{gpu.uuid}: memory must be a positive number of MiB")
        if "#" in gpu.name or "\n" in gpu.name:
            raise ValueError(f"GPU name must not contain '#' or newlines: {gpu.name!r}")
        lines.append(
            f"gpu {_check_token('uuid', gpu.uuid)} {int(gpu.memory_mib)} "
            f"{_check_token('pci_bus_id', bus_id)} {_mig_field(gpu)} {gpu.name}"
        )
        for mig in gpu.mig_devices:
            profile = f" {_check_token('profile', mig.profile)}" if mig.profile else ""
            lines.append(f"mig {_check_token('uuid', mig.uuid)} {int(mig.memory_mib)}{profile}")
    return "\n".join(lines) + "\n"


def write_config(
    path: Path,
    gpus: Iterable[FakeGpu],
    driver_version: str = "550.54.15",
    cuda_version: int = 12040,
    mode: Mode = "ok",
    cuda_init: int = 0,
) -> Path:
    """Write a config for the fake library; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config(gpus, driver_version, cuda_version, mode, cuda_init))
    return path


def env_for(
    lib_dir: Path, config_path: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a subprocess that should see the fake GPUs.

    ``base`` defaults to this process's environment; pass ``{}`` to get just
    the two variables.
    """
    env = dict(os.environ if base is None else base)
    previous = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{lib_dir}:{previous}" if previous else str(lib_dir)
    env[CONFIG_ENV] = str(config_path)
    return env


def install_into(
    root: Path,
    gpus: Iterable[FakeGpu],
    driver_version: str = "550.54.15",
    cuda_version: int = 12040,
    mode: Mode = "ok",
    *,
    lib_dir: Path | None = None,
) -> Path:
    """Give the machine whose root file system is ``root`` these GPUs.

    Copies the library to <root>/usr/lib/<multiarch>/libnvidia-ml.so.1, a
    directory the dynamic loader searches without ld.so.cache, and writes
    <root>/etc/fake-nvml/config.  Returns the installed library's path.
    ``lib_dir`` is a result of ``build``; by default one is built in the
    user's cache directory.
    """
    root = Path(root)
    if lib_dir is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        lib_dir = build(cache / "gpuswarm-node-lab")
    target = root / "usr" / "lib" / multiarch() / SONAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(lib_dir) / SONAME, target)
    target.chmod(0o644)
    cuda = target.with_name(CUDA_NAME)
    shutil.copyfile(Path(lib_dir) / SONAME, cuda)
    cuda.chmod(0o644)
    config = root / DEFAULT_CONFIG_PATH.lstrip("/")
    write_config(config, gpus, driver_version, cuda_version, mode)
    config.chmod(0o644)
    return target

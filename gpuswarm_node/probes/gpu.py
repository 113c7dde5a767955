"""GPU facts from NVML (through pynvml, which loads libnvidia-ml.so.1); the slices they yield: gpuswarm_node.slices."""

from __future__ import annotations

import json

from dataclasses import dataclass, field

from ..config import MAX_SLICES_PER_GPU
from ..errors import NvmlUnavailable


@dataclass(frozen=True)
class MigDevice:
    uuid: str
    memory_bytes: int


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_bytes: int
    pci_bus_id: str = ""
    mig_enabled: bool = False
    mig_devices: tuple[MigDevice, ...] = ()


@dataclass(frozen=True)
class Inventory:
    driver_version: str
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    cuda_version: str = ""  # the newest CUDA the driver supports, "12.4" (nvmlSystemGetCudaDriverVersion)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_inventory() -> Inventory:
    """Ask NVML. Raises NvmlUnavailable with the reason when the library or driver is missing."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        raise NvmlUnavailable("libnvidia-ml.so.1 is not installed, so no NVIDIA driver is.",
                              "Install the NVIDIA driver.") from None
    except pynvml.NVMLError_DriverNotLoaded:
        raise NvmlUnavailable("the NVIDIA kernel driver is not loaded.",
                              "Reboot after installing the driver, or load it with modprobe nvidia.") from None
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML failed to initialise: {exc}.", "Check the NVIDIA driver.") from None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(_read_gpu(pynvml, index, handle))
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
            cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}"  # 12040 is 12.4 (nvml.h, CUDA_VERSION)
        except pynvml.NVMLError:
            cuda_text = ""
        return Inventory(driver, tuple(gpus), cuda_text)
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML failed while listing GPUs: {exc}.", "Check the NVIDIA driver.") from None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _read_gpu(pynvml, index: int, handle) -> Gpu:
    try:
        pci = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
    except pynvml.NVMLError:
        pci = ""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        mig = current == pynvml.NVML_DEVICE_MIG_ENABLE
    except pynvml.NVMLError:  # GPUs without MIG support say NOT_SUPPORTED
        mig = False
    migs: list[MigDevice] = []
    if mig:
        for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except pynvml.NVMLError_NotFound:
                continue
            migs.append(MigDevice(_text(pynvml.nvmlDeviceGetUUID(mh)),
                                  int(pynvml.nvmlDeviceGetMemoryInfo(mh).total)))
    return Gpu(index=index, uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
               name=_text(pynvml.nvmlDeviceGetName(handle)),
               memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
               pci_bus_id=pci, mig_enabled=mig, mig_devices=tuple(migs))


def inventory_from_json(data: object) -> Inventory:
    """The inventory `gpus --json` printed, read back (for `render --inventory`). Raises ValueError
    with one clause naming the first field that is wrong, e.g. 'gpus[0] has no "uuid"'."""
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise ValueError('it is not an object with a "gpus" list')

    def field_of(item: dict, key: str, kind: type, where: str, default: object = None) -> object:
        if key not in item:
            if default is None:
                raise ValueError(f'{where} has no "{key}"')
            return default
        value = item[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{where}.{key} is {json.dumps(value)}, not a whole number")
        if kind is str and not isinstance(value, str):
            raise ValueError(f"{where}.{key} is {json.dumps(value)}, not a string")
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{where}.{key} is {json.dumps(value)}, not true or false")
        if kind is list and not isinstance(value, list):
            raise ValueError(f"{where}.{key} is {json.dumps(value)}, not a list")
        return value

    gpus = []
    for n, item in enumerate(data["gpus"]):
        where = f"gpus[{n}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is {json.dumps(item)}, not an object")
        migs = []
        for m, mig in enumerate(field_of(item, "mig_devices", list, where, []) or ()):
            if not isinstance(mig, dict):
                raise ValueError(f"{where}.mig_devices[{m}] is {json.dumps(mig)}, not an object")
            migs.append(MigDevice(field_of(mig, "uuid", str, f"{where}.mig_devices[{m}]"),
                                  field_of(mig, "memory_bytes", int, f"{where}.mig_devices[{m}]")))
        gpus.append(Gpu(index=field_of(item, "index", int, where, n), uuid=field_of(item, "uuid", str, where),
                        name=field_of(item, "name", str, where, ""),
                        memory_bytes=field_of(item, "memory_bytes", int, where),
                        pci_bus_id=field_of(item, "pci_bus_id", str, where, ""),
                        mig_enabled=field_of(item, "mig_enabled", bool, where, False), mig_devices=tuple(migs)))
    driver = data.get("driver_version")
    if driver is not None and not isinstance(driver, str):
        raise ValueError(f"driver_version is {json.dumps(driver)}, not a string")
    return Inventory(str(data.get("driver_version") or ""), tuple(gpus))

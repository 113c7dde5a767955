"""GPU facts from NVML (through pynvml, which loads libnvidia-ml.so.1); the slices they yield: gpuswarm_node.slices."""

from __future__ import annotations

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
    naming what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise ValueError('expected an object with a "gpus" list, as `gpuswarm-node gpus --json` prints')
    gpus = []
    for n, item in enumerate(data["gpus"]):
        try:
            migs = tuple(MigDevice(str(m["uuid"]), int(m["memory_bytes"])) for m in item.get("mig_devices") or ())
            gpus.append(Gpu(index=int(item.get("index", n)), uuid=str(item["uuid"]), name=str(item.get("name", "")),
                            memory_bytes=int(item["memory_bytes"]), pci_bus_id=str(item.get("pci_bus_id", "")),
                            mig_enabled=bool(item.get("mig_enabled", False)), mig_devices=migs))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"gpus[{n}] is not a GPU as `gpus --json` prints one ({type(exc).__name__}: {exc})") \
                from None
    return Inventory(str(data.get("driver_version") or ""), tuple(gpus))

"""Whether CUDA works on this machine: the driver API in libcuda.so.1, the library the NVIDIA
container toolkit gives every GPU container, called through ctypes (no CUDA toolkit needed).

NVML can answer while every CUDA call fails: an NVSwitch machine (HGX A100/H100: p4d, p5) whose
NVIDIA Fabric Manager is missing or of another version than the driver, a libcuda upgraded under
a running kernel module, a forward-compatibility libcuda on hardware without that support. The
NVIDIA GPU Operator's validator checks the same way (a CUDA workload, not NVML). `cuInit(0)`, then
`cuDeviceGetCount`; the CUresult codes are cuda.h's (CUDA driver API reference, "Error Handling").
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

LIBCUDA = "libcuda.so.1"

CUDA_SUCCESS = 0
# CUresult -> (cuda.h name, what it means on a GPU worker, the fix). The fix names a command.
CAUSES: dict[int, tuple[str, str, str]] = {
    3: ("CUDA_ERROR_NOT_INITIALIZED", "the CUDA driver did not initialise",
        "check `dmesg | grep -i nvrm` for the driver's own error, then reboot"),
    34: ("CUDA_ERROR_STUB_LIBRARY", "the libcuda.so.1 found is the CUDA toolkit's stub, not the driver's",
         "remove the stub's directory from the loader's path (ldconfig, LD_LIBRARY_PATH), then `ldconfig`"),
    35: ("CUDA_ERROR_INSUFFICIENT_DRIVER", "libcuda.so.1 is older than the kernel module, or of another driver",
         "reinstall the driver's libraries so they match the loaded module, or reboot after an upgrade"),
    46: ("CUDA_ERROR_DEVICE_UNAVAILABLE", "the GPUs are busy or in an exclusive compute mode",
         "`nvidia-smi -c DEFAULT` sets the compute mode back to shared"),
    100: ("CUDA_ERROR_NO_DEVICE", "CUDA finds no GPU although NVML lists them",
          "check that /dev/nvidia* exist (`nvidia-modprobe -u -c=0`) and that CUDA_VISIBLE_DEVICES is not empty"),
    304: ("CUDA_ERROR_OPERATING_SYSTEM", "the operating system refused a call the CUDA driver made",
          "check `dmesg | grep -i nvrm`, then reboot"),
    802: ("CUDA_ERROR_SYSTEM_NOT_READY", "the GPUs are joined by NVSwitch and NVIDIA Fabric Manager is not running "
          "(or is of another version than the driver), so CUDA waits for the fabric",
          "install the Fabric Manager of the loaded driver's branch (Ubuntu: `apt-get install "
          "nvidia-fabricmanager-<branch>`; Debian: `apt-get install nvidia-fabricmanager`), then "
          "`systemctl enable --now nvidia-fabricmanager`"),
    803: ("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "libcuda.so.1 and the loaded kernel module are of different driver "
          "versions (a driver upgraded under the running module)", "reboot the machine"),
    804: ("CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "a newer libcuda.so.1 than the loaded kernel module (a driver "
          "upgraded under the running module, or a CUDA forward-compatibility library on a GPU without that support)",
          "reboot the machine; if a cuda-compat library is on the loader's path, remove it"),
    999: ("CUDA_ERROR_UNKNOWN", "the CUDA driver failed without a reason (often a GPU that fell off the bus or needs "
          "a reset)", "check `dmesg | grep -i -e nvrm -e xid`, then reboot"),
}


@dataclass(frozen=True)
class CudaState:
    """What the driver API says: `error` is None when cuInit and cuDeviceGetCount succeeded (then
    `devices` is their count), else the CUresult (or -1: libcuda.so.1 cannot be loaded, `detail`
    says why)."""

    devices: int = 0
    error: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.devices > 0


def read_cuda(library: str = LIBCUDA) -> CudaState:
    """cuInit(0) and cuDeviceGetCount through `library`. Never raises: every failure is a state."""
    try:
        cuda = ctypes.CDLL(library)
    except OSError as exc:
        return CudaState(error=-1, detail=str(exc))
    try:
        rc = cuda.cuInit(0)
        if rc != CUDA_SUCCESS:
            return CudaState(error=rc, detail=_name(cuda, rc))
        count = ctypes.c_int(0)
        rc = cuda.cuDeviceGetCount(ctypes.byref(count))
        if rc != CUDA_SUCCESS:
            return CudaState(error=rc, detail=_name(cuda, rc))
        return CudaState(devices=count.value)
    except AttributeError as exc:  # a library of that name without the driver API
        return CudaState(error=-1, detail=f"{library} has no {exc.args[0] if exc.args else 'CUDA entry point'}")


def _name(cuda, rc: int) -> str:
    """cuGetErrorName's name of `rc`, or cuda.h's from CAUSES."""
    name = ctypes.c_char_p()
    try:
        if cuda.cuGetErrorName(rc, ctypes.byref(name)) == CUDA_SUCCESS and name.value:
            return name.value.decode(errors="replace")
    except AttributeError:
        pass
    return CAUSES.get(rc, (f"CUresult {rc}",))[0]


def problem(state: CudaState, driver_version: str) -> str | None:
    """One sentence, cause and fix, when CUDA cannot serve; None when it can."""
    if state.ok:
        return None
    if state.error == -1:
        return (f"NVML answers but {LIBCUDA} cannot be loaded ({state.detail}), so no container can use CUDA: "
                f"install the driver's CUDA library of version {driver_version} (Ubuntu: libnvidia-compute-<branch>; "
                "Debian: libcuda1)")
    if state.error is None:
        return ("NVML lists GPUs but CUDA finds none (cuDeviceGetCount is 0): check that /dev/nvidia* exist "
                "(`nvidia-modprobe -u -c=0`) and that CUDA_VISIBLE_DEVICES is not set empty")
    name, cause, fix = CAUSES.get(state.error, (state.detail or f"CUresult {state.error}",
                                                "the CUDA driver refuses to initialise", "check `dmesg | grep -i nvrm`"))
    return f"NVML answers but cuInit fails with {state.error} {name}: {cause}; {fix}"

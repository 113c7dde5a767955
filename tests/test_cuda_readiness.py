"""CUDA-level readiness (probes.cuda): cuInit and cuDeviceGetCount through ctypes, against the lab's
fake library as libcuda.so.1 (the fake NVML answers the CUDA driver API's readiness calls too), in
a subprocess each: a library loaded into a process stays loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpuswarm_node.probes.cuda import CAUSES, CudaState, problem
from tests.conftest import A100, T4
from tests.lab import fake_nvml

READ = ("import json, sys; from gpuswarm_node.probes.cuda import read_cuda; s = read_cuda(*sys.argv[1:]); "
        "print(json.dumps([s.devices, s.error, s.detail]))")


def read_in_subprocess(env: dict, *library: str) -> CudaState:
    out = subprocess.run([sys.executable, "-c", READ, *library], env=env, capture_output=True, text=True,
                         check=True).stdout
    devices, error, detail = json.loads(out)
    return CudaState(devices, error, detail)


@pytest.mark.parametrize("mode, cuda_init, want", [
    ("ok", 0, CudaState(devices=2)),
    # p4d/p5 without Fabric Manager: NVML answers, cuInit says the system is not ready
    ("ok", 802, CudaState(error=802, detail="CUDA_ERROR_SYSTEM_NOT_READY")),
    ("ok", 804, CudaState(error=804, detail="CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE")),
    ("ok", 999, CudaState(error=999, detail="CUDA_ERROR_UNKNOWN")),
    ("version-mismatch", 0, CudaState(error=803, detail="CUDA_ERROR_SYSTEM_DRIVER_MISMATCH")),
    ("driver-not-loaded", 0, CudaState(error=100, detail="CUDA_ERROR_NO_DEVICE")),
])
def test_the_driver_api_answers_through_ctypes(nvml_lib_dir, tmp_path, mode, cuda_init, want):
    config = fake_nvml.write_config(tmp_path / "fake.conf", [A100, T4], mode=mode, cuda_init=cuda_init)
    assert read_in_subprocess(fake_nvml.env_for(nvml_lib_dir, config)) == want


def test_a_missing_library_is_a_state_not_an_exception(tmp_path):
    state = read_in_subprocess({"PATH": "/usr/bin:/bin"}, str(tmp_path / "libcuda.so.1"))
    assert state.error == -1 and "libcuda.so.1" in state.detail and not state.ok


@pytest.mark.parametrize("state, says", [
    (CudaState(error=802, detail="CUDA_ERROR_SYSTEM_NOT_READY"),
     "cuInit fails with 802 CUDA_ERROR_SYSTEM_NOT_READY: the GPUs are joined by NVSwitch and NVIDIA Fabric Manager "
     "is not running"),
    (CudaState(error=803), "reboot the machine"),
    (CudaState(error=804), "reboot the machine; if a cuda-compat library is on the loader's path, remove it"),
    (CudaState(error=35), "CUDA_ERROR_INSUFFICIENT_DRIVER"),
    (CudaState(error=100), "`nvidia-modprobe -u -c=0`"),
    (CudaState(error=999), "`dmesg | grep -i -e nvrm -e xid`"),
    (CudaState(error=12345, detail="CUresult 12345"), "cuInit fails with 12345 CUresult 12345"),
    (CudaState(devices=0), "cuDeviceGetCount is 0"),
    (CudaState(error=-1, detail="libcuda.so.1: cannot open shared object file"),
     "install the driver's CUDA library of version 550.54.15 (Ubuntu: libnvidia-compute-<branch>; Debian: libcuda1)"),
])
def test_each_failure_names_its_cause_and_the_command_that_fixes_it(state, says):
    assert says in problem(state, "550.54.15")


def test_every_known_code_has_a_fix_with_a_command_or_a_reboot():
    for code, (name, cause, fix) in CAUSES.items():
        assert name.startswith("CUDA_ERROR_") and cause
        assert "`" in fix or "reboot" in fix, code


def test_working_cuda_is_no_problem():
    assert problem(CudaState(devices=8), "550.54.15") is None

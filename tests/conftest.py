"""Shared fixtures: running the real CLI, and GPUs from the lab's fake libnvidia-ml.so.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import fake_nvml

REPO = Path(__file__).resolve().parent.parent

A100 = fake_nvml.FakeGpu("GPU-11111111-2222-3333-4444-555555555555", "NVIDIA A100-SXM4-40GB", 40960)
T4 = fake_nvml.FakeGpu("GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "Tesla T4", 15360)


# Where the tool keeps its lock, journal, run log and backups: a CLI run by the tests writes there
# only in its own mount namespace, into an overlay whose upper layer is under `state`, so the
# machine running the suite keeps its real /run, /var/lib, /var/log and /var/backups untouched.
PRIVATE_STATE = """set -e
for d in /run /var/lib /var/log /var/backups; do
    mkdir -p "$STATE$d/upper" "$STATE$d/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$STATE$d/upper,workdir=$STATE$d/work" "$d"
done
if [ -n "$FAKE_PCI" ]; then mount --bind "$FAKE_PCI" /sys/bus/pci/devices; fi
exec "$@"
"""


def private_state(state: Path, pci: Path | None = None) -> list[str]:
    """argv prefix that runs a command with the host's state directories overlaid (see above), and
    with `pci` (a directory of fake devices, see fake_pci) seen as /sys/bus/pci/devices."""
    state.mkdir(parents=True, exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "env", f"STATE={state}", f"FAKE_PCI={pci or ''}",
            "sh", "-c", PRIVATE_STATE, "private-state"]


def fake_pci(directory: Path, devices: list[tuple[str, str, str, str]]) -> Path:
    """A /sys/bus/pci/devices of (address, vendor, class, device), e.g. an NVIDIA T4:
    ("0000:00:1e.0", "0x10de", "0x030200", "0x1eb8")."""
    directory.mkdir(parents=True, exist_ok=True)
    for address, vendor, klass, device in devices:
        (directory / address).mkdir(exist_ok=True)
        for name, value in (("vendor", vendor), ("class", klass), ("device", device)):
            (directory / address / name).write_text(value + "\n")
    return directory


@pytest.fixture(autouse=True)
def no_real_retry_waits(monkeypatch) -> None:
    """A network retry (gpuswarm_node.retry) in a unit test moves a fake clock instead of waiting."""
    from gpuswarm_node import retry
    from tests.fakes import FakeClock

    monkeypatch.setattr(retry, "time", FakeClock())


@pytest.fixture(scope="session")
def nvml_lib_dir(tmp_path_factory) -> Path:
    return fake_nvml.build(tmp_path_factory.mktemp("fake-nvml"))


@pytest.fixture
def gsn(tmp_path, nvml_lib_dir):
    """Run the installed-code CLI as a subprocess, as a user would; `gpus=` gives it fake GPUs (NVML),
    `pci=` fake PCI devices (see fake_pci)."""

    def run(*args: str, gpus=None, mode="ok", env=None, pci=None,
            module: str = "gpuswarm_node.cli") -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_"))}
        base["COLUMNS"] = "200"
        if gpus is not None or mode != "ok":
            config = fake_nvml.write_config(tmp_path / "fake-nvml.conf", gpus or [], mode=mode)
            base = fake_nvml.env_for(nvml_lib_dir, config, base=base)
        base.update(env or {})
        pci_dir = fake_pci(tmp_path / "fake-pci", pci) if pci is not None else None
        argv = [*private_state(tmp_path / "host-state", pci_dir), sys.executable, "-m", module, *args]
        return subprocess.run(argv, cwd=REPO, env=base, capture_output=True, text=True, timeout=120)

    return run


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.lab.util import TIMINGS

    if TIMINGS:
        terminalreporter.section("lab timings")
        for phase, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {phase}")


@pytest.fixture
def as_root() -> None:
    """For tests that change file owners: they need root, and fail (never skip) without it."""
    if os.geteuid() != 0:
        pytest.fail("this test changes file owners: run the suite as root (./run-tests.sh)")

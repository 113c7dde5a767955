"""unattended-upgrades leaves the NVIDIA driver alone: the Package-Blacklist drop-in the
nvidia-driver step writes once a driver runs, read as unattended-upgrades reads it (each entry a
Python regular expression tried with re.match on the package name)."""

from __future__ import annotations

import re

import pytest

from gpuswarm_node.steps.nvidia_driver import DRIVER_UPGRADE_PATTERNS, unattended_dropin_text


def held_back(name: str) -> bool:
    return any(re.match(pattern, name) for pattern in DRIVER_UPGRADE_PATTERNS)


@pytest.mark.parametrize("name", [
    # Ubuntu's GPGPU install (the field report: 535.183.06 -> 535.216.01 under the loaded module)
    "nvidia-headless-no-dkms-535-server", "libnvidia-compute-535-server", "libnvidia-cfg1-535-server",
    "nvidia-compute-utils-535-server", "nvidia-utils-535-server", "nvidia-kernel-common-535-server",
    "nvidia-kernel-source-535-server", "nvidia-firmware-535-server-535.216.01", "nvidia-driver-535-server-open",
    "nvidia-dkms-535-server", "nvidia-fabricmanager-535", "libnvidia-nscq-535",
    # Debian's
    "nvidia-driver", "nvidia-driver-bin", "nvidia-driver-libs", "nvidia-kernel-dkms", "nvidia-open-kernel-dkms",
    "nvidia-kernel-support", "libnvidia-ml1", "libcuda1", "nvidia-smi", "nvidia-alternative", "firmware-nvidia-gsp",
    "nvidia-tesla-470-driver", "libnvidia-tesla-470-ml1", "libglx-nvidia0", "libegl-nvidia0",
    "libgl1-nvidia-glvnd-glx", "libgles-nvidia2", "libnvcuvid1", "xserver-xorg-video-nvidia",
    # NVIDIA's CUDA repository
    "cuda-drivers", "cuda-drivers-550", "nvidia-open", "nvidia-open-570",
])
def test_the_drivers_packages_are_held_back(name):
    assert held_back(name)


@pytest.mark.parametrize("name", [
    # per kernel ABI: they must come with a new kernel, or the next boot has no module
    "linux-modules-nvidia-535-server-6.8.0-1015-aws", "linux-modules-nvidia-535-server-aws",
    "linux-image-6.8.0-1016-aws", "linux-headers-6.8.0-1016-aws",
    # not bound to the loaded module (and the toolkit's security fixes must come in)
    "nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1",
    "nvidia-detect", "docker.io", "openssh-server",
])
def test_what_must_follow_the_kernel_or_is_not_the_driver_is_not(name):
    assert not held_back(name)


def test_the_drop_in_lists_every_pattern_as_an_apt_string():
    text = unattended_dropin_text()
    assert "Unattended-Upgrade::Package-Blacklist {" in text and text.rstrip().endswith("};")
    for pattern in DRIVER_UPGRADE_PATTERNS:
        # apt.conf strings end at the next double quote; a backslash would be read as an escape
        assert '"' not in pattern and "\\" not in pattern
        assert f'    "{pattern}";' in text

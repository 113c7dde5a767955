"""The NVIDIA driver's facts below NVML, parsed from what the machine really prints: package names of
each distribution's driver paths, dpkg-query lines, /proc/driver/nvidia/version, Secure Boot,
Debian's nvidia-detect; and the apt sources edit that enables Debian's non-free driver."""

from __future__ import annotations

import pytest

from gpuswarm_node.apt_sources import (add_components_deb822, add_components_one_line, lists_main_deb822,
                                       lists_main_one_line)
from gpuswarm_node.probes.driver import (DKMS, DRIVER, ENROLLED, NOT_ENROLLED, NVML, PENDING, PRECOMPILED, Detection,
                                         DriverPackages, Package, choose_driver, headers_packages,
                                         installed_since_boot, nvml_package_for, package_role, parse_boot_time,
                                         parse_nvidia_detect, parse_packages, parse_proc_version, parse_sb_state,
                                         parse_secure_boot_var, parse_test_key)

from gpuswarm_node.facts import Facts

from .fakes import FakeHost


@pytest.mark.parametrize("name, role", [
    # Ubuntu, `ubuntu-drivers install --gpgpu`
    ("nvidia-headless-no-dkms-535-server", DRIVER),
    ("nvidia-headless-no-dkms-570-server-open", DRIVER),
    ("linux-modules-nvidia-535-server-aws", PRECOMPILED),
    ("linux-modules-nvidia-535-server-6.8.0-1015-aws", PRECOMPILED),
    ("linux-modules-nvidia-570-server-open-generic", PRECOMPILED),
    ("libnvidia-compute-535-server", NVML),
    ("nvidia-utils-535-server", None),
    ("nvidia-kernel-common-535-server", None),
    ("nvidia-kernel-source-535-server", None),
    ("nvidia-firmware-535-server-535.183.06", None),
    # Ubuntu, desktop and DKMS flavours
    ("nvidia-driver-550", DRIVER),
    ("nvidia-driver-535-server-open", DRIVER),
    ("nvidia-headless-535-server", DRIVER),
    ("nvidia-dkms-550", DKMS),
    ("nvidia-dkms-535-server-open", DKMS),
    ("libnvidia-compute-550", NVML),
    # Debian
    ("nvidia-driver", DRIVER),
    ("nvidia-driver-bin", None),
    ("nvidia-driver-libs", None),
    ("nvidia-kernel-dkms", DKMS),
    ("nvidia-open-kernel-dkms", DKMS),
    ("nvidia-tesla-470-driver", DRIVER),
    ("nvidia-tesla-470-driver-bin", None),
    ("nvidia-tesla-470-kernel-dkms", DKMS),
    ("nvidia-tesla-470-kernel-support", None),
    ("nvidia-legacy-390xx-driver", DRIVER),
    ("libnvidia-ml1", NVML),
    ("libnvidia-tesla-470-ml1", NVML),
    ("nvidia-kernel-common", None),
    ("nvidia-detect", None),
    # NVIDIA's CUDA repository
    ("cuda-drivers", DRIVER),
    ("cuda-drivers-570", DRIVER),
    ("nvidia-open", DRIVER),
    ("nvidia-open-570", DRIVER),
    ("nvidia-kernel-open-dkms", DKMS),
    # not the driver
    ("nvidia-container-toolkit", None),
    ("libnvidia-container1", None),
    ("libnvidia-egl-wayland1", None),
    ("libnvidia-ml-dev", None),
])
def test_package_role(name, role):
    assert package_role(name) == role


def test_parse_packages_reads_multiarch_names_versions_and_states():
    text = ("libnvidia-compute-535-server:amd64\t535.183.06-0ubuntu0.24.04.1\thold ok installed\n"
            "nvidia-driver-535\t535.183.01-0ubuntu0.22.04.1\tdeinstall ok config-files\n"
            "nvidia-driver-550\t\tunknown ok not-installed\n"
            "nvidia-tesla-470-kernel-dkms\t470.256.02-1~deb12u1\tinstall ok half-configured\n"
            "garbage line\n")
    found = parse_packages(text)
    assert [(p.name, p.version, p.state, p.info) for p in found] == [
        ("libnvidia-compute-535-server", "535.183.06-0ubuntu0.24.04.1", "installed",
         "libnvidia-compute-535-server:amd64"),
        ("nvidia-driver-535", "535.183.01-0ubuntu0.22.04.1", "config-files", "nvidia-driver-535"),
        ("nvidia-driver-550", "", "not-installed", "nvidia-driver-550"),
        ("nvidia-tesla-470-kernel-dkms", "470.256.02-1~deb12u1", "half-configured", "nvidia-tesla-470-kernel-dkms"),
    ]
    assert [p.installed for p in found] == [True, False, False, False]


@pytest.mark.parametrize("version, upstream", [
    ("535.183.06-0ubuntu0.24.04.1", "535.183.06"), ("470.256.02-1~deb12u1", "470.256.02"),
    ("1:1.1.10-1", "1.1.10"), ("570.133.20", "570.133.20"), ("", ""),
])
def test_upstream_version(version, upstream):
    assert Package("x", version, "installed").upstream_version == upstream


def _pkgs(*rows: tuple[str, str], release: str = "6.8.0-1015-aws") -> DriverPackages:
    return DriverPackages(tuple(Package(n, "1", s) for n, s in rows), release)


def test_ubuntu_gpgpu_install_is_a_complete_precompiled_driver():
    pkgs = _pkgs(("nvidia-headless-no-dkms-535-server", "installed"), ("libnvidia-compute-535-server", "installed"),
                 ("linux-modules-nvidia-535-server-aws", "installed"),
                 ("linux-modules-nvidia-535-server-6.8.0-1015-aws", "installed"),
                 ("linux-headers-6.8.0-1015-aws", "installed"))
    assert pkgs.complete and not pkgs.dkms
    # the running kernel's own module package is named first
    assert [p.name for p in pkgs.modules] == ["linux-modules-nvidia-535-server-6.8.0-1015-aws",
                                              "linux-modules-nvidia-535-server-aws"]
    assert [p.name for p in pkgs.drivers] == ["nvidia-headless-no-dkms-535-server"]
    assert pkgs.headers is not None


def test_debian_driver_without_headers_is_dkms_and_incomplete_without_nvml():
    pkgs = _pkgs(("nvidia-driver", "installed"), ("nvidia-kernel-dkms", "installed"), release="6.1.0-57-cloud-amd64")
    assert pkgs.dkms and not pkgs.complete and pkgs.headers is None
    assert pkgs.newest() == pkgs.modules


def test_unfinished_packages_are_only_the_drivers():
    pkgs = _pkgs(("nvidia-tesla-470-kernel-dkms", "half-configured"), ("nvidia-tesla-470-driver", "unpacked"),
                 ("some-other-package", "half-configured"), ("nvidia-driver-535", "config-files"))
    assert [p.name for p in pkgs.unfinished] == ["nvidia-tesla-470-kernel-dkms", "nvidia-tesla-470-driver"]
    assert not pkgs.modules


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.03  Thu Apr  3 01:14:19 UTC 2025\n"
     "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n", "535.216.03"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.195.03  Release Build  "
     "(dvs-builder@U22-I3-H04-03-1)  Sat Sep 20 00:47:16 UTC 2025\n", "570.195.03"),
    ("NVRM version: NVIDIA UNIX Kernel Module for aarch64  34.1.1  Release Build  (buildbrain@mobile)\n", "34.1.1"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64 malformed\n", ""),
    ("", ""),
])
def test_parse_proc_version(text, version):
    assert parse_proc_version(text) == version


def test_secure_boot_from_the_efi_variable_and_mokutil():
    assert parse_secure_boot_var("\x06\x00\x00\x00\x01") is True
    assert parse_secure_boot_var("\x06\x00\x00\x00\x00") is False
    assert parse_secure_boot_var("") is False
    assert parse_sb_state("SecureBoot enabled\n") is True
    assert parse_sb_state("SecureBoot disabled\n") is False
    assert parse_sb_state("EFI variables are not supported on this system\n") is False


@pytest.mark.parametrize("text, state", [
    ("/var/lib/dkms/mok.pub is already enrolled\n", ENROLLED),
    ("/var/lib/dkms/mok.pub is already in db\n", ENROLLED),
    ("/var/lib/dkms/mok.pub is already in the enrollment request\n", PENDING),
    ("/var/lib/dkms/mok.pub is not enrolled\n", NOT_ENROLLED),
    ("Failed to read /var/lib/dkms/mok.pub\n", NOT_ENROLLED),
])
def test_parse_test_key(text, state):
    assert parse_test_key(text) == state


# nvidia-detect 535.309.01-0+deb12u1 on Debian 12, as it prints for these PCI IDs.
K80 = ("Checking driver support for PCI ID [10de:102d]\nYour card is supported by the Tesla 470 drivers series.\n"
       "It is recommended to install the\n    nvidia-tesla-470-driver\npackage.\n")
T4 = ("Checking driver support for PCI ID [10de:1eb8]\nYour card is supported by all driver versions.\n"
      "Your card is also supported by the NVIDIA Linux Open GPU Kernel Module.\n"
      "Your card is also supported by the Tesla 470 drivers series.\n"
      "It is recommended to install the\n    nvidia-driver\npackage.\n")
H100 = ("Checking driver support for PCI ID [10de:2330]\nYour card is supported by the default drivers.\n"
        "It is recommended to install the\n    nvidia-driver\npackage.\n")
RTX5090 = ("Checking driver support for PCI ID [10de:2b85]\n"
           "Uh oh. Your card is not supported by any driver version up to 535.309.01.\n"
           "A newer driver may add support for your card.\n"
           "Newer driver releases may be available in backports, unstable or experimental.\n")


def test_parse_nvidia_detect():
    assert parse_nvidia_detect(K80) == [Detection("10de:102d", "nvidia-tesla-470-driver", (),
                                                  "Your card is supported by the Tesla 470 drivers series.")]
    t4, = parse_nvidia_detect(T4)
    assert (t4.recommended, t4.also) == ("nvidia-driver", ("nvidia-tesla-470-driver",))
    h100, = parse_nvidia_detect(H100)
    assert (h100.recommended, h100.also) == ("nvidia-driver", ())
    new, = parse_nvidia_detect(RTX5090)
    assert new.recommended == "" and new.says.startswith("Uh oh. Your card is not supported by any driver version")
    # given several IDs it prints one block each
    assert [d.pci_id for d in parse_nvidia_detect(RTX5090 + K80)] == ["10de:2b85", "10de:102d"]
    assert parse_nvidia_detect("No NVIDIA GPU detected.\n") == []


def test_choose_one_driver_for_every_gpu():
    k80, t4, h100, new = (parse_nvidia_detect(t)[0] for t in (K80, T4, H100, RTX5090))
    assert choose_driver([k80, k80]) == ("nvidia-tesla-470-driver", "")
    assert choose_driver([t4, h100]) == ("nvidia-driver", "")
    assert choose_driver([k80, t4]) == ("nvidia-tesla-470-driver", "")  # the branch both take
    package, why = choose_driver([k80, h100])
    assert package == "" and why == ("no one driver package supports every GPU: 10de:102d needs "
                                     "nvidia-tesla-470-driver, 10de:2330 needs nvidia-driver")
    package, why = choose_driver([t4, new])
    assert package == "" and "10de:2b85: Uh oh." in why
    assert choose_driver([])[0] == ""


@pytest.mark.parametrize("release, distro, packages", [
    ("6.1.0-57-cloud-amd64", "debian", ["linux-headers-6.1.0-57-cloud-amd64", "linux-headers-cloud-amd64"]),
    ("6.1.0-57-amd64", "debian", ["linux-headers-6.1.0-57-amd64", "linux-headers-amd64"]),
    ("6.12.48+deb13-cloud-amd64", "debian", ["linux-headers-6.12.48+deb13-cloud-amd64", "linux-headers-cloud-amd64"]),
    ("6.12.9+bpo-amd64", "debian", ["linux-headers-6.12.9+bpo-amd64"]),  # backports: no plain metapackage
    ("6.8.0-1015-aws", "ubuntu", ["linux-headers-6.8.0-1015-aws"]),
    ("", "debian", []),
])
def test_headers_packages(release, distro, packages):
    assert headers_packages(release, distro) == packages


@pytest.mark.parametrize("module, nvml", [
    ("linux-modules-nvidia-535-server-aws", "libnvidia-compute-535-server"),
    ("linux-modules-nvidia-570-server-open-6.8.0-1015-aws", "libnvidia-compute-570-server"),
    ("nvidia-dkms-550", "libnvidia-compute-550"),
    ("nvidia-dkms-570-open", "libnvidia-compute-570"),
    ("nvidia-kernel-dkms", "libnvidia-ml1"),
    ("nvidia-open-kernel-dkms", "libnvidia-ml1"),
    ("nvidia-tesla-470-kernel-dkms", "libnvidia-tesla-470-ml1"),
    ("something-else", ""),
])
def test_nvml_package_for(module, nvml):
    assert nvml_package_for(module) == nvml


def test_boot_time_against_dpkg_file_lists():
    assert parse_boot_time("cpu  1 2 3\nctxt 96542\nbtime 1718000000\nprocesses 2316\n") == 1718000000
    assert parse_boot_time("cpu  1 2 3\n") is None
    pkg = Package("nvidia-kernel-dkms", "1", "installed")
    host = FakeHost(files={"/proc/stat": "btime 1000\n", "/var/lib/dpkg/info/nvidia-kernel-dkms.list": ""})
    host.mtimes["/var/lib/dpkg/info/nvidia-kernel-dkms.list"] = 900
    assert installed_since_boot(Facts(host), [pkg]) is False
    host.mtimes["/var/lib/dpkg/info/nvidia-kernel-dkms.list"] = 1100
    assert installed_since_boot(Facts(host), [pkg]) is True
    assert installed_since_boot(Facts(FakeHost(files={"/proc/stat": "btime 1000\n"})), [pkg]) is None  # no file list
    assert installed_since_boot(Facts(FakeHost()), [pkg]) is None  # no boot time


# --- apt sources ----------------------------------------------------------------------------------

CLOUD = """Types: deb deb-src
URIs: mirror+file:///etc/apt/mirrors/debian.list
Suites: bookworm bookworm-updates bookworm-backports
Components: main

Types: deb deb-src
URIs: mirror+file:///etc/apt/mirrors/debian-security.list
Suites: bookworm-security
Components: main
"""


def test_deb822_cloud_image_gets_the_drivers_components_and_keeps_the_rest():
    wanted = add_components_deb822(CLOUD)
    assert wanted == CLOUD.replace("Components: main\n", "Components: main contrib non-free non-free-firmware\n")
    assert add_components_deb822(wanted) == wanted  # converged
    assert lists_main_deb822(CLOUD)


def test_deb822_keeps_order_comments_and_other_stanzas():
    text = ("# written by hand\nTypes: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
            "components: main non-free-firmware\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\nURIs: https://download.docker.com/linux/debian\nSuites: bookworm\nComponents: stable\n")
    assert add_components_deb822(text) == text.replace("components: main non-free-firmware\n",
                                                       "components: main non-free-firmware contrib non-free\n")


def test_deb822_folds_a_continued_components_field():
    text = ("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n contrib\n"
            "Enabled: yes\n")
    assert add_components_deb822(text) == ("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
                                           "Components: main contrib non-free non-free-firmware\nEnabled: yes\n")


def test_deb822_without_main_is_left_alone():
    text = "Types: deb\nURIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64\nSuites: /\n"
    assert add_components_deb822(text) == text and not lists_main_deb822(text)


def test_one_line_sources():
    text = ("deb http://deb.debian.org/debian bookworm main\n"
            "# deb http://deb.debian.org/debian bookworm-backports main\n"
            "deb-src [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
            "http://deb.debian.org/debian bookworm main contrib  # with a comment\n"
            "deb https://download.docker.com/linux/debian bookworm stable\n"
            "deb http://security.debian.org/debian-security bookworm-security main")
    assert add_components_one_line(text) == (
        "deb http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware\n"
        "# deb http://deb.debian.org/debian bookworm-backports main\n"
        "deb-src [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware  # with a comment\n"
        "deb https://download.docker.com/linux/debian bookworm stable\n"
        "deb http://security.debian.org/debian-security bookworm-security main contrib non-free non-free-firmware")
    assert lists_main_one_line(text)
    assert not lists_main_one_line("# deb http://deb.debian.org/debian bookworm main\n")
    full = "deb http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware\n"
    assert add_components_one_line(full) == full

"""Facts about the NVIDIA driver below NVML: the GPUs on the PCI bus, the packages that provide its
kernel module and NVML under each distribution's names, what the kernel has loaded, Secure Boot,
and what Debian's nvidia-detect recommends. A read through the host seam plus a pure parser each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import facts as F
from ..facts import Facts

PCI_DEVICES = "/sys/bus/pci/devices"
NVIDIA_VENDOR = "0x10de"
PROC_VERSION = "/proc/driver/nvidia/version"
SYS_MODULE = "/sys/module/nvidia"
KERNEL_RELEASE = "/proc/sys/kernel/osrelease"
DPKG_INFO = "/var/lib/dpkg/info"
# EFI global variable: 4 bytes of attributes, then one byte, 1 when Secure Boot enforces signatures.
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
# The keys DKMS signs the modules it builds with: Debian's dkms, and Ubuntu's shim-signed.
DKMS_SIGNING_KEYS = ("/var/lib/dkms/mok.pub", "/var/lib/shim-signed/mok/MOK.der")


# --- the GPUs on the PCI bus ----------------------------------------------------------------------

@dataclass(frozen=True)
class PciGpu:
    address: str  # "0000:00:1e.0"
    device: str  # "102d", lower case, from sysfs' "0x102d"

    @property
    def pci_id(self) -> str:
        return f"10de:{self.device}"


def nvidia_gpus(facts: Facts) -> list[PciGpu]:
    """NVIDIA display/3D controllers (class 0x03xxxx), whatever the driver state (sysfs's PCI
    devices, each file through its fact)."""
    found = []
    host = facts.files
    for dev in host.listdir(PCI_DEVICES):
        vendor = (host.read_text(f"{PCI_DEVICES}/{dev}/vendor") or "").strip()
        klass = (host.read_text(f"{PCI_DEVICES}/{dev}/class") or "").strip()
        if vendor == NVIDIA_VENDOR and klass.startswith("0x03"):
            device = (host.read_text(f"{PCI_DEVICES}/{dev}/device") or "").strip().lower()
            found.append(PciGpu(dev, device.removeprefix("0x")))
    return found


# --- packages -------------------------------------------------------------------------------------

PRECOMPILED, DKMS, NVML, DRIVER = "precompiled module", "dkms module", "nvml", "driver"

# One naming scheme per line; a package plays one role. Debian's -bin/-libs halves of a driver and
# helpers such as nvidia-kernel-common or nvidia-detect play none.
_ROLES = (
    # Ubuntu's precompiled, Canonical-signed modules: linux-modules-nvidia-535-server-aws (per
    # kernel flavour) and linux-modules-nvidia-535-server-6.8.0-1015-aws (per kernel ABI).
    (re.compile(r"linux-modules-nvidia-\d+.*"), PRECOMPILED),
    # DKMS sources: Ubuntu's and NVIDIA's CUDA repository's nvidia-dkms-535[-server][-open];
    # Debian's nvidia-kernel-dkms, nvidia-open-kernel-dkms, nvidia-tesla-470-kernel-dkms, and the
    # CUDA repository's nvidia-kernel-open-dkms for Debian.
    (re.compile(r"nvidia-dkms-\d+.*"), DKMS),
    (re.compile(r"nvidia-(?:[a-z0-9]+-)*kernel(?:-open)?-dkms"), DKMS),
    # libnvidia-ml.so.1: Ubuntu's libnvidia-compute-535[-server]; Debian's libnvidia-ml1 and
    # libnvidia-tesla-470-ml1, libnvidia-legacy-390xx-ml1.
    (re.compile(r"libnvidia-compute-\d+.*"), NVML),
    (re.compile(r"libnvidia-(?:[a-z0-9]+-)*ml1"), NVML),
    # Metapackages that name a driver: Ubuntu's nvidia-driver-535[-server][-open] and
    # nvidia-headless[-no-dkms]-535-server; Debian's nvidia-driver, nvidia-tesla-470-driver; the
    # CUDA repository's cuda-drivers[-550], nvidia-open[-550].
    (re.compile(r"nvidia-driver(?:-\d+.*)?"), DRIVER),
    (re.compile(r"nvidia-headless-(?:no-dkms-)?\d+.*"), DRIVER),
    (re.compile(r"nvidia-(?:tesla|legacy)-[a-z0-9]+-driver"), DRIVER),
    (re.compile(r"cuda-drivers(?:-\d+)?|nvidia-open(?:-\d+)?"), DRIVER),
)

INSTALLED_STATES = ("installed", "triggers-pending", "triggers-awaited")
# Unpacked but never configured, or left half way: a dpkg run that was cut off or whose
# maintainer script failed (for a DKMS package, usually the module build).
UNFINISHED_STATES = ("half-installed", "unpacked", "half-configured")


def package_role(name: str) -> str | None:
    """What a package does for the driver, by its name under any of the distributions' schemes."""
    for pattern, role in _ROLES:
        if pattern.fullmatch(name):
            return role
    return None


@dataclass(frozen=True)
class Package:
    name: str  # without the architecture
    version: str
    state: str  # dpkg's status word: installed, half-configured, config-files, ...
    info: str = ""  # ${binary:Package}, which names its files in /var/lib/dpkg/info

    @property
    def role(self) -> str | None:
        return package_role(self.name)

    @property
    def installed(self) -> bool:
        return self.state in INSTALLED_STATES

    @property
    def upstream_version(self) -> str:
        """"535.183.06" from "535.183.06-0ubuntu0.24.04.1", "470.256.02" from "470.256.02-1~deb12u1"."""
        return self.version.rpartition(":")[2].partition("-")[0]


def packages_query(kernel_release: str) -> list[str]:
    """One dpkg-query for every package that can provide the driver, and the running kernel's
    headers. It exits 1 when a pattern matches nothing, and still lists what the others match."""
    patterns = ["nvidia-*", "libnvidia-*", "linux-modules-nvidia-*", "cuda-drivers*"]
    if kernel_release:
        patterns.append(f"linux-headers-{kernel_release}")
    return ["dpkg-query", "-W", "-f=${binary:Package}\\t${Version}\\t${Status}\\n", *patterns]


def parse_packages(text: str) -> list[Package]:
    """dpkg-query lines "<package[:arch]>\\t<version>\\t<want> <flag> <status>"; a held package is
    "hold ok installed", a removed one "deinstall ok config-files"."""
    found = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0]:
            continue
        status = fields[2].split()
        found.append(Package(fields[0].partition(":")[0], fields[1], status[-1] if status else "", fields[0]))
    return found


@dataclass(frozen=True)
class DriverPackages:
    packages: tuple[Package, ...]
    kernel_release: str = ""

    def _installed(self, role: str) -> list[Package]:
        return [p for p in self.packages if p.installed and p.role == role]

    @property
    def modules(self) -> list[Package]:
        """Installed packages that provide the kernel module, the running kernel's own first."""
        found = self._installed(PRECOMPILED) + self._installed(DKMS)
        return sorted(found, key=lambda p: not (self.kernel_release and p.name.endswith(f"-{self.kernel_release}")))

    @property
    def dkms(self) -> bool:
        """The module is built on this machine (unsigned unless DKMS signs it), not precompiled."""
        return bool(self._installed(DKMS)) and not self._installed(PRECOMPILED)

    @property
    def nvml(self) -> list[Package]:
        return self._installed(NVML)

    @property
    def drivers(self) -> list[Package]:
        return self._installed(DRIVER)

    @property
    def unfinished(self) -> list[Package]:
        return [p for p in self.packages if p.role and p.state in UNFINISHED_STATES]

    @property
    def headers(self) -> Package | None:
        """The running kernel's headers, installed, which DKMS needs to build the module."""
        name = f"linux-headers-{self.kernel_release}"
        return next((p for p in self.packages if p.name == name and p.installed), None)

    @property
    def complete(self) -> bool:
        return bool(self.modules) and bool(self.nvml)

    def newest(self) -> list[Package]:
        """The packages whose installation decides whether a reboot can load the driver."""
        found = self.modules + self.nvml
        if self.dkms and self.headers:
            found.append(self.headers)
        return found


def kernel_release(facts: Facts) -> str:
    return (facts.get(F.FILE_TEXT, KERNEL_RELEASE) or "").strip()


# dpkg-query's lines for every package that can provide the driver (patterns: dpkg's database
# file would need dpkg's glob and multi-arch naming reimplemented).
DRIVER_PACKAGE_LINES = F.fact("driver_package_lines", F.COMMAND, packages_query, lambda r, _a: r.stdout)


def driver_packages(facts: Facts, release: str) -> DriverPackages:
    return DriverPackages(tuple(parse_packages(facts.get(DRIVER_PACKAGE_LINES, release))), release)


def installed_since_boot(facts: Facts, packages: list[Package]) -> bool | None:
    """Whether any of these packages was installed or upgraded after the machine booted (its
    file list in dpkg's database is rewritten then); None when either time is unknown."""
    host = facts.files
    boot = parse_boot_time(host.read_text("/proc/stat") or "")
    times = [host.mtime(f"{DPKG_INFO}/{p.info or p.name}.list") for p in packages]
    known = [t for t in times if t is not None]
    if boot is None or not times or len(known) != len(times):
        return None
    return max(known) > boot


def parse_boot_time(text: str) -> int | None:
    """The "btime" line of /proc/stat: when the machine booted, in seconds since the epoch."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "btime" and value.strip().isdigit():
            return int(value.strip())
    return None


# --- the loaded kernel module ---------------------------------------------------------------------

_PROC_VERSION = re.compile(r"NVRM version:.*?Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)")


# NVIDIA's .run installer puts its uninstaller here; its driver is in no package.
RUNFILE_UNINSTALLER = "/usr/bin/nvidia-uninstall"


def parse_proc_version(text: str) -> str:
    """The version in /proc/driver/nvidia/version, which the proprietary module writes as
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.03  Thu Apr  3 ..." and the open one
    as "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.195.03  Release Build ..."."""
    match = _PROC_VERSION.search(text)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class LoadedModule:
    loaded: bool
    version: str = ""


def loaded_module(facts: Facts) -> LoadedModule:
    host = facts.files
    text = host.read_text(PROC_VERSION)
    if text is not None:
        return LoadedModule(True, parse_proc_version(text))
    if host.exists(SYS_MODULE):
        return LoadedModule(True, (host.read_text(f"{SYS_MODULE}/version") or "").strip())
    return LoadedModule(False)


# --- Secure Boot ----------------------------------------------------------------------------------

def parse_secure_boot_var(data: str) -> bool:
    return len(data) >= 5 and data[4] == "\x01"


def parse_sb_state(text: str) -> bool:
    """mokutil --sb-state: "SecureBoot enabled", "SecureBoot disabled", or that EFI variables are
    not supported (a BIOS boot: no Secure Boot)."""
    return "SecureBoot enabled" in text


def _out(result, _arg: str) -> str:
    return result.stdout + result.stderr


SB_STATE = F.fact("mokutil_sb_state", F.COMMAND, lambda _a: ["mokutil", "--sb-state"], _out, takes_arg=False)
TEST_KEY = F.fact("mokutil_test_key", F.COMMAND, lambda key: ["mokutil", "--test-key", key], _out)
NVIDIA_DETECT = F.fact("nvidia_detect", F.COMMAND, lambda pci_id: ["nvidia-detect", pci_id],
                       lambda r, _a: (r.stdout, r.stderr))


def secure_boot(facts: Facts) -> bool:
    host = facts.files
    try:
        var = host.read_text(SECURE_BOOT_VAR)
    except (OSError, ValueError):  # efivarfs unreadable here: ask mokutil
        var = None
    if var is not None:
        return parse_secure_boot_var(var)
    if host.which("mokutil"):
        return parse_sb_state(facts.get(SB_STATE))
    return False


ENROLLED, PENDING, NOT_ENROLLED, UNKNOWN = "enrolled", "pending", "not enrolled", "unknown"


def parse_test_key(text: str) -> str:
    """mokutil --test-key: "<key> is already enrolled" (or "is already in db"), "<key> is already
    in the enrollment request" (imported, to be confirmed at the next boot), "<key> is not enrolled"."""
    if "is already enrolled" in text or "is already in db" in text:
        return ENROLLED
    if "is already in the enrollment request" in text:
        return PENDING
    return NOT_ENROLLED


def dkms_key_state(facts: Facts) -> tuple[str, str]:
    """The best enrolment state of a DKMS signing key on this machine, and that key's path;
    UNKNOWN without mokutil to ask."""
    host = facts.files
    if not host.which("mokutil"):
        return UNKNOWN, ""
    best = (NOT_ENROLLED, "")
    for key in DKMS_SIGNING_KEYS:
        if not host.exists(key):
            continue
        state = parse_test_key(facts.get(TEST_KEY, key))
        if state == ENROLLED:
            return state, key
        if state == PENDING:
            best = (state, key)
    return best


# --- Debian's nvidia-detect -----------------------------------------------------------------------

@dataclass(frozen=True)
class Detection:
    pci_id: str
    recommended: str = ""  # the package nvidia-detect recommends, "" when none fits
    also: tuple[str, ...] = ()  # other driver packages that support the card
    says: str = ""  # its explanation, e.g. "Uh oh. Your card is not supported by any driver ..."

    @property
    def supported_by(self) -> set[str]:
        return ({self.recommended} if self.recommended else set()) | set(self.also)


_TESLA = re.compile(r"Your card is (?:also )?supported by the Tesla (\d+) drivers series\.")


def parse_nvidia_detect(text: str) -> list[Detection]:
    """`nvidia-detect 10de:102d` prints, per PCI ID:

        Checking driver support for PCI ID [10de:102d]
        Your card is supported by the Tesla 470 drivers series.
        It is recommended to install the
            nvidia-tesla-470-driver
        package.
    """
    found: list[Detection] = []
    block: dict | None = None

    def close() -> None:
        if block is not None:
            found.append(Detection(block["id"], block["rec"], tuple(dict.fromkeys(block["also"])),
                                   " ".join(block["says"])))

    expect_package = False
    for raw in text.splitlines():
        line = raw.strip()
        start = re.fullmatch(r"Checking driver support for PCI ID \[([0-9a-fA-F]{4}:[0-9a-fA-F]{4})\]", line)
        if start:
            close()
            block = {"id": start.group(1).lower(), "rec": "", "also": [], "says": []}
            continue
        if block is None or not line:
            continue
        if expect_package:
            block["rec"], expect_package = line, False
        elif line == "It is recommended to install the":
            expect_package = True
        elif line == "package.":
            pass
        else:
            tesla = _TESLA.fullmatch(line)
            if tesla:
                block["also"].append(f"nvidia-tesla-{tesla.group(1)}-driver")
            block["says"].append(line)
    close()
    for i, d in enumerate(found):  # the recommended package is not also "also"
        found[i] = Detection(d.pci_id, d.recommended, tuple(p for p in d.also if p != d.recommended), d.says)
    return found


def choose_driver(detections: list[Detection]) -> tuple[str, str]:
    """One driver package for every GPU: (package, "") or ("", why there is none). Debian
    installs one driver branch at a time, so a machine of mixed GPUs needs one all of them take."""
    if not detections:
        return "", "nvidia-detect said nothing about this machine's GPUs"
    unsupported = [d for d in detections if not d.recommended]
    if unsupported:
        return "", "; ".join(f"nvidia-detect on {d.pci_id}: {d.says or 'no driver package'}" for d in unsupported)
    wanted = {d.recommended for d in detections}
    if len(wanted) == 1:
        return wanted.pop(), ""
    common = set.intersection(*(d.supported_by for d in detections))
    if common:
        # Prefer a package some GPU was recommended; the current driver over a Tesla branch.
        ranked = sorted(common, key=lambda p: (p not in wanted, p != "nvidia-driver", p))
        return ranked[0], ""
    return "", "no one driver package supports every GPU: " + ", ".join(
        f"{d.pci_id} needs {d.recommended}" for d in detections)


def detect(facts: Facts, gpus: list[PciGpu]) -> list[Detection]:
    """nvidia-detect once per distinct PCI ID: given several, it carries one card's recommendation
    over to the next."""
    found = []
    for pci_id in dict.fromkeys(g.pci_id for g in gpus):
        out, err = facts.get(NVIDIA_DETECT, pci_id)
        found += parse_nvidia_detect(out) or [Detection(pci_id, says=(out + err).strip())]
    return found


def headers_packages(release: str, distro: str) -> list[str]:
    """The running kernel's headers, so DKMS can build the module now; on Debian also the flavour's
    metapackage (linux-headers-cloud-amd64 for 6.1.0-28-cloud-amd64), so it can after a kernel
    upgrade. Ubuntu's kernel metapackages already pull their headers."""
    if not release:
        return []
    found = [f"linux-headers-{release}"]
    flavour = re.fullmatch(r"\d+\.\d+\.\d+(?:-\d+|\+deb\d+)-([a-z0-9]+(?:-[a-z0-9]+)*)", release)
    if distro == "debian" and flavour:
        found.append(f"linux-headers-{flavour.group(1)}")
    return found


def nvml_package_for(module: str) -> str:
    """The NVML library of the driver branch a kernel-module package belongs to, "" when unknown:
    libnvidia-compute-535-server for linux-modules-nvidia-535-server-aws or nvidia-dkms-535-server
    (an -open module shares the branch's libraries), libnvidia-tesla-470-ml1 for
    nvidia-tesla-470-kernel-dkms, libnvidia-ml1 for nvidia-kernel-dkms."""
    ubuntu = re.fullmatch(r"(?:linux-modules-nvidia|nvidia-dkms)-(\d+(?:-server)?)(?:-open)?(?:-.+)?", module)
    if ubuntu:
        return f"libnvidia-compute-{ubuntu.group(1)}"
    debian = re.fullmatch(r"nvidia-(?:(tesla-\d+|legacy-[a-z0-9]+)-)?(?:open-)?kernel(?:-open)?-dkms", module)
    if debian:
        return f"libnvidia-{debian.group(1)}-ml1" if debian.group(1) else "libnvidia-ml1"
    return ""

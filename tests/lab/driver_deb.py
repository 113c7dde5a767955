"""Stand-in NVIDIA driver packages for Debian, in a local apt repository, and a stand-in PCI bus.

For the benchmark's fresh node (bench/run.py), which must install a driver the way a fresh Debian
GPU machine does: the nvidia-driver step (gpuswarm_node/steps/nvidia_driver.py) finds NVIDIA
devices on the PCI bus but no NVML, enables contrib/non-free, installs `nvidia-detect`, asks it
which driver the GPUs need, and installs that package with the running kernel's headers and
firmware-misc-nonfree. Every one of those packages comes from here, with the names and roles of
Debian 12's (gpuswarm_node/probes/driver.py reads the roles from the names):

- nvidia-detect: prints Debian's nvidia-detect recommendation (nvidia-driver) for any 10de: id;
- nvidia-driver: the metapackage, depending on the two below;
- nvidia-kernel-dkms: its postinst stands for DKMS building the kernel module: it waits
  `build_seconds` (default 120, what a DKMS build of the driver takes on a cloud machine), asleep,
  so that it costs no CPU: the machine's cores stay with what runs alongside, as they would
  on a GPU machine with many cores where one compiles;
- libnvidia-ml1: the lab's fake libnvidia-ml.so.1 (fake_nvml.py), so NVML answers once the driver
  is installed and not before; the GPUs it reports come from /etc/fake-nvml/config, which stands
  for the hardware and is written when the machine is made;
- libcuda1: the same library as libcuda.so.1, which answers cuInit once the driver is installed;
- linux-headers-<running kernel> (and Debian's flavour metapackage when the kernel has one) and
  firmware-misc-nonfree: empty.

The machine's apt prefers this repository over Debian's archive for these names
(`APT_PREFERENCES`, pinned by origin), as a site's own mirror could: the real packages would
download hundreds of MB and build against a kernel the lab does not run.

The module loads at boot, as a freshly built one does on a real machine: until then the fake
NVML answers "Driver Not Loaded" (the config's mode, written when the machine is made), and
nvidia-kernel-dkms ships MODULE_UNIT, which at boot, before the tool's boot unit, turns the mode
to ok. So the step's re-check in the same run asks for a reboot; after the reboot NVML answers
(bench/README.md).
"""

from __future__ import annotations

import gzip
import shlex
import subprocess
import tempfile
from pathlib import Path

from . import fake_nvml
from .toolkit_deb import _release, apt_source_line

ORIGIN = "gpuswarm-node-lab-driver"
REPO_IN_MACHINE = "/srv/driver-repo"
SOURCE_LIST = "/etc/apt/sources.list.d/lab-nvidia-driver.list"
PREFERENCES = "/etc/apt/preferences.d/lab-nvidia-driver"
APT_PREFERENCES = f"""\
# The gpuswarm-node lab: its stand-in driver packages win over Debian's archive.
Package: *
Pin: release o={ORIGIN}
Pin-Priority: 1001
"""
DRIVER_VERSION = "550.54.15"  # fake_nvml's default driver version: the library and package agree
VERSION = f"{DRIVER_VERSION}-1~lab1"
BUILD_SECONDS = 120.0
# Stands for the kernel loading the new module at boot: the fake NVML's mode becomes ok.
MODULE_UNIT_NAME = "lab-nvidia-module.service"
MODULE_UNIT = f"""\
[Unit]
Description=lab: the NVIDIA kernel module loads at boot (stand-in)
Before=gpuswarm-node-boot.service

[Service]
Type=oneshot
ExecStart=/bin/sed -i "s/^mode driver-not-loaded$/mode ok/" {fake_nvml.DEFAULT_CONFIG_PATH}

[Install]
WantedBy=multi-user.target
"""

PCI_DEVICES = "/sys/bus/pci/devices"
NVIDIA_VENDOR = "0x10de"
A100_SXM4_40GB = "0x20b0"  # the device id of fake GPUs named "NVIDIA A100-SXM4-40GB" (worker.GPUS)


def _deb(out_dir: Path, name: str, arch: str, description: str, depends: str = "",
         files: dict[str, tuple[bytes, int]] | None = None, postinst: str = "") -> Path:
    """One package: control fields, files {path: (content, mode)}, a postinst script."""
    deb = out_dir / f"{name}_{VERSION}_{arch}.deb"
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        (tree / "DEBIAN").mkdir(parents=True)
        control = (f"Package: {name}\nVersion: {VERSION}\nArchitecture: {arch}\n"
                   "Maintainer: gpuswarm-node test lab <lab@localhost>\n"
                   + (f"Depends: {depends}\n" if depends else "")
                   + "Section: non-free/kernel\nPriority: optional\n"
                   f"Description: stand-in {description} (gpuswarm-node test lab)\n")
        (tree / "DEBIAN" / "control").write_text(control)
        modes = {}
        for path, (content, mode) in (files or {}).items():
            target = tree / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            modes[target] = mode
        if postinst:
            (tree / "DEBIAN" / "postinst").write_text(postinst)
            modes[tree / "DEBIAN" / "postinst"] = 0o755
        # Modes go into the package as they are here, whatever the umask.
        for path in [tree, *tree.rglob("*")]:
            path.chmod(modes.get(path, 0o755 if path.is_dir() else 0o644))
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                       check=True, capture_output=True)
    return deb


def nvidia_detect_script() -> str:
    """Debian's nvidia-detect, for the lab: every NVIDIA PCI id gets its words for a current GPU
    (the format gpuswarm_node.probes.driver.parse_nvidia_detect reads)."""
    return """#!/bin/sh
# Stand-in nvidia-detect (gpuswarm-node test lab): recommends nvidia-driver for every 10de: id.
for id in "$@"; do
    echo "Checking driver support for PCI ID [$id]"
    echo "Your card is supported by all driver versions."
    echo "It is recommended to install the"
    echo "    nvidia-driver"
    echo "package."
    echo
done
"""


def dkms_postinst(kernel_release: str, build_seconds: float) -> str:
    """What stands for DKMS building the module at configure time: a wait, asleep; and the
    module loading at the next boot (MODULE_UNIT enabled)."""
    return f"""#!/bin/sh
set -e
if [ "$1" = configure ]; then
    echo "Building initial module nvidia-current/{DRIVER_VERSION} for {kernel_release} (stand-in: {build_seconds:g} s)"
    sleep {build_seconds:g}
    echo "Done."
    # The package's own unit (absent where the script runs outside the package, as in a test).
    if [ -e /lib/systemd/system/{MODULE_UNIT_NAME} ]; then systemctl enable {MODULE_UNIT_NAME}; fi
fi
"""


def build_repo(out_dir: Path, nvml_lib_dir: Path, kernel_release: str,
               build_seconds: float = BUILD_SECONDS) -> Path:
    """The packages and a flat apt repository around them in out_dir (absolute path returned).
    `kernel_release`: the machine's running kernel (the host's: nspawn shares it), whose
    headers the step installs; `nvml_lib_dir`: fake_nvml.build's result."""
    from gpuswarm_node.probes.driver import headers_packages

    if build_seconds < 0:
        raise ValueError(f"build_seconds must be >= 0, got {build_seconds}")
    repo = Path(out_dir).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()
    lib = (Path(nvml_lib_dir) / fake_nvml.SONAME).read_bytes()
    _deb(repo, "nvidia-detect", "all", "nvidia-detect: which driver the NVIDIA GPUs need",
         files={"/usr/bin/nvidia-detect": (nvidia_detect_script().encode(), 0o755)})
    _deb(repo, "nvidia-driver", arch, "NVIDIA driver metapackage",
         depends=f"nvidia-kernel-dkms (= {VERSION}), libnvidia-ml1 (= {VERSION}), libcuda1 (= {VERSION})")
    _deb(repo, "nvidia-kernel-dkms", arch, "NVIDIA kernel module, built by DKMS at install",
         files={f"/lib/systemd/system/{MODULE_UNIT_NAME}": (MODULE_UNIT.encode(), 0o644)},
         postinst=dkms_postinst(kernel_release, build_seconds))
    _deb(repo, "libnvidia-ml1", arch, "NVIDIA Management Library (the lab's fake)",
         files={f"/usr/lib/{fake_nvml.multiarch()}/{fake_nvml.SONAME}": (lib, 0o644)})
    _deb(repo, "libcuda1", arch, "NVIDIA CUDA driver library (the lab's fake: the same library)",
         files={f"/usr/lib/{fake_nvml.multiarch()}/{fake_nvml.CUDA_NAME}": (lib, 0o644)})
    for name in headers_packages(kernel_release, "debian"):
        _deb(repo, name, arch, f"kernel headers ({name})")
    _deb(repo, "firmware-misc-nonfree", "all", "firmware for NVIDIA GPUs and others")
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], cwd=repo, check=True,
                              capture_output=True).stdout
    (repo / "Packages").write_bytes(packages)
    with gzip.GzipFile(repo / "Packages.gz", "wb", mtime=0) as f:
        f.write(packages)
    (repo / "Release").write_text(_release(repo, ["Packages", "Packages.gz"], origin=ORIGIN))
    return repo


def pci_devices_script(gpus: list[fake_nvml.FakeGpu]) -> str:
    """Shell run inside a lab machine: a tmpfs over /sys/bus/pci/devices holding these GPUs as
    NVIDIA 3D controllers (vendor, device, class), and a host bridge.

    Why: the nvidia-driver step decides that a driver is needed from the PCI bus when NVML does
    not answer, and a lab machine's /sys is the host's, which has no NVIDIA device. The mount
    lives in the machine's mount namespace until it powers off or reboots (after the reboot NVML
    answers and the bus is not read); the product reads the bus through its usual path."""
    lines = ["set -e", f"test -d {PCI_DEVICES}",
             f"mount -t tmpfs -o mode=0755,size=1m lab-pci {PCI_DEVICES}"]
    devices = [("0000:00:00.0", "0x8086", "0x1237", "0x060000")]
    for index, gpu in enumerate(gpus):
        bus = (gpu.pci_bus_id or f"00000000:{index + 1:02X}:00.0")[-12:].lower()
        devices.append((bus, NVIDIA_VENDOR, A100_SXM4_40GB, "0x030200"))
    for address, vendor, device, klass in devices:
        d = shlex.quote(f"{PCI_DEVICES}/{address}")
        lines.append(f"mkdir {d} && echo {vendor} > {d}/vendor && echo {device} > {d}/device "
                     f"&& echo {klass} > {d}/class")
    return "\n".join(lines) + "\n"


def install_into(machine, repo: Path, gpus: list[fake_nvml.FakeGpu]) -> None:
    """Give a booted lab machine (machine.FreshMachine) the GPUs on its PCI bus with no driver:
    the fake NVML's config (the hardware it will report once libnvidia-ml1 is installed), the
    stand-in PCI devices, and this repository as an apt source preferred for its packages."""
    machine.run(["sh", "-c", f"mkdir -p /etc/fake-nvml && cat > {fake_nvml.DEFAULT_CONFIG_PATH}"],
                input=fake_nvml.render_config(gpus, driver_version=DRIVER_VERSION, mode="driver-not-loaded"))
    machine.run(["sh", "-c", pci_devices_script(gpus)])
    machine.copy_in(repo, REPO_IN_MACHINE)
    machine.run(["sh", "-c", f"cat > {SOURCE_LIST}"], input=apt_source_line(REPO_IN_MACHINE) + "\n")
    machine.run(["sh", "-c", f"cat > {PREFERENCES}"], input=APT_PREFERENCES)

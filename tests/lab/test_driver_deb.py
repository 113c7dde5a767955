"""The benchmark's stand-in NVIDIA driver packages: what the product's driver step reads of them.

Built with a module build of 0 s; nothing here installs them (the benchmark does, on its fresh
worker, with the full wait).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpuswarm_node.probes import driver
from tests.lab import driver_deb, fake_nvml, worker

RELEASE = "6.1.0-28-cloud-amd64"  # a Debian kernel: its flavour's headers metapackage comes too


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nvml = fake_nvml.build(tmp_path_factory.mktemp("nvml"))
    return driver_deb.build_repo(tmp_path_factory.mktemp("driver-repo"), nvml, RELEASE, build_seconds=0)


def debs(repo: Path) -> dict[str, Path]:
    return {run("dpkg-deb", "-f", str(p), "Package").strip(): p for p in repo.glob("*.deb")}


def test_the_packages_the_debian_path_installs_play_their_roles(repo: Path) -> None:
    names = set(debs(repo))
    assert names == {"nvidia-detect", "nvidia-driver", "nvidia-kernel-dkms", "libnvidia-ml1", "libcuda1",
                     f"linux-headers-{RELEASE}", "linux-headers-cloud-amd64", "firmware-misc-nonfree"}
    roles = {name: driver.package_role(name) for name in names}
    assert roles["nvidia-kernel-dkms"] == driver.DKMS
    assert roles["libnvidia-ml1"] == driver.NVML
    assert roles["nvidia-driver"] == driver.DRIVER
    assert run("dpkg-deb", "-f", str(debs(repo)["nvidia-driver"]), "Depends").strip() == (
        f"nvidia-kernel-dkms (= {driver_deb.VERSION}), libnvidia-ml1 (= {driver_deb.VERSION}), "
        f"libcuda1 (= {driver_deb.VERSION})")


def test_nvidia_detect_recommends_nvidia_driver_in_debians_words(repo: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", str(debs(repo)["nvidia-detect"]), str(tmp_path))
    out = run(str(tmp_path / "usr/bin/nvidia-detect"), "10de:20b0", "10de:2330")
    detections = driver.parse_nvidia_detect(out)
    assert [d.pci_id for d in detections] == ["10de:20b0", "10de:2330"]
    assert driver.choose_driver(detections) == ("nvidia-driver", "")


def test_the_module_build_waits_at_configure_only(tmp_path: Path) -> None:
    script = tmp_path / "postinst"
    script.write_text(driver_deb.dkms_postinst(RELEASE, 0.2))
    script.chmod(0o755)
    assert "sleep 0.2" in script.read_text()
    assert "Building initial module" in run(str(script), "configure")
    assert run(str(script), "abort-upgrade") == ""


def test_libnvidia_ml1_ships_the_fake_nvml(repo: Path) -> None:
    listing = run("dpkg-deb", "-c", str(debs(repo)["libnvidia-ml1"]))
    assert f"./usr/lib/{fake_nvml.multiarch()}/{fake_nvml.SONAME}" in listing


def test_release_names_the_origin_the_preferences_pin(repo: Path) -> None:
    assert f"Origin: {driver_deb.ORIGIN}\n" in (repo / "Release").read_text()
    assert f"Pin: release o={driver_deb.ORIGIN}\n" in driver_deb.APT_PREFERENCES
    assert "Pin-Priority: 1001" in driver_deb.APT_PREFERENCES


def test_pci_devices_read_as_the_product_reads_them(tmp_path: Path) -> None:
    # The script's files, written under a directory of ours instead of the mounted tmpfs.
    script = driver_deb.pci_devices_script(worker.GPUS)
    body = [line for line in script.splitlines() if line.startswith("mkdir ")]
    root = tmp_path / "sys/bus/pci/devices"
    root.mkdir(parents=True)
    subprocess.run(["sh", "-ec", "\n".join(body).replace(driver_deb.PCI_DEVICES, str(root))], check=True)

    class Files:
        def listdir(self, path: str) -> list[str]:
            return sorted(p.name for p in Path(str(tmp_path) + path).iterdir())

        def read_text(self, path: str) -> str | None:
            p = Path(str(tmp_path) + path)
            return p.read_text() if p.exists() else None

    class Facts:
        files = Files()

    gpus = driver.nvidia_gpus(Facts())
    assert [g.address for g in gpus] == ["0000:01:00.0", "0000:02:00.0"]
    assert {g.pci_id for g in gpus} == {"10de:20b0"}
    assert f"mount -t tmpfs -o mode=0755,size=1m lab-pci {driver_deb.PCI_DEVICES}" in script

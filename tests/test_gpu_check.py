"""tests/gpu/check.py without a GPU: its parsers against recorded `nvidia-smi -q -x` / `-L` answers
(an H100 and an A100 with MIG, tests/gpu/fixtures), its comparisons, the rule that it only ever
reads the GPU, and the whole script run here: with no GPU at all (exit 3, every part unavailable
with the reason), and with a stand-in nvidia-smi printing a fixture beside the lab's fake
libnvidia-ml.so.1 answering for the same GPUs, so that every part that needs no CUDA runs for real.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import private_state
from tests.gpu import check
from tests.lab import fake_nvml

GPU_DIR = Path(__file__).parent / "gpu"
FIXTURES = GPU_DIR / "fixtures"
H100_XML = (FIXTURES / "h100-nvidia-smi-q-x.xml").read_text()
A100_XML = (FIXTURES / "a100-mig-nvidia-smi-q-x.xml").read_text()
A100_LIST = (FIXTURES / "a100-mig-nvidia-smi-L.txt").read_text()

H100_UUID = "GPU-3f2a9c1e-7b44-5d0e-9a61-0c8e2f4b7d15"
A100_UUIDS = ("GPU-5d1b3f7a-2c9e-8a40-6e13-b7f0d2c4a968", "GPU-a7c2e019-46bd-f3e5-1c88-95d0b4e6f273")
MIG_UUIDS = ("MIG-0c4f9e1a-7d32-5b86-a1e0-3f5c8d2b9a47", "MIG-6e2a1d8c-94f3-5a07-b2c9-7d1e0f4a3b56",
             "MIG-b83f0c5d-1a6e-5927-8d4b-e2c7a9f01d38")

# NVML's answers for the same machines, as the fake libnvidia-ml.so.1 gives them.
H100_NVML = [fake_nvml.FakeGpu(H100_UUID, "NVIDIA H100 80GB HBM3", 81559, pci_bus_id="00000000:19:00.0",
                               mig_mode="off")]
A100_NVML = [fake_nvml.FakeGpu(A100_UUIDS[0], "NVIDIA A100-SXM4-40GB", 40960, pci_bus_id="00000000:07:00.0",
                               mig_devices=(fake_nvml.FakeMigDevice(MIG_UUIDS[0], 19968, "3g.20gb"),
                                            fake_nvml.FakeMigDevice(MIG_UUIDS[1], 9856, "2g.10gb"),
                                            fake_nvml.FakeMigDevice(MIG_UUIDS[2], 4864, "1g.5gb"))),
             fake_nvml.FakeGpu(A100_UUIDS[1], "NVIDIA A100-SXM4-40GB", 40960, pci_bus_id="00000000:0F:00.0",
                               mig_mode="off")]
# Setters and resets of nvidia-smi (nvidia-smi(1): "Device Modification Options" and the
# mig/clocks subcommands); none may appear among the check's nvidia-smi arguments.
FORBIDDEN = {"-pm", "--persistence-mode", "-c", "--compute-mode", "-mig", "--multi-instance-gpu", "-ac",
             "--applications-clocks", "-rac", "--reset-applications-clocks", "-lgc", "--lock-gpu-clocks", "-rgc",
             "--reset-gpu-clocks", "-lmc", "--lock-memory-clocks", "-rmc", "--reset-memory-clocks", "-pl",
             "--power-limit", "-r", "--gpu-reset", "-e", "--ecc-config", "-p", "--reset-ecc-errors", "-am",
             "--accounting-mode", "-caa", "--clear-accounted-apps", "-dm", "--driver-model", "-acp",
             "--auto-boost-permission", "-cc", "--cuda-clocks", "mig", "clocks", "-i", "--id"}


def nvml_dict(gpu: fake_nvml.FakeGpu, index: int) -> dict:
    """One GPU as `gpus --json` prints it."""
    return {"index": index, "uuid": gpu.uuid, "name": gpu.name, "memory_bytes": gpu.memory_mib << 20,
            "pci_bus_id": gpu.pci_bus_id, "mig_enabled": bool(gpu.mig_devices),
            "mig_devices": [{"uuid": m.uuid, "memory_bytes": m.memory_mib << 20} for m in gpu.mig_devices]}


def tool_json(gpus, driver: str) -> dict:
    return {"driver_version": driver, "gpus": [nvml_dict(g, i) for i, g in enumerate(gpus)]}


# --- parsing ------------------------------------------------------------------------------------

def test_h100_xml_gives_every_field_the_tool_reads():
    smi = check.parse_nvidia_smi_xml(H100_XML)
    assert smi["driver_version"] == "550.54.15" and smi["cuda_version"] == "12.4"
    assert smi["gpus"] == [{"index": 0, "uuid": H100_UUID, "product_name": "NVIDIA H100 80GB HBM3",
                            "memory_mib": 81559, "pci_bus_id": "00000000:19:00.0", "mig_mode": "Disabled",
                            "mig_devices": []}]


def test_a100_mig_xml_takes_the_mig_uuids_from_nvidia_smi_list():
    smi = check.parse_nvidia_smi_xml(A100_XML)
    # The XML carries no MIG UUID (drivers leave <uuid> out of <mig_device>); -L names them.
    assert [m["uuid"] for m in smi["gpus"][0]["mig_devices"]] == ["", "", ""]
    check.merge_mig_uuids(smi, check.parse_nvidia_smi_list(A100_LIST))
    first, second = smi["gpus"]
    assert (first["mig_mode"], second["mig_mode"]) == ("Enabled", "Disabled")
    assert [(m["uuid"], m["memory_mib"], m["gpu_instance_id"]) for m in first["mig_devices"]] == [
        (MIG_UUIDS[0], 19968, "2"), (MIG_UUIDS[1], 9856, "3"), (MIG_UUIDS[2], 4864, "9")]
    assert first["memory_mib"] == 40960 and second["pci_bus_id"] == "00000000:0F:00.0"
    assert second["mig_devices"] == []


def test_a_mig_uuid_in_the_xml_is_kept():
    xml = A100_XML.replace("<index>1</index>", f"<index>1</index><uuid>{MIG_UUIDS[1]}</uuid>", 1)
    smi = check.parse_nvidia_smi_xml(xml)
    assert smi["gpus"][0]["mig_devices"][1]["uuid"] == MIG_UUIDS[1]
    check.merge_mig_uuids(smi, [])
    assert smi["gpus"][0]["mig_devices"][1]["uuid"] == MIG_UUIDS[1]


@pytest.mark.parametrize("text", ["", "No devices were found", "<html/>", "<nvidia_smi_log>"])
def test_what_is_not_an_nvsmi_document_is_named(text):
    with pytest.raises(ValueError, match="nvidia-smi -q -x printed"):
        check.parse_nvidia_smi_xml(text)


@pytest.mark.parametrize("text, mib", [("81559 MiB", 81559), (" 0 MiB ", 0), ("N/A", None), ("", None),
                                       ("12 GiB", None)])
def test_memory_figures(text, mib):
    assert check.parse_mib(text) == mib


@pytest.mark.parametrize("a, b", [("00000000:19:00.0", "0000:19:00.0"), ("00000000:0F:00.0", "0000:0f:00.0"),
                                  ("00000001:AB:1F.7", "0001:ab:1f.7")])
def test_bus_ids_as_nvml_and_sysfs_spell_them_compare_equal(a, b):
    assert check.normal_bus_id(a) == check.normal_bus_id(b)
    assert check.normal_bus_id(a) != check.normal_bus_id("00000000:1a:00.0")


@pytest.mark.parametrize("device, reported, same", [
    (H100_UUID, H100_UUID[4:], True), (H100_UUID, H100_UUID.upper(), True), (MIG_UUIDS[0], MIG_UUIDS[0][4:], True),
    (H100_UUID, A100_UUIDS[0][4:], False), (H100_UUID, "", False)])
def test_cuda_uuids_with_and_without_prefix(device, reported, same):
    assert check.uuid_matches(device, reported) is same


# --- comparing --------------------------------------------------------------------------------

def test_agreeing_answers_pass_every_finding():
    smi = check.parse_nvidia_smi_xml(A100_XML)
    check.merge_mig_uuids(smi, check.parse_nvidia_smi_list(A100_LIST))
    found = check.compare_inventory(tool_json(A100_NVML, "535.129.03"), {"cuda_version": "12.2"}, smi)
    assert [f for f in found if not f["ok"]] == []
    names = {f["check"] for f in found}
    assert {"GPU 0 memory (MiB)", "GPU 0 pci bus id", "GPU 0 mig mode", "GPU 0 MIG 2 uuid",
            "GPU 0 MIG 2 memory (MiB)", "GPU 1 MIG device count", "cuda_version"} <= names


@pytest.mark.parametrize("change, failing", [
    (lambda t, p: t["gpus"][0].update(memory_bytes=t["gpus"][0]["memory_bytes"] - (1 << 20)), "GPU 0 memory (MiB)"),
    (lambda t, p: t["gpus"][0].update(pci_bus_id="00000000:1A:00.0"), "GPU 0 pci bus id"),
    (lambda t, p: t["gpus"][0].update(name="NVIDIA H100 PCIe"), "GPU 0 name"),
    (lambda t, p: t["gpus"][0].update(mig_enabled=True), "GPU 0 mig mode"),
    (lambda t, p: t.update(driver_version="550.54.14"), "driver_version"),
    (lambda t, p: p.update(cuda_version="12.3"), "cuda_version"),
    (lambda t, p: t["gpus"][0].update(uuid="GPU-00000000-0000-0000-0000-000000000000"), "GPU 0 uuid"),
    (lambda t, p: t["gpus"].append(dict(t["gpus"][0], index=1, uuid=A100_UUIDS[0])), "gpu count"),
])
def test_each_disagreement_is_a_failed_finding(change, failing):
    smi = check.parse_nvidia_smi_xml(H100_XML)
    tool, probe = tool_json(H100_NVML, "550.54.15"), {"cuda_version": "12.4"}
    change(tool, probe)
    assert [f["check"] for f in check.compare_inventory(tool, probe, smi) if not f["ok"]] == [failing]


def test_a_mig_device_nvml_lacks_is_a_failed_finding():
    smi = check.parse_nvidia_smi_xml(A100_XML)
    check.merge_mig_uuids(smi, check.parse_nvidia_smi_list(A100_LIST))
    tool = tool_json(A100_NVML, "535.129.03")
    del tool["gpus"][0]["mig_devices"][1]
    bad = [f["check"] for f in check.compare_inventory(tool, {"cuda_version": "12.2"}, smi) if not f["ok"]]
    assert bad == ["GPU 0 MIG device count", "GPU 0 MIG 1 uuid"]


def test_render_findings_hold_the_slice_map_against_the_gpus():
    smi = check.parse_nvidia_smi_xml(A100_XML)
    check.merge_mig_uuids(smi, check.parse_nvidia_smi_list(A100_LIST))
    slices = {**{m: m for m in MIG_UUIDS}, **{f"{A100_UUIDS[1]}::{n}": A100_UUIDS[1] for n in (1, 2, 3)}}
    daemon = {"default-runtime": "gpuswarm", "runtimes": {"gpuswarm": {}},
              "node-generic-resources": [f"gpu={s}" for s in slices]}

    def rendered(slice_map: dict) -> dict:
        return check.rendered_files(f"# ==> /etc/docker/daemon.json (docker-daemon)\n{json.dumps(daemon)}\n"
                                    f"# ==> /etc/gpuswarm-node/slices.json (docker-daemon)\n"
                                    f"{json.dumps({'slices': slice_map})}\n")

    found, data = check.check_render(rendered(slices), smi, 3)
    assert [f for f in found if not f["ok"]] == [] and data["slice_map"]["slices"] == slices
    del slices[MIG_UUIDS[2]]  # a MIG device the slice map lacks
    found, _ = check.check_render(rendered(slices), smi, 3)
    assert [f["check"] for f in found if not f["ok"]] == ["slice map: slice ids and devices",
                                                          "daemon.json: node-generic-resources are the slice map's slices"]
    found, _ = check.check_render({}, smi, 3)
    assert [f["check"] for f in found if not f["ok"]] == ["slice map rendered", "daemon.json rendered"]


def test_the_summary_names_each_part_and_what_failed():
    report = {"machine": {"description": "m", "gpus": ["NVIDIA H100"], "driver_version": "550", "cuda_version": "12"},
              "tool": {"how": "wheels"}, "started": "t", "seconds": 1.0, "exit_status": 1,
              "parts": {"inventory": {"status": "failed", "seconds": 0.1, "findings": [
                  check.finding("GPU 0 memory (MiB)", False, 81559, 81558)]},
                  "jax-memory": {"status": "unavailable", "seconds": 0, "reason": "jax | missing", "findings": []}}}
    text = check.summarize(report)
    assert "| inventory | failed | 0.1 | 0/1 |" in text and "jax \\| missing" in text
    assert "- GPU 0 memory (MiB): expected 81559, measured 81558" in text


@pytest.mark.parametrize("statuses, code", [
    (["passed", "unavailable"], 0), (["passed", "failed"], 1), (["passed", "error"], 1),
    (["unavailable", "unavailable"], 1),  # a GPU, but nothing could run: nothing is proven
])
def test_exit_status(statuses, code):
    assert check.overall_exit({str(n): {"status": s} for n, s in enumerate(statuses)}) == code
    assert check.overall_exit({"a": {"status": "unavailable", "no_gpu": True}}) == check.EXIT_NO_GPU


def test_a_part_that_breaks_or_hangs_is_reported_and_the_next_still_runs(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(check, "PART_LIMITS_S", {**check.PART_LIMITS_S, "render": 0.2})
    monkeypatch.setattr(check, "JOIN_GRACE_S", 0.1)
    run = check.Check(check.argparse.Namespace(out=str(tmp_path), budget=60, cuda_python=None, wheel_dir=None,
                                               repeat=1))
    monkeypatch.setattr(run, "no_gpu_reason", lambda: "")
    release = threading.Event()

    def breaks(deadline):
        raise KeyError("uuid")

    run.part("inventory", breaks)
    run.part("render", lambda deadline: release.wait(10))
    run.part("status", lambda deadline: ([check.finding("x", True)], {}))
    run.part("timings", lambda deadline: ([check.finding("x", True)], {}, "CUDA was not checked"))
    release.set()
    parts = run.parts
    assert parts["inventory"]["status"] == "error" and "KeyError: 'uuid'" in parts["inventory"]["error"]
    assert parts["render"]["status"] == "error" and parts["render"]["reason"].startswith("timed out")
    assert parts["status"]["status"] == "passed"
    assert (parts["timings"]["status"], parts["timings"]["reason"]) == ("unavailable", "CUDA was not checked")


def test_bad_usage_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(["--out", str(tmp_path), "--wheel-dir", str(tmp_path / "none")])
    assert exc.value.code == check.EXIT_USAGE == 2
    assert "pip wheel . -w DIR" in capsys.readouterr().err


# --- it only reads the GPU -----------------------------------------------------------------------

def test_the_check_calls_nvidia_smi_only_to_read():
    assert all(not set(args) & FORBIDDEN for args in check.NVIDIA_SMI_READS)
    tree = ast.parse((GPU_DIR / "check.py").read_text())
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    # "nvidia-smi" as a command appears once, in NVIDIA_SMI; every call goes through nvidia_smi().
    assert strings.count("nvidia-smi") == 1
    for name in ("nvidia-persistenced", "nvidia-cuda-mps-server", "modprobe", "rmmod", "nvidia-ctk"):
        assert not any(s.strip().split(" ")[0] == name for s in strings), name
    # The MPS control program is looked up, never run: every call that is given its name is
    # shutil.which.
    def names_mps(node) -> bool:
        return any(isinstance(n, ast.Name) and n.id == "MPS_CONTROL" for a in node.args for n in ast.walk(a))

    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and names_mps(n)]
    assert calls and all(ast.unparse(c.func) == "shutil.which" for c in calls)
    for args in (("-mig", "1"), ("-pm", "1"), ("-q",), ("-q", "-x", "-i", "0"), ("mig", "-lgi")):
        with pytest.raises(ValueError, match="not one of the reads"):
            check.check_nvidia_smi_args(args)


# --- the whole script ------------------------------------------------------------------------

STAND_IN_SMI = """#!/bin/sh
printf '%s\\n' "$*" >> "$SMI_RECORD"
case "$*" in
    "-q -x") cat "$SMI_XML" ;;
    "-L") cat "$SMI_LIST" ;;
    *) echo "stand-in nvidia-smi: refused $*" >&2; exit 9 ;;
esac
"""


def run_check(tmp_path: Path, env: dict, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / "out"
    argv = [*private_state(tmp_path / "host-state"), sys.executable, str(GPU_DIR / "check.py"), "--out", str(out),
            "--repeat", "1", *args]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    report = json.loads((out / "report.json").read_text())
    return result.returncode, report, (out / "summary.md").read_text()


def clean_env(path: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_", "FAKE_NVML", "LD_LIBRARY"))}
    env["PATH"] = path
    return env


def test_without_a_gpu_every_part_is_unavailable_and_the_exit_status_is_3(tmp_path):
    (tmp_path / "wheels").mkdir()  # no wheel in it: the check says so and uses the installed tool
    rc, report, summary = run_check(tmp_path, clean_env("/usr/sbin:/usr/bin:/sbin:/bin"),
                                    "--wheel-dir", str(tmp_path / "wheels"))
    assert rc == check.EXIT_NO_GPU == report["exit_status"] == 3
    assert list(report["parts"]) == ["inventory", "render", "status", "slice-cuda", "jax-memory", "timings"]
    for part in report["parts"].values():
        assert part["status"] == "unavailable"
        assert "no NVIDIA GPU found: nvidia-smi is not on PATH" in part["reason"]
        assert "no NVIDIA GPU on this machine" in part["reason"]  # what `gpus --json` said
    assert report["tool"]["how"].startswith("the installed gpuswarm_node")
    assert f"the wheels in {tmp_path / 'wheels'} did not install" in report["tool"]["how"]
    assert "| inventory | unavailable |" in summary


def stand_in_gpu(tmp_path: Path, nvml_lib_dir: Path, gpus, xml: str, listing: str, driver: str,
                 cuda: int) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(STAND_IN_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    (tmp_path / "smi.xml").write_text(xml)
    (tmp_path / "smi.txt").write_text(listing)
    config = fake_nvml.write_config(tmp_path / "nvml.conf", gpus, driver_version=driver, cuda_version=cuda)
    env = fake_nvml.env_for(nvml_lib_dir, config, base=clean_env(f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"))
    env.update(SMI_RECORD=str(tmp_path / "smi-calls"), SMI_XML=str(tmp_path / "smi.xml"),
               SMI_LIST=str(tmp_path / "smi.txt"))
    return env


def test_on_a_stand_in_h100_every_part_without_cuda_runs(tmp_path, nvml_lib_dir):
    env = stand_in_gpu(tmp_path, nvml_lib_dir, H100_NVML, H100_XML, "", "550.54.15", 12040)
    rc, report, summary = run_check(tmp_path, env)
    parts = report["parts"]
    assert parts["inventory"]["status"] == "passed", parts["inventory"]
    assert parts["render"]["status"] == "passed", parts["render"]
    assert parts["render"]["data"]["slice_map"]["slices"] == {f"{H100_UUID}::{n}": H100_UUID for n in (1, 2, 3)}
    # The wrapper's choice, fed to the hook model, is that GPU for the slice and nothing without one.
    wrapper = {f["check"]: f for f in parts["slice-cuda"]["findings"]}
    assert wrapper["wrapper + hook model, the slice: devices"]["ok"], wrapper
    assert wrapper["wrapper + hook model, the slice: devices"]["measured"] == [H100_UUID]
    assert wrapper["wrapper + hook model, no slice: devices"]["measured"] == []
    assert wrapper["cuda-env, the slice"]["measured"] == H100_UUID and wrapper["cuda-env, no slice"]["ok"]
    assert parts["slice-cuda"]["status"] == "unavailable"  # no torch or cupy here: said, not passed
    assert "CUDA itself was not checked" in parts["slice-cuda"]["reason"]
    assert parts["jax-memory"]["status"] == "unavailable" and "jax does not import" in parts["jax-memory"]["reason"]
    assert parts["status"]["data"]["steps"]["nvidia-driver"]["state"]  # the check ran and is reported
    assert parts["status"]["status"] in ("passed", "failed")
    timing = parts["timings"]["data"]
    assert timing["status_s"]["runs"] == 1 and timing["wrapper"]["wrapper_create_ms"] > 0
    assert rc == report["exit_status"] == (1 if parts["status"]["status"] == "failed" else 0)
    assert "NVIDIA H100 80GB HBM3" in summary and "driver 550.54.15, CUDA 12.4" in summary
    assert (tmp_path / "smi-calls").read_text() == "-q -x\n"  # no MIG device: no -L either


def test_on_a_stand_in_a100_with_mig_the_slices_are_the_mig_devices(tmp_path, nvml_lib_dir):
    env = stand_in_gpu(tmp_path, nvml_lib_dir, A100_NVML, A100_XML, A100_LIST, "535.129.03", 12020)
    rc, report, _ = run_check(tmp_path, env)
    parts = report["parts"]
    assert parts["inventory"]["status"] == "passed", parts["inventory"]
    assert parts["render"]["status"] == "passed", parts["render"]
    slices = parts["render"]["data"]["slice_map"]["slices"]
    assert set(MIG_UUIDS) <= set(slices) and slices[f"{A100_UUIDS[1]}::3"] == A100_UUIDS[1]
    devices = [f for f in parts["slice-cuda"]["findings"] if f["check"] == "wrapper + hook model, the slice: devices"]
    assert devices[0]["ok"] and devices[0]["measured"][0] in set(slices.values())
    assert (tmp_path / "smi-calls").read_text() == "-q -x\n-L\n"


# Stand-ins for the frameworks on a GPU machine, modelled on what they report: CUDA shows the
# devices CUDA_VISIBLE_DEVICES names that exist (FAKE_CUDA_DEVICES), torch prints a UUID without
# its GPU- prefix; XLA's allocator refuses past XLA_PYTHON_CLIENT_MEM_FRACTION of the device.
FAKE_TORCH = """__version__ = "0-stand-in"
import os, types
def _visible():
    present = os.environ.get("FAKE_CUDA_DEVICES", "").split(",")
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    return present if wanted is None else [d for d in wanted.split(",") if d in present]
cuda = types.SimpleNamespace(
    device_count=lambda: len(_visible()),
    get_device_properties=lambda i: types.SimpleNamespace(uuid=_visible()[i].split("-", 1)[1]))
"""
FAKE_JAX = """__version__ = "0-stand-in"
import os
def devices():
    return ["cuda:0"]
"""
FAKE_JNP = """import os
_held = [0]
class _Array:
    def block_until_ready(self):
        return self
def ones(shape, dtype=None):
    limit = float(os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]) * int(os.environ["FAKE_TOTAL_MIB"]) * 2**20
    if _held[0] + shape[0] * 4 > limit:
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 268435456 bytes.")
    _held[0] += shape[0] * 4
    return _Array()
float32 = "float32"
"""


def test_cuda_and_jax_parts_with_stand_in_frameworks(tmp_path, nvml_lib_dir):
    env = stand_in_gpu(tmp_path, nvml_lib_dir, H100_NVML, H100_XML, "", "550.54.15", 12040)
    frameworks = tmp_path / "frameworks"
    (frameworks / "jax" / "numpy").mkdir(parents=True)
    (frameworks / "torch").mkdir()
    (frameworks / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (frameworks / "jax" / "__init__.py").write_text(FAKE_JAX)
    (frameworks / "jax" / "numpy" / "__init__.py").write_text(FAKE_JNP)
    env.update(PYTHONPATH=str(frameworks), FAKE_CUDA_DEVICES=H100_UUID, FAKE_TOTAL_MIB="81559")
    rc, report, summary = run_check(tmp_path, env)
    cuda = report["parts"]["slice-cuda"]
    assert cuda["status"] == "passed", cuda
    assert {f["check"]: f["measured"] for f in cuda["findings"]} == {
        "wrapper + hook model, the slice: devices": [H100_UUID], "wrapper + hook model, no slice: devices": [],
        "cuda-env, the slice": H100_UUID, "cuda-env, no slice": "",
        "CUDA (torch 0-stand-in), the slice: device count": 1, "CUDA, the slice: the device's UUID": H100_UUID[4:],
        "CUDA (torch 0-stand-in), no slice: device count": 0}
    jax = report["parts"]["jax-memory"]
    found = {f["check"]: f for f in jax["findings"]}
    assert jax["data"]["share"] == pytest.approx(1 / 3) and jax["data"]["device_memory_mib"] == 81559
    assert found["JAX: allocations past the share are refused"]["ok"]
    assert found["JAX: what it allocated before the refusal is within the share"]["measured"] == 27136
    # The fake NVML has no per-process figures: the finding fails and says why.
    nvml = found["NVML: the process's memory at half the share is within the share plus the CUDA context"]
    assert not nvml["ok"] and "NVML unreadable" in nvml["measured"]
    assert jax["status"] == "failed" and rc == 1
    assert "mps" in json.dumps(jax["data"]).lower()


def test_a_disagreement_with_nvidia_smi_fails_the_check(tmp_path, nvml_lib_dir):
    wrong = [fake_nvml.FakeGpu(H100_UUID, "NVIDIA H100 80GB HBM3", 81520, pci_bus_id="00000000:19:00.0",
                               mig_mode="off")]
    env = stand_in_gpu(tmp_path, nvml_lib_dir, wrong, H100_XML, "", "550.54.15", 12040)
    rc, report, summary = run_check(tmp_path, env)
    assert rc == 1 == report["exit_status"]
    assert report["parts"]["inventory"]["status"] == "failed"
    assert "- GPU 0 memory (MiB): expected 81559, measured 81520" in summary

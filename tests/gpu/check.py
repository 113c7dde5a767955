#!/usr/bin/env python3
"""The check on a real NVIDIA GPU: what the tool reads and writes, held against what the driver,
CUDA and JAX do on the machine. One command, standard library only on the orchestrating side:

    python3 tests/gpu/check.py --wheel-dir wheels/ --out gpu-report/

It installs the tool from the wheels in --wheel-dir into a temporary venv (pip --no-index
--find-links: no package registry is needed), or uses the machine's own Python when that imports
gpuswarm_node, or this source tree when its dependencies are importable; it reads the GPU with
`nvidia-smi -q -x` and `nvidia-smi -L` only, and changes no GPU setting: no MIG, compute mode,
persistence mode, clocks or power limit (tests/test_gpu_check.py scans this file for setters).
It writes OUT/report.json and OUT/summary.md; tests/gpu/README.md describes both.

Parts, each independent (a part that fails or times out is reported; the others still run):
inventory, render, status, slice-cuda, jax-memory, timings. A part's status is "passed",
"failed" (a finding did not hold), "error" (the part itself broke: the error is in the report) or
"unavailable" (a prerequisite is missing: the reason is in the report).

Exit status: 0 every part that could run passed, and at least one did; 1 a part failed or broke,
or none could run; 2 bad usage; 3 no NVIDIA GPU was found (no nvidia-smi, or NVML sees none):
nothing could be checked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3
TOTAL_BUDGET_S = 280  # under the five minutes a GPU machine is lent for this check
JOIN_GRACE_S = 5  # a part's subprocesses have timeouts of their own; this is the last resort
PART_LIMITS_S = {"inventory": 40, "render": 30, "status": 40, "slice-cuda": 90, "jax-memory": 90, "timings": 60}

NVIDIA_SMI = "nvidia-smi"
# The only nvidia-smi calls this check makes: both only read. Every call goes through
# nvidia_smi(), which refuses anything else.
NVIDIA_SMI_READS = (("-q", "-x"), ("-L",))
MPS_CONTROL = "nvidia-cuda-mps-control"  # looked up on PATH only; never started

DAEMON_JSON = "/etc/docker/daemon.json"
SLICE_MAP = "/etc/gpuswarm-node/slices.json"
MIB = 1 << 20
CONTEXT_ALLOWANCE_MIB = 1024  # the CUDA context and library workspaces, outside XLA's allocator
# Run by --cuda-python with the slice's settings in its environment: argv total MiB, share. Takes
# 256 MiB arrays up to 1.2 x the share (small arrays: XLA kernels index large ones with 32 bits);
# reads NVML's per-process figure once half the share is held; prints one JSON line.
JAX_PROBE = r"""
import json, os, sys
import jax, jax.numpy as jnp
total_mib, share = int(sys.argv[1]), float(sys.argv[2])
out = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "refused": None,
       "nvml_used_at_half_mib": None}
def nvml_used():
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            mine = 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                # The unversioned call is _v3 (drivers from R510); older drivers have _v2 only.
                try:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except pynvml.NVMLLibraryMismatchError:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses_v2(handle)
                for p in procs:
                    if p.pid == os.getpid() and p.usedGpuMemory:
                        mine += p.usedGpuMemory
            return mine >> 20
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        out["nvml_error"] = f"NVML unreadable: {type(exc).__name__}: {exc}"
        return None
chunk_mib, held = 256, []
while len(held) * chunk_mib < total_mib * share * 1.2:
    if out["nvml_used_at_half_mib"] is None and len(held) * chunk_mib >= total_mib * share * 0.5:
        out["nvml_used_at_half_mib"] = nvml_used()
    try:
        held.append(jnp.ones((chunk_mib << 18,), dtype=jnp.float32).block_until_ready())
    except Exception as exc:
        out["refused"] = str(exc).splitlines()[0][:200]
        break
out["allocated_mib"] = len(held) * chunk_mib
print(json.dumps(out))
"""


class Unavailable(Exception):
    """A prerequisite of a part is missing; the message says which."""


# ---------------------------------------------------------------------------------------------
# Pure parsers (tests/test_gpu_check.py feeds them recorded answers)

def _text(node, path: str) -> str:
    found = node.find(path) if node is not None else None
    return (found.text or "").strip() if found is not None else ""


def parse_mib(text: str) -> int | None:
    """'81559 MiB' -> 81559; 'N/A' or '' -> None."""
    match = re.fullmatch(r"\s*(\d+)\s*MiB\s*", text or "")
    return int(match.group(1)) if match else None


def parse_nvidia_smi_xml(text: str) -> dict:
    """The fields of `nvidia-smi -q -x` (nvsmi_device_v12.dtd) the tool also reads from NVML:
    {"driver_version", "cuda_version", "gpus": [{"index", "uuid", "product_name", "memory_mib",
    "pci_bus_id", "mig_mode", "mig_devices": [{"index", "uuid", "memory_mib", "gpu_instance_id",
    "compute_instance_id"}]}]}. mig_mode is "Enabled", "Disabled" or "N/A" as printed; a MIG
    device's uuid is "" where the driver leaves it out of the XML (nvidia-smi -L names it).
    Raises ValueError for text that is not such a document."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"nvidia-smi -q -x printed no XML document ({exc})") from None
    if root.tag != "nvidia_smi_log":
        raise ValueError(f"nvidia-smi -q -x printed <{root.tag}>, not <nvidia_smi_log>")
    gpus = []
    for index, gpu in enumerate(root.findall("gpu")):
        migs = []
        for n, mig in enumerate(gpu.findall("mig_devices/mig_device")):
            migs.append({"index": int(_text(mig, "index") or n), "uuid": _text(mig, "uuid"),
                         "memory_mib": parse_mib(_text(mig, "fb_memory_usage/total")),
                         "gpu_instance_id": _text(mig, "gpu_instance_id"),
                         "compute_instance_id": _text(mig, "compute_instance_id")})
        gpus.append({"index": int(_text(gpu, "minor_number")) if _text(gpu, "minor_number").isdigit() else index,
                     "uuid": _text(gpu, "uuid"), "product_name": _text(gpu, "product_name"),
                     "memory_mib": parse_mib(_text(gpu, "fb_memory_usage/total")),
                     "pci_bus_id": _text(gpu, "pci/pci_bus_id") or gpu.get("id", ""),
                     "mig_mode": _text(gpu, "mig_mode/current_mig") or "N/A", "mig_devices": migs})
    # minor_number is the /dev/nvidiaN number, which need not be NVML's index: the order of
    # <gpu> elements is (nvidia-smi enumerates by NVML index).
    for index, gpu in enumerate(gpus):
        gpu["index"] = index
    return {"driver_version": _text(root, "driver_version"), "cuda_version": _text(root, "cuda_version"),
            "gpus": gpus}


LIST_GPU = re.compile(r"^GPU (\d+): (.*) \(UUID: (GPU-[^)]+)\)\s*$")
LIST_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)]+)\)\s*$")


def parse_nvidia_smi_list(text: str) -> list[dict]:
    """`nvidia-smi -L`: [{"index", "name", "uuid", "mig_devices": [{"index", "profile", "uuid"}]}]."""
    gpus: list[dict] = []
    for line in text.splitlines():
        if match := LIST_GPU.match(line):
            gpus.append({"index": int(match.group(1)), "name": match.group(2), "uuid": match.group(3),
                         "mig_devices": []})
        elif (match := LIST_MIG.match(line)) and gpus:
            gpus[-1]["mig_devices"].append({"index": int(match.group(2)), "profile": match.group(1),
                                            "uuid": match.group(3)})
    return gpus


def merge_mig_uuids(smi: dict, listed: list[dict]) -> None:
    """Fill the MIG UUIDs the XML left out from `nvidia-smi -L` (same GPU, same MIG device index)."""
    by_gpu = {g["uuid"]: g for g in listed}
    for gpu in smi["gpus"]:
        found = {m["index"]: m["uuid"] for m in by_gpu.get(gpu["uuid"], {}).get("mig_devices", [])}
        for mig in gpu["mig_devices"]:
            if not mig["uuid"]:
                mig["uuid"] = found.get(mig["index"], "")


def normal_bus_id(bus_id: str) -> str:
    """PCI bus ids as NVML (00000000:17:00.0) and sysfs (0000:17:00.0) spell them, made comparable."""
    match = re.fullmatch(r"\s*([0-9a-fA-F]+):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])\s*", bus_id or "")
    if not match:
        return (bus_id or "").strip().lower()
    domain, bus, device, function = match.groups()
    return f"{int(domain, 16):08x}:{bus.lower()}:{device.lower()}.{function}"


def finding(check: str, ok: bool, expected=None, measured=None, note: str = "") -> dict:
    out = {"check": check, "ok": bool(ok), "expected": expected, "measured": measured}
    if note:
        out["note"] = note
    return out


def compare_inventory(tool: dict, probe: dict, smi: dict) -> list[dict]:
    """Every field the tool reads from NVML against nvidia-smi's answer. `tool` is what
    `gpus --json` printed, `probe` read_inventory() as a dict (it holds cuda_version, which
    `gpus --json` does not print), `smi` parse_nvidia_smi_xml() after merge_mig_uuids()."""
    found = [finding("driver_version", tool.get("driver_version") == smi["driver_version"],
                     smi["driver_version"], tool.get("driver_version")),
             finding("cuda_version", probe.get("cuda_version") == smi["cuda_version"],
                     smi["cuda_version"], probe.get("cuda_version")),
             finding("gpu count", len(tool.get("gpus", [])) == len(smi["gpus"]), len(smi["gpus"]),
                     len(tool.get("gpus", [])))]
    by_uuid = {g.get("uuid"): g for g in tool.get("gpus", [])}
    for want in smi["gpus"]:
        got = by_uuid.get(want["uuid"])
        label = f"GPU {want['index']}"
        found.append(finding(f"{label} uuid", got is not None, want["uuid"],
                             None if got is None else got.get("uuid")))
        if got is None:
            continue
        memory_mib = int(got.get("memory_bytes", 0)) // MIB
        mig_on = want["mig_mode"] == "Enabled"
        found += [
            finding(f"{label} index", got.get("index") == want["index"], want["index"], got.get("index")),
            finding(f"{label} name", got.get("name") == want["product_name"], want["product_name"], got.get("name")),
            finding(f"{label} memory (MiB)", memory_mib == want["memory_mib"], want["memory_mib"], memory_mib,
                    "NVML's total in bytes, floored to MiB, against nvidia-smi's fb_memory_usage total"),
            finding(f"{label} pci bus id", normal_bus_id(got.get("pci_bus_id", "")) == normal_bus_id(want["pci_bus_id"]),
                    want["pci_bus_id"], got.get("pci_bus_id")),
            finding(f"{label} mig mode", bool(got.get("mig_enabled")) == mig_on, want["mig_mode"],
                    bool(got.get("mig_enabled"))),
        ]
        tool_migs = {m.get("uuid"): m for m in got.get("mig_devices") or []}
        want_migs = want["mig_devices"] if mig_on else []
        found.append(finding(f"{label} MIG device count", len(tool_migs) == len(want_migs), len(want_migs),
                             len(tool_migs)))
        for mig in want_migs:
            have = tool_migs.get(mig["uuid"])
            name = f"{label} MIG {mig['index']}"
            found.append(finding(f"{name} uuid", have is not None, mig["uuid"] or "(not printed by nvidia-smi)",
                                 None if have is None else have.get("uuid")))
            if have is not None and mig["memory_mib"] is not None:
                have_mib = int(have.get("memory_bytes", 0)) // MIB
                found.append(finding(f"{name} memory (MiB)", have_mib == mig["memory_mib"], mig["memory_mib"],
                                     have_mib))
    return found


def rendered_files(text: str) -> dict[str, str]:
    """`render` output split into {path: content} at its `# ==> PATH (step)` lines."""
    files: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines(keepends=True):
        match = re.match(r"^# ==> (\S+) \(([^)]*)\)\n?$", line)
        if match:
            current = match.group(1)
            files[current] = []
        elif current is not None:
            files[current].append(line)
    return {path: "".join(lines) for path, lines in files.items()}


def expected_slices(smi: dict, slices_per_gpu: int) -> dict[str, str]:
    """{slice id: device} the tool should advertise for this machine under the default settings
    (gpu.slices_per_gpu, no gpu.slice_memory): MIG devices as they are, else <uuid>::1..N."""
    out = {}
    for gpu in smi["gpus"]:
        if gpu["mig_mode"] == "Enabled":
            out.update({m["uuid"]: m["uuid"] for m in gpu["mig_devices"]})
        else:
            out.update({f"{gpu['uuid']}::{n}": gpu["uuid"] for n in range(1, slices_per_gpu + 1)})
    return out


def check_render(files: dict[str, str], smi: dict, slices_per_gpu: int, kind: str = "gpu") -> tuple[list[dict], dict]:
    """The rendered slice map and daemon.json against the GPUs nvidia-smi lists."""
    found = []
    slice_map = json.loads(files[SLICE_MAP]) if SLICE_MAP in files else None
    daemon = json.loads(files[DAEMON_JSON]) if DAEMON_JSON in files else None
    found.append(finding("slice map rendered", slice_map is not None, SLICE_MAP, sorted(files)))
    found.append(finding("daemon.json rendered", daemon is not None, DAEMON_JSON, sorted(files)))
    if slice_map is None or daemon is None:
        return found, {"files": sorted(files)}
    want = expected_slices(smi, slices_per_gpu)
    have = slice_map.get("slices", {})
    found.append(finding("slice map: slice ids and devices", have == want, want, have))
    devices = {g["uuid"] for g in smi["gpus"]} | {m["uuid"] for g in smi["gpus"] for m in g["mig_devices"]}
    found.append(finding("slice map: every device is one nvidia-smi lists", set(have.values()) <= devices,
                         sorted(devices), sorted(set(have.values()))))
    resources = daemon.get("node-generic-resources", [])
    found.append(finding("daemon.json: node-generic-resources are the slice map's slices",
                         sorted(resources) == sorted(f"{kind}={s}" for s in have),
                         sorted(f"{kind}={s}" for s in have), resources))
    found.append(finding("daemon.json: default-runtime", daemon.get("default-runtime") in daemon.get("runtimes", {}),
                         "a runtime daemon.json defines", daemon.get("default-runtime")))
    return found, {"slice_map": slice_map, "daemon_json": daemon}


def share_of(slice_map: dict, device: str) -> float:
    """The part of a device one of its slices stands for: 1 / (slices on that device)."""
    count = sum(1 for d in slice_map.get("slices", {}).values() if d == device)
    return 1.0 / count if count else 1.0


def uuid_matches(device: str, reported: str) -> bool:
    """A CUDA UUID (torch prints it without the GPU-/MIG- prefix) against an NVML device ID."""
    def bare(u: str) -> str:
        return re.sub(r"^(GPU|MIG)-", "", (u or "").strip(), flags=re.I).lower()
    return bool(reported) and bare(device) == bare(reported)


def check_nvidia_smi_args(args: tuple[str, ...]) -> None:
    if tuple(args) not in NVIDIA_SMI_READS:
        raise ValueError(f"nvidia-smi {' '.join(args)} is not one of the reads this check may make")


def summarize(report: dict) -> str:
    """summary.md: one table of the parts, then each part's failed findings and reason."""
    lines = ["# GPU check", "", f"- machine: {report['machine'].get('description', '')}",
             f"- GPU(s): {', '.join(report['machine'].get('gpus') or []) or 'none found'}",
             f"- driver {report['machine'].get('driver_version') or '?'}, CUDA {report['machine'].get('cuda_version') or '?'}",
             f"- tool: {report['tool'].get('how', '?')}", f"- started {report['started']}, "
             f"{report['seconds']:.1f} s, exit status {report['exit_status']}", "",
             "| part | status | seconds | findings ok | reason |", "|---|---|---|---|---|"]
    for name, part in report["parts"].items():
        ok = sum(1 for f in part.get("findings", []) if f["ok"])
        reason = (part.get("reason") or "").replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', 0):.1f} | "
                     f"{ok}/{len(part.get('findings', []))} | {reason} |")
    for name, part in report["parts"].items():
        bad = [f for f in part.get("findings", []) if not f["ok"]]
        if bad or part.get("error"):
            lines += ["", f"## {name}: {part['status']}"]
            lines += [f"- {f['check']}: expected {json.dumps(f['expected'])[:200]}, measured "
                      f"{json.dumps(f['measured'])[:200]}" for f in bad]
            if part.get("error"):
                lines += ["", "```", part["error"][-2000:], "```"]
    return "\n".join(lines) + "\n"


def overall_exit(parts: dict) -> int:
    """3 when no GPU was found; 0 when no part failed or broke and at least one passed (a check
    in which nothing could run proves nothing); else 1."""
    if parts and all(p["status"] == "unavailable" and p.get("no_gpu") for p in parts.values()):
        return EXIT_NO_GPU
    statuses = [p["status"] for p in parts.values()]
    return EXIT_OK if "passed" in statuses and not {"failed", "error"} & set(statuses) else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# The machine

class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def run(argv: list[str], deadline: Deadline, env: dict | None = None, cap: float = 120,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    timeout = min(cap, deadline.left())
    if timeout <= 0:
        raise TimeoutError(f"no time left for {' '.join(argv[:3])}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def nvidia_smi(args: tuple[str, ...], deadline: Deadline) -> str:
    check_nvidia_smi_args(args)
    binary = shutil.which(NVIDIA_SMI)
    if binary is None:
        raise Unavailable("nvidia-smi is not on PATH (no NVIDIA driver utilities installed)")
    result = run([binary, *args], deadline, cap=30)
    if result.returncode != 0:
        raise Unavailable(f"nvidia-smi {' '.join(args)} exited {result.returncode}: "
                          f"{(result.stdout + result.stderr).strip()[:300]}")
    return result.stdout


class Tool:
    """How to run gpuswarm-node and its Python here: from the wheels, the machine's Python, or
    this source tree."""

    def __init__(self, python: str, how: str, env: dict) -> None:
        self.python, self.how, self.env = python, how, env

    def cli(self, args: list[str], deadline: Deadline, env: dict | None = None, cap: float = 60):
        return run([self.python, "-m", "gpuswarm_node.cli", *args], deadline,
                   env={**self.env, **(env or {})}, cap=cap)

    def code(self, source: str, deadline: Deadline, cap: float = 60, env: dict | None = None):
        return run([self.python, "-c", source], deadline, env={**self.env, **(env or {})}, cap=cap)


def base_env(config: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_", "CUDA_VISIBLE_",
                                                                   "XLA_", "DOCKER_RESOURCE_"))}
    env["GPUSWARM_CONFIG"] = str(config)  # the defaults: a config on the machine must not change them
    env["COLUMNS"] = "200"
    return env


def imports(python: str, module: str, env: dict) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def has_module(python: str, name: str, env: dict) -> bool:
    """Whether `python` could import `name`, without importing it (TensorFlow takes seconds)."""
    try:
        return subprocess.run([python, "-c", "import importlib.util, sys; "
                               "sys.exit(importlib.util.find_spec(sys.argv[1]) is None)", name],
                              env=env, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def prepare_tool(wheel_dir: Path | None, work: Path, env: dict) -> Tool:
    """The wheels first (what a node installs), then the machine's Python, then this tree."""
    tried = []
    if wheel_dir is not None:
        venv = work / "venv"
        python = str(venv / "bin" / "python")
        install = ["install", "--quiet", "--no-index", "--disable-pip-version-check", "--find-links",
                   str(wheel_dir), "gpuswarm-node"]
        # The machine's own packages stay visible: a wheel built for another Python (cffi,
        # markupsafe) is then not needed where the machine has that package already. This
        # Python's pip installs into the venv (pip 22.3's --python), which spares the venv a pip
        # of its own (ensurepip takes 20 s on a small machine); else the venv gets one.
        result = subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            result = subprocess.run([sys.executable, "-m", "pip", "--python", python, *install],
                                    capture_output=True, text=True, timeout=120)
        if result.returncode != 0 and ("no such option" in result.stderr + result.stdout
                                       or "No module named pip" in result.stderr):
            shutil.rmtree(venv, ignore_errors=True)
            result = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                                    capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                result = subprocess.run([python, "-m", "pip", *install], capture_output=True, text=True, timeout=120)
        if result.returncode == 0:
            return Tool(python, f"wheels from {wheel_dir} in a temporary venv", env)
        tried.append(f"the wheels in {wheel_dir} did not install: {(result.stdout + result.stderr).strip()[-400:]}")
    fallback = f" ({tried[0]})" if tried else ""
    if imports(sys.executable, "gpuswarm_node.cli", env):
        return Tool(sys.executable, f"the installed gpuswarm_node of {sys.executable}{fallback}", env)
    tree_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}
    if imports(sys.executable, "gpuswarm_node.cli", tree_env):
        return Tool(sys.executable, f"the source tree with {sys.executable}'s packages{fallback}", tree_env)
    tried.append(f"{sys.executable} cannot import gpuswarm_node (nor its dependencies from the source tree)")
    raise Unavailable("; ".join(tried))


# ---------------------------------------------------------------------------------------------
# Parts

class Check:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.config = self.work / "node.toml"
        self.config.write_text("# the defaults\n")
        self.env = base_env(self.config)
        self.deadline = Deadline(args.budget)
        self.tool: Tool | None = None
        self.tool_error = ""
        self.smi: dict | None = None
        self.smi_error = ""
        self.inventory: dict | None = None
        self.probe: dict | None = None
        self.slice_map: dict | None = None
        self.parts: dict[str, dict] = {}
        self.cuda_python = args.cuda_python or sys.executable

    # what every part needs -------------------------------------------------------------
    def gather(self) -> None:
        """The tool, nvidia-smi's answer and the tool's inventory; what fails is kept as the reason
        the parts that need it give (a report is written whatever happens here)."""
        try:
            self.tool = prepare_tool(Path(self.args.wheel_dir) if self.args.wheel_dir else None, self.work, self.env)
        except (Unavailable, OSError, subprocess.TimeoutExpired) as exc:
            self.tool_error = str(exc)
        try:
            smi = parse_nvidia_smi_xml(nvidia_smi(("-q", "-x"), self.deadline))
            if any(not m["uuid"] for g in smi["gpus"] for m in g["mig_devices"]):
                merge_mig_uuids(smi, parse_nvidia_smi_list(nvidia_smi(("-L",), self.deadline)))
            self.smi = smi
        except (Unavailable, ValueError, OSError, subprocess.TimeoutExpired, TimeoutError) as exc:
            self.smi_error = str(exc)
        if self.tool is not None:
            try:
                self.read_inventory()
            except (ValueError, OSError, subprocess.TimeoutExpired, TimeoutError) as exc:
                self.tool_error = f"the tool's inventory: {type(exc).__name__}: {exc}"

    def read_inventory(self) -> None:
        result = self.tool.cli(["gpus", "--json"], self.deadline)
        if result.returncode == 0:
            self.inventory = json.loads(result.stdout)
        else:
            self.tool_error = f"gpus --json exited {result.returncode}: {result.stderr.strip()[-400:]}"
        probe = self.tool.code("import json, dataclasses\nfrom gpuswarm_node.probes.gpu import read_inventory\n"
                               "try:\n    print(json.dumps(dataclasses.asdict(read_inventory())))\n"
                               "except Exception as exc:\n    print(json.dumps({'error': str(exc)}))\n",
                               self.deadline)
        self.probe = json.loads(probe.stdout) if probe.returncode == 0 else {"error": probe.stderr[-400:]}

    def no_gpu_reason(self) -> str:
        """Why nothing can be checked, or "" when a GPU is here."""
        if self.smi is not None and self.smi["gpus"]:
            return ""
        if self.inventory and self.inventory.get("gpus"):
            return ""
        said = "; ".join((self.inventory or {}).get("notes") or [])
        return "no NVIDIA GPU found: " + "; ".join(filter(None, [self.smi_error or (
            "nvidia-smi lists no GPU" if self.smi is not None else ""), said or self.tool_error]))

    def needs(self, tool: bool = True, smi: bool = True) -> None:
        if tool and self.tool is None:
            raise Unavailable(f"the tool could not be run: {self.tool_error}")
        if tool and self.inventory is None:
            raise Unavailable(f"the tool's inventory could not be read: {self.tool_error}")
        if smi and self.smi is None:
            raise Unavailable(self.smi_error)

    def part(self, name: str, fn) -> None:
        started = time.monotonic()
        limit = min(PART_LIMITS_S[name], self.deadline.left())
        record: dict = {"status": "error", "findings": [], "data": {}}
        no_gpu = self.no_gpu_reason()
        if no_gpu:
            record.update(status="unavailable", reason=no_gpu, no_gpu=True)
        elif limit <= 0:
            record.update(status="unavailable", reason="the check's time budget is spent")
        else:
            outcome: dict = {}

            def target() -> None:
                try:
                    outcome["result"] = fn(Deadline(limit))
                except Unavailable as exc:
                    outcome["unavailable"] = str(exc)
                except BaseException as exc:  # a part's failure is reported, never fatal
                    outcome["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"

            worker = threading.Thread(target=target, daemon=True)
            worker.start()
            worker.join(limit + JOIN_GRACE_S)
            if worker.is_alive():
                record.update(status="error", reason=f"timed out after {limit:.0f} s",
                              error=f"the part did not finish within {limit:.0f} s")
            elif "unavailable" in outcome:
                record.update(status="unavailable", reason=outcome["unavailable"])
            elif "error" in outcome:
                record.update(status="error", reason=outcome["error"].splitlines()[0], error=outcome["error"])
            else:
                findings, data, *missing = outcome["result"]
                status = "passed" if all(f["ok"] for f in findings) else "failed"
                if missing and missing[0] and status == "passed":
                    # What ran passed; what could not run is said, not counted as passed.
                    status = "unavailable"
                    record["reason"] = missing[0]
                record.update(findings=findings, data=data, status=status)
        record["seconds"] = round(time.monotonic() - started, 2)
        self.parts[name] = record

    # the parts -------------------------------------------------------------------------
    def p_inventory(self, deadline: Deadline):
        self.needs()
        probe = self.probe or {}
        if "error" in probe:
            raise RuntimeError(f"read_inventory() failed: {probe['error']}")
        findings = compare_inventory(self.inventory, probe, self.smi)
        return findings, {"gpus_json": self.inventory, "read_inventory": probe, "nvidia_smi": self.smi}

    def gpu_settings(self, deadline: Deadline) -> tuple[int, str]:
        """(gpu.slices_per_gpu, gpu.resource) as the tool reads its configuration here."""
        result = self.tool.code("from gpuswarm_node.config import load\n"
                                "gpu = load().gpu\nprint(gpu.slices_per_gpu, gpu.resource)", deadline)
        if result.returncode != 0:
            raise RuntimeError(f"cannot read the gpu settings: {result.stderr.strip()[-300:]}")
        count, kind = result.stdout.split()
        return int(count), kind

    def p_render(self, deadline: Deadline):
        self.needs()
        inventory = self.work / "gpus.json"
        inventory.write_text(json.dumps(self.inventory))
        result = self.tool.cli(["render", "--inventory", str(inventory)], deadline)
        files = rendered_files(result.stdout)
        findings = [finding("render exit status", result.returncode == 0, 0, result.returncode,
                            result.stderr.strip()[-300:])]
        more, data = check_render(files, self.smi, *self.gpu_settings(deadline))
        self.slice_map = data.get("slice_map")
        return findings + more, {**data, "paths": sorted(files)}

    def p_status(self, deadline: Deadline):
        self.needs(smi=False)
        result = self.tool.cli(["status", "--json"], deadline)
        report = json.loads(result.stdout)
        steps = {s["name"]: s for s in report.get("steps", [])}
        findings = []
        for name in ("nvidia-driver", "nvidia-toolkit"):
            step = steps.get(name)
            findings.append(finding(f"{name} check ran", step is not None and step["state"] != "failed",
                                    "a state other than failed", step and step["state"],
                                    (step or {}).get("detail", "")[:300]))
        findings.append(finding("nvidia-driver is ok on a machine with a working driver",
                                steps.get("nvidia-driver", {}).get("state") == "ok", "ok",
                                steps.get("nvidia-driver", {}).get("state")))
        cuda = [s for s in report.get("steps", []) if "cuda" in (s["name"] + s.get("detail", "")).lower()]
        return findings, {"exit_status": result.returncode, "steps": {n: {"state": s["state"], "detail": s["detail"]}
                                                                      for n, s in steps.items()},
                          "cuda_readiness": [s["name"] for s in cuda] or
                          "no CUDA-level readiness check in this version of status"}

    def first_slice(self) -> tuple[str, str]:
        if not self.slice_map or not self.slice_map.get("slices"):
            raise Unavailable("the render part gave no slice map to take a slice from")
        slice_id, device = next(iter(self.slice_map["slices"].items()))
        return slice_id, device

    def cuda_probe(self, env: dict, deadline: Deadline) -> dict:
        code = r"""
import json
out = {}
try:
    import torch
    out["framework"] = "torch " + torch.__version__
    out["count"] = torch.cuda.device_count()
    # cudaDeviceProp.uuid, printed without the GPU-/MIG- prefix (torch 2.0 and later have it)
    out["uuids"] = [str(getattr(torch.cuda.get_device_properties(i), "uuid", "")) for i in range(out["count"])]
except ImportError:
    try:
        import cupy
        out["framework"] = "cupy " + cupy.__version__
        try:
            out["count"] = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError:
            out["count"] = 0  # cudaErrorNoDevice
        out["uuids"] = []
        for i in range(out["count"]):
            raw = bytes(cupy.cuda.runtime.getDeviceProperties(i)["uuid"])
            h = raw.hex()
            out["uuids"].append("-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:])))
    except ImportError:
        out["framework"] = None
print(json.dumps(out))
"""
        result = run([self.cuda_python, "-c", code], deadline, env=env, cap=60)
        if result.returncode != 0:
            raise RuntimeError(f"the CUDA probe exited {result.returncode}: {result.stderr.strip()[-600:]}")
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        if not answer.get("framework"):
            raise Unavailable(f"neither torch nor cupy imports with {self.cuda_python}")
        return answer

    def wrapper_node(self, deadline: Deadline) -> "WrapperNode":
        return WrapperNode(self, self.work / "wrapper", deadline)

    def p_slice_cuda(self, deadline: Deadline):
        self.needs()
        sys.path.insert(0, str(REPO))
        from tests.nvidia_hook_model import visible_devices

        slice_id, device = self.first_slice()
        node = self.wrapper_node(deadline)
        findings, data = [], {"slice": slice_id, "device": device}
        try:
            for label, env_value, want in (("the slice", slice_id, [device]), ("no slice", None, [])):
                created = node.create(env_value)
                spec = json.loads(node.config.read_text())
                devices = visible_devices(spec, {})
                findings.append(finding(f"wrapper + hook model, {label}: devices", created.returncode == 0
                                        and devices == want, want, devices, created.stderr.strip()[-300:]))
        finally:
            node.close()
        missing = ""
        for label, resource, want_count in (("the slice", slice_id, 1), ("no slice", None, 0)):
            env = {self.slice_map["variable"]: resource} if resource else {}
            shown = self.tool.cli(["cuda-env"], deadline, env=env)
            match = re.match(r"export CUDA_VISIBLE_DEVICES=(\S*)\n", shown.stdout)  # first line; memory settings follow
            value = match.group(1).strip("'") if match else None
            findings.append(finding(f"cuda-env, {label}", value == (device if resource else ""),
                                    device if resource else "", value, shown.stderr.strip()[-300:]))
            if value is None:
                continue
            try:
                cuda = self.cuda_probe({**self.env, "CUDA_VISIBLE_DEVICES": value}, deadline)
            except Unavailable as exc:
                missing = f"CUDA itself was not checked: {exc}"
                continue
            data[f"cuda, {label}"] = cuda
            findings.append(finding(f"CUDA ({cuda['framework']}), {label}: device count",
                                    cuda.get("count") == want_count, want_count, cuda.get("count")))
            if resource:
                seen = (cuda.get("uuids") or [""])[0]
                findings.append(finding(f"CUDA, {label}: the device's UUID", uuid_matches(device, seen), device, seen))
        return findings, data, missing

    def p_jax_memory(self, deadline: Deadline):
        self.needs()
        slice_id, device = self.first_slice()
        share = share_of(self.slice_map, device)
        total = next((g["memory_mib"] for g in self.smi["gpus"] if g["uuid"] == device), None) or \
            next((m["memory_mib"] for g in self.smi["gpus"] for m in g["mig_devices"] if m["uuid"] == device), None)
        mps = shutil.which(MPS_CONTROL)
        data = {"slice": slice_id, "share": share, "device_memory_mib": total,
                "mps_control": mps or f"{MPS_CONTROL} is not on PATH",
                "mps_note": "presence only; the check starts no MPS daemon",
                "tensorflow": "installed, not exercised here (TF_FORCE_GPU_ALLOW_GROWTH)"
                if has_module(self.cuda_python, "tensorflow", self.env) else "not installed: its setting is not checked"}
        if not imports(self.cuda_python, "jax", self.env):
            return [], data, f"jax does not import with {self.cuda_python}"
        if not total:
            raise RuntimeError(f"nvidia-smi gives no memory total for {device}")
        env = {**self.env, "CUDA_VISIBLE_DEVICES": device, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
               "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{share:.3f}"}
        result = run([self.cuda_python, "-c", JAX_PROBE, str(total), f"{share:.3f}"], deadline, env=env, cap=80)
        if result.returncode != 0:
            raise RuntimeError(f"the JAX probe exited {result.returncode}: {result.stderr.strip()[-600:]}")
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        data["jax"] = answer
        bound = int(total * float(f"{share:.3f}"))
        peak = answer.get("nvml_used_at_half_mib")
        findings = [
            finding("JAX: allocations past the share are refused", answer["refused"] is not None,
                    f"refused before {int(bound * 1.2)} MiB", answer["refused"] or f"{answer['allocated_mib']} MiB allocated"),
            finding("JAX: what it allocated before the refusal is within the share",
                    answer["allocated_mib"] <= bound, f"<= {bound} MiB", answer["allocated_mib"]),
            finding("NVML: the process's memory at half the share is within the share plus the CUDA context",
                    peak is not None and 0 < peak <= bound + CONTEXT_ALLOWANCE_MIB,
                    f"<= {bound} + {CONTEXT_ALLOWANCE_MIB} MiB", peak if peak is not None else answer.get("nvml_error"),
                    "nvmlDeviceGetComputeRunningProcesses, this process's usedGpuMemory"),
        ]
        return findings, data

    def p_timings(self, deadline: Deadline):
        self.needs(smi=False)
        runs = []
        for _ in range(self.args.repeat):
            started = time.monotonic()
            self.tool.cli(["status", "--json"], deadline)
            runs.append(time.monotonic() - started)
        data = {"status_s": {"runs": len(runs), "median": statistics.median(runs), "min": min(runs), "max": max(runs)}}
        node = self.wrapper_node(deadline)
        try:
            data["wrapper"] = node.overhead(self.args.repeat * 4, self.first_slice()[0] if self.slice_map else None)
        finally:
            node.close()
        data["wrapper_note"] = ("the rendered wrapper with a stand-in nvidia-container-runtime and a stand-in "
                                "Docker Engine API socket: Docker is not assumed here, so dockerd's own cost is "
                                "not in these figures")
        return [finding("status ran", bool(runs), self.args.repeat, len(runs))], data

    # the whole -------------------------------------------------------------------------
    def machine(self) -> dict:
        gpus = [f"{g['product_name']} ({g['uuid']}, {g['memory_mib']} MiB, MIG {g['mig_mode']})"
                for g in (self.smi or {}).get("gpus", [])]
        return {"description": f"{platform.node()} {platform.system()} {platform.release()} "
                               f"{platform.machine()}, Python {platform.python_version()}",
                "gpus": gpus, "driver_version": (self.smi or {}).get("driver_version")
                or (self.inventory or {}).get("driver_version"),
                "cuda_version": (self.smi or {}).get("cuda_version")}

    def run_all(self) -> int:
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        started = time.monotonic()
        self.gather()
        for name, fn in (("inventory", self.p_inventory), ("render", self.p_render), ("status", self.p_status),
                         ("slice-cuda", self.p_slice_cuda), ("jax-memory", self.p_jax_memory),
                         ("timings", self.p_timings)):
            self.part(name, fn)
        report = {"format": 1, "started": started_at, "seconds": round(time.monotonic() - started, 2),
                  "machine": self.machine(),
                  "tool": {"how": self.tool.how if self.tool else None, "error": self.tool_error or None},
                  "parts": self.parts}
        report["exit_status"] = overall_exit(self.parts)
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
        write_atomic(self.out / "summary.md", summarize(report))
        shutil.rmtree(self.work, ignore_errors=True)
        return report["exit_status"]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The runtime wrapper, rendered by the tool and run as Docker runs it, without Docker

STAND_IN_RUNTIME = """#!/bin/sh
# nvidia-container-runtime stand-in: the wrapper's last step; records nothing, changes nothing.
exit 0
"""


class WrapperNode:
    """The wrapper's front and program rendered by the tool for a slice map of the real GPU's
    slices, a stand-in nvidia-container-runtime and a stand-in Docker Engine API (tests/fake_engine.py)
    under `root`."""

    def __init__(self, check: Check, root: Path, deadline: Deadline) -> None:
        sys.path.insert(0, str(REPO))
        from tests.fake_engine import CONTAINER_ID, FakeEngine

        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.root = root
        slice_map = root / "slices.json"
        given = check.slice_map or {"kind": "gpu", "variable": "DOCKER_RESOURCE_GPU", "slices": {}}
        self.variable = given["variable"]
        slice_map.write_text(json.dumps(given))
        slice_map.chmod(0o644)
        self.engine = FakeEngine(root / "docker.sock")
        program = root / "gpuswarm-runtime.py"
        front = root / "gpuswarm-runtime"
        code = ("import json, sys\n"
                "from gpuswarm_node.steps.docker_daemon import wrapper_program_text, wrapper_text\n"
                "a = json.loads(sys.argv[1])\n"
                "print(json.dumps({'program': wrapper_program_text(docker_socket=a['socket'], slice_map=a['map'], "
                "toolkit_configs=()), 'front': wrapper_text(program=a['program'], python=a['python'])}))")
        result = run([check.tool.python, "-c", code, json.dumps({"map": str(slice_map), "socket": str(self.engine.path),
                                                                 "program": str(program), "python": sys.executable})],
                     deadline, env=check.tool.env, cap=30)
        if result.returncode != 0:
            raise RuntimeError(f"rendering the wrapper failed: {result.stderr.strip()[-400:]}")
        texts = json.loads(result.stdout)
        program.write_text(texts["program"])
        front.write_text(texts["front"])
        front.chmod(0o755)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "nvidia-container-runtime").write_text(STAND_IN_RUNTIME)
        (bin_dir / "nvidia-container-runtime").chmod(0o755)
        self.front, self.bin = front, bin_dir
        self.bundle = root / CONTAINER_ID
        self.bundle.mkdir()
        self.config = self.bundle / "config.json"
        self.spec_text = (REPO / "tests" / "data" / "docker-bundle-config.json").read_text()

    def create(self, resource: str | None) -> subprocess.CompletedProcess:
        spec = json.loads(self.spec_text)
        env = [e for e in spec["process"]["env"] if not e.startswith("DOCKER_RESOURCE_")]
        spec["process"]["env"] = env + ([f"{self.variable}={resource}"] if resource else [])
        self.config.write_text(json.dumps(spec))
        return self.call("create", "--bundle", str(self.bundle), "c0ffee")

    def call(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.front), *args], env={"PATH": f"{self.bin}:/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=30, cwd=str(self.root))

    def overhead(self, runs: int, resource: str | None) -> dict:
        def median_ms(fn) -> float:
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) * 1000)
            return round(statistics.median(times), 2)

        direct = median_ms(lambda: subprocess.run([str(self.bin / "nvidia-container-runtime"), "state", "c0ffee"],
                                                  capture_output=True, timeout=30))
        return {"runs": runs, "stand_in_alone_ms": direct,
                "wrapper_non_create_ms": median_ms(lambda: self.call("state", "c0ffee")),
                "wrapper_create_ms": median_ms(lambda: self.create(resource))}

    def close(self) -> None:
        try:
            self.engine.close()
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 passed; 1 a part failed or broke, or none ran; 2 bad usage; "
                                            "3 no NVIDIA GPU found. See tests/gpu/README.md.")
    parser.add_argument("--wheel-dir", metavar="DIR", help="gpuswarm-node's wheel and its dependencies' "
                        "(pip wheel . -w DIR); without it, the machine's Python or this source tree")
    parser.add_argument("--out", metavar="DIR", required=True, help="where report.json and summary.md go")
    parser.add_argument("--cuda-python", metavar="PYTHON", help="the Python with PyTorch or CuPy, JAX and "
                        "nvidia-ml-py that the CUDA and JAX parts run (default: the one running this)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing (default 5)")
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.wheel_dir and not Path(args.wheel_dir).is_dir():
        parser.error(f"--wheel-dir {args.wheel_dir} is not a directory; build it with `pip wheel . -w DIR`")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return Check(args).run_all()


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what the slice-aware runtime wrapper adds to each container start.

    python3 bench/runtime_wrapper.py [--runs N] [--rounds R]

Docker calls its runtime at least twice to start a container: `create` (the wrapper's sh front
starts the Python program, which reads the slice map and rewrites the bundle's config.json) and
`start` (the front execs the NVIDIA runtime; no Python). Both are timed against calling the NVIDIA
runtime directly, against the same front without the program's bytecode (Python compiles the
program on every `create`), and against the first layout, where Docker ran the Python program
itself for every call. The front and the program are the product's own templates, rendered as setup
renders them except for their paths; the NVIDIA runtime is a stand-in that exits 0 at once (a
link to `true`), so the difference is the wrapper alone. The bundle is a realistic Docker spec
(tests/data/docker-bundle-config.json), restored before every `create` so each call does the
full rewrite. Calls alternate between the layouts, so drift in the machine's speed hits all
alike; the rounds are repeated so that a noisy machine shows as a range instead of one figure.

With --baseline REV, the program as it was at git revision REV (front and bytecode as today's)
is timed too, as the layout `front@REV`, in the same alternation: a change's effect side by side.

Not a test: it prints figures for the docs and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpuswarm_node.nvidia_hook import wrapper_policy  # noqa: E402
from gpuswarm_node.render import _environment, render  # noqa: E402
from gpuswarm_node.slices import slice_map_text  # noqa: E402
from gpuswarm_node.steps.docker_daemon import (NVIDIA_RUNTIME, WRAPPER_PYTHON, wrapper_bytecode,  # noqa: E402
                                               wrapper_text)
from tests.fake_engine import CONTAINER_ID, FakeEngine  # noqa: E402

BUNDLE_CONFIG = REPO / "tests" / "data" / "docker-bundle-config.json"
# Eight GPUs with three slices each: a larger map than most nodes have.
SLICES = [f"GPU-0000000{g}-1111-4222-8333-444444444444::{n}" for n in (1, 2, 3) for g in range(8)]
LAYOUTS = ("direct", "front", "front-uncompiled", "python-only")
WARMUP = 20


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def span(values: list[float]) -> str:
    """Median of the round medians, and their range."""
    return f"{statistics.median(values):6.2f}  ({min(values):5.2f}-{max(values):5.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed calls of each kind per round (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with its own median (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the round medians there (bench/run.py reads them)")
    parser.add_argument("--baseline", metavar="REV", help="also time the program of this git revision")
    options = parser.parse_args()
    layouts = LAYOUTS + ((f"front@{options.baseline}",) if options.baseline else ())

    with tempfile.TemporaryDirectory(prefix="gpuswarm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        slice_map = tmp / "slices.json"
        slice_map.write_text(slice_map_text("gpu", SLICES))
        # The container reserved slices, so the wrapper asks the Engine API which image it runs:
        # a stand-in answers on a unix socket (dockerd answers these two calls about as fast).
        engine = FakeEngine(tmp / "docker.sock")
        program_text = render("gpuswarm-runtime.j2", slice_map=str(slice_map), runtime=NVIDIA_RUNTIME["path"],
                              docker_socket=str(engine.path), toolkit_configs=(str(tmp / "toolkit.toml"),),
                              hook_policy=wrapper_policy())
        program = tmp / "gpuswarm-runtime.py"
        program.write_text(program_text)
        # As setup installs it: the program's bytecode where Python's import finds it.
        bytecode = tmp / "__pycache__" / f"gpuswarm-runtime.{sys.implementation.cache_tag}.pyc"
        bytecode.parent.mkdir()
        bytecode.write_bytes(wrapper_bytecode(program_text, str(program)))
        front = tmp / "gpuswarm-runtime"
        front.write_text(wrapper_text(program=str(program)))
        front.chmod(0o755)
        # The same front and program without bytecode: Python compiles the program on every call.
        uncompiled_dir = tmp / "uncompiled"
        uncompiled_dir.mkdir()
        (uncompiled_dir / "gpuswarm-runtime.py").write_text(program_text)
        uncompiled = uncompiled_dir / "gpuswarm-runtime"
        uncompiled.write_text(wrapper_text(program=str(uncompiled_dir / "gpuswarm-runtime.py")))
        uncompiled.chmod(0o755)
        # The previous layout: the same program, run by Docker through its own #! line.
        python_only = tmp / "gpuswarm-runtime-python-only"
        python_only.write_text(f"#!{WRAPPER_PYTHON} -IS\n" + program_text)
        python_only.chmod(0o755)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        stand_in = bin_dir / "nvidia-container-runtime"
        stand_in.symlink_to(shutil.which("true"))
        bundle = tmp / CONTAINER_ID
        bundle.mkdir()
        config = bundle / "config.json"
        original = BUNDLE_CONFIG.read_text().replace("::2\"", f"::2,{SLICES[9]}\"")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
        runtime = {"direct": stand_in, "front": front, "front-uncompiled": uncompiled, "python-only": python_only}
        if options.baseline:
            # The same front and bytecode layout, with the program's template as it was at REV.
            old_template = subprocess.run(["git", "-C", str(REPO), "show", f"{options.baseline}:templates/gpuswarm-runtime.j2"],
                                          check=True, capture_output=True, text=True).stdout
            old_text = _environment().from_string(old_template).render(
                slice_map=str(slice_map), runtime=NVIDIA_RUNTIME["path"], docker_socket=str(engine.path),
                toolkit_configs=(str(tmp / "toolkit.toml"),), hook_policy=wrapper_policy())
            old_dir = tmp / "baseline"
            (old_dir / "__pycache__").mkdir(parents=True)
            old_program = old_dir / "gpuswarm-runtime.py"
            old_program.write_text(old_text)
            (old_dir / "__pycache__" / bytecode.name).write_bytes(wrapper_bytecode(old_text, str(old_program)))
            old_front = old_dir / "gpuswarm-runtime"
            old_front.write_text(wrapper_text(program=str(old_program)))
            old_front.chmod(0o755)
            runtime[layouts[-1]] = old_front

        create = ["--root", "/run/docker/runtime-runc/moby", "--log", str(bundle / "log.json"),
                  "--log-format", "json", "create", "--bundle", str(bundle),
                  "--pid-file", str(bundle / "init.pid"), "c0ffee"]
        start = ["--root", "/run/docker/runtime-runc/moby", "--log", str(bundle / "log.json"),
                 "--log-format", "json", "start", "c0ffee"]
        # Each interpreter's bare start, to tell what the wrapper adds from what starting costs.
        bare = {"sh -c :": ["/bin/sh", "-c", ":"], "python3 -IS -c pass": [WRAPPER_PYTHON, "-IS", "-c", "pass"]}

        load_before = os.getloadavg()[0]
        rounds: list[dict[str, float]] = []
        for _round in range(options.rounds):
            results: dict[str, list[float]] = {}
            for i in range(options.runs + WARMUP):  # the first calls warm the caches, not counted
                timings: dict[str, float] = {}
                for layout in layouts:
                    config.write_text(original)
                    timings[f"create {layout}"] = timed([str(runtime[layout]), *create], env)
                    if layout != "direct":
                        assert "NVIDIA_VISIBLE_DEVICES=GPU-00000000-1111-4222-8333-444444444444," \
                            in config.read_text(), layout
                for layout in layouts:
                    timings[f"start {layout}"] = timed([str(runtime[layout]), *start], env)
                for name, argv in bare.items():
                    timings[name] = timed(argv, env)
                if i >= WARMUP:
                    for key, value in timings.items():
                        results.setdefault(key, []).append(value)
            rounds.append({key: statistics.median(values) for key, values in results.items()})

    def per_round(fn) -> list[float]:
        return [fn(r) for r in rounds]

    def added(layout: str, call: str) -> list[float]:
        return per_round(lambda r: r[f"{call} {layout}"] - r[f"{call} direct"])

    if options.json:
        Path(options.json).write_text(json.dumps({"rounds": rounds, "runs": options.runs}))
    python = subprocess.run([WRAPPER_PYTHON, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), {platform.platform()}")
    print(f"wrapper python: {python} ({WRAPPER_PYTHON}, as the front runs it); sh: {os.path.realpath('/bin/sh')}")
    print(f"{options.rounds} rounds of {options.runs} timed calls each; config.json {len(original)} bytes; "
          f"{len(SLICES)} slices in the map")
    print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPU(s): above about half the CPUs, other work shared them")
    print()
    heads = "".join(f"  round {n + 1:<2}" for n in range(options.rounds))
    print(f"{'median per round, ms':<26}{heads}   median  (range)")
    for key in rounds[0]:
        cells = "".join(f"  {r[key]:8.2f}" for r in rounds)
        print(f"{key:<26}{cells}   {span(per_round(lambda r: r[key]))}")
    print()
    print(f"{'added to the direct call, ms':<50}median  (range over rounds)")
    for layout in layouts[1:]:
        both = per_round(lambda r: sum(r[f"{c} {layout}"] - r[f"{c} direct"] for c in ("create", "start")))
        print(f"{layout + ': create':<50}{span(added(layout, 'create'))}")
        print(f"{layout + ': start':<50}{span(added(layout, 'start'))}")
        print(f"{layout + ': per container (create + start)':<50}{span(both)}")


if __name__ == "__main__":
    main()

"""Benchmark: what the slice-aware runtime wrapper adds to each container start.

    python3 bench/runtime_wrapper.py [--runs N]

Docker calls its runtime at least twice to start a container: `create` (the wrapper reads the
slice map and rewrites the bundle's config.json) and `start` (the fast path: straight exec). Both
are timed here against calling the NVIDIA runtime directly. The wrapper is the product's own
template, rendered as setup renders it except for the slice map's path; the NVIDIA runtime is a
stand-in that exits 0 at once (a link to `true`), so the difference is the wrapper alone. The
bundle is a realistic Docker spec (tests/data/docker-bundle-config.json), restored before every
`create` so each call does the full rewrite. Calls alternate between the two, so drift in the
machine's speed hits both alike.

Not a test: it prints figures for the README and asserts nothing.
"""

from __future__ import annotations

import argparse
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

from gpuswarm_node.render import render  # noqa: E402
from gpuswarm_node.slices import slice_map_text  # noqa: E402

BUNDLE_CONFIG = REPO / "tests" / "data" / "docker-bundle-config.json"
# Eight GPUs with three slices each: a larger map than most nodes have.
SLICES = [f"GPU-0000000{g}-1111-4222-8333-444444444444::{n}" for n in (1, 2, 3) for g in range(8)]


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} ms   (min {min(values):6.2f}, max {max(values):6.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed calls of each kind (default 300)")
    runs = parser.parse_args().runs

    with tempfile.TemporaryDirectory(prefix="gpuswarm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        slice_map = tmp / "slices.json"
        slice_map.write_text(slice_map_text("gpu", SLICES))
        wrapper = tmp / "gpuswarm-runtime"
        wrapper.write_text(render("gpuswarm-runtime.j2", slice_map=str(slice_map),
                                  runtime="nvidia-container-runtime"))
        wrapper.chmod(0o755)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        stand_in = bin_dir / "nvidia-container-runtime"
        stand_in.symlink_to(shutil.which("true"))
        bundle = tmp / "bundle"
        bundle.mkdir()
        config = bundle / "config.json"
        original = BUNDLE_CONFIG.read_text().replace("::2\"", f"::2,{SLICES[9]}\"")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

        create = ["--root", "/run/docker/runtime-runc/moby", "--log", str(bundle / "log.json"),
                  "--log-format", "json", "create", "--bundle", str(bundle),
                  "--pid-file", str(bundle / "init.pid"), "c0ffee"]
        start = ["--root", "/run/docker/runtime-runc/moby", "--log", str(bundle / "log.json"),
                 "--log-format", "json", "start", "c0ffee"]
        results: dict[str, list[float]] = {k: [] for k in ("create-direct", "create-wrapped",
                                                           "start-direct", "start-wrapped")}
        for i in range(runs + 20):  # the first 20 warm the caches and are not counted
            config.write_text(original)
            direct_create = timed([str(stand_in), *create], env)
            config.write_text(original)
            wrapped_create = timed([str(wrapper), *create], env)
            assert "NVIDIA_VISIBLE_DEVICES=GPU-00000000-1111-4222-8333-444444444444," in config.read_text()
            direct_start = timed([str(stand_in), *start], env)
            wrapped_start = timed([str(wrapper), *start], env)
            if i >= 20:
                for key, value in zip(results, (direct_create, wrapped_create, direct_start, wrapped_start)):
                    results[key].append(value)

    median = {k: statistics.median(v) for k, v in results.items()}
    added_create = median["create-wrapped"] - median["create-direct"]
    added_start = median["start-wrapped"] - median["start-direct"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), {platform.platform()}")
    python = subprocess.run(["/usr/bin/python3", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"wrapper python: {python} (/usr/bin/python3, as its #! line says)")
    print(f"{runs} timed calls each; config.json {len(original)} bytes; {len(SLICES)} slices in the map")
    print()
    for key, values in results.items():
        print(f"{key:<15} {summary(values)}")
    print()
    print(f"added by the wrapper, create (reads and rewrites the spec): {added_create:6.2f} ms (median)")
    print(f"added by the wrapper, start (fast path, no JSON):          {added_start:6.2f} ms (median)")
    print(f"added per container start (create + start):                {added_create + added_start:6.2f} ms")


if __name__ == "__main__":
    main()

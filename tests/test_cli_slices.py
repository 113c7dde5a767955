"""The CLI's view of slices: `gpus` with gpu.slice_memory on mixed GPUs (and the GPU too small for
one slice), `render` of the runtime files, and `hub-config`."""

from __future__ import annotations

import json

from tests.lab import fake_nvml

from .conftest import A100, T4

SMALL = fake_nvml.FakeGpu("GPU-cccccccc-bbbb-cccc-dddd-eeeeeeeeeeee", "NVIDIA T400", 2048)


def test_gpus_with_slice_memory_gives_fair_counts(gsn):
    result = gsn("gpus", "--json", "--set", "gpu.slice_memory=10GiB", gpus=[A100, T4, SMALL])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # 40 GiB: 4 slices; 15 GiB: 1; 2 GiB: none, and a note that says why.
    assert data["node_generic_resources"] == [
        f"gpu={A100.uuid}::1", f"gpu={T4.uuid}::1", f"gpu={A100.uuid}::2", f"gpu={A100.uuid}::3",
        f"gpu={A100.uuid}::4"]
    assert data["notes"] == ["GPU 2 (NVIDIA T400, 2.0 GiB) is smaller than gpu.slice_memory = 10GiB: no slices"]


def test_gpus_table_counts_slices_and_notes_the_small_gpu(gsn):
    result = gsn("gpus", "--set", "gpu.slice_memory=4GiB", gpus=[T4, SMALL])
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[2].strip(): line.split("│")[-2].strip() for line in result.stdout.splitlines()
            if line.count("│") > 5 and "GPU-" in line}
    assert rows == {T4.uuid: "3", SMALL.uuid: "0"}
    assert "note: GPU 1 (NVIDIA T400, 2.0 GiB) is smaller than gpu.slice_memory = 4GiB: no slices" in result.stdout


def test_bad_slice_memory_is_a_usage_error(gsn):
    result = gsn("gpus", "--set", "gpu.slice_memory=4GB", gpus=[T4])
    assert result.returncode == 2
    assert "[gpu] slice_memory" in result.stderr and "Traceback" not in result.stderr


def test_render_writes_the_slice_map_from_nvml(gsn, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[tmpfs]\npath = "{tmp_path / "scratch"}"\n[gpu]\nslice_memory = "16GiB"\n')
    result = gsn("render", "--config", str(config), gpus=[A100, T4])
    assert result.returncode == 0, result.stderr
    body = result.stdout.split("# ==> /etc/gpuswarm-node/slices.json (docker-daemon)\n")[1].split("# ==>")[0]
    assert json.loads(body)["slices"] == {f"{A100.uuid}::1": A100.uuid, f"{A100.uuid}::2": A100.uuid}


def test_hub_config_prints_spawner_lines_for_the_nodes_kind(gsn, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('[gpu]\nresource = "nvslice"\n[image]\nname = "hub.example.org:5000/nb:latest"\n')
    result = gsn("hub-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "c.SwarmSpawner.extra_resources_spec = {'generic_resources': {'nvslice': 1}}\n" in result.stdout
    assert "c.SwarmSpawner.image = 'hub.example.org:5000/nb:latest'\n" in result.stdout
    assert "c.JupyterHub.spawner_class = GpuSliceSpawner\n" in result.stdout
    compile(result.stdout, "jupyterhub_config.py", "exec")

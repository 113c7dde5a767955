"""Configuration: layering, validation, and the README's reference kept true to the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpuswarm_node import config
from gpuswarm_node.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_reference_matches_the_code():
    text = README.read_text()
    block = text.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    rows = [line for line in block.strip().splitlines()[2:]]
    expected = [f"| `[{section}] {key}` | `{json.dumps(default)}` | {help} |"
                for section, key, default, help in config.reference()]
    assert rows == expected


def test_flags_over_environment_over_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[swarm]\nmanager = "from-file"\nssh_user = "file-user"\nssh_port = 2200\n')
    env = {"GPUSWARM_SWARM_MANAGER": "from-env", "GPUSWARM_SWARM_SSH_PORT": "2300"}
    cfg = config.load(path, env=env, overrides=["swarm.manager=from-flag"])
    assert cfg.swarm.manager == "from-flag"
    assert cfg.swarm.ssh_port == 2300
    assert cfg.swarm.ssh_user == "file-user"
    assert cfg.source == str(path)


def test_gpuswarm_config_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[gpu]\nslices_per_gpu = 4\n")
    assert config.load(env={"GPUSWARM_CONFIG": str(path)}).gpu.slices_per_gpu == 4


def test_default_path_may_be_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    cfg = config.load(env={})
    assert cfg.source == "defaults" and cfg.gpu.slices_per_gpu == 3


def test_multi_word_section_keys_from_environment():
    env_cfg = config.load(Path("/dev/null"), env={"GPUSWARM_NVIDIA_TOOLKIT_APT_SOURCE": "deb [trusted=yes] file:/r ./"})
    assert env_cfg.nvidia.toolkit_apt_source == "deb [trusted=yes] file:/r ./"


@pytest.mark.parametrize("tables, fragment", [
    ({"docker": {"source": "snap"}}, "[docker] source"),
    ({"tmpfs": {"fraction": 0}}, "[tmpfs] fraction"),
    ({"tmpfs": {"path": "relative"}}, "[tmpfs] path"),
    ({"gpu": {"slices_per_gpu": 0}}, "[gpu] slices_per_gpu"),
    ({"gpu": {"slices_per_gpu": True}}, "[gpu] slices_per_gpu"),
    ({"gpu": {"resource": "g p u"}}, "[gpu] resource"),
    ({"registry": {"address": "hub:5000"}}, "[registry] ca_cert"),
    ({"nvidia": {"toolkit_apt_source": "https://example"}}, "[nvidia] toolkit_apt_source"),
    ({"swarm": {"ssh_port": 0}}, "[swarm] ssh_port"),
    ({"image": {"name": 5}}, "[image] name"),
])
def test_invalid_values_name_the_key(tables, fragment):
    with pytest.raises(ConfigError) as info:
        config.from_tables(tables)
    assert fragment in info.value.message()
    assert info.value.exit_code == 2
    assert re.match(r"^[^\n]+$", info.value.message())

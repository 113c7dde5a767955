"""Configuration: layering, validation, and the reference (docs/reference.md) kept true to the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpuswarm_node import config
from gpuswarm_node.errors import ConfigError

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def test_reference_matches_the_code():
    text = REFERENCE.read_text()
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


def test_origins_name_file_environment_and_flag(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[swarm]\nmanager = "from-file"\nssh_user = "file-user"\n')
    cfg = config.load(path, env={"GPUSWARM_SWARM_SSH_USER": "env-user", "GPUSWARM_GPU_RESOURCE": "gpu"},
                      overrides=["swarm.manager=from-flag"])
    assert cfg.origins == {"swarm.manager": "flag --set swarm.manager", "swarm.ssh_user":
                           "environment GPUSWARM_SWARM_SSH_USER", "gpu.resource": "environment GPUSWARM_GPU_RESOURCE"}
    assert "swarm.ssh_port" not in cfg.origins  # a default


def test_unknown_environment_variables_are_warned_about_not_fatal():
    warned = []
    cfg = config.load(Path("/dev/null"), env={"GPUSWARM_DEBUG": "1", "GPUSWARM_GPU_SLICES_PER_GPUS": "2",
                                              "GPUSWARM_GPU_SLICES_PER_GPU": "4"}, warn=warned.append)
    assert cfg.gpu.slices_per_gpu == 4
    assert len(warned) == 2
    assert warned[0].startswith("ignoring environment variable GPUSWARM_DEBUG: it is not a configuration key.")
    assert "Did you mean GPUSWARM_GPU_SLICES_PER_GPU?" in warned[1]


@pytest.mark.parametrize("raw, value", [("true", True), ("No", False), ("on", True), ("0", False)])
def test_booleans_from_text(raw, value):
    assert config.load(Path("/dev/null"), env={}, overrides=[f"tmpfs.enabled={raw}"]).tmpfs.enabled is value


@pytest.mark.parametrize("tables, words", [
    ({"tmpfs": {"enabled": 1}}, "[tmpfs] enabled (test data) must be true or false, got 1."),
    ({"swarm": {"ssh_port": "x"}}, "[swarm] ssh_port (test data) must be an integer, got 'x'."),
    ({"image": {"name": 5}}, "[image] name (test data) must be a string, got 5."),
    ({"gpu": {"slices_per_gpus": 2}}, "Unknown key [gpu] slices_per_gpus in test data. Did you mean slices_per_gpu?"),
    ({"swarn": {"manager": "x"}}, "Unknown section [swarn] in test data. Did you mean swarm?"),
])
def test_messages_in_plain_english(tables, words):
    with pytest.raises(ConfigError) as info:
        config.from_tables(tables)
    assert words in info.value.message()

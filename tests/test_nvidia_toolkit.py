"""nvidia-toolkit where a JSON case would hide the point: reading toolkit versions, and where the
one-key edit of config.toml goes."""

from __future__ import annotations

import pytest

from gpuswarm_node.steps.nvidia_toolkit import ignores_swarm, major_minor, split_at_mode


@pytest.mark.parametrize("version, want", [
    ("1.18.1-1", (1, 18)), ("1.18.0~rc.3-1", (1, 18)), ("1:1.18.2-1", (1, 18)), ("1.17.8-1", (1, 17)),
    ("1.19.0", (1, 19)), ("", None), ("garbage", None),
])
def test_major_minor(version, want):
    assert major_minor(version) == want


@pytest.mark.parametrize("version, mode, want", [
    ("1.18.1-1", "auto", True), ("1.18.1-1", "jit-cdi", True), ("1.18.1-1", "legacy", False),
    ("1.18.1-1", "cdi", False), ("1.17.8-1", "auto", False), ("1.19.0-1", "auto", False), ("", "auto", False),
])
def test_only_1_18_in_jit_cdi_ignores_swarm(version, mode, want):
    assert ignores_swarm(version, mode) is want


@pytest.mark.parametrize("text, before, after", [
    ('a = 1\n[nvidia-container-runtime]\nlog-level = "info"\nmode = "auto"\n[x]\nmode = "y"\n',
     'a = 1\n[nvidia-container-runtime]\nlog-level = "info"\n', '[x]\nmode = "y"\n'),
    ('[nvidia-container-runtime]  # ours\n  mode="cdi"', '[nvidia-container-runtime]  # ours\n', ''),
    ('[nvidia-container-runtime]\nlog-level = "info"\n[nvidia-container-runtime.modes.cdi]\nmode = "no"\n',
     '[nvidia-container-runtime]\n', 'log-level = "info"\n[nvidia-container-runtime.modes.cdi]\nmode = "no"\n'),
    ('#mode = "auto"\n[nvidia-container-cli]\nx = 1', '#mode = "auto"\n[nvidia-container-cli]\nx = 1\n\n'
     '[nvidia-container-runtime]\n', ''),
    ('', '[nvidia-container-runtime]\n', ''),
], ids=["replaces-mode-in-section", "inline-comment-no-newline", "inserts-before-subtable", "appends-section",
        "empty-file"])
def test_split_at_mode(text, before, after):
    assert split_at_mode(text) == (before, after)

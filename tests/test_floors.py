"""The minimum versions of container-escape fixes (gpuswarm_node/floors.py): Debian's version
order, backports, release lines, and every floor of the table tried just below and at its fix."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gpuswarm_node import floors

PAIRS = [("1.17.8-1", "1.17.8"), ("1.4.0~rc.3", "1.4.0"), ("1.4.0~rc.3", "1.4.0~rc.2"), ("1:1.0-1", "2.0-1"),
         ("1.1.5+ds1-1+deb12u1", "1.1.5+ds1-1"), ("1.1.5+ds1", "1.1.12"), ("1.10.0", "1.9.9"), ("1.0a", "1.0"),
         ("1.0~", "1.0"), ("1.3.3-0ubuntu1~22.04.3", "1.3.3-0ubuntu1"), ("0", "0"), ("1.2.8", "1.2.8")]


@pytest.mark.parametrize("a, b", PAIRS)
def test_order_is_dpkgs(a, b):
    dpkg = shutil.which("dpkg")
    assert dpkg, "dpkg is needed to check the order against"
    for op, want in (("lt", -1), ("eq", 0), ("gt", 1)):
        if subprocess.run([dpkg, "--compare-versions", a, op, b]).returncode == 0:
            assert floors.compare(a, b) == want, (a, op, b)
            assert floors.compare(b, a) == -want


@pytest.mark.parametrize("floor", floors.FLOORS, ids=lambda f: f"{f.component}-{f.fixed}")
def test_each_floor_just_below_and_at_its_fix(floor):
    fixed = floors.as_debian(floor.fixed)
    below = {"1.16.2": "1.16.1", "1.17.3": "1.17.2", "1.17.4": "1.17.3", "1.17.8": "1.17.7", "1.1.12": "1.1.11",
             "1.2.8": "1.2.7", "1.3.3": "1.3.2", "1.4.0-rc.3": "1.4.0-rc.2"}[floor.fixed]
    lacking = floors.missing(floor.component, below + "-1", floor.component)
    assert any(set(floor.advisories) <= set(m.advisories) for m in lacking), (below, lacking)
    at = floors.missing(floor.component, fixed + "-1", floor.component)
    assert not any(set(floor.advisories) & set(m.advisories) for m in at), (fixed, at)


def test_a_line_older_than_every_fixed_line_needs_the_oldest_fix():
    got = floors.merged("runc", floors.missing("runc", "1.1.15", is_upstream=True))
    assert got is not None and got.fixed == "1.2.8" and "CVE-2024-21626" not in got.advisories
    assert floors.missing("runc", "1.5.0", is_upstream=True) == []


def test_a_listed_backport_counts_and_only_for_its_package():
    bookworm = "1.1.5+ds1-1+deb12u1"
    advisories = {a for m in floors.missing("runc", bookworm, "runc") for a in m.advisories}
    assert "CVE-2024-21626" not in advisories and "CVE-2025-31133" in advisories
    # The same version string from another package, or an unlisted later upstream build, is judged upstream.
    assert "CVE-2024-21626" in {a for m in floors.missing("runc", bookworm, "other") for a in m.advisories}
    assert "CVE-2024-21626" in {a for m in floors.missing("runc", "1.1.5+ds1-1", "runc") for a in m.advisories}


def test_every_advisory_has_one_fixed_version_per_line():
    seen = {}
    for floor in floors.FLOORS:
        for advisory in floor.advisories:
            key = (advisory, floor.branch)
            assert key not in seen, key
            seen[key] = floor.fixed
            assert advisory.startswith("CVE-20")

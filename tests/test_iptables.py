"""The filter-table walk (gpuswarm_node/iptables.py) over recorded `iptables -S` listings:
tests/data/iptables/verdicts.json says, per listing, whether a forwarded packet to the address
meets the metadata guard's REJECT, and if not, which rule lets it through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuswarm_node import iptables
from gpuswarm_node.clouds import Guard
from gpuswarm_node.steps import metadata_guard

DATA = Path(__file__).parent / "data" / "iptables"
CASES = json.loads((DATA / "verdicts.json").read_text())["cases"]


def listing(case: dict) -> str:
    if "inline" in case:
        return "".join(f"{line}\n" for line in case["inline"])
    lines = (DATA / case.get("listing", case.get("base", ""))).read_text().splitlines()
    first = case.get("first", [])
    if first:
        at = next((i for i, line in enumerate(lines) if line.startswith("-A DOCKER-USER")), len(lines))
        lines[at:at] = first
    return "\n".join(case.get("chains", []) + lines + case.get("rules", [])) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_verdict(case: dict) -> None:
    guard = Guard(case["address"], tuple(case.get("ports", ())))
    judged = metadata_guard.verdict(listing(case), guard)
    assert judged.hit == case["ok"], judged.why
    assert case.get("why", "") in judged.why


def test_every_layout_file_is_judged() -> None:
    named = {c.get("listing") or c.get("base") for c in CASES}
    assert {p.name for p in DATA.glob("*.rules")} <= named


def test_parse_reads_policies_chains_negations_and_quoted_words() -> None:
    table = iptables.parse('-P FORWARD DROP\n-N X\n-A X ! -o docker0 -m comment --comment "a b" -j RETURN\n'
                           '-A X "unbalanced\n')
    assert table.policies == {"FORWARD": "DROP"} and list(table.chains) == ["FORWARD", "X"]
    (rule,) = table.chains["X"]
    assert rule.target == "RETURN" and ("-o", ("docker0",), True) in rule.options
    assert rule.value("--comment") == ("a b",)


def test_the_script_puts_the_jump_and_every_rule_first() -> None:
    """The script inserts (never appends) the jump as FORWARD's first rule when it is not, and
    each guard's rule at the head of DOCKER-USER when it is not among the guard's rules there."""
    text = metadata_guard.script_text((Guard("169.254.169.254"), Guard("168.63.129.16", (80, 32526))))
    assert '"$cmd" -w -I FORWARD 1 -j DOCKER-USER' in text and '"$cmd" -w -I DOCKER-USER 1 "$@"' in text
    assert " -A DOCKER-USER -j" not in text and "-A FORWARD -j DOCKER-USER\" ]" in text
    assert ("guard iptables -d 168.63.129.16/32 -p tcp -m multiport --dports 80,32526 -m comment --comment "
            "gpuswarm-node-metadata-guard -j REJECT") in text


SCRIPT_LAYOUTS = ["docker-20.10-bridge.rules", "docker-20.10-guard-after-return.rules", "docker-24-swarm.rules",
                  "docker-24-swarm-ingress-first.rules", "docker-28-swarm.rules", "docker-20.10-bridge-guarded.rules",
                  "docker-ipset-forward.rules"]


def run_script(tmp_path: Path, text: str) -> None:
    import os
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = Path(__file__).parent / "fake_iptables.py"
    for program in ("iptables", "ip6tables"):
        (bin_dir / program).write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(fake.parent)!r})\n"
                                       f"import fake_iptables\nsys.exit(fake_iptables.main([{program!r}, *sys.argv[1:]]))\n")
        (bin_dir / program).chmod(0o755)
    (tmp_path / "guard").write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_IPTABLES_STATE": str(tmp_path / "state")}
    subprocess.run(["sh", str(tmp_path / "guard")], env=env, check=True, timeout=30)


@pytest.mark.parametrize("layout", SCRIPT_LAYOUTS)
def test_the_script_leaves_every_guard_in_force_and_changes_nothing_when_run_again(tmp_path: Path, layout: str) -> None:
    """The rendered script, run on each recorded layout (a fake iptables keeps the table), leaves
    a listing in which every guarded address's packets meet the REJECT; a second run adds nothing."""
    guards = (Guard("169.254.169.254"), Guard("100.100.100.200"), Guard("168.63.129.16", (80, 32526)),
              Guard("fd00:ec2::254"))
    (tmp_path / "state.iptables").write_text((DATA / layout).read_text())
    (tmp_path / "state.ip6tables").write_text("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n")
    text = metadata_guard.script_text(guards)
    run_script(tmp_path, text)
    after = {p: (tmp_path / f"state.{p}").read_text() for p in ("iptables", "ip6tables")}
    for guard in guards:
        if guard.program == "ip6tables" and not Path("/proc/net/if_inet6").exists():
            continue
        judged = metadata_guard.verdict(after[guard.program], guard)
        assert judged.hit, (guard, judged.why, after[guard.program])
    run_script(tmp_path, text)
    assert {p: (tmp_path / f"state.{p}").read_text() for p in ("iptables", "ip6tables")} == after

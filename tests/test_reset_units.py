"""reset takes back the units setup enabled and the firewall rules and mounts it put in force,
from the undo records the actions carry (not from their wording), and has systemd forget the
unit files it removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuswarm_node import config, reset
from gpuswarm_node.context import Context
from gpuswarm_node.engine import flatten, run_plan
from gpuswarm_node.journal import Undo
from gpuswarm_node.steps.boot import BootStep
from gpuswarm_node.steps.metadata_guard import MetadataGuardStep
from gpuswarm_node.steps.shared_fs import SharedFsStep
from gpuswarm_node.steps.watch import WatchStep

from .fakes import FakeHost

CASES = Path(__file__).parent / "steps"
GUARD = "gpuswarm-metadata-guard.service"
BOOT = "gpuswarm-node-boot.service"
WATCH = "gpuswarm-node-watch.service"
GUARD_RULES = json.loads((CASES / "metadata-guard" / "converged.json").read_text())["host"]["facts"]["iptables_rules"]


def undo_records(step, case: str) -> list[dict]:
    data = json.loads((CASES / step.name / case).read_text())
    host = FakeHost.from_case(data["host"])
    ctx = Context(config=config.from_tables(data.get("config", {})), host=host)
    return [a.undo.record() for a in flatten(step.check(ctx).actions) if getattr(a, "undo", None) is not None]


@pytest.mark.parametrize("step, case, records", [
    (MetadataGuardStep(), "fresh.json", [{"op": "disable-unit", "unit": GUARD}, {"op": "unguard"}]),
    (BootStep(), "fresh.json", [{"op": "disable-unit", "unit": BOOT}]),
    (WatchStep(), "fresh.json", [{"op": "disable-unit", "unit": WATCH}, {"op": "stop-unit", "unit": WATCH}]),
    (SharedFsStep(), "one-mount-missing.json", [{"op": "umount", "path": "/srv/shared/data"}]),
])
def test_what_setup_enables_and_puts_in_force_carries_its_undo(step, case, records):
    assert undo_records(step, case) == records


def check(undo: Undo, facts: dict, files: dict | None = None):
    ctx = Context(config=config.from_tables({}), host=FakeHost(files=files or {}, facts=facts))
    return reset.UndoStep(undo).check(ctx)


def test_reset_disables_a_unit_setup_enabled_and_only_while_enabled():
    result = check(Undo("disable-unit", unit=BOOT), {"unit_file_state": {BOOT: "enabled"}})
    assert [a.describe() for a in result.actions] == [f"run systemctl disable {BOOT}"]
    assert check(Undo("disable-unit", unit=BOOT), {"unit_file_state": {BOOT: "disabled"}}).state.value == "ok"


def test_reset_stops_the_watch_setup_started_and_only_while_it_runs():
    result = check(Undo("stop-unit", unit=WATCH), {"active_state": {WATCH: "active"}})
    assert [a.describe() for a in result.actions] == [f"run systemctl stop {WATCH}"]
    assert check(Undo("stop-unit", unit=WATCH), {"active_state": {WATCH: "inactive"}}).state.value == "ok"


def test_reset_deletes_the_guard_rules_in_force_and_no_other():
    result = check(Undo("unguard"), {"iptables_rules": GUARD_RULES})
    assert [a.describe() for a in result.actions] == [
        "run iptables -w -D DOCKER-USER -d 169.254.169.254/32 -m comment --comment gpuswarm-node-metadata-guard "
        "-j REJECT --reject-with icmp-port-unreachable",
        "run ip6tables -w -D DOCKER-USER -d fd00:ec2::254/128 -m comment --comment gpuswarm-node-metadata-guard "
        "-j REJECT --reject-with icmp6-port-unreachable"]
    others = {"iptables": "-N DOCKER-USER\n-A DOCKER-USER -d 169.254.169.254/32 -j REJECT\n", "ip6tables": None}
    gone = check(Undo("unguard"), {"iptables_rules": others})
    assert gone.state.value == "ok" and gone.detail == "no metadata guard rule is in DOCKER-USER"


def test_a_reset_undoes_the_guard_newest_first_and_reloads_systemd_after_removing_its_unit():
    unit, script = f"/etc/systemd/system/{GUARD}", "/usr/local/lib/gpuswarm-node/metadata-guard"
    entries = [  # as setup journals the guard's fresh install
        {"kind": "write", "path": script, "undo": {"op": "remove", "path": script}},
        {"kind": "write", "path": unit, "undo": {"op": "remove", "path": unit}},
        {"kind": "run", "argv": ["systemctl", "daemon-reload"]},
        {"kind": "run", "argv": ["systemctl", "enable", GUARD], "undo": {"op": "disable-unit", "unit": GUARD}},
        {"kind": "run", "argv": ["systemctl", "restart", GUARD], "undo": {"op": "unguard"}},
    ]
    deletes = [f"{program} -w -D DOCKER-USER -d {address} -m comment --comment gpuswarm-node-metadata-guard -j REJECT "
               f"--reject-with {icmp}-port-unreachable"
               for program, address, icmp in (("iptables", "169.254.169.254/32", "icmp"),
                                               ("ip6tables", "fd00:ec2::254/128", "icmp6"))]
    host = FakeHost(files={unit: "[Unit]\n", script: "#!/bin/sh\n"},
                    facts={"unit_file_state": {GUARD: "enabled"}, "iptables_rules": dict(GUARD_RULES)},
                    effects={deletes[0]: {"facts": {"iptables_rules": {"iptables": ""}}},
                             deletes[1]: {"facts": {"iptables_rules": {"ip6tables": ""}}},
                             f"systemctl disable {GUARD}": {"facts": {"unit_file_state": {GUARD: "disabled"}}}})
    ctx = Context(config=config.from_tables({}), host=host)
    report = run_plan(reset.reset_plan(ctx, reset.plan(entries)), ctx)
    assert host.actions == [*(f"run {d}" for d in deletes), f"run systemctl disable {GUARD}", f"remove {unit}",
                            f"remove {script}", "run systemctl daemon-reload"]
    assert report.ok and [s.name for s in report.steps] == ["unguard", "disable-unit", "remove", "remove",
                                                             "systemd-reload"]
    # Run again: everything is undone already.
    again = Context(config=config.from_tables({}), host=host)
    host.actions.clear()
    assert run_plan(reset.reset_plan(again, reset.plan(entries)), again).ok and host.actions == []

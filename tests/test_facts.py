"""Facts: each read of the machine once per run, read again after an action, a stated fact wins,
and the files that stand in for commands say what the commands said."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from gpuswarm_node import config
from gpuswarm_node import facts as F
from gpuswarm_node.context import Context
from gpuswarm_node.engine import perform, run_command

from .fakes import FakeHost

STATUS = ("Package: docker.io\nStatus: install ok installed\nPriority: optional\nVersion: 20.10.24+dfsg1-1\n"
          "Description: Linux container runtime\n continuation line\n\n"
          "Package: nvidia-container-toolkit\nStatus: deinstall ok config-files\nVersion: 1.17.8-1\n\n"
          "Package: hold-me\nStatus: hold ok installed\nVersion: 2\n")
SHOW = "systemctl show --property=" + ",".join(F.UNIT_PROPERTIES) + " " + " ".join(F.SHOWN_TOGETHER)
DOCKER_BLOCK = ("LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nMainPID=812\n"
                "FragmentPath=/lib/systemd/system/docker.service\n")
BOOT_BLOCK = "LoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\nMainPID=0\n"
GUARD_BLOCK = "LoadState=not-found\nActiveState=inactive\nUnitFileState=\nMainPID=0\n"
WATCH_BLOCK = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nMainPID=977\n"


def test_dpkg_status_file_says_what_dpkg_query_says():
    facts = F.Facts(FakeHost(files={F.DPKG_STATUS: STATUS}))
    assert facts.get(F.PACKAGE_INSTALLED, "docker.io") and facts.get(F.PACKAGE_INSTALLED, "hold-me")
    assert not facts.get(F.PACKAGE_INSTALLED, "nvidia-container-toolkit")  # config files only
    assert not facts.get(F.PACKAGE_INSTALLED, "docker")  # a prefix of a name is not the package
    assert not facts.get(F.PACKAGE_INSTALLED, "docker-ce")
    assert facts.get(F.PACKAGE_VERSION, "docker.io") == "20.10.24+dfsg1-1"
    assert facts.get(F.PACKAGE_VERSION, "docker-ce") == ""


def test_one_systemctl_show_answers_every_property_of_every_unit_the_steps_look_at_and_is_read_once():
    host = FakeHost(commands={SHOW: {"stdout": "\n".join([DOCKER_BLOCK, BOOT_BLOCK, GUARD_BLOCK, WATCH_BLOCK])}})
    queries = []
    query = host.query
    host.query = lambda argv: queries.append(argv) or query(argv)
    facts = F.Facts(host)
    asks = [(fact, unit) for fact in (F.UNIT_ACTIVE, F.UNIT_ENABLED, F.MAIN_PID, F.UNIT_LOADED)
            for unit in F.SHOWN_TOGETHER] * 4
    with ThreadPoolExecutor(4) as pool:  # status's checks ask at once
        answers = list(pool.map(lambda ask: facts.get(*ask), asks))
    assert answers == [True, False, False, True, True, True, False, True, 812, 0, 0, 977,
                       True, True, False, True] * 4
    assert len(queries) == 1


def test_a_unit_no_step_names_is_shown_by_itself():
    one = "systemctl show --property=" + ",".join(F.UNIT_PROPERTIES) + " containerd"
    facts = F.Facts(FakeHost(commands={one: {"stdout": "ActiveState=active\n"}}))
    assert facts.get(F.UNIT_ACTIVE, "containerd")


def test_the_steps_units_are_the_ones_shown_together():
    from gpuswarm_node.steps import boot, metadata_guard, watch

    assert {"docker", boot.UNIT_NAME, metadata_guard.UNIT_NAME, watch.UNIT_NAME} == set(F.SHOWN_TOGETHER)


def test_no_systemd_means_not_active_and_not_enabled():
    one = "systemctl show --property=" + ",".join(F.UNIT_PROPERTIES) + " docker"
    no_systemd = {"rc": 1, "stderr": "System has not been booted with systemd\n"}
    facts = F.Facts(FakeHost(commands={SHOW: no_systemd, one: no_systemd}))
    assert facts.get(F.ACTIVE_STATE, "docker") == "" and not facts.get(F.UNIT_ENABLED, "docker")
    assert facts.get(F.MAIN_PID, "docker") == 0


def test_an_action_makes_the_next_check_read_the_machine_again():
    host = FakeHost(files={F.DPKG_STATUS: ""}, effects={"apt-get install docker.io": {"files": {F.DPKG_STATUS: STATUS}}})
    ctx = Context(config=config.from_tables({}), host=host)
    assert not ctx.fact(F.PACKAGE_INSTALLED, "docker.io")
    host.files[F.DPKG_STATUS] = STATUS  # changed behind the run's back: the answer is kept
    assert not ctx.fact(F.PACKAGE_INSTALLED, "docker.io")
    perform(ctx, run_command("apt-get", "install", "docker.io"))
    assert ctx.fact(F.PACKAGE_INSTALLED, "docker.io")


def test_a_stated_fact_wins_over_the_machine():
    host = FakeHost(files={F.DPKG_STATUS: STATUS}, facts={"package_installed": {"docker.io": False},
                                                          "dpkg_architecture": "arm64"})
    ctx = Context(config=config.from_tables({}), host=host)
    assert not ctx.fact(F.PACKAGE_INSTALLED, "docker.io")
    assert ctx.fact(F.DPKG_ARCHITECTURE) == "arm64"
    assert ctx.fact(F.PACKAGE_VERSION, "docker.io") == "20.10.24+dfsg1-1"  # not stated: read


def test_iptables_listing_gives_each_chains_rules():
    listing = "-P FORWARD DROP\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n"
    assert F.chain_rules(listing, "FORWARD") == [["-A", "FORWARD", "-j", "DOCKER-USER"]]
    assert F.chain_rules(None, "FORWARD") == []


def test_nvml_is_asked_again_after_an_action_and_not_before():
    from gpuswarm_node import config
    from gpuswarm_node.context import Context
    from gpuswarm_node.errors import NvmlUnavailable
    from gpuswarm_node.probes.gpu import Inventory

    answers = [NvmlUnavailable("libnvidia-ml.so.1 is not installed.", ""),
               NvmlUnavailable("NVIDIA's driver is not loaded (NVML: Driver Not Loaded).", "")]
    asked = []

    def read() -> Inventory:
        asked.append(1)
        raise answers[len(asked) - 1]

    ctx = Context(config=config.from_tables({}), host=FakeHost(), inventory_reader=read)
    for _ in range(2):  # read once per run ...
        with pytest.raises(NvmlUnavailable, match="not installed"):
            ctx.inventory()
    ctx.facts.forget()  # ... until an action changed the machine (the engine forgets the facts)
    with pytest.raises(NvmlUnavailable, match="not loaded"):
        ctx.inventory()
    assert len(asked) == 2

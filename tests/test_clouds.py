"""clouds.py: which cloud the machine is on (tests/data/clouds/detect.json: what cloud-init and
the firmware say on each), each cloud's metadata addresses, and docker.metadata_addresses."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from gpuswarm_node import clouds, config
from gpuswarm_node.errors import ConfigError

CASES = json.loads((Path(__file__).parent / "data" / "clouds" / "detect.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_detect(case: dict) -> None:
    cloud, how = clouds.detect(case.get("cloud_id"), case.get("instance_data"), case.get("dmi", {}))
    assert cloud == case["cloud"], how
    assert case.get("how", "") in how


def test_every_cloud_guards_valid_addresses_and_cites_its_source() -> None:
    for name, (guards, source) in clouds.CLOUDS.items():
        assert guards and source.startswith("DataSource"), name
        for guard in guards:
            ipaddress.ip_address(guard.address)
            assert guard.address in source or guard.address == clouds.IMDS, (name, guard)
    assert {g.address for g in clouds.CLOUDS["aws"][0]} == {"169.254.169.254", "fd00:ec2::254"}
    assert clouds.Guard("168.63.129.16", (80, 32526)) in clouds.CLOUDS["azure"][0]  # 53 (DNS) stays open
    assert {g.address for g in clouds.CLOUDS["aliyun"][0]} == {"100.100.100.200"}
    assert {g.address for g in clouds.CLOUDS["oracle"][0]} == {"169.254.169.254", "192.0.0.192"}


def test_every_dmi_sign_names_a_cloud_of_the_table() -> None:
    assert {cloud for _f, _v, cloud in clouds.DMI_SIGNS} <= set(clouds.CLOUDS)


def test_configured_addresses_come_after_the_clouds_and_once() -> None:
    guards = clouds.guards_for("gce", clouds.parse_addresses("10.0.0.1, 169.254.169.254,10.0.0.1 , ::ffff:1.2.3.4"))
    assert [g.address for g in guards] == ["169.254.169.254", "10.0.0.1", "::ffff:102:304"]
    assert [g.program for g in guards] == ["iptables", "iptables", "ip6tables"]
    assert [g.address for g in clouds.guards_for(None)] == ["169.254.169.254", "fd00:ec2::254"]


@pytest.mark.parametrize("value", ["metadata.google.internal", "169.254.0.0/16", "169.254.169.254:80",
                                   "1.2.3", "-j ACCEPT", "fd00:ec2::254%eth0", "10.0.0.1; reboot"])
def test_metadata_addresses_takes_ip_addresses_only(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config.from_tables({"docker": {"metadata_addresses": f"10.0.0.1, {value}"}})
    assert "[docker] metadata_addresses must be IP addresses" in str(raised.value)


def test_metadata_addresses_accepts_both_families() -> None:
    cfg = config.from_tables({"docker": {"metadata_addresses": "100.100.100.200, fd00:42::42"}})
    assert clouds.parse_addresses(cfg.docker.metadata_addresses) == ("100.100.100.200", "fd00:42::42")

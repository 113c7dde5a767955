"""The dockerd settings with which Docker refuses swarm mode, per Docker version, as data.

Docker checks them when a node inits or joins a swarm (and when a swarm member's dockerd starts):
moby's `Config.IsSwarmCompatible`, called by `Cluster.newNodeRunner` (daemon/cluster/cluster.go).
What it refuses, read from moby's source at each release the tool meets (Debian 12's docker.io
20.10, Ubuntu's and Docker CE's 24 to 28, Debian 13's 26.1, Docker CE 29):

- v20.10.24 daemon/config/config_unix.go: cluster-store or cluster-advertise set; live-restore on.
- v23.0.0 to v28.5.2 daemon/config/config_linux.go: live-restore on. (cluster-store and
  cluster-advertise are gone from the daemon's options: dockerd does not start with them at all.)
- docker-v29.0.0 daemon/config/config_linux.go: also firewall-backend "nftables" while "iptables"
  is on (its default). Before 29 the key is unknown, and dockerd does not start with it.
- docker-v29.6.0 (commit 280a23a32d): the experimental feature "swarm-nftables" lifts that refusal.

A setting counts wherever dockerd reads it: daemon.json or a flag on its command line (the unit's
ExecStart=, a drop-in, a variable an environment file sets). What the tool may take away without
changing what the operator chose (live-restore in daemon.json: swarm needs it off) it removes and
says so; the rest is refused naming the key or the line, with the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from . import facts as F

Version = tuple[int, int]


@dataclass(frozen=True)
class Refused:
    """One setting swarm mode refuses.

    key: the daemon.json key (its flag is --key); refused(settings, version): whether the effective
    settings (daemon.json and flags together; version (major, minor) or None when unknown) trip it;
    dockerd: Docker's own words; since/until: the Docker versions whose IsSwarmCompatible refuses it
    (until exclusive, None open); source: where in moby's source; removed: whether the tool takes
    it out of daemon.json itself (else the operator must); fix: what the operator does otherwise."""

    key: str
    refused: Callable[[dict, Version | None], bool]
    dockerd: str
    since: Version | None
    until: Version | None
    source: str
    removed: bool
    fix: str
    elsewhere: str = ""  # what the Docker versions outside since..until do with it instead


def _on(value: object) -> bool:
    return value is True


def _nftables(settings: dict, version: Version | None) -> bool:
    if settings.get("firewall-backend") != "nftables" or settings.get("iptables", True) is False:
        return False
    features = settings.get("features") if isinstance(settings.get("features"), dict) else {}
    # The feature counts only where dockerd knows it; an unknown version (Docker not installed
    # yet) is judged again once it is.
    return not (features.get("swarm-nftables") is True and (version is None or version >= (29, 6)))


REFUSED = (
    Refused("live-restore", lambda s, _v: _on(s.get("live-restore")),
            "--live-restore daemon configuration is incompatible with swarm mode", None, None,
            "moby v20.10.24 daemon/config/config_unix.go, v23.0.0 to docker-v29.7.2 daemon/config/config_linux.go: "
            "IsSwarmCompatible", True, "remove it"),
    Refused("cluster-store", lambda s, _v: bool(s.get("cluster-store")),
            "--cluster-store and --cluster-advertise daemon configurations are incompatible with swarm mode",
            None, (23, 0), "moby v20.10.24 daemon/config/config_unix.go: IsSwarmCompatible", False,
            "remove it (it belongs to the legacy overlay networking with an external key-value store)",
            elsewhere="Docker 23 and later do not start with it at all"),
    Refused("cluster-advertise", lambda s, _v: bool(s.get("cluster-advertise")),
            "--cluster-store and --cluster-advertise daemon configurations are incompatible with swarm mode",
            None, (23, 0), "moby v20.10.24 daemon/config/config_unix.go: IsSwarmCompatible", False,
            "remove it (it belongs to the legacy overlay networking with an external key-value store)",
            elsewhere="Docker 23 and later do not start with it at all"),
    Refused("firewall-backend", _nftables, "--firewall-backend=nftables is incompatible with swarm mode",
            (29, 0), None, "moby docker-v29.0.0 daemon/config/config_linux.go: IsSwarmCompatible (commit 090c319f2e); "
            "docker-v29.6.0 lets the feature swarm-nftables lift it (commit 280a23a32d)", False,
            "remove it (Docker then uses iptables), or on Docker 29.6 and later enable the experimental feature "
            "\"swarm-nftables\"",
            elsewhere="Docker before 29.0 does not start with it at all (an unknown key)"),
)
BY_KEY = {r.key: r for r in REFUSED}


def docker_version(facts: F.Facts) -> Version | None:
    """(major, minor) of the Docker Engine dpkg has installed (docker-ce, else docker.io), or
    None when neither is. Debian versions: "20.10.24+dfsg1-1+deb12u1", "5:28.5.2-1~debian.12~bookworm"."""
    for package in ("docker-ce", "docker.io"):
        version = facts.get(F.PACKAGE_VERSION, package) if facts.get(F.PACKAGE_INSTALLED, package) else ""
        match = re.match(r"(?:\d+:)?(\d+)\.(\d+)", version)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


_BOOL = {"1": True, "t": True, "true": True, "TRUE": True, "True": True, "T": True,
         "0": False, "f": False, "false": False, "FALSE": False, "False": False, "F": False}


def flag_settings(words: list[str]) -> dict[str, tuple[object, int]]:
    """The settings that IsSwarmCompatible reads, as dockerd's flags set them: key -> (value,
    index of the word that sets it). Go's flag rules (spf13/pflag): a bool flag takes its value
    only after "=" (strconv.ParseBool's words); a string flag takes "=value" or the next word;
    --feature takes NAME or NAME=BOOL (dockerd's NamedSetOpts, docker-v29), and may repeat."""
    out: dict[str, tuple[object, int]] = {}
    features: dict[str, bool] = {}
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in ("--live-restore", "--iptables"):
            out[name[2:]] = (_BOOL.get(value, value) if eq else True, i)
        elif name in ("--cluster-store", "--cluster-advertise", "--firewall-backend", "--feature"):
            index = i
            if not eq and i + 1 < len(words):
                i += 1
                value = words[i]
            if name == "--feature":
                feature, has, enabled = value.partition("=")
                features[feature] = _BOOL.get(enabled, enabled) if has else True
                out["features"] = (dict(features), index)
            else:
                out[name[2:]] = (value, index)
        i += 1
    return out


def refused(daemon_json: dict, flags: dict[str, tuple[object, int]],
            version: Version | None) -> list[tuple[Refused, str, int | None]]:
    """Every setting swarm mode refuses, with where it is set ("daemon.json" or "flag") and the
    index of the flag's word (None for daemon.json). The settings are dockerd's effective ones:
    daemon.json and the flags together (dockerd refuses a key set in both; that is reported apart)."""
    settings = {**daemon_json, **{k: v for k, (v, _i) in flags.items()}}
    out = []
    for rule in REFUSED:
        if not rule.refused(settings, version):
            continue
        if rule.key in flags:
            out.append((rule, "flag", flags[rule.key][1]))
        else:
            out.append((rule, "daemon.json", None))
    return out


def why(rule: Refused) -> str:
    """Docker's words and the versions that say them, e.g. 'swarm mode refuses it (dockerd:
    "--live-restore daemon configuration is incompatible with swarm mode")'."""
    versions = ""
    if rule.since is not None:
        versions = f" in Docker {rule.since[0]}.{rule.since[1]} and later"
    elif rule.until is not None:
        versions = f" in Docker before {rule.until[0]}.{rule.until[1]}"
    return (f"swarm mode refuses it{versions} (dockerd: \"{rule.dockerd}\")"
            + (f", and {rule.elsewhere}" if rule.elsewhere else ""))

"""The hub's side of the contract: a jupyterhub_config.py for dockerspawner's SwarmSpawner that
asks for this node's slices.

The spawner's keys and their use come from dockerspawner 14 (``dockerspawner/swarmspawner.py``:
``extra_resources_spec`` and ``extra_placement_spec`` are keyword arguments of docker-py's
``Resources`` and ``Placement``; ``use_internal_ip`` makes the hub reach a server at its service
name and ``self.port``) and JupyterHub (``hub_ip``, ``hub_connect_ip``, ``Spawner.start_timeout``
and ``http_timeout``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import Config, host_name_problem
from .errors import ConfigError
from .render import render

# Docker's network names (daemon/names.go: RestrictedNamePattern).
NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


@dataclass(frozen=True)
class HubSide:
    """What only the hub knows. hub_address: the name (or address) servers reach the hub's API at,
    on `network`; network: the attachable overlay network of the hub and its servers; slice_wait:
    seconds a spawn waits for a free slice; start_timeout, http_timeout: seconds, JupyterHub's."""

    hub_address: str = "jupyterhub"
    network: str = "jupyterhub"
    slice_wait: int = 60
    start_timeout: int = 600
    http_timeout: int = 120


def check(side: HubSide) -> None:
    """Raises ConfigError naming the flag for a value that would not work in the config."""
    problem = host_name_problem(side.hub_address, underscore=True)
    if problem:
        raise ConfigError(f"--hub-address {side.hub_address!r}: {problem}.",
                          "Give the hub's container or service name on the network, or its address.")
    if not NETWORK_NAME.fullmatch(side.network):
        raise ConfigError(f"--network {side.network!r} is not a Docker network name.",
                          "Use letters, digits, '_', '.' and '-', starting with a letter or digit.")
    for flag, value in (("--slice-wait", side.slice_wait), ("--start-timeout", side.start_timeout),
                        ("--http-timeout", side.http_timeout)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be at least 1 second.", f"Give {flag} a positive number.")
    if side.slice_wait >= side.start_timeout:
        raise ConfigError(f"--slice-wait {side.slice_wait} is not below --start-timeout {side.start_timeout}: "
                          "JupyterHub would time the spawn out before the spawner could say why.",
                          "Make --slice-wait smaller than --start-timeout.")


def volumes(cfg: Config) -> dict[str, dict[str, str]]:
    """SwarmSpawner.volumes for the shared filesystem: {mount point: {"bind", "mode"}}, the same
    path in the container, read-only where the node mounts it read-only."""
    mounts = getattr(getattr(cfg, "shared", None), "mounts", ()) or ()
    return {m.path: {"bind": m.path, "mode": "ro" if "ro" in m.options.split(",") else "rw"} for m in mounts}


def hub_config(cfg: Config, side: HubSide = HubSide()) -> str:
    """The whole jupyterhub_config.py (text) for this node's kind and image; ConfigError for a
    bad `side`."""
    check(side)
    kind = cfg.gpu.resource
    return render("hub-config.py.j2", kind=kind, image=cfg.image.name,
                  resources={"generic_resources": {kind: 1}}, hub_address=side.hub_address,
                  network=side.network, slice_wait=side.slice_wait, start_timeout=side.start_timeout,
                  http_timeout=side.http_timeout, volumes=volumes(cfg))


def gpu_profiles(nodes: list[dict]) -> dict[str, dict]:
    """{model: {"description", "constraints", "nodes", "slices", "slice_memory_mib"}} from the
    swarm's nodes as `docker node inspect` prints them (their gpuswarm.* labels, set by the
    workers' node-labels step); nodes without a model label, or not ready, are left out."""
    from .steps.node_labels import MODEL

    profiles: dict[str, dict] = {}
    for node in nodes:
        labels = (node.get("Spec") or {}).get("Labels") or {}
        model = labels.get(MODEL, "")
        if not model or (node.get("Status") or {}).get("State") != "ready":
            continue
        profile = profiles.setdefault(model, {"constraints": [f"node.labels.{MODEL}=={model}"], "nodes": 0,
                                              "slices": 0, "slice_memory_mib": None})
        profile["nodes"] += 1
        slices = labels.get("gpuswarm.slices", "")
        profile["slices"] += int(slices) if slices.isdigit() else 0
        mib = labels.get("gpuswarm.slice.memory_mib", "")
        if mib.isdigit():
            low = profile["slice_memory_mib"]
            profile["slice_memory_mib"] = int(mib) if low is None else min(low, int(mib))
    for model, profile in profiles.items():
        per_slice = f", {profile['slice_memory_mib']} MiB per slice" if profile["slice_memory_mib"] else ""
        profile["description"] = (f"{model}: {profile['slices']} slice(s) on {profile['nodes']} node(s)"
                                  f"{per_slice}")
    return dict(sorted(profiles.items()))


def swarm_nodes() -> list[dict]:
    """Every node of the swarm this hub manages (`docker node inspect`, through the docker CLI)."""
    import json
    import subprocess

    from .errors import GpuswarmError

    def docker(*argv: str) -> str:
        try:
            done = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GpuswarmError(f"docker cannot be run here: {exc}.", "Run this on the swarm manager.") from None
        if done.returncode != 0:
            raise GpuswarmError(f"`docker {' '.join(argv[:2])}` failed: {done.stderr.strip() or done.returncode}.",
                                "Run this on the swarm manager, as a user who may run docker.")
        return done.stdout

    ids = docker("node", "ls", "--quiet").split()
    return json.loads(docker("node", "inspect", *ids)) if ids else []


def hub_profiles(nodes: list[dict]) -> str:
    profiles = gpu_profiles(nodes)
    if not profiles:
        from .errors import GpuswarmError

        raise GpuswarmError("no ready node of this swarm has GPU labels (gpuswarm.gpu.model).",
                            "Run setup on the workers (its node-labels step labels them), then try again.")
    return render("hub-profiles.py.j2", profiles={m: {"description": p["description"],
                                                      "constraints": p["constraints"]}
                                                  for m, p in profiles.items()})

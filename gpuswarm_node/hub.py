"""The hub's side of the contract: SwarmSpawner settings that ask for this node's resource kind."""

from __future__ import annotations

from .config import Config
from .render import render


def hub_config(cfg: Config) -> str:
    kind = cfg.gpu.resource
    return render("hub-config.py.j2", kind=kind, image=cfg.image.name,
                  resources={"generic_resources": {kind: 1}})


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

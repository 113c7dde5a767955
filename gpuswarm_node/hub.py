"""The hub's side of the contract: SwarmSpawner settings that ask for this node's resource kind."""

from __future__ import annotations

from .config import Config
from .render import render


def hub_config(cfg: Config) -> str:
    kind = cfg.gpu.resource
    return render("hub-config.py.j2", kind=kind, image=cfg.image.name,
                  resources={"generic_resources": {kind: 1}})

"""The steps, in the order setup runs them. Their names are part of the interface."""

from __future__ import annotations

from ..engine import Step
from ..errors import ConfigError
from .docker import DockerStep
from .docker_daemon import DockerDaemonStep
from .docker_group import DockerGroupStep
from .image import ImageStep
from .metadata_guard import MetadataGuardStep
from .node_labels import NodeLabelsStep
from .nvidia_driver import NvidiaDriverStep
from .nvidia_toolkit import NvidiaToolkitStep
from .registry_trust import RegistryTrustStep
from .shared_fs import SharedFsStep
from .swarm_join import SwarmJoinStep
from .tmpfs import TmpfsStep

# The image is pulled and the shared filesystem mounted before the join, so no notebook lands on a
# node without its image or the directories its service binds; the labels are set once the node is
# in the swarm.
ALL_STEPS: tuple[Step, ...] = (
    TmpfsStep(), DockerGroupStep(), DockerStep(), NvidiaDriverStep(), NvidiaToolkitStep(),
    DockerDaemonStep(), MetadataGuardStep(), RegistryTrustStep(), ImageStep(), SharedFsStep(), SwarmJoinStep(),
    NodeLabelsStep(),
)
STEP_NAMES = tuple(s.name for s in ALL_STEPS)


def select(only: list[str] = (), skip: list[str] = ()) -> list[Step]:
    for name in [*only, *skip]:
        if name not in STEP_NAMES:
            raise ConfigError(f"Unknown step {name!r}.", f"Valid steps: {', '.join(STEP_NAMES)}.")
    both = [name for name in only if name in skip]
    if both:
        raise ConfigError(f"--only and --skip both name {', '.join(both)}, so nothing would run.",
                          "Name each step in one of them.")
    return [s for s in ALL_STEPS if (not only or s.name in only) and s.name not in skip]

"""The steps, in the order setup runs them. Their names are part of the interface."""

from __future__ import annotations

from ..engine import Alongside, Step
from ..errors import ConfigError
from .boot import BootStep
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
from .watch import WatchStep

# The boot unit first, so that whatever fails later is retried at the next boot. The image is
# pulled and the shared filesystem mounted before the join, so no notebook lands on a node without
# its image or the directories its service binds; the labels are set once the node is in the
# swarm, and watch (which drains the node through the manager) runs once the node is in it. The registry's CA comes right after Docker: the pull needs it, and nothing else (dockerd
# reads certs.d at each pull, no restart).
ALL_STEPS: tuple[Step, ...] = (
    BootStep(), TmpfsStep(), DockerGroupStep(), DockerStep(), RegistryTrustStep(), NvidiaDriverStep(),
    NvidiaToolkitStep(), DockerDaemonStep(), MetadataGuardStep(), ImageStep(), SharedFsStep(), SwarmJoinStep(),
    NodeLabelsStep(), WatchStep(),
)
STEP_NAMES = tuple(s.name for s in ALL_STEPS)

# The image pull needs a running Docker and the registry's CA, not the driver or the runtime: it
# runs while the driver is installed (a DKMS build takes minutes) and the toolkit and daemon.json
# are prepared. docker-daemon restarts Docker when daemon.json changes, which would end a pull in
# flight (dockerd drops the layers it had not finished), so that restart waits for the pull: the
# restart itself takes seconds, while pulling only after it would put the whole pull behind the
# driver install again, and a pull retried after a cut would fetch its unfinished layers twice.
ALONGSIDE: tuple[Alongside, ...] = (
    Alongside("image", after=("docker", "registry-trust"), joined_before=("docker-daemon",)),
)


def select(only: list[str] = (), skip: list[str] = ()) -> list[Step]:
    for name in [*only, *skip]:
        if name not in STEP_NAMES:
            raise ConfigError(f"Unknown step {name!r}.", f"Valid steps: {', '.join(STEP_NAMES)}.")
    both = [name for name in only if name in skip]
    if both:
        raise ConfigError(f"--only and --skip both name {', '.join(both)}, so nothing would run.",
                          "Name each step in one of them.")
    return [s for s in ALL_STEPS if (not only or s.name in only) and s.name not in skip]

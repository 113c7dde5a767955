"""hub-notebook-image and hub-jupyterhub-image: images built on the hub from a Dockerfile the tool
ships and pushed to the hub's registry, where the workers (the notebook image) and the hub's own
service (JupyterHub's) pull them.

- The notebook image: hub.notebook_base with the GPU slice hook added (start.sh sources
  before-notebook.d).
- JupyterHub's: JupyterHub, dockerspawner, configurable-http-proxy, the authenticators and the
  idle culler, from PyPI and npm, on hub.jupyterhub_base.

An image's tag is the first 12 hex digits of the SHA-256 of its build context (the Dockerfile and
what it copies): another base or recipe is another tag, so nothing keeps an older image under the
same name. `ok` is judged by effect: the registry holds that tag.
"""

from __future__ import annotations

import hashlib

from ..config import HUB_DIR
from ..context import Context
from ..engine import Check, PlannedFile, blocked, needs_change, ok, run_command, skipped, write_wanted
from ..hub_init import REGISTRY_MANIFEST, registry_address, tls_paths
from ..journal import Undo, keep
from ..render import render, templates_dir

HOOK = "gpuswarm-cuda-env.sh"
BUILD_TIMEOUT = 3600  # a base image of a few GB over a slow link, and pip inside


class RegistryImageStep:
    """An image built from `template` (under templates/, given `base`) and pushed to the hub's
    registry as `repository`:<tag>."""

    name = ""
    description = ""
    repository = ""
    template = ""
    base_key = ""  # the [hub] key naming the image it is built FROM; empty value: skipped
    users = ""  # who pulls it, for the detail

    def base(self, ctx: Context) -> str:
        return getattr(ctx.config.hub, self.base_key)

    @property
    def context_dir(self) -> str:
        return f"{HUB_DIR}/{self.repository}"

    def extra_files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def build_files(self, ctx: Context) -> list[PlannedFile]:
        return [PlannedFile(f"{self.context_dir}/Dockerfile", render(self.template, base=self.base(ctx))),
                *self.extra_files(ctx)]

    def tag(self, ctx: Context) -> str:
        digest = hashlib.sha256()
        for planned in self.build_files(ctx):
            digest.update(planned.path.encode() + b"\0" + str(planned.content).encode() + b"\0")
        return digest.hexdigest()[:12]

    def image(self, ctx: Context) -> str:
        return f"{registry_address(ctx)}/{self.repository}:{self.tag(ctx)}"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return self.build_files(ctx) if self.base(ctx) else []

    def held(self, ctx: Context) -> dict:
        """What the registry holds under this image's tag (hub_init.REGISTRY_MANIFEST)."""
        return ctx.fact(REGISTRY_MANIFEST, f"{registry_address(ctx)} {self.repository} {self.tag(ctx)} "
                                           f"{tls_paths(ctx.config)[2]}")

    def check(self, ctx: Context) -> Check:
        if not self.base(ctx):
            return skipped(f"hub.{self.base_key} is empty: no {self.repository} image is built here")
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        image = self.image(ctx)
        held = self.held(ctx)
        if "problem" in held:
            return blocked(f"{held['problem']}; the image goes there", waits_for=("hub-registry", "hub-registry-trust"))
        writes = [w for w in (write_wanted(ctx, p) for p in self.files(ctx)) if w is not None]
        if "digest" in held and not writes:
            return ok(f"the registry holds {image} ({held['digest'] or 'no digest given'}); {self.users}",
                      data={"image": image})
        return needs_change(
            f"the registry has no {image}" if "digest" not in held else f"the build context in {self.context_dir} differs",
            *writes,
            run_command("docker", "build", "--pull", "--tag", image, "--", self.context_dir, timeout=BUILD_TIMEOUT,
                        progress=f"building {image} from {self.base(ctx)}", undo=Undo("remove-image", image=image)),
            run_command("docker", "push", "--", image, timeout=BUILD_TIMEOUT, progress=f"pushing {image}",
                        undo=keep(f"{image} left in the hub's registry")))


class HubNotebookImageStep(RegistryImageStep):
    name = "hub-notebook-image"
    description = "the notebook image (JupyterLab, jupyterhub-singleuser, the GPU slice hook) in the hub's registry"
    repository = "notebook"
    template = "notebook/Dockerfile.j2"
    base_key = "notebook_base"
    users = "workers pull it as image.name"

    def extra_files(self, ctx: Context) -> list[PlannedFile]:
        return [PlannedFile(f"{self.context_dir}/{HOOK}", (templates_dir() / "before-notebook.d" / HOOK).read_text())]


class HubJupyterhubImageStep(RegistryImageStep):
    name = "hub-jupyterhub-image"
    description = "JupyterHub's image (JupyterHub, dockerspawner, configurable-http-proxy, authenticators, idle culler)"
    repository = "jupyterhub"
    template = "jupyterhub/Dockerfile.j2"
    base_key = "jupyterhub_base"
    users = "the hub's jupyterhub service runs it"


def build_files(ctx: Context) -> list[PlannedFile]:
    return HubNotebookImageStep().build_files(ctx)


def notebook_tag(ctx: Context) -> str:
    return HubNotebookImageStep().tag(ctx)


def notebook_image(ctx: Context) -> str:
    """The notebook image's name, as the workers' image.name must say it."""
    return HubNotebookImageStep().image(ctx)

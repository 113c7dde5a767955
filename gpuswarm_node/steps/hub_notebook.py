"""hub-notebook-image: the notebook image the workers pull, built on the hub from hub.notebook_base
with the GPU slice hook added (a Dockerfile the tool ships), and pushed to the hub's registry.

Its tag is the first 12 hex digits of the SHA-256 of the build context (the Dockerfile and the
hook): another base or another hook is another tag, so a worker never keeps an older image under
the same name. `ok` is judged by effect: the registry holds that tag.
"""

from __future__ import annotations

import hashlib

from ..context import Context
from ..engine import Check, PlannedFile, blocked, needs_change, ok, run_command, skipped, write_wanted
from ..hub_init import NOTEBOOK_CONTEXT, NOTEBOOK_REPOSITORY, REGISTRY_MANIFEST, registry_address, tls_paths
from ..journal import Undo, keep
from ..render import render, templates_dir

HOOK = "gpuswarm-cuda-env.sh"
BUILD_TIMEOUT = 3600  # a base image of a few GB over a slow link, and pip inside


def build_files(ctx: Context) -> list[PlannedFile]:
    hook = (templates_dir() / "before-notebook.d" / HOOK).read_text()
    return [PlannedFile(f"{NOTEBOOK_CONTEXT}/Dockerfile", render("notebook/Dockerfile.j2",
                                                                  base=ctx.config.hub.notebook_base)),
            PlannedFile(f"{NOTEBOOK_CONTEXT}/{HOOK}", hook)]


def notebook_tag(ctx: Context) -> str:
    digest = hashlib.sha256()
    for planned in build_files(ctx):
        digest.update(planned.path.encode() + b"\0" + str(planned.content).encode() + b"\0")
    return digest.hexdigest()[:12]


def notebook_image(ctx: Context) -> str:
    """The notebook image's name, as the workers' image.name must say it."""
    return f"{registry_address(ctx)}/{NOTEBOOK_REPOSITORY}:{notebook_tag(ctx)}"


class HubNotebookImageStep:
    name = "hub-notebook-image"
    description = "the notebook image (JupyterLab, jupyterhub-singleuser, the GPU slice hook) in the hub's registry"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return build_files(ctx) if ctx.config.hub.notebook_base else []

    def check(self, ctx: Context) -> Check:
        if not ctx.config.hub.notebook_base:
            return skipped("hub.notebook_base is empty: no notebook image is built here")
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        image, tag = notebook_image(ctx), notebook_tag(ctx)
        held = ctx.fact(REGISTRY_MANIFEST, f"{registry_address(ctx)} {NOTEBOOK_REPOSITORY} {tag} {tls_paths(ctx.config)[2]}")
        if "problem" in held:
            return blocked(f"{held['problem']}; the image goes there", waits_for=("hub-registry", "hub-registry-trust"))
        writes = [w for w in (write_wanted(ctx, p) for p in self.files(ctx)) if w is not None]
        if "digest" in held and not writes:
            return ok(f"the registry holds {image} ({held['digest'] or 'no digest given'}); workers pull it as image.name",
                      data={"image": image})
        return needs_change(
            f"the registry has no {image}" if "digest" not in held else f"the build context in {NOTEBOOK_CONTEXT} differs",
            *writes,
            run_command("docker", "build", "--pull", "--tag", image, "--", NOTEBOOK_CONTEXT, timeout=BUILD_TIMEOUT,
                        progress=f"building {image} from {ctx.config.hub.notebook_base}",
                        undo=Undo("remove-image", image=image)),
            run_command("docker", "push", "--", image, timeout=BUILD_TIMEOUT, progress=f"pushing {image}",
                        undo=keep(f"{image} left in the hub's registry")))

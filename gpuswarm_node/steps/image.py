"""image: the notebook image is present locally, so no notebook waits for a 14 GB pull."""

from __future__ import annotations

from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok, skipped
from ..context import Context
from ..journal import Undo


class ImageStep:
    name = "image"
    description = "the notebook image pulled"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        name = ctx.config.image.name
        if not name:
            return skipped("no image configured (image.name is empty)")
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        if ctx.docker.image_present(name):
            return ok(f"{name} is present")

        def pull(ctx: Context) -> None:
            with ctx.reporter.pull(name) as progress:
                ctx.docker.pull(name, progress)

        return needs_change(f"{name} is not present", Call(f"pull {name}", pull, Undo("remove-image", image=name)))

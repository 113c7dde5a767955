"""image: the notebook image is present locally, so no notebook waits for a 14 GB pull."""

from __future__ import annotations

import re

from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok, skipped
from ..context import Context
from ..journal import Undo


# What the Docker daemon says (its pull error, from the registry or its own HTTP client) when the
# registry is not reachable yet or answers with a server error: worth trying again. Anything else
# (manifest unknown, denied, an untrusted certificate, a bad name) is not.
REGISTRY_TRANSIENT = re.compile(
    r"connection refused|connection reset|i/o timeout|TLS handshake timeout|timeout exceeded|"
    r"Client\.Timeout|no such host|Temporary failure in name resolution|server misbehaving|network is unreachable|"
    r"no route to host|unexpected EOF|\b(?:502|503|504)\b|Bad Gateway|Service Unavailable|Gateway Time-?out|"
    r"toomanyrequests", re.IGNORECASE)
REGISTRY_PERMANENT = re.compile(r"manifest unknown|not found|unauthorized|denied|x509|certificate|invalid reference",
                                re.IGNORECASE)


def registry_transient(exc: BaseException) -> bool:
    """Whether a failed pull (errors.StepFailed naming the daemon's error) may pass by itself."""
    text = str(getattr(exc, "cause", exc))
    return not REGISTRY_PERMANENT.search(text) and bool(REGISTRY_TRANSIENT.search(text))


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
            def attempt() -> None:
                with ctx.reporter.pull(name) as progress:
                    ctx.docker.pull(name, progress)

            # A retry resumes: the layers already pulled stay.
            ctx.network(f"pulling {name}", attempt, registry_transient)

        return needs_change(f"{name} is not present", Call(f"pull {name}", pull, Undo("remove-image", image=name)))

"""Domain errors. Each carries one sentence naming the cause and one naming the fix."""

from __future__ import annotations

from .sanitize import clean


class GpuswarmError(Exception):
    """Base of every error the tool reports to the user without a traceback."""

    exit_code = 1
    # A failure of the network that a retry may get past (retry.is_transient); set where it is made.
    transient = False

    def __init__(self, cause: str, fix: str = "") -> None:
        # The message may quote outside text (Docker's error, the manager's answer, apt's last
        # line): made safe to print and log here, where every error passes (sanitize.py).
        cause, fix = clean(cause), clean(fix)
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def message(self) -> str:
        return f"{self.cause} {self.fix}".strip()

    @property
    def reason(self) -> str:
        """The cause without its full stop, for embedding in a longer sentence."""
        return self.cause.rstrip(".")


class ConfigError(GpuswarmError):
    """The configuration (file, environment or flags) is wrong: usage error, exit 2."""

    exit_code = 2


class StepFailed(GpuswarmError):
    """A step could not converge the machine."""


class CommandFailed(StepFailed):
    """A command the tool ran exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        super().__init__(
            f"`{' '.join(argv)}` exited {returncode}: {last}",
            "Run it by hand to see the full output, fix the cause and re-run setup.",
        )
        self.argv = argv
        self.returncode = returncode
        self.output = output


class NvmlUnavailable(GpuswarmError):
    """NVML could not be initialised (no library, no driver, no permission)."""


class ManagerUnreachable(StepFailed):
    """The swarm manager could not be reached or refused us over SSH."""

"""Retrying what a run reaches over the network, within a bound (node.network_retry).

A zero-touch first boot meets the network at its worst: the hub still rebooting, a DNS record not
out yet, a mirror that answers 503 for a minute. A failure that goes away by itself must not end
the run, and one that does not must end it with its cause and fix, quickly. So:

- only a transient failure is retried: the peer not reachable (connection refused or reset, a time
  out, no route, a name that does not resolve yet, an SSH banner that never came); a permanent one
  (a refused key, an unknown or changed host key, a configuration error, an image that does not
  exist) ends the run at once, as a retry would only repeat it;
- each retry is said in one line (what failed, why, when the next try is), and the tries stop
  once the window has passed; the last error is raised as it is, with how long it was tried;
- the waits grow (2, 4, 8, ... s, at most MAX_DELAY) and never run past the window's end.

`clock` and `sleep` are seams: tests give a fake clock, so no test waits.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from .errors import GpuswarmError

T = TypeVar("T")

FIRST_DELAY = 2.0
MAX_DELAY = 30.0


class Transient(GpuswarmError):
    """A failure of the network that may go away by itself (the peer's fault, not ours)."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a failure worth trying again: marked `transient` (errors.ManagerUnreachable
    and the like carry the classification of their cause), or a Transient."""
    return isinstance(exc, Transient) or bool(getattr(exc, "transient", False))


def retrying(what: str, attempt: Callable[[], T], window: float, say: Callable[[str], None],
             transient: Callable[[BaseException], bool] = is_transient,
             clock: Callable[[], float] | None = None, sleep: Callable[[float], None] | None = None) -> T:
    """`attempt()`'s answer, trying again after a transient failure until `window` seconds have
    passed since the first try. Raises the last failure (a GpuswarmError gets "(tried N times
    over S s)" added to its cause); a permanent one at once. `clock` and `sleep` default to the
    time module's, looked up at the call."""
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    started = clock()
    delay, tries = FIRST_DELAY, 0
    while True:
        tries += 1
        try:
            return attempt()
        except Exception as exc:  # noqa: BLE001 - classified; a permanent one is raised as it is
            left = window - (clock() - started)
            if not transient(exc) or left <= 0:
                if tries > 1 and isinstance(exc, GpuswarmError):
                    exc.cause = f"{exc.cause.rstrip('.')} (tried {tries} times over {clock() - started:.0f} s)."
                raise
            wait = min(delay, MAX_DELAY, left)
            reason = exc.cause if isinstance(exc, GpuswarmError) else f"{type(exc).__name__}: {exc}"
            say(f"{what} failed: {reason.rstrip('.')}; trying again in {wait:.0f} s "
                f"(retrying for {left:.0f} s more, node.network_retry)")
            sleep(wait)
            delay *= 2

"""apt actions shared by the steps that install packages.

apt waits for dpkg's locks itself (`DPkg::Lock::Timeout`), but takes the package lists' lock
(`apt-get update`) and the download directory's lock (`apt-get install`) without waiting, up to
apt 3 (apt-pkg/acquire.cc, pkgAcquire::GetLock): on a first boot, while cloud-init or
unattended-upgrades refreshes the lists, it fails at once (exit 100). So every apt and dpkg command
here waits, within `apt.lock_timeout`, until nobody else holds a lock it needs, and one that still
lost the race for a lock is run again while time is left.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import dataclass

from .. import facts as F
from ..engine import Call, RunCommand
from ..errors import CommandFailed, StepFailed
from ..host import Host, LockHolder
from ..context import Context, QuietReporter, Reporter
from ..journal import Undo, keep

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
APT_LOG = "apt.log"  # in the context's log directory: every apt-get and dpkg run's whole output


DPKG_UPDATES = "/var/lib/dpkg/updates"

LISTS_LOCK = "/var/lib/apt/lists/lock"
ARCHIVES_LOCK = "/var/cache/apt/archives/lock"
DPKG_FRONTEND_LOCK = "/var/lib/dpkg/lock-frontend"
DPKG_LOCK = "/var/lib/dpkg/lock"
LOCK_NAMES = {LISTS_LOCK: "the package lists lock", ARCHIVES_LOCK: "the package download lock",
              DPKG_FRONTEND_LOCK: "the dpkg frontend lock", DPKG_LOCK: "the dpkg lock"}
# What each command locks: dpkg both of its locks (the frontend one unless apt holds it for it);
# apt-get install dpkg's through apt, then the download directory; apt-get update the lists.
DPKG_LOCKS = (DPKG_FRONTEND_LOCK, DPKG_LOCK)
INSTALL_LOCKS = (DPKG_FRONTEND_LOCK, DPKG_LOCK, ARCHIVES_LOCK)
UPDATE_LOCKS = (LISTS_LOCK,)

# apt's and dpkg's words for a lock someone else holds (apt 1.x-3.x, dpkg 1.19-1.22), in the C
# locale, which every command runs in.
LOCK_REFUSED = re.compile(
    r"Could not get lock |Unable to lock directory |Unable to acquire the dpkg frontend lock"
    r"|Unable to lock the administration directory"
    r"|(?:dpkg frontend lock|dpkg status database) (?:was|is) locked by another process")
POLL_SECONDS = 1.0
# apt's words (apt 1.x-3.x, C locale) for a mirror it could not reach or that failed to serve:
# resolution, connection, time-outs, server errors, and a Hash Sum mismatch (a mirror in the middle
# of a sync). A package apt does not know, a signature it refuses, a broken dpkg are not among them.
MIRROR_TRANSIENT = re.compile(
    r"Temporary failure resolving|Could not resolve|Could not connect to|Connection timed out|Connection failed"
    r"|Unable to connect to|Network is unreachable|No route to host|Connection refused|Connection reset"
    r"|\b(?:500|502|503|504) |Bad Gateway|Service Unavailable|Hash Sum mismatch|File has unexpected size")


def mirror_transient(exc: BaseException) -> bool:
    """Whether a failed apt-get (errors.CommandFailed with its output) failed on a mirror's account."""
    return isinstance(exc, CommandFailed) and bool(MIRROR_TRANSIENT.search(exc.output))


def held_lock(host: Host, locks: tuple[str, ...]) -> tuple[str, LockHolder] | None:
    """The first of `locks` another process holds, with its holder."""
    return next(((path, holder) for path in locks if (holder := host.lock_holder(path)) is not None), None)


def wait_until_free(host: Host, locks: tuple[str, ...], deadline: float, timeout: float,
                    reporter: Reporter | None = None) -> None:
    """Return once none of `locks` is held by another process; at `deadline` (time.monotonic)
    fail, naming the lock and who holds it. While it waits, the reporter shows both."""
    while (held := held_lock(host, locks)) is not None:
        path, holder = held
        left = deadline - time.monotonic()
        if left <= 0:
            raise lock_timeout_error(path, holder, timeout)
        label = f"waiting for {LOCK_NAMES.get(path, 'a lock')} ({path}), held by {holder}"
        with (reporter or QuietReporter()).activity(label):
            time.sleep(min(POLL_SECONDS, left))


def lock_timeout_error(path: str, holder: LockHolder, timeout: float) -> StepFailed:
    return StepFailed(f"{LOCK_NAMES.get(path, 'the lock')} ({path}) is still held by {holder} after "
                      f"{timeout:.0f} s of waiting.",
                      "Let it finish (on a first boot cloud-init or unattended-upgrades can take minutes) "
                      "and run setup again, or allow longer with apt.lock_timeout.")


def with_lock_timeout(argv: tuple[str, ...], seconds: int) -> tuple[str, ...]:
    return tuple(f"DPkg::Lock::Timeout={seconds}" if arg.startswith("DPkg::Lock::Timeout=") else arg
                 for arg in argv)


@dataclass(frozen=True)
class AptCommand(RunCommand):
    """An apt-get or dpkg command that waits for the locks it needs, all within `lock_timeout`
    seconds: before it runs, and again when it lost the race for one, after which it runs again
    (a command refused a lock has changed nothing). apt's own wait for dpkg's locks gets the time
    that is left. Journaled and described as the command it runs. Its whole output goes to
    `<ctx.log_dir>/apt.log` (named in the summary and in a failure), apt-get's progress (its
    APT::Status-Fd) to the reporter."""

    locks: tuple[str, ...] = ()
    lock_timeout: int = 0

    def execute(self, ctx: Context) -> None:
        # A mirror that does not answer yet (first boot) is tried again within node.network_retry;
        # the lock waits below have their own bound (apt.lock_timeout).
        ctx.network(self.describe()[len("run "):], lambda: self._execute(ctx), mirror_transient)

    def _execute(self, ctx: Context) -> None:
        deadline = time.monotonic() + self.lock_timeout
        log = f"{ctx.log_dir}/{APT_LOG}"
        if log not in ctx.logs:
            ctx.logs.append(log)
        for attempt in itertools.count(1):
            wait_until_free(ctx.host, self.locks, deadline, self.lock_timeout, ctx.reporter)
            left = max(0, math.ceil(deadline - time.monotonic()))
            try:
                argv = list(with_lock_timeout(self.argv, left))
                if argv[0] == "apt-get":  # apt's own progress; dpkg has no Status-Fd
                    with ctx.reporter.apt(self.progress or self.describe()) as status:
                        ctx.host.run(argv, env=dict(self.env), timeout=self.timeout, log=log, apt_status=status)
                else:
                    with ctx.reporter.activity(self.progress or self.describe()):
                        ctx.host.run(argv, env=dict(self.env), timeout=self.timeout, log=log)
                return
            except CommandFailed as exc:
                if not LOCK_REFUSED.search(exc.output):
                    exc.fix = f"Its whole output is in {log}; fix the cause there and run setup again."
                    raise
                if time.monotonic() >= deadline:
                    if (held := held_lock(ctx.host, self.locks)) is None:
                        raise
                    raise lock_timeout_error(*held, self.lock_timeout) from None
            # Another process took the lock between the look and the command's own attempt: back
            # to waiting; from the second time on, not faster than the polling.
            if attempt > 1:
                time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def apt_command(ctx: Context, *argv: str, locks: tuple[str, ...], timeout: float, progress: str,
                undo: Undo | None = None) -> AptCommand:
    return AptCommand(tuple(argv), tuple(sorted(APT_ENV.items())), timeout, progress, undo,
                      locks=locks, lock_timeout=ctx.config.apt.lock_timeout)


def repair_interrupted(ctx: Context) -> list[RunCommand]:
    """`dpkg --configure -a` when a dpkg run was cut off (files left in its updates journal):
    until then every apt-get install refuses to run."""
    if not ctx.fact(F.DIR_ENTRIES, DPKG_UPDATES):
        return []
    return [apt_command(ctx, "dpkg", "--configure", "-a", locks=DPKG_LOCKS,
                        timeout=ctx.config.apt.lock_timeout + 1800, progress="finishing an interrupted dpkg run")]


def lock_wait(ctx: Context) -> tuple[str, str]:
    # First boot of a cloud image often has unattended-upgrades holding the dpkg lock for
    # minutes: apt waits for it (AptCommand passes the time left of apt.lock_timeout).
    return ("-o", f"DPkg::Lock::Timeout={ctx.config.apt.lock_timeout}")


def update(ctx: Context) -> RunCommand:
    return apt_command(ctx, "apt-get", *lock_wait(ctx), "update", locks=UPDATE_LOCKS,
                       timeout=ctx.config.apt.lock_timeout + 900, progress="apt-get update")


def install(ctx: Context, *packages: str) -> RunCommand:
    names = " ".join(p for p in packages if not p.startswith("-"))
    # Other software may depend on what is installed: reset leaves packages in place, and says so.
    return apt_command(ctx, "apt-get", *lock_wait(ctx), "install", "--yes", "--no-install-recommends", *packages,
                       locks=INSTALL_LOCKS, timeout=ctx.config.apt.lock_timeout + 1800,
                       progress=f"apt-get install {names}",
                       undo=keep(f"packages left installed: {names} (remove with apt-get purge)"))


def download_key(url: str, path: str) -> Call:
    def fetch(ctx: Context) -> None:
        def attempt() -> bytes:
            try:
                return ctx.host.download(url)
            except OSError as exc:
                failure = StepFailed(f"downloading the signing key {url} failed: {exc}.",
                                     "Check this machine's HTTPS access, or use an apt source line that needs no key.")
                # urllib's HTTPError is an OSError too: a 4xx is the URL's, not the network's.
                failure.transient = getattr(exc, "code", 500) >= 500
                raise failure from None

        key = ctx.network(f"downloading {url}", attempt).decode(errors="replace")
        if "BEGIN PGP PUBLIC KEY BLOCK" not in key:
            raise StepFailed(f"{url} did not return an armored PGP key.", "Check the URL.")
        ctx.host.write_text(path, key, 0o644)

    return Call(f"download {url} to {path}", fetch)

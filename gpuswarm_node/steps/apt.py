"""apt actions shared by the steps that install packages."""

from __future__ import annotations

import urllib.request

from ..engine import Call, RunCommand, run_command
from ..errors import StepFailed
from ..system import Context

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


DPKG_UPDATES = "/var/lib/dpkg/updates"


def repair_interrupted(ctx: Context) -> list[RunCommand]:
    """`dpkg --configure -a` when a dpkg run was cut off (files left in its updates journal):
    until then every apt-get install refuses to run."""
    if not ctx.host.listdir(DPKG_UPDATES):
        return []
    return [run_command("dpkg", "--configure", "-a", env=APT_ENV, timeout=1800,
                        progress="finishing an interrupted dpkg run")]


def lock_wait(ctx: Context) -> tuple[str, str]:
    # First boot of a cloud image often has unattended-upgrades holding the dpkg lock for
    # minutes: wait for it, within apt.lock_timeout, then fail with apt's own message.
    return ("-o", f"DPkg::Lock::Timeout={ctx.config.apt.lock_timeout}")


def update(ctx: Context) -> RunCommand:
    return run_command("apt-get", *lock_wait(ctx), "update", env=APT_ENV,
                       timeout=ctx.config.apt.lock_timeout + 900, progress="apt-get update")


def install(ctx: Context, *packages: str) -> RunCommand:
    return run_command("apt-get", *lock_wait(ctx), "install", "--yes", "--no-install-recommends", *packages,
                       env=APT_ENV, timeout=ctx.config.apt.lock_timeout + 1800,
                       progress=f"apt-get install {' '.join(p for p in packages if not p.startswith('-'))}")


def download_key(url: str, path: str) -> Call:
    def fetch(ctx: Context) -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - fixed https URL
                key = response.read().decode()
        except OSError as exc:
            raise StepFailed(f"downloading the signing key {url} failed: {exc}.",
                             "Check this machine's HTTPS access, or use an apt source line that needs no key.") from None
        if "BEGIN PGP PUBLIC KEY BLOCK" not in key:
            raise StepFailed(f"{url} did not return an armored PGP key.", "Check the URL.")
        ctx.host.write_text(path, key, 0o644)

    return Call(f"download {url} to {path}", fetch)

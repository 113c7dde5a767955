"""hub-registry and hub-registry-trust: the hub's TLS registry, Debian's docker-registry package
(no image from the internet) run by systemd with a configuration the tool writes, and the hub's own
Docker trusting it.

The package's unit runs the registry as its own user (docker-registry): systemd hands it the
certificate and the key as credentials (LoadCredential=, systemd 247 and later), so the key stays
root's with mode 0600. The registry takes their paths from REGISTRY_HTTP_TLS_CERTIFICATE and
REGISTRY_HTTP_TLS_KEY (distribution's configuration: REGISTRY_<SECTION>_<KEY> overrides the file).
`ok` is judged by effect: the registry answers TLS on its port with the certificate the files hold.
"""

from __future__ import annotations

import copy
import dataclasses
import time

from .. import facts as F
from ..config import RegistryConfig
from ..context import Context
from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok, run_command, write_wanted
from ..errors import StepFailed
from ..hub_init import (CA_CERT, CERTIFICATE_SUMMARY, REGISTRY_CONFIG, REGISTRY_DROPIN, REGISTRY_PACKAGE,
                        REGISTRY_UNIT, SERVED_CERTIFICATE, registry_address, tls_paths)
from ..journal import Undo
from ..render import render
from . import apt
from .registry_trust import RegistryTrustStep

START_WAIT = 30.0  # seconds the registry gets to answer after systemd started it


def local_address(ctx: Context) -> str:
    return f"127.0.0.1:{ctx.config.hub.registry_port}"


def wanted_fingerprint(ctx: Context) -> str:
    cert, key, _ca = tls_paths(ctx.config)
    summary = ctx.fact(CERTIFICATE_SUMMARY, f"{cert} {key}") or {}
    return summary.get("sha256", "")


def _wait_until_served(ctx: Context) -> None:
    """Wait until the registry answers TLS with the certificate the files hold."""
    want = wanted_fingerprint(ctx)
    deadline = time.monotonic() + START_WAIT
    while True:
        served = ctx.fact(SERVED_CERTIFICATE, local_address(ctx))
        if served.get("sha256") and served.get("sha256") == want:
            return
        if time.monotonic() >= deadline:
            why = served.get("problem") or "it serves another certificate than the files hold"
            raise StepFailed(f"the registry does not answer as configured within {START_WAIT:.0f} s: {why}.",
                             f"See `journalctl -u {REGISTRY_UNIT}`, fix the cause and run hub init again.")
        time.sleep(1.0)
        ctx.facts.forget()


class HubRegistryStep:
    name = "hub-registry"
    description = "the hub's TLS registry (Debian's docker-registry) serving with the hub's certificate"

    def files(self, ctx: Context) -> list[PlannedFile]:
        cert, key, _ca = tls_paths(ctx.config)
        return [PlannedFile(REGISTRY_CONFIG, render("hub-registry.yml.j2", port=ctx.config.hub.registry_port,
                                                    dropin=REGISTRY_DROPIN)),
                PlannedFile(REGISTRY_DROPIN, render("hub-registry.conf.j2", address=registry_address(ctx),
                                                    config=REGISTRY_CONFIG, cert=cert, key=key))]

    def check(self, ctx: Context) -> Check:
        if not ctx.fact(F.SYSTEMD_RUNNING):
            return blocked("systemd is not running on this machine; the tool runs the registry as a systemd service")
        actions: list = []
        reasons: list[str] = []
        for planned in self.files(ctx):
            write = write_wanted(ctx, planned)
            if write is not None:
                actions.append(write)
                reasons.append(f"{planned.path} {'differs' if write.before is not None else 'is missing'}")
        if any(a.path == REGISTRY_DROPIN for a in actions):
            actions.append(run_command("systemctl", "daemon-reload"))
        installed = ctx.fact(F.PACKAGE_INSTALLED, REGISTRY_PACKAGE)
        if not installed:
            # After the files: the package's postinst starts the registry, with them.
            reasons.append(f"{REGISTRY_PACKAGE} is not installed")
            actions += [*apt.repair_interrupted(ctx), apt.update(ctx), apt.install(ctx, REGISTRY_PACKAGE)]
        if not installed or not ctx.fact(F.UNIT_ENABLED, REGISTRY_UNIT):
            if installed:
                reasons.append(f"{REGISTRY_UNIT} is not enabled")
            actions.append(run_command("systemctl", "enable", REGISTRY_UNIT, undo=Undo("disable-unit", unit=REGISTRY_UNIT)))
        active = installed and ctx.fact(F.UNIT_ACTIVE, REGISTRY_UNIT)
        served = ctx.fact(SERVED_CERTIFICATE, local_address(ctx)) if active else {}
        want = wanted_fingerprint(ctx)
        if installed and not active:
            reasons.append(f"{REGISTRY_UNIT} is not running")
        elif active and not actions and served.get("sha256") != want:
            reasons.append(f"the registry at {local_address(ctx)} " + (
                f"does not answer TLS: {served['problem']}" if "problem" in served
                else "serves another certificate than the files hold"))
        if reasons:
            actions += [run_command("systemctl", "restart", REGISTRY_UNIT, timeout=120,
                                    undo=Undo("stop-unit", unit=REGISTRY_UNIT)),
                        Call(f"wait until the registry answers TLS at {local_address(ctx)} with the certificate "
                             f"{tls_paths(ctx.config)[0]}", _wait_until_served)]
            return needs_change("; ".join(reasons), *actions)
        return ok(f"{REGISTRY_UNIT} serves {registry_address(ctx)} with the certificate {tls_paths(ctx.config)[0]}")


class HubRegistryTrustStep(RegistryTrustStep):
    """The worker's registry-trust step, for the hub's own registry and CA: the hub's Docker pulls
    and pushes the notebook image there, with the CA that `hub bundle` gives the workers."""

    name = "hub-registry-trust"
    description = "the hub's Docker trusts its own registry's CA (/etc/docker/certs.d)"

    @staticmethod
    def view(ctx: Context) -> Context:
        """The run as the worker's step sees it: registry.address and registry.ca_cert are the hub's."""
        seen = copy.copy(ctx)
        seen.config = dataclasses.replace(ctx.config, registry=RegistryConfig(registry_address(ctx),
                                                                             tls_paths(ctx.config)[2]))
        return seen

    def files(self, ctx: Context) -> list[PlannedFile]:
        return super().files(self.view(ctx))

    def check(self, ctx: Context) -> Check:
        ca = tls_paths(ctx.config)[2]
        if ca == CA_CERT and ctx.fact(F.FILE_STATUS, CA_CERT) is None:
            return blocked(f"the hub's CA {CA_CERT} is not there yet", waits_for=("hub-ca",))
        return super().check(self.view(ctx))

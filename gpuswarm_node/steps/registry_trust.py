"""registry-trust: Docker trusts the CA of the hub's private TLS registry."""

from __future__ import annotations

from pathlib import Path

from ..engine import Check, PlannedFile, WriteFile, blocked, needs_change, ok, skipped
from ..render import render
from ..system import Context

CERTS_D = "/etc/docker/certs.d"


def ca_path(address: str) -> str:
    # Docker looks the directory up by the exact host:port the image name uses.
    return f"{CERTS_D}/{address}/ca.crt"


def read_ca(ctx: Context) -> str | None:
    try:
        pem = Path(ctx.config.registry.ca_cert).read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    except UnicodeDecodeError:  # binary, e.g. a DER certificate: not PEM
        return ""
    return pem if "-----BEGIN CERTIFICATE-----" in pem else ""


class RegistryTrustStep:
    name = "registry-trust"
    description = "the hub registry's CA installed in /etc/docker/certs.d"

    def files(self, ctx: Context) -> list[PlannedFile]:
        pem = read_ca(ctx) if ctx.config.registry.address else None
        if not pem:
            return []
        return [PlannedFile(ca_path(ctx.config.registry.address), render("registry-ca.crt.j2", pem=pem))]

    def check(self, ctx: Context) -> Check:
        address, source = ctx.config.registry.address, ctx.config.registry.ca_cert
        if not address:
            return skipped("no registry configured (registry.address is empty)")
        pem = read_ca(ctx)
        if pem is None:
            return blocked(f"registry.ca_cert {source} cannot be read; copy the hub's CA certificate there")
        if pem == "":
            return blocked(f"registry.ca_cert {source} holds no PEM certificate; give the hub's CA certificate")
        planned = self.files(ctx)[0]
        current = ctx.host.read_text(planned.path)
        if current == planned.content:
            return ok(f"{planned.path} matches {source}")
        return needs_change(f"{planned.path} {'differs from' if current is not None else 'is missing; source'} {source}",
                            WriteFile(planned.path, planned.content, current))

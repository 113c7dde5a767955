"""registry-trust: Docker trusts the CA of the hub's private TLS registry."""

from __future__ import annotations

import posixpath
from pathlib import Path

from .. import facts as F
from ..engine import Check, PlannedFile, blocked, needs_change, ok, run_command, skipped, write_wanted
from ..host import dir_repair_commands, unsafe
from ..render import render
from ..context import Context

CERTS_D = "/etc/docker/certs.d"


def ca_path(address: str) -> str:
    # Docker looks the directory up by the exact host:port the image name uses.
    return f"{CERTS_D}/{address}/ca.crt"


def read_ca(ctx: Context) -> str | None:
    """The CA certificate's PEM text; None when it cannot be read, "" when it holds no PEM."""
    pem, problem = ctx.fact(F.CERTIFICATE, ctx.config.registry.ca_cert)
    return pem if pem is not None else "" if problem == "holds no PEM certificate" else None


class RegistryTrustStep:
    name = "registry-trust"
    description = "the hub registry's CA installed in /etc/docker/certs.d"

    def files(self, ctx: Context) -> list[PlannedFile]:
        pem = read_ca(ctx) if ctx.config.registry.address else None
        if not pem:
            return []
        return [PlannedFile(ca_path(ctx.config.registry.address), render("registry-ca.crt.j2", pem=pem), 0o644)]

    def check(self, ctx: Context) -> Check:
        address, source = ctx.config.registry.address, ctx.config.registry.ca_cert
        if not address:
            return skipped("no registry configured (registry.address is empty)")
        pem = read_ca(ctx)
        if pem is None:
            why = ctx.fact(F.CERTIFICATE, source)[1]
            return blocked(f"registry.ca_cert {source} {why}; copy the hub's CA certificate there, owned by root "
                           "and writable only by root")
        if pem == "":
            return blocked(f"registry.ca_cert {source} holds no PEM certificate; give the hub's CA certificate")
        planned = self.files(ctx)[0]
        current = ctx.fact(F.FILE_TEXT, planned.path)
        actions, reasons = self._directory_repairs(ctx, planned.path)
        if isinstance(actions, str):
            return blocked(actions)
        if write := write_wanted(ctx, planned):
            actions.append(write)
            reasons.append(f"{planned.path} {'differs from' if current is not None else 'is missing; source'} {source}")
        elif problem := unsafe(ctx.fact(F.FILE_STATUS, planned.path)):
            # Docker trusts whatever CA is here for the registry: only root may change it. The same
            # content written again is root's, mode 0644.
            actions.append(write_wanted(ctx, planned, force=True))
            reasons.append(f"{planned.path} {problem}")
        if actions:
            return needs_change("; ".join(reasons), *actions)
        return ok(f"{planned.path} matches {source}")

    def _directory_repairs(self, ctx: Context, path: str) -> tuple[list | str, list[str]]:
        """chown/chmod for the directories holding the CA (certs.d and its registry's directory)
        that are not root's or are writable by group or others; a symlink among them is refused
        (the first value is then the reason)."""
        actions: list = []
        reasons: list[str] = []
        for directory in (CERTS_D, posixpath.dirname(path)):
            status = ctx.fact(F.FILE_STATUS, directory)
            if status is not None and status.is_symlink:
                return (f"directory {directory} is a symlink, so whoever controls its target could change "
                        "which CA Docker trusts for the registry; make it a directory owned by root"), []
            problem = unsafe(status)
            if problem:
                actions += [run_command(*argv) for argv in dir_repair_commands(directory, status)]
                reasons.append(f"directory {directory} {problem}")
        return actions, reasons

"""hub-ca and hub-certificate: the hub's own CA, and the registry's server certificate for the
hub's names and addresses signed by it (or the operator's own certificate, hub.tls_*).

The keys are root's, mode 0600, in a directory root alone may enter (0700). The CA is made once and
never replaced by the tool: every worker trusts it (registry.ca_cert), so a new one would need a new
bundle for each. The server certificate is issued again whenever the names it must carry change,
it is not the CA's, its key is not its own, or it has less than a month left.
"""

from __future__ import annotations

from ..context import Context
from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok, skipped
from ..errors import StepFailed
from ..hub_init import (CA_CERT, CA_KEY, CERTIFICATE_SUMMARY, REGISTRY_CERT, REGISTRY_KEY, TLS_KEYS, TRUST_PROBLEM,
                        certificate_names,
                        hub_dir_commands, hub_name, key_file_commands, own_tls, private_dir_commands,
                        public_file_commands)
from .. import hub_tls


def ca_summary(ctx: Context) -> dict | None:
    return ctx.fact(CERTIFICATE_SUMMARY, f"{CA_CERT} {CA_KEY}")


def _make_ca(ctx: Context) -> None:
    name = hub_name(ctx)
    cert, key = hub_tls.make_ca(f"gpuswarm-node hub CA {name}".strip())
    ctx.host.write_text(CA_KEY, key, 0o600)  # the key first: a certificate without it is refused
    ctx.host.write_text(CA_CERT, cert, 0o644)


def _repairs(ctx: Context, keys: tuple[str, ...], certs: tuple[str, ...]) -> tuple[list, list[str], str | None]:
    """Ownership and modes of the hub's directories, its keys and its certificates."""
    actions: list = []
    reasons: list[str] = []
    for found in (hub_dir_commands(ctx), private_dir_commands(ctx),
                  *(key_file_commands(ctx, k) for k in keys), *(public_file_commands(ctx, c) for c in certs)):
        more, why, refusal = found
        if refusal:
            return [], [], refusal
        actions += more
        reasons += why
    return actions, reasons, None


class HubCaStep:
    name = "hub-ca"
    description = "the hub's own CA, which workers trust for its registry"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []  # made once with a new key (its content is no template's)

    def check(self, ctx: Context) -> Check:
        if not own_tls(ctx.config):
            return skipped(f"the operator's certificate is used (hub.tls_cert); workers trust hub.tls_ca "
                           f"{ctx.config.hub.tls_ca}")
        summary = ca_summary(ctx)
        repairs, reasons, refusal = _repairs(ctx, (CA_KEY,), (CA_CERT,))
        if refusal:
            return blocked(refusal)
        if summary is None:
            return needs_change(f"no CA yet ({CA_CERT})", *repairs,
                                Call(f"make a CA: its certificate {CA_CERT}, its key {CA_KEY} (root's, mode 0600)",
                                     _make_ca))
        replace = (f"workers trust {CA_CERT}: to start again with a new CA, move {CA_CERT} and {CA_KEY} aside, run "
                   "hub init, and give every worker the new CA (hub bundle)")
        if not summary["cert"] or not summary["key"]:
            missing = CA_CERT if not summary["cert"] else CA_KEY
            return blocked(f"{missing} is missing while the other half of the CA is there; {replace}")
        if "problem" in summary:
            return blocked(f"{CA_CERT} {summary['problem']}; {replace}")
        if not summary["is_ca"] or not summary.get("key_matches"):
            why = "is not a CA certificate" if not summary["is_ca"] else f"does not belong to the key {CA_KEY}"
            return blocked(f"{CA_CERT} {why}; {replace}")
        if summary["days_left"] < 0:
            return blocked(f"the CA {CA_CERT} has expired; {replace}")
        if repairs:
            return needs_change("; ".join(reasons), *repairs)
        return ok(f"the hub's CA {CA_CERT} is valid for {summary['days_left']} more days",
                  data={"days_left": summary["days_left"]})


class HubCertificateStep:
    name = "hub-certificate"
    description = "the registry's TLS certificate for the hub's names and addresses"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []  # issued with a new key (its content is no template's)

    def check(self, ctx: Context) -> Check:
        names = certificate_names(ctx)
        if not own_tls(ctx.config):
            return self._operator(ctx, names)
        ca = ca_summary(ctx)
        if ca is None or not ca.get("cert") or not ca.get("key") or not ca.get("key_matches"):
            return blocked(f"the hub's CA ({CA_CERT}) is not there to sign the certificate", waits_for=("hub-ca",))
        summary = ctx.fact(CERTIFICATE_SUMMARY, f"{REGISTRY_CERT} {REGISTRY_KEY} {CA_CERT}")
        repairs, reasons, refusal = _repairs(ctx, (REGISTRY_KEY,), (REGISTRY_CERT,))
        if refusal:
            return blocked(refusal)
        why = self._why_issue(summary, names)
        if why:
            return needs_change(why, *repairs,
                                Call(f"issue a certificate for {', '.join(names)} signed by the hub's CA: "
                                     f"{REGISTRY_CERT}, its key {REGISTRY_KEY} (root's, mode 0600)",
                                     lambda ctx: _issue(ctx, names)))
        if repairs:
            return needs_change("; ".join(reasons), *repairs)
        return ok(f"{REGISTRY_CERT} carries {', '.join(names)}, signed by the hub's CA, valid for "
                  f"{summary['days_left']} more days", data={"days_left": summary["days_left"]})

    @staticmethod
    def _why_issue(summary: dict | None, names: list[str]) -> str | None:
        if summary is None or not summary.get("cert") or not summary.get("key"):
            return f"no certificate yet ({REGISTRY_CERT})" if summary is None or not summary.get("cert") else \
                f"the key {REGISTRY_KEY} is missing"
        if "problem" in summary:
            return f"{REGISTRY_CERT} {summary['problem']}"
        if sorted(names) != summary["names"]:
            return f"{REGISTRY_CERT} carries {', '.join(summary['names']) or 'no name'}, not {', '.join(names)}"
        if not summary.get("signed_by_ca"):
            return f"{REGISTRY_CERT} is not signed by the hub's CA {CA_CERT}"
        if not summary.get("key_matches"):
            return f"{REGISTRY_CERT} does not belong to the key {REGISTRY_KEY}"
        if summary["days_left"] < hub_tls.RENEW_DAYS:
            return f"{REGISTRY_CERT} expires in {summary['days_left']} days (renewed below {hub_tls.RENEW_DAYS})"
        return None

    def _operator(self, ctx: Context, names: list[str]) -> Check:
        hub = ctx.config.hub
        for key, name, secret in TLS_KEYS:
            why = ctx.fact(TRUST_PROBLEM, f"{'secret' if secret else 'public'} {getattr(hub, name)}")
            if why:
                fix = "readable by root only" if secret else "writable only by root"
                return blocked(f"{key} {getattr(hub, name)} {why}; refusing to trust it: make it a file of root's, {fix}")
        summary = ctx.fact(CERTIFICATE_SUMMARY, f"{hub.tls_cert} {hub.tls_key} {hub.tls_ca}")
        if summary is None or not summary.get("cert") or not summary.get("key") or "problem" in summary:
            return blocked(f"hub.tls_cert {hub.tls_cert} and hub.tls_key {hub.tls_key} are not a readable certificate "
                           "and key; give the PEM files, root's")
        if not summary.get("key_matches"):
            return blocked(f"hub.tls_key {hub.tls_key} is not the key of hub.tls_cert {hub.tls_cert}; give the "
                           "certificate's own key")
        if not summary.get("signed_by_ca"):
            return blocked(f"hub.tls_cert {hub.tls_cert} is not signed by hub.tls_ca {hub.tls_ca}, which workers "
                           "would trust; give the CA that signed it")
        missing = [n for n in names if n not in summary["names"]]
        if missing:
            return blocked(f"hub.tls_cert {hub.tls_cert} does not carry {', '.join(missing)} (it carries "
                           f"{', '.join(summary['names']) or 'no name'}); give a certificate for every name and address "
                           "workers use, or change hub.name and hub.addresses")
        if summary["days_left"] < 0:
            return blocked(f"hub.tls_cert {hub.tls_cert} has expired; give a current certificate")
        return ok(f"the operator's certificate {hub.tls_cert} carries {', '.join(names)}, valid for "
                  f"{summary['days_left']} more days", data={"days_left": summary["days_left"]})


def _issue(ctx: Context, names: list[str]) -> None:
    ca_cert, ca_key = ctx.host.read_text(CA_CERT), ctx.host.read_bytes(CA_KEY)
    if ca_cert is None or ca_key is None:
        raise StepFailed(f"the hub's CA ({CA_CERT}, {CA_KEY}) is gone.", "Run hub init again.")
    try:
        cert, key = hub_tls.issue(ca_cert, ca_key, names)
    except ValueError as exc:  # a CA of another kind put there by hand
        raise StepFailed(f"the hub's CA cannot sign the certificate: {exc}.",
                         f"Move {CA_CERT} and {CA_KEY} aside, run hub init again, and give every worker the new "
                         "CA (hub bundle).") from None
    ctx.host.write_text(REGISTRY_KEY, key, 0o600)
    ctx.host.write_text(REGISTRY_CERT, cert, 0o644)

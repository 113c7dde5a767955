"""The hub registry's TLS: a CA of the hub's own and a server certificate for the hub's names and
addresses, made and read with `cryptography` (already a dependency, through paramiko).

Go's TLS, which both dockerd and the registry use, ignores a certificate's common name: the names a
client asks for must be in its subjectAltName, a DNS name as a dNSName and an address as an
iPAddress (crypto/x509, Certificate.VerifyHostname). A CA certificate needs basicConstraints CA:TRUE
and keyCertSign (RFC 5280 4.2.1.9, 4.2.1.3), which Go checks when it builds the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import time
from typing import Any

CA_DAYS = 3650  # the CA every worker trusts: replacing it means a new bundle for each
CERT_DAYS = 825  # the registry's certificate, renewed by `hub init` when less than RENEW_DAYS are left
RENEW_DAYS = 30


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str, days: int = CA_DAYS) -> tuple[str, bytes]:
    """(certificate PEM, private key PEM) of a new self-signed CA (ECDSA P-256, SHA-256) that may
    sign server certificates only (pathlen 0)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)


def _san(names: list[str]):
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(ca_cert_pem: str, ca_key_pem: bytes, names: list[str], days: int = CERT_DAYS) -> tuple[str, bytes]:
    """(certificate PEM, private key PEM) of a TLS server certificate for `names` (DNS names and IP
    addresses; the first is also its common name), signed by the CA. ValueError for a CA that
    cannot be read."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):  # make_ca's
        raise ValueError(f"the CA's key is a {type(ca_key).__name__}, not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)


def fingerprint(pem_or_der: str | bytes) -> str:
    """SHA-256 of the certificate's DER, in hex: the same for its PEM text and the bytes a TLS
    server sends. "" when it is no certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        if isinstance(pem_or_der, str):
            cert = x509.load_pem_x509_certificate(pem_or_der.encode())
        else:
            cert = x509.load_der_x509_certificate(pem_or_der)
    except ValueError:
        return ""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def summary(cert_pem: str | None, key_pem: bytes | None, ca_pem: str | None = None,
            now: float | None = None) -> dict[str, Any] | None:
    """What a check needs of a certificate and its key, as plain data (a step case states it):
    None when neither file is there; else {"cert": bool, "key": bool} for which are there, and
    for a readable certificate "names" (its subjectAltName entries, sorted), "days_left" (to its
    notAfter, whole days, negative when expired), "is_ca", "sha256" (fingerprint), "key_matches"
    (the key is the certificate's), "signed_by_ca" (with `ca_pem`: the CA's key signed it), or
    "problem" (why it cannot be read)."""
    if cert_pem is None and key_pem is None:
        return None
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    out: dict[str, Any] = {"cert": cert_pem is not None, "key": key_pem is not None}
    if cert_pem is None:
        return out
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return {**out, "problem": "holds no PEM certificate"}
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans]
    except x509.ExtensionNotFound:
        names = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    # not_valid_after_utc from cryptography 42; Debian 12 ships 38, whose naive one is UTC.
    after = (getattr(cert, "not_valid_after_utc", None)
             or cert.not_valid_after.replace(tzinfo=dt.timezone.utc)).timestamp()
    out.update(names=sorted(names), days_left=int((after - (time.time() if now is None else now)) // 86400),
               is_ca=is_ca, sha256=fingerprint(cert_pem))
    if key_pem is not None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            raw = serialization.PublicFormat.SubjectPublicKeyInfo
            out["key_matches"] = (key.public_key().public_bytes(serialization.Encoding.DER, raw)
                                  == cert.public_key().public_bytes(serialization.Encoding.DER, raw))
        except (ValueError, TypeError):
            out["key_matches"] = False
    if ca_pem is not None:
        try:
            ca = x509.load_pem_x509_certificate(ca_pem.encode())
            _verify_signature(ca.public_key(), cert)
            out["signed_by_ca"] = cert.issuer == ca.subject
        except (ValueError, TypeError, InvalidSignature):
            out["signed_by_ca"] = False
    return out


def _verify_signature(public, cert) -> None:
    """Raise InvalidSignature (or TypeError for a key type not handled) unless `public` signed
    `cert` (Certificate.verify_directly_issued_by does this from cryptography 40 on)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    elif isinstance(public, rsa.RSAPublicKey):
        public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(cert.signature, cert.tbs_certificate_bytes)
    else:
        raise TypeError(type(public).__name__)


def served_fingerprint(host: str, port: int, timeout: float = 5.0) -> dict[str, str]:
    """{"sha256": fingerprint} of the certificate a TLS server at host:port presents (not
    verified: this is what it serves, compared with the file by the caller), or {"problem": why}."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return {"problem": f"no TLS answer at {host}:{port} ({getattr(exc, 'strerror', None) or exc})"}
    return {"sha256": fingerprint(der or b"")}


MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"))


def manifest_digest(address: str, repository: str, tag: str, cafile: str, timeout: float = 10.0) -> dict[str, str]:
    """What the registry at `address` (host:port, TLS verified with `cafile`) holds under
    repository:tag: {"digest": "sha256:..."} (its Docker-Content-Digest header, distribution's
    HEAD /v2/<name>/manifests/<reference>), {"missing": "..."} for a 404, or {"problem": why it
    cannot be asked}."""
    import ssl
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"https://{address}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES})
    try:
        context = ssl.create_default_context(cafile=cafile)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return {"digest": response.headers.get("Docker-Content-Digest", "")}
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {"missing": f"the registry has no {repository}:{tag}"}
        return {"problem": f"the registry answered {exc.code} {exc.reason}"}
    except (OSError, ssl.SSLError, ValueError) as exc:
        return {"problem": f"the registry at {address} cannot be asked ({getattr(exc, 'reason', None) or exc})"}

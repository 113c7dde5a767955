"""The hub registry's TLS (hub_tls): the CA and the server certificate as Go's TLS checks them, what
a check reads of them, and the two reads over the network, against real TLS servers on this
machine's loopback."""

from __future__ import annotations

import http.server
import ipaddress
import ssl
import threading

import pytest
from cryptography import x509

from gpuswarm_node import hub_tls
from gpuswarm_node.steps.hub_tls import HubCertificateStep


@pytest.fixture(scope="module")
def ca():
    return hub_tls.make_ca("test hub CA")


@pytest.fixture(scope="module")
def issued(ca):
    return hub_tls.issue(ca[0], ca[1], ["hub.example.org", "127.0.0.1", "2001:db8::5"])


def test_the_ca_signs_server_certificates_only(ca):
    cert = x509.load_pem_x509_certificate(ca[0].encode())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert hub_tls.summary(*ca) == {"cert": True, "key": True, "names": [], "days_left": hub_tls.CA_DAYS - 1,
                                    "is_ca": True, "sha256": hub_tls.fingerprint(ca[0]), "key_matches": True}


def test_names_are_dns_names_and_addresses_ip_addresses(issued, ca):
    # Go's TLS takes neither an address from a dNSName nor a name from the common name.
    sans = x509.load_pem_x509_certificate(issued[0].encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hub.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("2001:db8::5")]
    found = hub_tls.summary(issued[0], issued[1], ca[0])
    assert found["names"] == ["127.0.0.1", "2001:db8::5", "hub.example.org"]
    assert found["signed_by_ca"] and found["key_matches"] and not found["is_ca"]
    assert found["days_left"] == hub_tls.CERT_DAYS - 1


def test_another_cas_certificate_and_another_key_are_told_apart(issued):
    other_cert, other_key = hub_tls.make_ca("another CA")
    found = hub_tls.summary(issued[0], other_key, other_cert)
    assert found["signed_by_ca"] is False and found["key_matches"] is False
    assert hub_tls.summary("not a certificate", None) == {"cert": True, "key": False,
                                                          "problem": "holds no PEM certificate"}
    assert hub_tls.summary(None, None) is None


def test_a_certificate_near_its_end_is_issued_again(ca):
    cert, key = hub_tls.issue(ca[0], ca[1], ["hub.example.org"], days=10)
    found = hub_tls.summary(cert, key, ca[0])
    assert found["days_left"] == 9
    assert HubCertificateStep._why_issue(found, ["hub.example.org"]) == (
        "/etc/gpuswarm-node/hub/registry.crt expires in 9 days (renewed below 30)")
    fresh = hub_tls.summary(*hub_tls.issue(ca[0], ca[1], ["hub.example.org"]), ca[0])
    assert HubCertificateStep._why_issue(fresh, ["hub.example.org"]) is None


@pytest.fixture
def tls_server(tmp_path, issued):
    """An HTTPS server on 127.0.0.1 with the issued certificate: HEAD of a manifest answers with
    its digest, of anything else 404."""
    (tmp_path / "c.pem").write_text(issued[0])
    (tmp_path / "k.pem").write_bytes(issued[1])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            if self.path == "/v2/notebook/manifests/abc" and "manifest" in self.headers.get("Accept", ""):
                self.send_response(200)
                self.send_header("Docker-Content-Digest", "sha256:feed")
            else:
                self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Registry)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_what_a_tls_server_serves_is_read_as_its_fingerprint(tls_server, issued):
    assert hub_tls.served_fingerprint("127.0.0.1", tls_server) == {"sha256": hub_tls.fingerprint(issued[0])}


def test_a_port_without_tls_is_a_problem():
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    answer = hub_tls.served_fingerprint("127.0.0.1", port, timeout=2)
    assert answer["problem"].startswith(f"no TLS answer at 127.0.0.1:{port} (")


def test_the_registry_is_asked_for_a_tag_with_the_ca_workers_trust(tls_server, tmp_path, ca):
    cafile = tmp_path / "ca.crt"
    cafile.write_text(ca[0])
    address = f"127.0.0.1:{tls_server}"
    assert hub_tls.manifest_digest(address, "notebook", "abc", str(cafile)) == {"digest": "sha256:feed"}
    assert hub_tls.manifest_digest(address, "notebook", "def", str(cafile)) == {
        "missing": "the registry has no notebook:def"}
    other = tmp_path / "other.crt"
    other.write_text(hub_tls.make_ca("not the registry's")[0])
    refused = hub_tls.manifest_digest(address, "notebook", "abc", str(other))
    assert refused["problem"].startswith(f"the registry at {address} cannot be asked (")
    assert "CERTIFICATE_VERIFY_FAILED" in refused["problem"]

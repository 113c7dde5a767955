"""registry-trust reads registry.ca_cert through the host seam (the `certificate` fact): these cases
write the CA under tmp_path, as an operator would, and the fake host holds what is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuswarm_node import config
from gpuswarm_node.engine import State, converge
from gpuswarm_node.steps.registry_trust import RegistryTrustStep
from gpuswarm_node.context import Context

from .fakes import FakeDocker, FakeHost

ADDRESS = "registry.hub.example:5000"
TARGET = f"/etc/docker/certs.d/{ADDRESS}/ca.crt"
PEM = ("-----BEGIN CERTIFICATE-----\n"
       "MIIBszCCAVmgAwIBAgIUJb2Kc0y0vQmZ3Xq1c1r1bQfJ1ZcwCgYIKoZIzj0EAwIw\n"
       "-----END CERTIFICATE-----\n")
OTHER_PEM = PEM.replace("MIIBszCCAVmgAwIBAgIU", "MIIBtDCCAVqgAwIBAgIV")
# The first bytes of a DER-encoded certificate: not text at all.
DER = bytes.fromhex("3082030d308201f5a003020102021400ff9c8e7a")


def context(ca_cert: Path, files: dict[str, str] | None = None) -> tuple[Context, FakeHost]:
    host = FakeHost(files=dict(files or {}))
    if ca_cert.is_file():
        host.files[str(ca_cert)] = ca_cert.read_bytes()
    elif ca_cert.is_dir():
        host.dirs.add(str(ca_cert))
    cfg = config.from_tables({"registry": {"address": ADDRESS, "ca_cert": str(ca_cert)}})
    docker = FakeDocker()
    return Context(config=cfg, host=host, docker_factory=lambda: docker), host


def test_ca_file_missing_is_blocked(tmp_path: Path) -> None:
    ctx, host = context(tmp_path / "ca.crt")
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.BLOCKED
    assert f"registry.ca_cert {tmp_path / 'ca.crt'} cannot be read" in check.detail
    assert RegistryTrustStep().files(ctx) == []


def test_ca_path_is_a_directory_is_blocked(tmp_path: Path) -> None:
    ctx, _host = context(tmp_path)
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.BLOCKED and "is not a regular file" in check.detail


@pytest.mark.parametrize("content", ["not a certificate\n", "", DER], ids=["text", "empty", "der"])
def test_ca_file_not_pem_is_blocked(tmp_path: Path, content: str | bytes) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(content if isinstance(content, bytes) else content.encode())
    ctx, host = context(ca)
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.BLOCKED
    assert f"registry.ca_cert {ca} holds no PEM certificate" in check.detail
    assert RegistryTrustStep().files(ctx) == []
    assert converge(RegistryTrustStep(), ctx).state is State.BLOCKED
    assert host.actions == []


def test_missing_certs_d_file_is_written(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text(PEM)
    ctx, host = context(ca)
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.NEEDS_CHANGE
    assert TARGET in check.detail and "is missing" in check.detail
    assert [a.describe() for a in check.actions] == [f"create {TARGET}"]

    report = converge(RegistryTrustStep(), ctx)
    assert report.state is State.OK and report.changed
    assert host.actions == [f"write {TARGET}"]
    assert host.files[TARGET] == PEM
    assert RegistryTrustStep().check(ctx).actions == ()


def test_different_certs_d_file_is_replaced(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text(PEM)
    ctx, host = context(ca, {TARGET: OTHER_PEM})
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.NEEDS_CHANGE
    assert f"{TARGET} differs from {ca}" in check.detail
    assert [a.describe() for a in check.actions] == [f"update {TARGET}"]
    assert "-MIIBtDCCAVqgAwIBAgIV" in check.diff and "+MIIBszCCAVmgAwIBAgIU" in check.diff

    report = converge(RegistryTrustStep(), ctx)
    assert report.state is State.OK and report.changed
    assert host.files[TARGET] == PEM


def test_matching_certs_d_file_is_ok(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    # Surrounding blank lines in the source do not count as a difference.
    ca.write_text("\n" + PEM + "\n\n")
    ctx, host = context(ca, {TARGET: PEM})
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.OK and check.actions == ()
    assert f"{TARGET} matches {ca}" in check.detail
    report = converge(RegistryTrustStep(), ctx)
    assert report.state is State.OK and not report.changed
    assert host.actions == []

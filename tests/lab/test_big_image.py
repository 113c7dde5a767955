"""The benchmark's multi-layer image: blobs that match their digests, pushed to a real TLS registry.

Built with layers of 1 and 2 MiB in a cache of the test's own; the benchmark builds the 1 GiB one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import ssl
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

from tests.lab import big_image
from tests.lab.tlsca import TestCA
from tests.lab.util import wait_for

LAYERS = (1, 2)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GSN_LAB_CACHE", str(cache))
        return big_image.cached(LAYERS)


def test_blobs_match_the_manifest_and_config(image: Path) -> None:
    manifest = json.loads((image / "manifest.json").read_text())
    assert manifest["mediaType"] == big_image.MANIFEST_TYPE
    blobs = image / "blobs"
    config_bytes = (blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes()
    config = json.loads(config_bytes)
    assert manifest["config"]["size"] == len(config_bytes)
    assert len(manifest["layers"]) == len(LAYERS) + 1  # busybox, then the random layers
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        data = (blobs / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert layer["mediaType"] == big_image.LAYER_TYPE and layer["size"] == len(data)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id
    last = gzip.decompress((blobs / manifest["layers"][-1]["digest"].removeprefix("sha256:")).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(last)) as tar:
        [member] = tar.getmembers()
        assert (member.name, member.size) == ("data/layer-02.bin", 2 * 2**20)
        # Random bytes: gzip cannot shrink them, so the pull moves what it unpacks.
        assert layer["size"] > member.size


def test_cached_builds_once(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSN_LAB_CACHE", str(image.parent))
    before = (image / "manifest.json").stat().st_mtime_ns
    assert big_image.cached(LAYERS) == image
    assert (image / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError):
        big_image.cached((1, 0))


def test_push_to_a_tls_registry(image: Path, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    cert = ca.issue_server_cert("127.0.0.1", stem="registry")
    address = "127.0.0.1:5987"
    config = tmp_path / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {tmp_path / 'storage'}
http:
  addr: {address}
  tls:
    certificate: {cert.cert_path}
    key: {cert.key_path}
""")
    with open(tmp_path / "registry.log", "wb") as log:
        registry = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.crt"))

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"https://{address}/v2/", context=context, timeout=5)
                return True
            except OSError:
                return False

        wait_for("the registry answering", answers, interval=0.1)
        name = big_image.push(image, address, tmp_path / "ca" / "ca.crt", "gsn/big", "t")
        assert name == f"{address}/gsn/big:t"
        assert big_image.push(image, address, tmp_path / "ca" / "ca.crt", "gsn/big", "t") == name  # blobs known
        request = urllib.request.Request(f"https://{address}/v2/gsn/big/manifests/t",
                                         headers={"Accept": big_image.MANIFEST_TYPE})
        assert urllib.request.urlopen(request, context=context).read() == (image / "manifest.json").read_bytes()
    finally:
        registry.terminate()
        registry.wait(10)

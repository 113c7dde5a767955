"""A multi-layer image of about 1 GiB of incompressible data, for the benchmark's fresh node.

A notebook image is many gigabytes in several layers; the product pulls it alongside the driver
install (gpuswarm_node/steps/__init__.py, ALONGSIDE), and bench/run.py measures how well that
overlaps. The lab's registry otherwise holds one small busybox image (manager.py).

The image is assembled here as registry blobs, without a Docker daemon: busybox (so it runs) and
then one layer per entry of `layers_mib`, each a tar of one file of random bytes, gzip-compressed
as `docker push` would (random bytes do not compress: what is pulled is what is unpacked), a
Docker image config and a schema 2 manifest. It is built once per layer list and cached in the
lab's cache directory (rootfs.cache_dir(), beside the root filesystems), then pushed to a lab
registry over its HTTPS API (distribution's blob upload: POST, then PUT with the digest) for
each lab, which takes seconds. Nothing of the normal test suite uses it.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import ssl
import tarfile
import urllib.parse
from pathlib import Path

from . import rootfs
from .manager import busybox_image_tar

LAYERS_MIB = (32, 64, 96, 128, 160, 224, 320)  # 1 GiB of data in 7 layers, over busybox
FORMAT = "v1"  # bump when the blobs' layout changes, so old caches are not used
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CHUNK = 1 << 20


class _Random(io.RawIOBase):
    """`size` random bytes, read in chunks (tarfile copies from it)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left)
        buf[:n] = os.urandom(n)
        self.left -= n
        return n


class _Hashing(io.RawIOBase):
    """Writes through to `out`, hashing what passes (the uncompressed layer: its diff_id)."""

    def __init__(self, out) -> None:
        self.out, self.sha = out, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        return self.out.write(data)


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _add_layer(blobs: Path, name: str, write_tar) -> tuple[dict, str]:
    """Compress the tar `write_tar(fileobj)` writes into a blob; (its descriptor, its diff_id)."""
    tmp = blobs / f".{name}.tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        hashing = _Hashing(gz)
        write_tar(hashing)
    digest = _sha256_file(tmp)
    tmp.rename(blobs / digest)
    return ({"mediaType": LAYER_TYPE, "size": (blobs / digest).stat().st_size, "digest": f"sha256:{digest}"},
            f"sha256:{hashing.sha.hexdigest()}")


def _build(dest: Path, layers_mib: tuple[int, ...]) -> None:
    blobs = dest / "blobs"
    blobs.mkdir(parents=True)
    base = busybox_image_tar()
    layers, diff_ids = [], []
    descriptor, diff_id = _add_layer(blobs, "base", lambda f: f.write(base))
    layers.append(descriptor)
    diff_ids.append(diff_id)
    for index, mib in enumerate(layers_mib, 1):
        def write_tar(f, index=index, mib=mib) -> None:
            with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(f"data/layer-{index:02d}.bin")
                info.size, info.mode = mib * 2**20, 0o644
                tar.addfile(info, io.BufferedReader(_Random(info.size), CHUNK))
        descriptor, diff_id = _add_layer(blobs, f"layer-{index}", write_tar)
        layers.append(descriptor)
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"org.gpuswarm-node.lab": f"big-image {FORMAT}"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "busybox"}] + [
            {"created_by": f"{mib} MiB of random bytes"} for mib in layers_mib],
    }, sort_keys=True).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    (blobs / config_digest).write_bytes(config)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": f"sha256:{config_digest}"},
                "layers": layers}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def cached(layers_mib: tuple[int, ...] = LAYERS_MIB) -> Path:
    """The image's directory (blobs/<sha256 hex>, manifest.json), built once per layer list; the
    first build writes about 1 GiB and takes about a minute on two cores."""
    if not layers_mib or any(int(m) <= 0 for m in layers_mib):
        raise ValueError(f"layers_mib must be positive sizes in MiB, got {layers_mib}")
    cache = rootfs.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"image-{FORMAT}-{'-'.join(str(int(m)) for m in layers_mib)}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "manifest.json").exists():
            # Built beside the cache entry and renamed, so a crash never leaves a half image there.
            tmp = cache / f".{dest.name}.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _build(tmp, tuple(int(m) for m in layers_mib))
                shutil.rmtree(dest, ignore_errors=True)
                tmp.rename(dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def size_bytes(image_dir: Path) -> int:
    """What a pull downloads: the layers' compressed sizes and the config's."""
    manifest = json.loads((Path(image_dir) / "manifest.json").read_text())
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def push(image_dir: Path, registry: str, ca_cert: Path, repo: str, tag: str) -> str:
    """Upload the blobs and the manifest to `registry` (host:port, HTTPS with `ca_cert`'s CA) as
    repo:tag; returns the image's name. Registry HTTP API V2, monolithic uploads."""
    image_dir = Path(image_dir)
    host, _, port = registry.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_cert))
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=300, blocksize=CHUNK)

    def request(method: str, path: str, body=None, headers=None, expect=(200, 201, 202)) -> http.client.HTTPResponse:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        if response.status not in expect:
            raise RuntimeError(f"{method} {path} on {registry}: HTTP {response.status} {response.reason}")
        return response

    try:
        manifest = json.loads((image_dir / "manifest.json").read_text())
        for blob in [manifest["config"], *manifest["layers"]]:
            digest = blob["digest"]
            if request("HEAD", f"/v2/{repo}/blobs/{digest}", expect=(200, 404)).status == 200:
                continue
            location = urllib.parse.urlsplit(request("POST", f"/v2/{repo}/blobs/uploads/").getheader("Location"))
            query = urllib.parse.urlencode([*urllib.parse.parse_qsl(location.query), ("digest", digest)])
            path = image_dir / "blobs" / digest.removeprefix("sha256:")
            with open(path, "rb") as f:
                request("PUT", f"{location.path}?{query}", body=f,
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Length": str(path.stat().st_size)}, expect=(201,))
        request("PUT", f"/v2/{repo}/manifests/{tag}", body=(image_dir / "manifest.json").read_bytes(),
                headers={"Content-Type": MANIFEST_TYPE}, expect=(201,))
    finally:
        conn.close()
    return f"{registry}/{repo}:{tag}"

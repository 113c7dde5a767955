"""Mount points as fstab and mountinfo spell them: decoded (every octal escape) and compared in
normal form, so that one directory is one entry and one mount however it is written."""

from __future__ import annotations

import pytest

from gpuswarm_node.facts import MOUNTS, Facts
from gpuswarm_node.probes import osfacts
from gpuswarm_node.fstab import desired_fstab, has_entry

from .fakes import FakeHost


@pytest.mark.parametrize("field, path", [
    ("/mnt/my\\040disk", "/mnt/my disk"), ("/mnt/a\\011b", "/mnt/a\tb"), ("/mnt/a\\012b", "/mnt/a\nb"),
    ("/mnt/back\\134slash", "/mnt/back\\slash"), ("/mnt/tmp\\146s", "/mnt/tmpfs"), ("/mnt/plain", "/mnt/plain"),
    ("/mnt/not\\8octal", "/mnt/not\\8octal"),
])
def test_every_octal_escape_is_decoded(field, path):
    assert osfacts.unescape_mount(field) == path


@pytest.mark.parametrize("query", ["/mnt/tmpfs", "/mnt/tmpfs/", "/mnt//tmpfs", "//mnt/./tmpfs/"])
def test_the_mount_is_found_however_the_path_is_spelled(query):
    host = FakeHost(files={"/proc/self/mountinfo":
                           "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                           "90 22 0:50 / /mnt/tmpfs rw - tmpfs tmpfs rw,size=1024k\n"})
    mounted = osfacts.mount_at(Facts(host).get(MOUNTS), query)
    assert mounted is not None and mounted.fstype == "tmpfs"


def test_the_root_mount_is_found_at_slash():
    host = FakeHost(files={"/proc/self/mountinfo": "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"})
    assert osfacts.mount_at(Facts(host).get(MOUNTS), "/").fstype == "ext4"
    assert osfacts.mount_at(Facts(host).get(MOUNTS), "/mnt/tmpfs") is None


def test_every_spelling_of_the_mount_point_in_fstab_becomes_one_entry():
    entry = "tmpfs /mnt/tmpfs tmpfs size=1m,mode=1777,nofail 0 0"
    current = ("UUID=a / ext4 defaults 0 1\n"
               "tmpfs /mnt//tmpfs/ tmpfs size=8g 0 0\n"
               "# tmpfs /mnt/tmpfs tmpfs size=2g 0 0\n"
               "tmpfs /mnt/./tmp\\146s tmpfs size=4g 0 0\n"
               "tmpfs /mnt/tmpfs2 tmpfs size=4g 0 0\n")
    assert has_entry(current, "/mnt/tmpfs") and not has_entry("# tmpfs /mnt/tmpfs tmpfs\n", "/mnt/tmpfs")
    assert desired_fstab(current, entry, "/mnt/tmpfs") == (
        "UUID=a / ext4 defaults 0 1\n" + entry + "\n"
        "# tmpfs /mnt/tmpfs tmpfs size=2g 0 0\n"
        "tmpfs /mnt/tmpfs2 tmpfs size=4g 0 0\n")


def test_render_never_shows_an_unlimited_tmpfs_line():
    from gpuswarm_node import config
    from gpuswarm_node.steps.tmpfs import TmpfsStep
    from gpuswarm_node.context import Context

    host = FakeHost(files={"/proc/meminfo": "MemTotal:       16777216 kB\n", "/etc/fstab": ""})
    ctx = Context(config=config.from_tables({"tmpfs": {"fraction": 1e-7}}), host=host)
    assert TmpfsStep().files(ctx) == []
    ctx = Context(config=config.from_tables({"tmpfs": {"fraction": 0.5}}), host=host)
    assert "size=8192m" in TmpfsStep().files(ctx)[0].content

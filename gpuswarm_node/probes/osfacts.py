"""Parsers of what the operating system says about its mounts (the facts that read them: gpuswarm_node.facts)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import normal_path


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    options: dict[str, str]  # super-block options, e.g. {"size": "1048576k", "mode": "1777"}
    source: str = ""  # what is mounted, e.g. "tmpfs" or "fs-1.efs.eu-west-1.amazonaws.com:/"
    # Per-mount options (mountinfo's sixth field), e.g. ("rw", "nosuid", "nodev", "relatime").
    mount_options: tuple[str, ...] = ()


_OCTAL = re.compile(r"\\([0-3][0-7]{2})")


def unescape_mount(field: str) -> str:
    """A mount point as fstab or mountinfo spells it, decoded: both write space, tab, newline and
    backslash as octal escapes (\\040 ...), and libmount reads any \\ooo that way."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def same_mount_point(a: str, b: str) -> bool:
    """Whether two decoded mount points name one directory ("/mnt//x/" and "/mnt/x" do)."""
    return normal_path(a) == normal_path(b)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        options = {}
        for opt in tail[2].split(","):
            name, _, value = opt.partition("=")
            options[name] = value
        mounts.append(Mount(unescape_mount(fields[4]), tail[0], options, unescape_mount(tail[1]),
                            tuple(fields[5].split(",")) if len(fields) > 5 else ()))
    return mounts


def mount_at(mounts: list[Mount], path: str) -> Mount | None:
    """The mount that is visible at `path` (the last one mounted there wins)."""
    found = [m for m in mounts if same_mount_point(m.mount_point, path)]
    return found[-1] if found else None

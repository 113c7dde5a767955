"""Facts about the operating system: a read through the host seam plus a pure parser each."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import normal_path
from ..host import Host


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    options: dict[str, str]  # super-block options, e.g. {"size": "1048576k", "mode": "1777"}
    source: str = ""  # what is mounted, e.g. "tmpfs" or "fs-1.efs.eu-west-1.amazonaws.com:/"


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
        mounts.append(Mount(unescape_mount(fields[4]), tail[0], options, unescape_mount(tail[1])))
    return mounts


def mounts(host: Host) -> list[Mount]:
    return parse_mountinfo(host.read_text("/proc/self/mountinfo") or "")


def mount_at(host: Host, path: str) -> Mount | None:
    """The mount that is visible at `path` (the last one mounted there wins)."""
    found = [m for m in mounts(host) if same_mount_point(m.mount_point, path)]
    return found[-1] if found else None


def mem_total_bytes(host: Host) -> int:
    return host.memory_bytes()


def os_release(host: Host) -> dict[str, str]:
    return host.os_release()


def package_installed(host: Host, package: str) -> bool:
    result = host.query(["dpkg-query", "-W", "-f=${Status}", package])
    # ${Status} is "want flag status"; a held package is "hold ok installed".
    return result.ok and result.stdout.split()[1:] == ["ok", "installed"]


def systemd_running(host: Host) -> bool:
    # sd_booted(3): systemd is PID 1 exactly when this directory exists.
    return host.exists("/run/systemd/system")


def unit_active(host: Host, unit: str) -> bool:
    return host.query(["systemctl", "is-active", unit]).stdout.strip() == "active"


def unit_enabled(host: Host, unit: str) -> bool:
    return host.query(["systemctl", "is-enabled", unit]).stdout.strip() in ("enabled", "enabled-runtime", "static")


def parse_getent_group(text: str) -> tuple[str, list[str]] | None:
    line = text.strip()
    if not line:
        return None
    name, _pw, _gid, members = (line.split(":") + ["", "", ""])[:4]
    return name, [m for m in members.split(",") if m]


def group_members(host: Host, group: str) -> list[str] | None:
    """Members of a group, or None when the group does not exist."""
    # "--": a name is never read as an option; and getent looks a number up as a gid, so the
    # answer counts only when it is the group asked for.
    result = host.query(["getent", "group", "--", group])
    parsed = parse_getent_group(result.stdout) if result.ok else None
    return parsed[1] if parsed and parsed[0] == group else None


def user_exists(host: Host, user: str) -> bool:
    # getent answers a number with the user of that uid: only an entry of this name counts.
    result = host.query(["getent", "passwd", "--", user])
    return result.ok and result.stdout.partition(":")[0] == user

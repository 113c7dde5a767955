"""/etc/fstab as text: its entries' mount points and the one-entry-per-mount-point edit the tmpfs
and shared-fs steps both make (fstab(5): fields split on blanks, octal escapes in the mount point)."""

from __future__ import annotations

from .probes import osfacts

FSTAB = "/etc/fstab"


def fstab_mount_point(line: str) -> str | None:
    """The mount point of an fstab line, decoded; None for a comment or a line without one."""
    fields = line.split()
    if not fields or fields[0].startswith("#") or len(fields) < 2:
        return None
    return osfacts.unescape_mount(fields[1])


def desired_fstab(current: str, entry: str, path: str) -> str:
    """The current fstab with every entry for `path`, however it is spelled, replaced by exactly
    one `entry`."""
    out, placed = [], False
    for line in current.splitlines():
        point = fstab_mount_point(line)
        if point is not None and osfacts.same_mount_point(point, path):
            if not placed:
                out.append(entry)
                placed = True
            continue
        out.append(line)
    if not placed:
        out.append(entry)
    return "\n".join(out) + "\n"


def has_entry(fstab: str, path: str) -> bool:
    return any(point is not None and osfacts.same_mount_point(point, path)
               for point in map(fstab_mount_point, fstab.splitlines()))

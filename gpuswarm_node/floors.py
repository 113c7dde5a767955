"""Minimum versions of the components a container could escape through, with the advisory each
floor closes: nvidia-container-toolkit (its hooks run on the host at every GPU container start)
and runc (every container start).

A version below a floor is never `ok`: the step that installs the package upgrades it from the
configured apt source and checks again; where the source has no fixed version, the step fails
naming the advisory and the fix.

Limits: Debian and Ubuntu backport security fixes without changing the upstream version (runc
1.1.5+ds1-1+deb12u1 carries the fix for CVE-2024-21626). Such a package counts as fixed only
where DISTRO_FIXED names it (from the Debian security tracker); any other distribution package
below an upstream floor is judged by its upstream version, so a backport not listed here is
reported as missing (too strict, never too lenient).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Floor:
    """`advisories` are fixed from upstream version `fixed` of the line `branch` ("1.2": every
    1.2.x) on; an older line than every branch listed for the same advisories needs the oldest
    fixed version. branch "" covers every line."""

    component: str
    advisories: tuple[str, ...]
    branch: str
    fixed: str


FLOORS = (
    # NVIDIA security bulletin, September 2024 (nvidia.custhelp.com answer 5582): container
    # escape through a crafted image (TOCTOU), fixed in 1.16.2.
    Floor("nvidia-container-toolkit", ("CVE-2024-0132", "CVE-2024-0133"), "", "1.16.2"),
    # NVIDIA security bulletin, November 2024 (answer 5599): host files through ldconfig and
    # crafted images; the toolkit's CHANGELOG v1.17.3: "Only allow host-relative LDConfig
    # paths", "Create virtual copy of host ldconfig binary before calling fexecve()".
    Floor("nvidia-container-toolkit", ("CVE-2024-0135", "CVE-2024-0136", "CVE-2024-0137"), "", "1.17.3"),
    # NVIDIA security bulletin, February 2025 (answer 5616): a bypass of the CVE-2024-0132 fix
    # through CUDA compat libraries in the image; CHANGELOG v1.17.4: "Disable mounting of compat
    # libs from container by default".
    Floor("nvidia-container-toolkit", ("CVE-2025-23359",), "", "1.17.4"),
    # NVIDIA security bulletin, July 2025 (answer 5659, "NVIDIAScape"): the createContainer
    # hooks inherited the container's environment, so an image's LD_PRELOAD ran on the host as
    # root; CHANGELOG v1.17.8 gives every hook its own environment. CVE-2025-23267: the
    # update-ldcache hook followed links of the image.
    Floor("nvidia-container-toolkit", ("CVE-2025-23266", "CVE-2025-23267"), "", "1.17.8"),
    # runc GHSA-xr7r-f8xq-vfvv ("Leaky Vessels"): a file descriptor of the host's cgroupfs
    # leaked into the container (WORKDIR /proc/self/fd/N); fixed in 1.1.12.
    Floor("runc", ("CVE-2024-21626",), "", "1.1.12"),
    # runc GHSA-9493-h29p-rfm2, GHSA-qw9x-cqr3-wc7r, GHSA-cgrx-mc8f-2prm (November 2025): writes
    # to arbitrary /proc files through masked paths, /dev/console and redirected mounts; fixed in
    # 1.2.8, 1.3.3 and 1.4.0-rc.3 (runc CHANGELOG [1.2.8] - 2025-11-05). 1.1.x has no fix.
    Floor("runc", ("CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881"), "1.2", "1.2.8"),
    Floor("runc", ("CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881"), "1.3", "1.3.3"),
    Floor("runc", ("CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881"), "1.4", "1.4.0-rc.3"),
)
# Not floors: CVE-2026-24260 (nvidia-container-toolkit, a TOCTOU of 2026) is named by third
# parties, but its fixed version is not confirmed here from NVIDIA's bulletin; v1.19.1's and
# v1.20.0's CHANGELOG move the cudacompat and create-symlinks hooks to filepath-securejoin.
# containerd and Docker: their 2024-2025 advisories (containerd CVE-2024-40635, Docker
# CVE-2024-41110) are not container escapes in this setup (no authorization plugin, no user
# namespaces); the escape runs through runc, which docker-ce ships inside containerd.io.

# Every advisory a floor closes: what docker.accept_advisories may name.
ADVISORIES = frozenset(a for f in FLOORS for a in f.advisories)


def accepted(setting: str) -> tuple[str, ...]:
    """docker.accept_advisories as advisory ids, upper-cased, blanks and empty items dropped."""
    return tuple(item.strip().upper() for item in setting.split(",") if item.strip())


def unaccepted(lacking: "Missing | None", setting: str) -> "Missing | None":
    """What of `lacking` the operator did not accept (docker.accept_advisories); None when all of
    it is accepted or nothing lacks."""
    if lacking is None:
        return None
    left = tuple(a for a in lacking.advisories if a not in accepted(setting))
    return None if not left else Missing(lacking.component, lacking.version, left, lacking.fixed)


def acceptance_note(lacking: "Missing | None") -> str:
    """The words a step that is ok adds for advisories it lacks and the operator accepted."""
    if lacking is None:
        return ""
    return (f"; {lacking.sentence()}: accepted by docker.accept_advisories, so containers can still escape "
            f"through it until it is upgraded")


# Distribution packages whose backports carry a fix at a lower upstream version: (package,
# advisory) -> the first fixed Debian version, per the Debian security tracker.
DISTRO_FIXED = {
    # Debian 12 (bookworm): the security tracker's fixed version for CVE-2024-21626.
    ("runc", "CVE-2024-21626"): "1.1.5+ds1-1+deb12u1",
}


def upstream(version: str) -> str:
    """The upstream part of a Debian version: "1:1.17.8-1" -> "1.17.8", "1.1.5+ds1-1+deb12u1" ->
    "1.1.5+ds1"; a runc --version number ("1.4.0-rc.3") is upstream already when given with
    is_upstream."""
    no_epoch = version.partition(":")[2] if ":" in version.split("-")[0] else version
    return no_epoch.rpartition("-")[0] if "-" in no_epoch else no_epoch


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256 if c else 0


def _compare_part(a: str, b: str) -> int:
    while a or b:
        na = re.match(r"[^0-9]*", a).group()
        nb = re.match(r"[^0-9]*", b).group()
        a, b = a[len(na):], b[len(nb):]
        for i in range(max(len(na), len(nb))):
            ca, cb = _order(na[i] if i < len(na) else ""), _order(nb[i] if i < len(nb) else "")
            if ca != cb:
                return -1 if ca < cb else 1
        da = re.match(r"[0-9]*", a).group()
        db = re.match(r"[0-9]*", b).group()
        a, b = a[len(da):], b[len(db):]
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
    return 0


def compare(a: str, b: str) -> int:
    """Debian version order (deb-version(7), as dpkg --compare-versions): -1, 0 or 1."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
        up, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), up, rev

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def as_debian(upstream_version: str) -> str:
    """An upstream version in Debian's order: a pre-release sorts before its release
    ("1.4.0-rc.3" -> "1.4.0~rc.3")."""
    return re.sub(r"-(rc|alpha|beta)", r"~\1", upstream_version)


def _line(version: str) -> str:
    return ".".join(re.split(r"[.~+-]", version)[:2])


@dataclass(frozen=True)
class Missing:
    """Advisories a component's installed version lacks the fix of, and the version that has it."""

    component: str
    version: str
    advisories: tuple[str, ...]
    fixed: str

    def sentence(self) -> str:
        many = len(self.advisories) > 1
        return (f"{self.component} {self.version} lacks the fix{'es' if many else ''} for "
                f"{', '.join(self.advisories)} (container escape{'s' if many else ''}), fixed in {self.fixed}")


def missing(component: str, version: str, package: str = "", is_upstream: bool = False) -> list[Missing]:
    """What `version` of `component` lacks, one Missing per advisory group, [] when it has every
    fix. `version` is a Debian package version of `package` (its backports count where
    DISTRO_FIXED lists them), or an upstream version (runc --version) with is_upstream."""
    up = as_debian(version if is_upstream else upstream(version))
    found = []
    groups: dict[tuple[str, ...], list[Floor]] = {}
    for floor in FLOORS:
        if floor.component == component:
            groups.setdefault(floor.advisories, []).append(floor)
    for advisories, floors in groups.items():
        line = _line(up)
        floor = next((f for f in floors if f.branch in ("", line)), None)
        if floor is None:
            oldest = min(floors, key=lambda f: [int(p) for p in f.branch.split(".")])
            newest = max(floors, key=lambda f: [int(p) for p in f.branch.split(".")])
            if compare(line + ".0", as_debian(newest.branch) + ".0") > 0:
                continue  # a newer line than any listed: released after the fix
            floor = oldest
        if compare(up, as_debian(floor.fixed)) >= 0:
            continue
        backports = [DISTRO_FIXED.get((package, a)) for a in advisories]
        if package and not is_upstream and all(b and upstream(b) == upstream(version) and compare(version, b) >= 0
                                               for b in backports):
            continue
        found.append(Missing(component, version, advisories, floor.fixed))
    return found


def merged(component: str, found: list[Missing]) -> Missing | None:
    """One Missing for all of `found` (the component named as given), with the highest fixed
    version; None when nothing is missing."""
    if not found:
        return None
    fixed = max((m.fixed for m in found), key=lambda v: _Key(as_debian(v)))
    return Missing(component, found[0].version, tuple(a for m in found for a in m.advisories), fixed)


class _Key:
    def __init__(self, version: str) -> None:
        self.version = version

    def __lt__(self, other: "_Key") -> bool:
        return compare(self.version, other.version) < 0

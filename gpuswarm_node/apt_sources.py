"""Archive components in apt's sources, edited in place: text in, text out.

Debian ships the NVIDIA driver in non-free (its helpers in contrib, its GSP firmware in
non-free-firmware), and a cloud image lists only main. The tool adds the missing components to
every entry that lists main (the Debian archive's entries, security included) and leaves every
other line, comment and field as it was.
"""

from __future__ import annotations

import re

DEBIAN_SOURCES = "/etc/apt/sources.list.d/debian.sources"
SOURCES_LIST = "/etc/apt/sources.list"
DRIVER_COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")


def _with(components: list[str], wanted: tuple[str, ...]) -> list[str]:
    return components + [c for c in wanted if c not in components]


def add_components_deb822(text: str, wanted: tuple[str, ...] = DRIVER_COMPONENTS) -> str:
    """debian.sources (deb822): in each stanza whose Components list main, the missing ones are
    appended to that field; a field continued over several lines becomes one line."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        field = re.match(r"(Components)(\s*:\s*)(.*?)(\s*)$", line, re.IGNORECASE)
        if not field:
            out.append(line)
            i += 1
            continue
        value = [field.group(3)]
        j = i + 1
        while j < len(lines) and lines[j][:1] in (" ", "\t") and lines[j].strip() \
                and not lines[j].lstrip().startswith("#"):
            value.append(lines[j].strip())
            j += 1
        components = " ".join(value).split()
        if "main" in components and _with(components, wanted) != components:
            end = "\n" if lines[j - 1].endswith("\n") else ""
            out.append(f"{field.group(1)}{field.group(2)}{' '.join(_with(components, wanted))}{end}")
        else:
            out.extend(lines[i:j])
        i = j
    return "".join(out)


_ONE_LINE = re.compile(r"(\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?\S+\s+\S+)((?:\s+[^\s#]+)*)(\s*(?:#.*)?)$")


def add_components_one_line(text: str, wanted: tuple[str, ...] = DRIVER_COMPONENTS) -> str:
    """sources.list: `deb [options] URI suite component...`; lines that list main get the missing
    components after their own; comments and other lines stay."""
    out = []
    for line in text.splitlines(keepends=True):
        body, end = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        entry = _ONE_LINE.fullmatch(body)
        if entry:
            components = entry.group(2).split()
            if "main" in components and _with(components, wanted) != components:
                body = f"{entry.group(1)} {' '.join(_with(components, wanted))}{entry.group(3)}"
        out.append(body + end)
    return "".join(out)


def lists_main_deb822(text: str) -> bool:
    return any("main" in m.group(1).split()
               for m in re.finditer(r"^Components\s*:(.*)$", text, re.IGNORECASE | re.MULTILINE))


def lists_main_one_line(text: str) -> bool:
    return any(m and "main" in m.group(2).split()
               for m in (_ONE_LINE.fullmatch(line) for line in text.splitlines()))

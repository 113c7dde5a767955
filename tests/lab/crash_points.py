"""Where the fault-injection test crashes setup: points named by what the run is doing, never by
free text that varies between runs.

setup's live output has a grammar (gpuswarm_node/ui.py, ConsoleReporter): a step boundary is its
mark right-aligned in 12 columns, then the step's name, then a free detail and the time it took
("     changed tmpfs added /tmp to /etc/fstab (0.1 s)"); an action is 13 spaces, the step's name and
a colon, then the action's description ("             docker: run apt-get install ..."). A point
is taken from that grammar alone:

- a boundary is "MARK STEP": its detail (which may hold ages, counts, addresses) and time are not
  part of it;
- an action is "STEP: DESCRIPTION", the description being Action.describe() (engine.py): the file
  written, the command line run, or a call's fixed wording, which are the plan's own identity;
- setup.sh's environment build is one fixed point ("setup.sh builds the tool's environment").

Every other line (the summary table, progress, warnings, details wrapped onto a line of their own)
is no point. So two runs that do the same thing give the same points, however long they take and
whatever their details say (tests/test_crash_points.py proves it on recorded output).
"""

from __future__ import annotations

import re

from gpuswarm_node.engine import State
from gpuswarm_node.steps import STEP_NAMES

BUILD_POINT = "setup.sh builds the tool's environment"
# setup.sh's own line when it starts building the tool's environment (setup.sh).
BUILDING = re.compile(r"^setup\.sh: installing gpuswarm-node into ")

# A boundary's mark: "changed", or the state's value (ui.ConsoleReporter.step_finished).
MARKS = ("changed", *(s.value for s in State))
_NAMES = "|".join(re.escape(n) for n in sorted(STEP_NAMES, key=len, reverse=True))
_MARKS = "|".join(re.escape(m) for m in MARKS)
BOUNDARY = re.compile(rf"^( *)({_MARKS}) ({_NAMES})(?: |$)")
ACTION = re.compile(rf"^ {{13}}({_NAMES}): (\S.*?)\s*$")


def point_of(line: str) -> str | None:
    """The crash point a line of setup's output (stdout and stderr, as printed) marks, or None."""
    line = line.rstrip("\n")
    if BUILDING.match(line):
        return BUILD_POINT
    boundary = BOUNDARY.match(line)
    if boundary and len(boundary[1]) + len(boundary[2]) == 12:  # the mark, right-aligned
        return f"{boundary[2]} {boundary[3]}"
    action = ACTION.match(line)
    if action:
        return f"{action[1]}: {action[2]}"
    return None


def points_of(text: str) -> list[str]:
    """The points of a whole output, in order, each once."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        point = point_of(line)
        if point is not None:
            seen.setdefault(point)
    return list(seen)

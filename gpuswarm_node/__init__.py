"""gpuswarm-node: turn a GPU machine into a Docker Swarm worker for JupyterHub, and keep it healthy."""

from __future__ import annotations

import os

# The one statement of the release (pyproject.toml reads it: [tool.hatch.version]).
__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))
# `git archive` writes the commit into this file (.gitattributes: export-subst), and setup.sh
# writes it when it installs from a checkout; in a checkout it holds the placeholder.
COMMIT_FILE = os.path.join(_HERE, "COMMIT")
_commit: list[str] = []


def _git_commit(start: str) -> str:
    """The abbreviated commit HEAD names in the git checkout `start` lies in, read from .git
    itself (HEAD, a loose ref or packed-refs; a worktree's .git file and commondir): no git
    process on the way to a status. "" when there is none."""
    top = start
    while True:
        dot_git = os.path.join(top, ".git")
        if os.path.exists(dot_git):
            break
        parent = os.path.dirname(top)
        if parent == top:
            return ""
        top = parent
    try:
        if os.path.isfile(dot_git):  # a worktree or submodule: "gitdir: PATH"
            with open(dot_git, encoding="utf-8") as f:
                line = f.read().strip()
            if not line.startswith("gitdir:"):
                return ""
            dot_git = os.path.join(top, line[len("gitdir:"):].strip())
        common = dot_git
        if os.path.isfile(os.path.join(dot_git, "commondir")):
            with open(os.path.join(dot_git, "commondir"), encoding="utf-8") as f:
                common = os.path.join(dot_git, f.read().strip())
        with open(os.path.join(dot_git, "HEAD"), encoding="utf-8") as f:
            head = f.read().strip()
        if not head.startswith("ref:"):
            return head[:7]
        ref = head[len("ref:"):].strip()
        for base in (dot_git, common):
            try:
                with open(os.path.join(base, ref), encoding="utf-8") as f:
                    return f.read().strip()[:7]
            except OSError:
                pass
        with open(os.path.join(common, "packed-refs"), encoding="utf-8") as f:
            for line in f:
                sha, _, name = line.strip().partition(" ")
                if name == ref:
                    return sha[:7]
    except OSError:
        pass
    return ""


def commit() -> str:
    """The abbreviated commit this code was built from ("abc1234"): COMMIT_FILE where `git
    archive` or setup.sh filled it in, else the git checkout the package lies in; "unknown"
    when neither says. Read once per process."""
    if not _commit:
        found = ""
        try:
            with open(COMMIT_FILE, encoding="utf-8") as f:
                text = f.read().strip()
            if text and not text.startswith("$Format"):
                found = text.split()[0][:7]
        except OSError:
            pass
        _commit.append(found or _git_commit(_HERE) or "unknown")
    return _commit[0]


def version() -> str:
    """The release and its commit, as --version and every --json output say it: "0.1.0 (abc1234)"."""
    return f"{__version__} ({commit()})"

"""nvidia-toolkit: nvidia-container-toolkit installed from the configured apt source, in a mode
that honours the devices the slice-aware runtime selects.

Toolkit 1.18.x made `jit-cdi` the default mode (`mode = "auto"`), and that mode ignores the GPUs
Swarm assigns (nvidia-container-toolkit issue 1599, fixed in 1.19). The fix is one key in
/etc/nvidia-container-runtime/config.toml, a file the toolkit package owns: the step sets
`nvidia-container-runtime.mode = "legacy"` and keeps every other key of the file. The new file
comes from the toolkit's own `nvidia-ctk config --config-file FILE --set KEY=VALUE` where
nvidia-ctk is installed (it prints the file with the key set; nvidia-container-toolkit
cmd/nvidia-ctk/config), written by the tool as every file it writes (atomic, backed up for
`reset`, shown by `--dry-run`), which `--in-place` would not give; without nvidia-ctk, or when its
file would change another key, the one line is edited here. The runtime reads the file per
container, so no restart follows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import tomllib
from ..engine import Call, Check, perform, PlannedFile, WriteFile, blocked, needs_change, ok, skipped
from ..errors import StepFailed
from .. import floors, nvidia_hook
from .. import facts as F
from ..render import render
from ..context import Context
from . import apt
from ..shared_facts import (TOOLKIT_PACKAGE as PACKAGE, TOOLKIT_SOURCE_LIST as SOURCE_LIST,
                            gpu_presence, toolkit_source_actions, toolkit_source_file,
                            toolkit_source_text)

RUNTIME_CONFIG = nvidia_hook.RUNTIME_CONFIG
SECTION = "nvidia-container-runtime"
# Modes that, in 1.18.x, resolve to or are jit-cdi; absent means "auto".
JIT_CDI_MODES = ("auto", "jit-cdi")
MODE_AFTER_INSTALL = (f'set {SECTION}.mode = "legacy" in {RUNTIME_CONFIG} if the installed toolkit '
                      "is 1.18.x in jit-cdi mode")


def major_minor(version: str) -> tuple[int, int] | None:
    """(1, 18) from a Debian version such as "1.18.1-1", "1:1.18.0~rc.3-1"; None if unreadable."""
    upstream = version.rpartition(":")[2].partition("-")[0]
    parts = re.split(r"[.~+]", upstream)
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


def ignores_swarm(version: str, mode: str) -> bool:
    return major_minor(version) == (1, 18) and mode in JIT_CDI_MODES


def split_at_mode(text: str) -> tuple[str, str]:
    """The file around the line that sets the runtime's mode: (before, after), the mode line
    dropped; where there is none, the split falls right after the section header."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    header = next((i for i, line in enumerate(lines)
                   if line.split("#")[0].strip() == f"[{SECTION}]"), None)
    if header is None:
        return "".join(lines) + ("\n" if lines else "") + f"[{SECTION}]\n", ""
    end = next((i for i in range(header + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    mode = next((i for i in range(header + 1, end) if re.match(r"\s*mode\s*=", lines[i])), None)
    if mode is None:
        return "".join(lines[:header + 1]), "".join(lines[header + 1:])
    return "".join(lines[:mode]), "".join(lines[mode + 1:])


def _without_mode(data: dict) -> dict:
    out = dict(data)
    section = {k: v for k, v in out.pop(SECTION, {}).items() if k != "mode"}
    if section:
        out[SECTION] = section
    return out


@dataclass(frozen=True)
class ModeVerdict:
    version: str
    mode: str
    problem: str = ""  # why the NVIDIA runtime would not honour the devices the wrapper selects
    fix: WriteFile | None = None
    remedy: str = ""  # what a person must do, when there is a problem and no fix


def mode_verdict(ctx: Context) -> ModeVerdict:
    version = ctx.fact(F.PACKAGE_VERSION, PACKAGE)
    text = ctx.fact(F.FILE_TEXT, RUNTIME_CONFIG)
    try:
        data = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as exc:
        return ModeVerdict(version, "unknown", f"{RUNTIME_CONFIG} is not valid TOML ({exc})",
                           remedy="Fix the file (the NVIDIA runtime cannot read it either) and run setup again.")
    section = data.get(SECTION) if isinstance(data.get(SECTION), dict) else {}
    mode = str(section.get("mode", "auto"))
    if not ignores_swarm(version, mode):
        return ModeVerdict(version, mode)
    described = "jit-cdi mode" if mode == "jit-cdi" else f"{mode} mode (jit-cdi in 1.18)"
    problem = f"{PACKAGE} {version} runs in {described}, which ignores the GPUs Swarm assigns (toolkit issue 1599)"
    by_ctk = ctk_config(ctx, data)
    if by_ctk is not None:
        return ModeVerdict(version, mode, problem, WriteFile(RUNTIME_CONFIG, by_ctk, text))
    before, after = split_at_mode(text or "")
    content = render("nvidia-container-runtime-config.toml.j2", before=before, after=after, version=version)
    try:
        new = tomllib.loads(content)
    except tomllib.TOMLDecodeError:
        new = {}
    if new.get(SECTION, {}).get("mode") != "legacy" or _without_mode(new) != _without_mode(data):
        return ModeVerdict(version, mode, problem + f"; {RUNTIME_CONFIG} is laid out so that setting the "
                                                    "mode would change other keys",
                           remedy=f'Set mode = "legacy" under [{SECTION}] in {RUNTIME_CONFIG} by hand, or install '
                                  "toolkit 1.19 or later, then run setup again.")
    return ModeVerdict(version, mode, problem, WriteFile(RUNTIME_CONFIG, content, text))


CTK_SET = ("nvidia-ctk", "config", "--config-file", RUNTIME_CONFIG, "--set", f"{SECTION}.mode=legacy")
# What the installed nvidia-ctk would write with the mode set to legacy (to stdout; nothing changes).
CTK_LEGACY = F.fact("ctk_legacy_config", F.COMMAND, lambda _a: list(CTK_SET),
                    lambda r, _a: r.stdout if r.ok else "", takes_arg=False)


def ctk_config(ctx: Context, data: dict) -> str | None:
    """The runtime's config.toml with the mode set to legacy, as the installed nvidia-ctk writes it
    (to stdout: nothing is changed), or None when nvidia-ctk is not installed, fails, or would
    change anything else (then the step edits the line itself)."""
    if ctx.fact(F.ON_PATH, "nvidia-ctk") is None:
        return None
    text = ctx.fact(CTK_LEGACY)
    if not text.strip():
        return None
    try:
        new = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    section = new.get(SECTION) if isinstance(new.get(SECTION), dict) else {}
    if section.get("mode") != "legacy" or _without_mode(new) != _without_mode(data):
        return None
    return text if text.endswith("\n") else text + "\n"


def device_selection(ctx: Context) -> tuple[list[nvidia_hook.Problem], list[str]]:
    """What, in every config.toml the NVIDIA hook may read, lets a container choose its own GPUs
    or keeps every container from its own (problems), and what is safe only because the runtime
    wrapper refuses it (notes)."""
    found: list[nvidia_hook.Problem] = []
    notes: list[str] = []
    for path in nvidia_hook.TOOLKIT_CONFIGS:
        text = ctx.fact(F.FILE_TEXT, path)
        if text is None:
            continue
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found.append(nvidia_hook.Problem(path, "", f"is not valid TOML ({exc}): the NVIDIA hook cannot read it",
                                             "Fix the file, then run setup again."))
            continue
        found += nvidia_hook.problems(path, data)
        notes += nvidia_hook.notes(data)
    return found, notes


# The packages of one toolkit release (one version number); a fix may be in any of them
# (CVE-2024-0132 and CVE-2025-23359 were in libnvidia-container), so each installed one is judged
# and upgraded.
RELEASE_PACKAGES = (PACKAGE, "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1")
FLOOR_AFTER_UPGRADE = "check the upgraded toolkit packages against the advisories' minimum versions"


def lacking_fixes(ctx: Context, accepted_too: bool = False) -> tuple[list[str], list[floors.Missing]]:
    """The installed packages of the toolkit's release, and what each lacks (floors.FLOORS),
    one Missing per package, less the advisories docker.accept_advisories accepts (all of them
    with `accepted_too`)."""
    installed = [p for p in RELEASE_PACKAGES if ctx.fact(F.PACKAGE_VERSION, p)]
    lacking = [floors.merged(p, floors.missing("nvidia-container-toolkit", ctx.fact(F.PACKAGE_VERSION, p), p))
               for p in installed]
    if not accepted_too:
        lacking = [floors.unaccepted(m, ctx.config.docker.accept_advisories) for m in lacking]
    return installed, [m for m in lacking if m is not None]


def floor_after_upgrade(ctx: Context) -> None:
    """apt installs what the configured source has: a version still below a floor fails the run."""
    _installed, lacking = lacking_fixes(ctx)
    if lacking:
        raise StepFailed(f"{'; '.join(m.sentence() for m in lacking)}, and the configured source offers nothing newer.",
                         f"Point nvidia.toolkit_apt_source at a repository with {PACKAGE} {lacking[-1].fixed} or later "
                         "(NVIDIA's libnvidia-container repository has it), then run setup again; only if every "
                         "notebook user is trusted, accept the risk with docker.accept_advisories = "
                         f"\"{','.join(a for m in lacking for a in m.advisories)}\".")


def fix_mode_after_install(ctx: Context) -> None:
    """Which version apt installs is known only once it has: decide then, in the same run."""
    verdict = mode_verdict(ctx)
    if verdict.fix is not None:
        perform(ctx, verdict.fix)
    elif verdict.problem:
        raise StepFailed(f"{verdict.problem}.", verdict.remedy)


class NvidiaToolkitStep:
    name = "nvidia-toolkit"
    description = "nvidia-container-toolkit installed, nvidia-container-runtime on PATH"

    def files(self, ctx: Context) -> list[PlannedFile]:
        files = [toolkit_source_file(ctx)]
        if ctx.fact(F.PACKAGE_INSTALLED, PACKAGE):
            fix = mode_verdict(ctx).fix
            if fix is not None:
                files.append(PlannedFile(fix.path, fix.content))
        return files

    def check(self, ctx: Context) -> Check:
        present, why, _pci = gpu_presence(ctx)
        if not present:
            return skipped(why)
        wanted = toolkit_source_text(ctx)
        before = ctx.fact(F.FILE_TEXT, SOURCE_LIST)
        installed = ctx.fact(F.PACKAGE_INSTALLED, PACKAGE)
        runtime = ctx.fact(F.ON_PATH, "nvidia-container-runtime")
        actions = []
        reasons = []
        if before != wanted:
            reasons.append(f"{SOURCE_LIST} {'differs' if before is not None else 'is missing'}")
            actions += [*toolkit_source_actions(ctx), apt.update(ctx)]
        if not installed or not runtime:
            reasons.append(f"{PACKAGE} is not installed" if not installed else "nvidia-container-runtime is not on PATH")
            if before == wanted:
                actions.append(apt.update(ctx))
            # Installed but its runtime gone: only a reinstall brings the file back.
            actions.append(apt.install(ctx, "--reinstall", PACKAGE) if installed else apt.install(ctx, PACKAGE))
            actions.append(Call(MODE_AFTER_INSTALL, fix_mode_after_install))
            return needs_change("; ".join(reasons), *actions)
        upgrade, lacking = lacking_fixes(ctx)
        if lacking:
            # A container escape is never ok: upgrade from the configured source, in this run.
            reasons.append("; ".join(m.sentence() for m in lacking))
            if before == wanted:
                actions.append(apt.update(ctx))
            actions += [apt.install(ctx, *upgrade), Call(FLOOR_AFTER_UPGRADE, floor_after_upgrade),
                        Call(MODE_AFTER_INSTALL, fix_mode_after_install)]
            return needs_change("; ".join(reasons), *actions)
        problems, notes = device_selection(ctx)
        if problems:
            return blocked(" ".join(p.sentence() for p in problems))
        verdict = mode_verdict(ctx)
        if verdict.problem and verdict.fix is None:
            return blocked(f"{verdict.problem}. {verdict.remedy}")
        if verdict.fix is not None:
            reasons.append(verdict.problem)
            actions.append(verdict.fix)
        if actions:
            return needs_change("; ".join(reasons), *actions)
        accepted = [floors.acceptance_note(m)[2:] for m in lacking_fixes(ctx, accepted_too=True)[1]]
        return ok("; ".join([f"{PACKAGE} {verdict.version} installed, runtime at {runtime}, mode {verdict.mode}"]
                            + notes + accepted))

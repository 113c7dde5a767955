"""What dockerd starts with: docker.service's command line as systemd runs it, and where each of
its arguments is set.

The command comes from the unit file, then every drop-in in systemd's order (an empty
`ExecStart=` clears the ones before), and its `$VAR`/`${VAR}` words from `Environment=` and the
files named by `EnvironmentFile=` (Debian's /etc/default/docker with DOCKER_OPTS, /etc/sysconfig/
docker elsewhere). With systemd running, systemd says which files those are and what command it
loaded (`systemctl show`); its argv is printed with the words joined by spaces, so the words
themselves come from reading the same files by systemd's rules (gpuswarm_node.unitfile), checked
against what systemd printed. Without systemd, the unit directories are read instead.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
from dataclasses import dataclass, field

from typing import TYPE_CHECKING
from ..unitfile import (Command, UnitSyntaxError, assignments, expand_variables, parse_command, parse_env_file,
                        resolve_specifiers, split_words)

if TYPE_CHECKING:
    from ..facts import FileReads, Facts

UNIT = "docker.service"
# In systemd's order of precedence: a unit in /etc/systemd/system overrides the packaged one.
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
DOCKER_UNITS = tuple(f"{d}/{UNIT}" for d in UNIT_DIRS)


@dataclass(frozen=True)
class Arg:
    """One argument dockerd receives, and where it is set: in a unit file's ExecStart=, or by a
    variable that an environment file or a unit file's Environment= sets."""

    text: str
    file: str
    variable: str | None = None
    environment_line: bool = False  # the variable is set by Environment= in `file`, a unit file

    @property
    def where(self) -> str:
        if self.variable is None:
            return self.file
        return f"{self.variable} (Environment= in {self.file})" if self.environment_line else \
            f"{self.variable} in {self.file}"

    @property
    def in_unit(self) -> bool:
        """Whether it is changed by editing a unit file (then `systemctl daemon-reload`)."""
        return self.variable is None or self.environment_line


@dataclass(frozen=True)
class Loaded:
    """What systemd reports for docker.service (`systemctl show`)."""

    fragment: str = ""
    dropins: tuple[str, ...] = ()
    argv: str | None = None          # ExecStart's argv[], the words joined by single spaces
    environment: tuple[str, ...] = ()
    env_files: tuple[tuple[str, bool], ...] = ()  # (path, whether a missing file is ignored)


def parse_show(text: str) -> Loaded:
    """`systemctl show --property=...` output (Name=value lines; ExecStart and EnvironmentFiles
    once per entry)."""
    fragment, argv, env_files = "", None, []
    dropins: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name == "FragmentPath":
            fragment = value.strip()
        elif name == "DropInPaths":
            dropins = tuple(shlex.split(value))
        elif name == "Environment":
            environment = tuple(shlex.split(value))
        elif name == "EnvironmentFiles" and value.strip():
            match = re.match(r"(.*) \(ignore_errors=(yes|no)\)\s*\Z", value)
            env_files.append((match.group(1), match.group(2) == "yes") if match else (value.strip(), False))
        elif name == "ExecStart" and value.strip():
            # { path=/usr/sbin/dockerd ; argv[]=/usr/sbin/dockerd -H fd:// ; ignore_errors=no ; ... }
            match = re.search(r"argv\[\]=(.*) ; (?:ignore_errors|flags)=", value)
            if match and argv is None:
                argv = match.group(1)
    return Loaded(fragment, dropins, argv, environment, tuple(env_files))


@dataclass(frozen=True)
class DockerUnit:
    """docker.service's unit file and drop-ins (path, text) in systemd's order, what systemd has
    loaded from them (None without systemd), and the text of the environment files they name."""

    fragment: tuple[str, str] | None
    dropins: tuple[tuple[str, str], ...] = ()
    loaded: Loaded | None = None
    env_texts: dict[str, str | None] = field(default_factory=dict, compare=False)

    @property
    def files(self) -> list[tuple[str, str]]:
        return ([self.fragment] if self.fragment else []) + list(self.dropins)

    def replaced(self, path: str, text: str | None) -> "DockerUnit":
        """The unit as it will be once the drop-in `path` holds `text` (None: removed) and systemd
        reloaded: drop-ins apply in the order of their file names, and one of the same name in a
        later directory is hidden by it."""
        name = posixpath.basename(path)
        dropins = [(p, t) for p, t in self.dropins if posixpath.basename(p) != name]
        if text is not None:
            dropins = sorted([*dropins, (path, text)], key=lambda item: posixpath.basename(item[0]))
        # After the reload, the files are what systemd runs: its old command is no reference.
        loaded = dataclasses.replace(self.loaded, argv=None) if self.loaded else None
        return DockerUnit(self.fragment, tuple(dropins), loaded, self.env_texts)

    def exec_start(self) -> tuple[Command | None, str]:
        """The command ExecStart= leaves after every file, and the file that set it."""
        command, origin = None, ""
        for path, text in self.files:
            for section, key, value in assignments(text):
                if section != "Service" or key != "ExecStart":
                    continue
                if not value:
                    command, origin = None, ""
                    continue
                try:
                    parsed = parse_command(value)
                except UnitSyntaxError:
                    continue  # systemd ignores the line too (and logs why)
                if parsed:
                    command, origin = parsed[0], path
        return command, origin

    def matches_loaded(self) -> bool:
        """Whether the files give the command systemd has loaded: no daemon-reload is pending,
        and nothing in them was read differently from systemd."""
        if self.loaded is None or self.loaded.argv is None:
            return True
        command, _ = self.exec_start()
        return (" ".join(command.argv) if command else None) == self.loaded.argv

    def environment(self) -> dict[str, tuple[str, str, bool]]:
        """NAME -> (value, the file that sets it, whether by Environment= in a unit file), as
        systemd gives the command: Environment=, then each EnvironmentFile= in order (a later one
        wins)."""
        env, env_files = unit_environment(self.files)
        if self.loaded is not None:  # systemd's values; the files only say where each is set
            env = {name: (value, env[name][1] if name in env else UNIT, True)
                   for name, _, value in (item.partition("=") for item in self.loaded.environment)}
            env_files = list(self.loaded.env_files)
        for path, _ignored in env_files:
            for name, value in parse_env_file(self.env_texts.get(path) or "").items():
                env[name] = (value, path, False)
        return env

    def dockerd_args(self) -> tuple[list[Arg], str]:
        """dockerd's arguments (argv[1:]) as it will receive them, each with where it is set, and
        where ExecStart is set. When the files do not give what systemd has loaded, systemd's
        words are used as it printed them (split at spaces)."""
        command, origin = self.exec_start()
        if self.loaded is not None and self.loaded.argv is not None and not self.matches_loaded():
            words = self.loaded.argv.split()
            command, origin = Command("", words[0], tuple(words)), f"{UNIT} as systemd has loaded it"
        if command is None:
            return [], origin
        if not command.expands_variables:
            return [Arg(w, origin) for w in command.argv[1:]], origin
        env = self.environment()
        values = {name: value for name, (value, _file, _line) in env.items()}
        args = [Arg(text, origin) if name is None or name not in env else Arg(text, env[name][1], name, env[name][2])
                for text, name in expand_variables(list(command.argv[1:]), values)]
        return args, origin


def unit_environment(files: list[tuple[str, str]]) -> tuple[dict[str, tuple[str, str, bool]],
                                                             list[tuple[str, bool]]]:
    """Environment= (NAME -> (value, file, True)) and EnvironmentFile= ((path, missing is
    ignored)) of the unit's files; an empty assignment clears the ones before it."""
    env: dict[str, tuple[str, str, bool]] = {}
    env_files: list[tuple[str, bool]] = []
    for path, text in files:
        for section, key, value in assignments(text):
            if section != "Service":
                continue
            if key == "Environment":
                if not value:
                    env = {}
                try:
                    words = split_words(value)
                except UnitSyntaxError:
                    continue
                for word in words:
                    name, sep, val = resolve_specifiers(word, UNIT).partition("=")
                    if sep:
                        env[name] = (val, path, True)
            elif key == "EnvironmentFile":
                if not value:
                    env_files = []
                else:
                    env_files.append((resolve_specifiers(value.lstrip("-"), UNIT), value.startswith("-")))
    return env, env_files


def _dropin_paths(host: "FileReads") -> list[str]:
    """Without systemd: every docker.service.d/*.conf, one per name (/etc first), by name."""
    chosen: dict[str, str] = {}
    for directory in UNIT_DIRS:
        path = f"{directory}/{UNIT}.d"
        for name in host.listdir(path):
            if name.endswith(".conf") and name not in chosen:
                chosen[name] = f"{path}/{name}"
    return [chosen[name] for name in sorted(chosen)]


def docker_unit(facts: "Facts") -> DockerUnit:
    """docker.service as systemd has it (or, without systemd, as its directories hold it): facts
    unit_show (one `systemctl show`) and the files it names."""
    from .. import facts as F

    loaded = None
    host = facts.files
    if facts.get(F.SYSTEMD_RUNNING):
        shown = facts.get(F.UNIT_SHOW, "docker")
        if shown:
            loaded = parse_show(shown)
    if loaded is not None:
        fragment_path, dropin_paths = loaded.fragment or None, list(loaded.dropins)
    else:
        fragment_path = next((p for p in DOCKER_UNITS if host.read_text(p) is not None), None)
        dropin_paths = _dropin_paths(host)
    fragment = (fragment_path, host.read_text(fragment_path) or "") if fragment_path else None
    unit = DockerUnit(fragment, tuple((p, host.read_text(p) or "") for p in dropin_paths), loaded)
    env_paths = [p for p, _ in (loaded.env_files if loaded else unit_environment(unit.files)[1])]
    return DockerUnit(unit.fragment, unit.dropins, loaded, {p: host.read_text(p) for p in env_paths})

"""systemd's own syntax, as far as the tool reads docker.service and writes a drop-in for it.

Each function follows the systemd code that reads the same text, so that the tool sees the
command line systemd will run, word for word:

- unit files (systemd.syntax(7); conf-parser.c): comment lines, a trailing backslash continuing
  a line, sections, `Key=value`;
- command lines (systemd.service(5) "Command lines"; config_parse_exec, extract_first_word): the
  prefixes of the program (`-@:+!`), words split at whitespace, single and double quotes anywhere
  in a word, C escapes, specifiers (`%n`, `%%`) resolved when the unit is loaded;
- variables in command lines, resolved when the command runs (replace_env_argv): a word that is
  exactly `$NAME` becomes the variable's value split into words (quotes respected, then removed;
  an unset variable gives no word), `${NAME}` inside a word becomes the exact value (one word),
  and `$$` is a literal `$`;
- environment files (systemd.exec(5) EnvironmentFile=; env-file.c).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WHITESPACE = " \t\n\r"
COMMENTS = "#;"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class UnitSyntaxError(ValueError):
    """A word systemd itself would refuse (unbalanced quotes): the line is ignored by systemd."""


# --- unit files -----------------------------------------------------------------------------------

def assignments(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order, as conf-parser.c reads them."""
    out: list[tuple[str, str, str]] = []
    section = ""

    def parse(line: str) -> None:
        nonlocal section
        line = line.strip(WHITESPACE)
        if not line:
            return
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            return
        key, sep, value = line.partition("=")
        if sep:
            out.append((section, key.strip(WHITESPACE), value.strip(WHITESPACE)))

    continuation: str | None = None
    for raw in text.split("\n"):
        raw = raw.rstrip("\r")
        stripped = raw.lstrip(WHITESPACE)
        if stripped and stripped[0] in COMMENTS:
            continue  # a comment line, also inside a continuation
        line = raw if continuation is None else continuation + raw
        escaped = False
        for char in line:
            escaped = not escaped and char == "\\"
        if escaped:  # an unescaped trailing backslash: the line goes on, the backslash is a space
            continuation = line[:-1] + " "
            continue
        continuation = None
        parse(line)
    if continuation is not None:  # a backslash on the last line: what came so far still counts
        parse(continuation)
    return out


# --- command lines --------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'", "s": " "}


def _cunescape_one(text: str, i: int) -> tuple[str, int] | None:
    """The character a C escape at text[i] (just after the backslash) stands for, and its length."""
    c = text[i] if i < len(text) else ""
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], 1
    for prefix, digits, base in (("x", 2, 16), ("u", 4, 16), ("U", 8, 16)):
        if c == prefix:
            code = text[i + 1:i + 1 + digits]
            if len(code) == digits and all(ch in "0123456789abcdefABCDEF" for ch in code):
                value = int(code, base)
                return (chr(value), 1 + digits) if value and value <= 0x10FFFF else None
            return None
    code = text[i:i + 3]
    if len(code) == 3 and all(ch in "01234567" for ch in code) and int(code, 8) and int(code, 8) < 256:
        return chr(int(code, 8)), 3
    return None


def _next_word(text: str, i: int, cunescape: bool, relax: bool) -> tuple[str | None, int]:
    """The word starting at or after text[i] as extract_first_word() gives it, and where the next
    one may start; None at the end of the text."""
    n = len(text)
    while i < n and text[i] in WHITESPACE:
        i += 1
    if i >= n:
        return None, n
    word: list[str] = []
    quote = ""
    while i < n:
        c = text[i]
        if c == "\\":
            i += 1
            if i >= n:  # a trailing backslash
                if cunescape and not quote:
                    word.append("\\")  # kept, as systemd's retry with EXTRACT_CUNESCAPE_RELAX does
                    break
                if relax:
                    break  # dropped (EXTRACT_RELAX alone)
                raise UnitSyntaxError(f"unbalanced quoting in {text!r}")
            escape = _cunescape_one(text, i) if cunescape else (text[i], 1)
            if escape is None:  # unknown escape: systemd warns and keeps it verbatim
                word.append("\\" + text[i])
                i += 1
            else:
                word.append(escape[0])
                i += escape[1]
        elif quote:
            if c == quote:
                quote = ""
            else:
                word.append(c)
            i += 1
        elif c in "'\"":
            quote = c
            i += 1
        elif c in WHITESPACE:
            break
        else:
            word.append(c)
            i += 1
    if quote and not relax:
        raise UnitSyntaxError(f"unbalanced quoting in {text!r}")
    return "".join(word), i


def split_words(text: str, cunescape: bool = True, relax: bool = False) -> list[str]:
    """Words as extract_first_word() gives them (EXTRACT_UNQUOTE, and EXTRACT_CUNESCAPE unless
    `cunescape` is false): separated by whitespace, quotes anywhere in a word, backslash escapes.
    An unknown escape keeps its backslash (systemd warns and does the same); unbalanced quotes
    raise UnitSyntaxError unless `relax`."""
    words: list[str] = []
    i = 0
    while True:
        word, i = _next_word(text, i, cunescape, relax)
        if word is None:
            return words
        words.append(word)


def resolve_specifiers(word: str, unit: str) -> str:
    """Specifiers in a word of a unit that is not a template (systemd.unit(5) "Specifiers"),
    for a system service. An unknown one is left as it is."""
    prefix = unit.rsplit(".", 1)[0]
    table = {"%": "%", "n": unit, "N": prefix, "p": prefix, "P": prefix, "i": "", "I": "", "j": prefix,
             "J": prefix, "f": "/" + prefix, "t": "/run", "S": "/var/lib", "C": "/var/cache", "L": "/var/log",
             "E": "/etc", "T": "/tmp", "V": "/var/tmp", "h": "/root", "u": "root", "U": "0", "g": "root",
             "G": "0", "s": "/bin/sh"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), word)


@dataclass(frozen=True)
class Command:
    """One command of an Exec*= setting, after the unit was loaded (variables not yet expanded)."""

    prefix: str             # "-", "@", ":", "+", "!", "!!" as written before the program
    path: str               # the program
    argv: tuple[str, ...]   # what the program receives, argv[0] included

    @property
    def expands_variables(self) -> bool:
        return ":" not in self.prefix

    def render(self) -> str:
        """The command as an Exec*= value that systemd reads back as this very command."""
        words = [self.path] + list(self.argv if "@" in self.prefix else self.argv[1:])
        return self.prefix + " ".join(quote_word(w) for w in words)


def parse_command(value: str, unit: str = "docker.service") -> list[Command]:
    """The commands of an Exec*= value, as config_parse_exec() reads it: a lone `;` separates
    commands, `\\;` is a literal `;`, specifiers are resolved word by word. Unbalanced quotes
    raise UnitSyntaxError (systemd ignores such a line, with an error in its log)."""
    commands: list[Command] = []
    i, n = 0, len(value)
    while True:
        first, i = _next_word(value, i, True, False)
        if first is None:
            return commands
        if first == ";":
            continue
        prefix = first[:len(first) - len(first.lstrip("-@:+!"))]  # ExecStart='s special prefixes
        path = resolve_specifiers(first[len(prefix):], unit)
        args: list[str] = []
        while True:
            while i < n and value[i] in WHITESPACE:
                i += 1
            if value[i:i + 1] == ";" and (i + 1 == n or value[i + 1] in WHITESPACE):
                i += 1
                break
            if value[i:i + 2] == "\\;" and (i + 2 == n or value[i + 2] in WHITESPACE):
                args.append(";")
                i += 2
                continue
            word, i = _next_word(value, i, True, False)
            if word is None:
                break
            args.append(resolve_specifiers(word, unit))
        if path:
            commands.append(Command(prefix, path, tuple(args) if "@" in prefix else (path, *args)))


_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./$\-{}\[\]]+\Z")


def quote_word(word: str) -> str:
    """One word for an Exec*= line that systemd reads back as exactly `word`.

    `%` becomes `%%`: the line's specifiers are resolved when the unit loads, and the word is
    already resolved. `$` is left as it is: `$NAME`, `${NAME}` and `$$` keep their meaning for the
    command's run time, as in the unit the word came from. A word with whitespace, quotes,
    backslashes or control characters goes in double quotes with C escapes."""
    word = word.replace("%", "%%")
    if word == ";":
        return "\\;"
    if word and _PLAIN.match(word):
        return word
    out = []
    for char in word:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def expand_variables(argv: list[str], env: dict[str, str]) -> list[tuple[str, str | None]]:
    """Each argument the program receives, with the variable it came from (None: the word itself).

    As systemd does when it runs the command: a word that is `$NAME` becomes the value of NAME
    split at whitespace (quotes respected, then removed; backslash escapes the next character),
    no word at all when NAME is unset; otherwise `${NAME}` becomes the value (unset: empty) and
    `$$` a `$`, the word staying one word."""
    out: list[tuple[str, str | None]] = []
    for word in argv:
        if word.startswith("$") and word[1:2] not in ("{", "$"):
            name = word[1:]
            if name in env:
                out.extend((w, name) for w in split_words(env[name], cunescape=False, relax=True))
            continue
        names: list[str] = []

        def one(match: re.Match) -> str:
            if match.group(0) == "$$":
                return "$"
            names.append(match.group(1))
            return env.get(match.group(1), "")

        expanded = re.sub(r"\$\$|\$\{([^}]*)\}", one, word)
        out.append((expanded, names[0] if names else None))
    return out


# --- environment files ----------------------------------------------------------------------------

def parse_env_file(text: str) -> dict[str, str]:
    """Assignments of an EnvironmentFile=, as systemd reads them (env-file.c, then only names that
    are valid variable names: `export NAME=...` sets nothing)."""
    values: dict[str, str] = {}
    state = "pre_key"
    key: list[str] = []
    value: list[str] = []
    trailing = None  # index in value where trailing whitespace starts (unquoted)

    def push() -> None:
        name = "".join(key).rstrip(WHITESPACE)
        text_value = "".join(value)
        if ENV_NAME.match(name):
            values[name] = text_value

    for c in text:
        if state == "pre_key":
            if c in COMMENTS:
                state = "comment"
            elif c not in WHITESPACE:
                state, key, value = "key", [c], []
        elif state == "key":
            if c in "\n\r":
                state = "pre_key"
            elif c == "=":
                state, trailing = "pre_value", None
            else:
                key.append(c)
        elif state == "pre_value":
            if c in "\n\r":
                push()
                state = "pre_key"
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in WHITESPACE:
                state = "value"
                value.append(c)
        elif state == "value":
            if c in "\n\r":
                if trailing is not None:
                    del value[trailing:]
                push()
                state = "pre_key"
            elif c == "\\":
                state, trailing = "value_escape", None
            else:
                if c not in WHITESPACE:
                    trailing = None
                elif trailing is None:
                    trailing = len(value)
                value.append(c)
        elif state == "value_escape":
            state = "value"
            if c not in "\n\r":
                value.append(c)
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value.append(c)
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value.append(c)
        elif state == "double_escape":
            state = "double"
            if c in '"\\`$':
                value.append(c)
            elif c != "\n":
                value.extend(("\\", c))
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in "\n\r":
                state = "pre_key"
        elif state == "comment_escape":
            state = "pre_key" if c in "\n\r" else "comment"
    if state in ("pre_value", "value", "value_escape", "single", "double", "double_escape"):
        if state == "value" and trailing is not None:
            del value[trailing:]
        push()
    return values

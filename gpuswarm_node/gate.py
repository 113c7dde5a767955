"""The hub's gate: what a worker's SSH key may do on the manager, and nothing more.

`gpuswarm-node hub authorize --key PUBFILE --node NAME` adds the key to the SSH user's
authorized_keys as

    restrict,command="/usr/local/bin/gpuswarm-node hub gate --node NAME" ssh-ed25519 AAAA... gpuswarm-node:NAME

so sshd runs the gate, whatever command the worker asked for, with the asked-for command in
SSH_ORIGINAL_COMMAND (sshd(8), AUTHORIZED_KEYS FILE FORMAT: `command`, `restrict`). The gate
understands one small protocol, each request one line `gpuswarm-gate VERB [ARG...]`:

| verb | answer |
|---|---|
| `hello` | `gpuswarm-gate 1 node=NAME`: the worker knows it talks to a gate |
| `swarm-info` | the manager's node id, address, swarm state and cluster id, as JSON |
| `join-token` | the worker join token (never the manager token) |
| `node-known NODE_ID` | `yes` or `no` |
| `node NODE_ID` | the node's state, availability and `gpuswarm.*` labels, as JSON |
| `tasks NODE_ID` | the ids of the tasks meant to run on the node, one a line |
| `drain NODE_ID`, `pause NODE_ID`, `activate NODE_ID` | sets the node's availability |
| `remove NODE_ID` | removes the node (Docker refuses one that is not down) |
| `labels NODE_ID KEY=VALUE...` | sets exactly these `gpuswarm.*` labels (others of that prefix removed) |

Who is calling: the key is bound to a node name when it is authorised (`--node`), and every verb
that names a node acts only on a node whose hostname (`Description.Hostname`, what the worker's
Docker reports) is that name. The limit: a hostname is what a worker says it is, so a worker with
this key can act on any node that calls itself NAME (its own, or nodes it joined itself with the
token it may fetch), never on a node with another hostname. Give each worker its own key and a
unique hostname.

Anything else is refused with one line on stderr and exit status 126; Docker's own failures keep
their exit status, their messages with any join token masked.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from .errors import ConfigError, GpuswarmError
from .secrets import redact

WORD = "gpuswarm-gate"
VERSION = "1"
REFUSED = 126
# Node ids are 25 lower-case base-36 characters (swarmkit identity.NewID).
NODE_ID = re.compile(r"[a-z0-9]{25}")
# A host name (RFC 1123 labels), as Docker reports the node's.
NODE_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
LABEL_PREFIX = "gpuswarm."
LABEL_KEY = re.compile(r"gpuswarm(\.[a-z0-9_]+)+")
LABEL_VALUE = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_LABELS = 32
# The fields of `docker info` a worker needs; `.Swarm.Cluster` exists on managers only.
SWARM_INFO_FORMAT = ('{"NodeID":{{json .Swarm.NodeID}},"NodeAddr":{{json .Swarm.NodeAddr}},'
                     '"LocalNodeState":{{json .Swarm.LocalNodeState}},'
                     '"ControlAvailable":{{json .Swarm.ControlAvailable}},'
                     '"ClusterID":{{if .Swarm.Cluster}}{{json .Swarm.Cluster.ID}}{{else}}""{{end}},'
                     '"RemoteManagers":{{json .Swarm.RemoteManagers}},"ServerVersion":{{json .ServerVersion}}}')

DockerRunner = Callable[[list[str]], "tuple[int, str, str]"]


class Refused(Exception):
    """A request the gate does not allow; the message is the one line the worker sees."""


def run_docker(argv: list[str]) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `docker ARGV...` run without a shell."""
    try:
        done = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, "", "docker is not installed on the hub"
    except subprocess.TimeoutExpired:
        return 124, "", "docker did not answer within 120 s"
    return done.returncode, done.stdout, done.stderr


def node_labels(spec_labels: dict | None) -> dict[str, str]:
    return {k: v for k, v in (spec_labels or {}).items() if k.startswith(LABEL_PREFIX)}


def parse_labels(items: list[str]) -> dict[str, str]:
    """{key: value} from KEY=VALUE words; Refused unless every key is gpuswarm.* and every value
    plain (letters, digits, `.`, `_`, `-`, at most 128)."""
    if len(items) > MAX_LABELS:
        raise Refused(f"at most {MAX_LABELS} labels")
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise Refused(f"a label must be gpuswarm.NAME=VALUE with a plain value, not {item[:80]!r}")
        labels[key] = value
    return labels


class Gate:
    """The gate for one authorised key, bound to the node name `node`."""

    def __init__(self, node: str, docker: DockerRunner = run_docker) -> None:
        self.node, self.docker = node, docker

    def serve(self, request: str | None) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) for one request (SSH_ORIGINAL_COMMAND; None: a login)."""
        try:
            return self._serve(request)
        except Refused as exc:
            return REFUSED, "", f"{WORD}: refused: {exc}; this key may only run `{WORD}` requests for node {self.node}.\n"

    def _serve(self, request: str | None) -> tuple[int, str, str]:
        if request is None or not request.strip():
            raise Refused("an interactive login")
        if any(ord(c) < 0x20 or ord(c) == 0x7f for c in request) or len(request) > 4096:
            raise Refused("a request with control characters or over 4096 bytes")
        words = request.split()
        if words[0] != WORD:
            raise Refused(f"`{redact(words[0][:60])}` is not a {WORD} request")
        verb, args = (words[1], words[2:]) if len(words) > 1 else ("", [])
        handler = getattr(self, "do_" + verb.replace("-", "_"), None) if re.fullmatch(r"[a-z-]+", verb) else None
        if handler is None:
            raise Refused(f"unknown verb {verb[:40]!r}")
        return handler(*args) if self._arity_ok(handler, args) else self._bad_arity(verb)

    @staticmethod
    def _arity_ok(handler, args: list[str]) -> bool:
        import inspect

        params = inspect.signature(handler).parameters.values()
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            return len(args) >= len([p for p in params if p.kind is not p.VAR_POSITIONAL])
        return len(args) == len(params)

    @staticmethod
    def _bad_arity(verb: str):
        raise Refused(f"wrong arguments for {verb}")

    def _docker(self, *argv: str) -> tuple[int, str, str]:
        status, out, err = self.docker(list(argv))
        if status != 0:
            return status, "", redact(err.strip() or f"docker exited {status}") + "\n"
        return 0, out, ""

    def _own(self, node_id: str) -> dict:
        """The node `node_id`, when it is the caller's own; else Refused."""
        if not NODE_ID.fullmatch(node_id):
            raise Refused(f"{node_id[:40]!r} is not a node id")
        status, out, _err = self.docker(["node", "inspect", node_id, "--format", "{{json .}}"])
        if status != 0:
            raise Refused(f"node {node_id} is not in this swarm")
        try:
            node = json.loads(out)
        except ValueError:
            raise Refused(f"node {node_id} cannot be read") from None
        hostname = (node.get("Description") or {}).get("Hostname", "")
        if hostname != self.node:
            raise Refused(f"node {node_id} is {hostname or 'unnamed'}, not {self.node}")
        return node

    # --- the verbs --------------------------------------------------------------------------

    def do_hello(self):
        return 0, f"{WORD} {VERSION} node={self.node}\n", ""

    def do_swarm_info(self):
        return self._docker("info", "--format", SWARM_INFO_FORMAT)

    def do_join_token(self):
        return self._docker("swarm", "join-token", "-q", "worker")

    def do_node_known(self, node_id):
        if not NODE_ID.fullmatch(node_id):
            raise Refused(f"{node_id[:40]!r} is not a node id")
        status, out, err = self._docker("node", "ls", "--quiet", "--filter", f"id={node_id}")
        if status != 0:
            return status, out, err
        return 0, ("yes" if node_id in out.split() else "no") + "\n", ""

    def do_node(self, node_id):
        node = self._own(node_id)
        answer = {"ID": node.get("ID", ""), "State": (node.get("Status") or {}).get("State", ""),
                  "Availability": (node.get("Spec") or {}).get("Availability", ""),
                  "Labels": node_labels((node.get("Spec") or {}).get("Labels"))}
        return 0, json.dumps(answer) + "\n", ""

    def do_tasks(self, node_id):
        self._own(node_id)
        return self._docker("node", "ps", node_id, "--filter", "desired-state=running", "--format", "{{.ID}}")

    def do_drain(self, node_id):
        self._own(node_id)
        return self._docker("node", "update", "--availability", "drain", node_id)

    def do_pause(self, node_id):
        # watch, on a cloud's notice that the instance may go soon: no new tasks, the running stay.
        self._own(node_id)
        return self._docker("node", "update", "--availability", "pause", node_id)

    def do_activate(self, node_id):
        self._own(node_id)
        return self._docker("node", "update", "--availability", "active", node_id)

    def do_remove(self, node_id):
        self._own(node_id)
        return self._docker("node", "rm", node_id)

    def do_labels(self, node_id, *items):
        wanted = parse_labels(list(items))
        node = self._own(node_id)
        have = node_labels((node.get("Spec") or {}).get("Labels"))
        argv = ["node", "update"]
        for key in sorted(set(have) - set(wanted)):
            argv += ["--label-rm", key]
        for key, value in sorted(wanted.items()):
            argv += ["--label-add", f"{key}={value}"]
        if len(argv) == 2:
            return 0, "", ""
        return self._docker(*argv, node_id)


def serve_from_environment(node: str) -> int:
    """The forced command's body: one request from SSH_ORIGINAL_COMMAND, answered on stdout/stderr."""
    import sys

    if not NODE_NAME.fullmatch(node or ""):
        sys.stderr.write(f"{WORD}: refused: the key's node name is not a host name; authorise it again with "
                         "`gpuswarm-node hub authorize`.\n")
        return REFUSED
    status, out, err = Gate(node).serve(os.environ.get("SSH_ORIGINAL_COMMAND"))
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


# --- authorize ------------------------------------------------------------------------------

KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
PROGRAM = re.compile(r"/[A-Za-z0-9/._+-]*")


def parse_public_key(text: str, where: str) -> tuple[str, str]:
    """(key type, base64 blob) of the one public key in `text`; ConfigError naming `where`."""
    from .keyfiles import public_key_problem

    wrong_kind = public_key_problem(text, where)
    if wrong_kind is not None:
        raise ConfigError(*wrong_kind)
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    fix = "Give the .pub file ssh-keygen wrote (one line: type, key, comment)."
    if len(lines) != 1:
        raise ConfigError(f"{where} holds {len(lines)} keys, not one.", fix)
    words = lines[0].split()
    if len(words) < 2 or words[0] not in KEY_TYPES:
        raise ConfigError(f"{where} is not an OpenSSH public key (it must start with a key type such as "
                          "ssh-ed25519, without options).", fix)
    try:
        blob = base64.b64decode(words[1], validate=True)
    except ValueError:
        raise ConfigError(f"{where}: the key is not valid base64.", fix) from None
    # The blob starts with its own type as an SSH string (RFC 4253 section 6.6).
    if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")] != words[0].encode():
        raise ConfigError(f"{where}: the key does not match its type {words[0]}.", fix)
    return words[0], words[1]


def gated_line(key_type: str, blob: str, node: str, program: str) -> str:
    return (f'restrict,command="{program} hub gate --node {node}" {key_type} {blob} gpuswarm-node:{node}')


def default_program() -> str:
    found = shutil.which("gpuswarm-node")
    if not found:
        raise ConfigError("gpuswarm-node is not on PATH, so the forced command cannot name it.",
                          "Give --program /path/to/gpuswarm-node (a path that stays across upgrades, such as "
                          "/usr/local/bin/gpuswarm-node).")
    return os.path.abspath(found)


def authorize(pub_text: str, pub_where: str, node: str, authorized_keys: Path, program: str) -> list[str]:
    """Add (or replace) the key's line in `authorized_keys` with the gated one; what was done, as
    sentences. Every other line is kept as it was. ConfigError on bad input, nothing written."""
    from .host import atomic_write

    if not NODE_NAME.fullmatch(node):
        raise ConfigError(f"--node {node[:80]!r} is not a host name.",
                          "Give the worker's host name (what `hostname` prints on it).")
    if not PROGRAM.fullmatch(program):
        raise ConfigError(f"--program {program[:80]!r} is not an absolute path of plain characters.",
                          "Give the absolute path of gpuswarm-node on the hub.")
    key_type, blob = parse_public_key(pub_text, pub_where)
    path = Path(authorized_keys)
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link; refusing to write through it.",
                          "Replace the link with the file itself.")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path} is not a regular file.", "Give the user's authorized_keys file.")
    old = path.read_text() if path.exists() else ""
    kept, replaced = [], []
    for line in old.splitlines():
        if blob in line.split():
            replaced.append(line)
        else:
            kept.append(line)
    new_line = gated_line(key_type, blob, node, program)
    done = []
    if replaced == [new_line]:
        return [f"the key is already gated for node {node} in {path}; nothing changed"]
    if any(not line.startswith("restrict,command=") for line in replaced):
        done.append("replaced an unrestricted line for this key (it was a full login on the hub)")
    elif replaced:
        done.append("replaced this key's earlier gated line")
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    st = path.stat() if path.exists() else path.parent.stat()
    try:
        atomic_write(path, "\n".join([*kept, new_line]) + "\n", mode=0o600, owner=(st.st_uid, st.st_gid))
    except OSError as exc:
        raise GpuswarmError(f"{path} cannot be written: {exc.strerror}.", "Run this as the SSH user (or root).") \
            from None
    done.insert(0, f"authorised the key for node {node} in {path}: it may only run the gate "
                   f"({program} hub gate --node {node})")
    return done


# --- revoke ---------------------------------------------------------------------------------
#
# How sshd reads a line of authorized_keys (OpenSSH auth2-pubkey.c check_authkey_line, sshkey.c
# sshkey_advance_past_options, auth-options.c sshauthopt_parse): leading blanks are skipped, empty
# lines and `#` lines ignored; a line that does not start with a key type starts with options, which
# run to the first blank outside double quotes (`\"` inside quotes is a quote, not its end); options
# are separated by commas, their names match without regard to case (opt_match: strncasecmp), and a
# value is a double-quoted string. So an operator may add `from="10.0.0.0/8",no-pty,` before our
# `restrict,command="..."`, reorder them, or write `COMMAND=`; all of these are the same key.

def _split_options(line: str) -> tuple[str, list[str]]:
    """(options, the words after them) of one authorized_keys line; ("", words) when it has none."""
    text = line.lstrip(" \t")
    words = text.split()
    if not words or words[0].lower().startswith(("ssh-", "ecdsa-", "sk-")):
        return "", words
    quoted, i = False, 0
    while i < len(text) and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and text[i + 1:i + 2] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    return text[:i], text[i:].split()


def _options(options: str) -> list[tuple[str, str]]:
    """[(lower-case name, dequoted value or "")] of an options field."""
    found, i = [], 0
    while i < len(options):
        name = re.split(r"[=,]", options[i:], maxsplit=1)[0]
        i += len(name)
        value = ""
        if options[i:i + 2] == '="':
            i += 2
            chars = []
            while i < len(options) and options[i] != '"':
                if options[i] == "\\" and options[i + 1:i + 2] == '"':
                    i += 1
                chars.append(options[i])
                i += 1
            value = "".join(chars)
            i += 1
        elif options[i:i + 1] == "=":
            value = options[i + 1:].split(",", 1)[0]
            i += 1 + len(value)
        found.append((name.lower(), value))
        if options[i:i + 1] == ",":
            i += 1
    return found


def gate_nodes(line: str) -> set[str]:
    """The node names whose gate a line's forced command runs (`... hub gate --node NAME`, also
    `--node=NAME`, quoted or behind `exec`), whatever other options stand before or after it."""
    import shlex

    nodes: set[str] = set()
    for name, value in _options(_split_options(line)[0]):
        if name != "command":
            continue
        try:
            argv = shlex.split(value)
        except ValueError:
            argv = value.replace('"', " ").replace("'", " ").split()
        for i in range(len(argv) - 1):
            if argv[i] == "hub" and argv[i + 1] == "gate":
                rest = argv[i + 2:]
                nodes.update(rest[j + 1] for j, word in enumerate(rest[:-1]) if word == "--node")
                nodes.update(word[len("--node="):] for word in rest if word.startswith("--node="))
    return nodes


def _key_blob(line: str) -> str | None:
    words = _split_options(line)[1]
    return words[1] if len(words) >= 2 else None


def _is_nodes(line: str, node: str, blobs: set[str]) -> bool:
    """Whether the line lets one of node's keys in: its gate, our comment for it, or a key revoked."""
    if not line.strip() or line.lstrip().startswith("#"):
        return False
    words = _split_options(line)[1]
    return (node in gate_nodes(line) or f"gpuswarm-node:{node}" in words[2:]
            or (len(words) >= 2 and words[1] in blobs))


def revoke_targets(given: list[Path]) -> list[Path]:
    """The authorized_keys files `hub revoke` searches: those given, else every file `hub authorize`
    and `hub bundle` write by default, ~USER/.ssh/authorized_keys of every user of this host (the
    running user's, and any swarm.ssh_user's)."""
    import pwd

    if given:
        paths = [Path(p) for p in given]
    else:
        paths = [Path(os.path.expanduser("~/.ssh/authorized_keys"))]
        paths += [Path(entry.pw_dir) / ".ssh" / "authorized_keys" for entry in pwd.getpwall()
                  if entry.pw_dir.startswith("/")]
    seen, unique = set(), []
    for path in paths:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(Path(key))
    return unique


def revoke(node: str, authorized_keys: Path | list[Path]) -> list[str]:
    """Remove every line that lets a key of `node` log in, from each file of `authorized_keys`: a
    line whose forced command is that node's gate (with whatever options an operator added around
    it), a line with our comment `gpuswarm-node:NODE`, and any other line of the same keys. Every
    other line is kept. What was done, as sentences. ConfigError on a bad node name; GpuswarmError
    (after removing what it could) when a file cannot be read or written, or a key of the node is
    still in one afterwards: a revocation either revokes or fails."""
    from .host import atomic_write

    if not NODE_NAME.fullmatch(node):
        raise ConfigError(f"--node {node[:80]!r} is not a host name.", "Give the node name the key was authorised for.")
    paths = [Path(authorized_keys)] if isinstance(authorized_keys, (str, os.PathLike)) else list(authorized_keys)
    texts: dict[Path, str] = {}
    problems: list[str] = []
    for path in paths:
        if path.is_symlink():
            problems.append(f"{path} is a symbolic link (not followed; replace it with the file itself)")
            continue
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                texts[path] = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            problems.append(f"{path} cannot be read: {exc.strerror}")
    # The node's keys: those of its gated lines anywhere, then every line of those keys anywhere.
    blobs = {b for text in texts.values() for line in text.splitlines()
             if _is_nodes(line, node, set()) and (b := _key_blob(line))}
    done = []
    for path, text in texts.items():
        lines = text.splitlines()
        kept = [line for line in lines if not _is_nodes(line, node, blobs)]
        if len(kept) == len(lines):
            continue
        st = path.stat()
        try:
            atomic_write(path, "".join(line + "\n" for line in kept).encode("utf-8", "surrogateescape"),
                         mode=0o600, owner=(st.st_uid, st.st_gid))
        except OSError as exc:
            problems.append(f"{path} cannot be written: {exc.strerror}")
            continue
        done.append(f"revoked {len(lines) - len(kept)} key(s) of node {node} in {path}")
    # Read back: what sshd would read now.
    for path in texts:
        try:
            left = [line for line in path.read_text(errors="surrogateescape").splitlines()
                    if _is_nodes(line, node, blobs)]
        except OSError as exc:
            problems.append(f"{path} cannot be read back: {exc.strerror}")
            continue
        if left:
            problems.append(f"{path} still lets {len(left)} key(s) of node {node} in")
    if problems:
        raise GpuswarmError("the revocation is not complete: " + "; ".join([*done, *problems]) + ".",
                            "Run it as root (or the SSH user), or give --authorized-keys FILE for each file, "
                            "and revoke again.")
    if not done:
        return [f"no key of node {node} in {', '.join(str(p) for p in paths)}; nothing changed"]
    return [*done, "they no longer log in (open SSH sessions end by themselves; the node stays in the swarm "
            "until it leaves or `docker node rm`)"]

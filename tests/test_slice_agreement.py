"""One answer for every DOCKER_RESOURCE_<KIND> value from the three readers of it: the
before-notebook hook (sourced by dash and by bash, as start.sh does, under `set -e`),
`gpuswarm-node cuda-env` (gpuswarm_node/slices.py) and the runtime wrapper's program
(templates/gpuswarm-runtime.j2, rendered as setup renders it). Each either accepts a value, with
the same device list, or refuses it, naming the same first malformed slice.

A seeded fuzz: well-formed reservations, and mutations of them by whitespace (a trailing newline,
which `$(...)` strips, CR, tab, ...), non-ASCII letters and digits (which str.isdigit and isalnum
accept), bytes that are not UTF-8, empty items, glob and shell characters, backslashes, repeated
`::`, letter case, splices, duplicates and long values. The wrapper also refuses well-formed slices
its node does not advertise: here its slice map advertises every well-formed slice of the corpus,
and every slice's well-formedness is compared on its own, so that the map cannot hide a
disagreement.

The hook runs in batches (one shell per batch, each value sourced in a subshell) and the
wrapper's functions are called in-process; a smaller sample goes through the real wrapper and the
real `gpuswarm-node cuda-env`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpuswarm_node.slices import (cuda_env, cuda_visible_devices, device_of, memory_share_env, slice_map_text,
                                  well_formed)
from gpuswarm_node.steps.docker_daemon import wrapper_program_text

from .test_runtime_wrapper import Node, resource_env

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "templates" / "before-notebook.d" / "gpuswarm-cuda-env.sh"
VARIABLE = "DOCKER_RESOURCE_GPU"
SEED = 20240611
RANDOM_VALUES = 2400
EXPECTED = "(expected GPU-<uuid>::<n> or MIG-<uuid>)"

GPUS = [f"GPU-{i:08x}-1111-4222-8333-{i * 7919:012x}" for i in range(6)]
MIGS = [f"MIG-{i:08x}-aaaa-5bbb-8ccc-{i:012d}" for i in range(3)]
G0, MIG = GPUS[0], MIGS[0]
# Well formed, if odd: the syntax allows '-' and '/' and any number.
ODD = ["GPU--", "GPU-/", "GPU-a/b::7", "MIG-0", "MIG--/", "GPU-Z::1234567890123456789012345678901234567890",
       "GPU-x::10", "GPU-0"]

SPACE = [" ", "\t", "\n", "\n\n", "\r", "\r\n", "\v", "\f", "\x1b", "\x7f", "\x01", "\u00a0", "\u2028",
         "\u200b", "\ufeff", "\u3000"]
NON_ASCII = ["\u00e9", "\u00df", "\u0130", "\u212a", "\u017f", "\u0661", "\u0660", "\u00b2", "\u00b9",
             "\uff11", "\u216b", "\U0001d7d9", "\u07c0", "\u0966", "\u00aa", "\u00b5", "\u2460"]
GLOB = ["*", "?", "[", "]", "[!a]", "[a-z]", "[[:digit:]]", "!", "^", "\\", "\\n", "\\\\", "**", "[1]"]
SHELL = ["$", "`", "'", '"', ";", "&", "|", "(", ")", "{", "}", "<", ">", "~", "#", "=", "%", "$(x)",
         "${x}", "&&", "$IFS", "\\$"]
PUNCT = [",", ",,", ":", "::", ":::", "-", "/", "_", ".", "+", "@"]
# Bytes that are not UTF-8, as os.environ (and so `gpuswarm-node cuda-env`) holds them.
RAW_BYTES = ["\udcff", "\udcc3", "\udc80", "\udce9"]
CHARACTERS = [SPACE, NON_ASCII, GLOB, SHELL, PUNCT, RAW_BYTES]
CASES = [("GPU-", "gpu-"), ("GPU-", "Gpu-"), ("GPU-", "GPU_"), ("GPU-", "GPU"), ("GPU-", "GPU--"),
         ("MIG-", "Mig-"), ("MIG-", "mig-"), ("MIG-", "MIG_"), ("GPU-", "MIG-"), ("MIG-", "GPU-")]
NUMBERS = ["0", "00", "01", "010", "", "-1", "+1", "1.0", "1e3", "0x1", "\u0661", "\u00b2", "\uff11",
           "1\u0662", "\u0967", "\U0001d7d9", " 1", "1 ", "1\n", "9" * 100]

EDGE = [
    "", ",", ",,", "\n", "\n\n", " ", "\t", "\r", ":", "::", "GPU-", "MIG-", "GPU-::1", "MIG-::1", "all", "none",
    "void", "0", "1", "-", "*", "?", "[", "]", "\\", "GPU-*", "GPU-?", "GPU-[a]", "GPU-a\\", "GPU-\\",
    f"{G0}::1\n", f"{G0}::1\n\n", f"{G0}::1\r\n", f"{G0}::1,\n", f"{MIG}\n", f"\n{G0}::1", f"{G0}::1\r",
    f"{G0}::1\t", f" {G0}::1", f"{G0}::1 ", f"{G0} ::1", f"{G0}:: 1", f"{G0}::1\n{GPUS[1]}::1",
    f"{G0}::\u0661", f"{G0}::\u00b2", f"{G0}::1\u00b2", f"{G0}::\uff11", "GPU-\u0661::1", "GPU-\u00e9::1",
    "GPU-\u00b2", "MIG-\u0661", f"{G0}\udcff::1", f"{G0}::1\udcff", "GPU-\udcc3\udca9::1",
    f"{G0}::1,", f",{G0}::1", f"{G0}::1,,{G0}::2", f"{G0}::1, {G0}::2", f"{MIG}::1", f"{MIG}::", f"{G0}::",
    f"{G0}::1::1", f"{G0}::::1", f"{G0}:::1", f"{G0}::1:", f"{G0}:1", f"{G0}::0", f"{G0}::01",
    "gpu-" + G0[4:] + "::1", "Gpu-" + G0[4:] + "::1", "Mig-" + MIG[4:], "mig-" + MIG[4:],
    "GPU-*::1", "GPU-?::1", "GPU-[a]::1", "GPU-a\\::1", f"{G0}::[1]", f"{G0}::*", f"{G0}::?", f"{G0}::1*",
    f"{G0}::1;reboot", f"{G0}::$(reboot)", "`reboot`", f"{G0}::1&&reboot", "'", '"',
    f"{G0}::1,{G0}::1", f"{G0}::2,{G0}::1,{GPUS[1]}::1,{G0}::3", f"{MIG},{MIG}", f"{G0},{G0}::1", G0, MIG,
    # Long: one long slice, many slices of few GPUs, slices of many GPUs.
    "GPU-" + "a" * 20000 + "::1", "GPU-" + "a" * 60000 + "::x", "GPU-" + ":" * 60000,
    ",".join(f"{GPUS[i % 6]}::{i % 9 + 1}" for i in range(200)),
    ",".join(f"GPU-{i:06d}::1" for i in range(300)),
    ",".join(f"{GPUS[i % 6]}::{i % 9 + 1}" for i in range(200)) + "\n",
]


def well_formed_slice(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.6:
        n = rng.choice([str(rng.randint(1, 9)), str(rng.randint(10, 99)), str(rng.randint(1, 10 ** 12))])
        return f"{rng.choice(GPUS)}::{n}"
    if r < 0.8:
        return rng.choice(MIGS)
    if r < 0.9:
        return rng.choice(GPUS)   # a whole GPU: well formed, though a real node never advertises one
    return rng.choice(ODD)


def reservation(rng: random.Random) -> str:
    items = [well_formed_slice(rng) for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4, 6]))]
    if rng.random() < 0.3:
        items.insert(rng.randint(0, len(items)), rng.choice(items))   # a duplicate
    return ",".join(items)


def mutate(rng: random.Random, value: str) -> str:
    op = rng.randrange(12)
    pos = rng.randint(0, len(value))
    piece = rng.choice(rng.choice(CHARACTERS))
    if op == 0:
        return value[:pos] + piece + value[pos:]
    if op == 1:
        return value[:pos] + piece + value[pos + 1:]
    if op == 2:
        return piece + value
    if op == 3:
        return value + rng.choice([piece, "\n", "\n" * rng.randint(2, 4), " ", "\r", "\t"])
    if op == 4:
        return value[:pos] + value[pos + 1:]
    if op == 5:
        old, new = rng.choice(CASES)
        return value.replace(old, new, rng.choice([1, -1]))
    if op == 6:   # the slice number
        head, sep, _n = value.rpartition("::")
        return f"{head}::{rng.choice(NUMBERS)}" if sep else f"{value}::{rng.choice(NUMBERS)}"
    if op == 7:   # a splice of two reservations
        other = reservation(rng)
        return value[:pos] + other[rng.randint(0, len(other)):]
    if op == 8:
        return value[:pos]
    if op == 9:   # a piece repeated
        end = rng.randint(pos, len(value))
        return value[:end] + value[pos:end] * rng.randint(1, 3) + value[end:]
    if op == 10:
        return value.replace("::", rng.choice(["", ":", ":::", "::::", ":: ", "::::1"]), 1)
    return value.replace(",", rng.choice(["", ",,", ", ", ";", "\n", "\t"]), 1)


def make_corpus() -> list[str]:
    rng = random.Random(SEED)
    values = list(EDGE)
    for _ in range(RANDOM_VALUES):
        value = reservation(rng)
        if rng.random() < 0.7:
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                value = mutate(rng, value)
        values.append(value)
    seen: set[str] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


CORPUS = make_corpus()
ITEMS = sorted({item for value in CORPUS for item in value.split(",")})
ADVERTISED = [item for item in ITEMS if well_formed(item)]


def first_malformed(value: str) -> str:
    return next(item for item in value.split(",") if not well_formed(item))


def as_the_hook_shows(slice_id: str) -> str:
    """The hook names a slice by its first 80 bytes, anything unexpected as '?'."""
    shown = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ/:-"
    return "".join(chr(b) if chr(b) in shown else "?" for b in slice_id.encode("utf-8", "surrogateescape")[:80])


# An answer: ("devices", "<list>") or ("malformed", <the first malformed slice as the hook shows it>).

def python_answer(value: str) -> tuple[str, str]:
    try:
        devices = cuda_visible_devices(value, VARIABLE)
    except ValueError as exc:
        bad = first_malformed(value)
        assert str(exc) == f"slice {bad[:80]!r} in {VARIABLE} is malformed {EXPECTED}", repr(value)
        with pytest.raises(ValueError):
            cuda_env({VARIABLE: value}, "gpu")
        return ("malformed", as_the_hook_shows(bad))
    assert cuda_env({VARIABLE: value}, "gpu") == cuda_env_text(value, devices)
    return ("devices", devices)


def cuda_env_text(value: str, devices: str) -> str:
    """What cuda-env prints for a well-formed value: the devices, then for a slice of a GPU the
    frameworks' memory settings that need no share (slices.memory_share_env)."""
    memory = [f"export {name}={shlex.quote(v)}\n" for name, v in memory_share_env(None, ())] \
        if any("::" in item for item in value.split(",")) else []
    return f"export CUDA_VISIBLE_DEVICES={shlex.quote(devices)}\n" + "".join(memory)


def wrapper_answer(program: types.ModuleType, slices: dict, value: str) -> tuple[str, str]:
    # restrict() does the same: an empty or absent value reserves nothing.
    try:
        devices = ",".join(program.devices_for(value, slices, VARIABLE)) if value else ""
    except program.Refused as exc:
        if "is malformed" not in str(exc):   # not "not advertised": every well-formed slice is
            return ("unexpected", str(exc))
        return ("malformed", as_the_hook_shows(next(item for item in value.split(",") if item not in slices)))
    return ("devices", devices)


# Each value in a subshell of one shell per batch: set as Swarm sets it, then sourced as start.sh
# sources the hook (under set -e). A record is the subshell's output (stderr and stdout), NUL, its
# exit status, NUL: no output of the hook holds a NUL.
RUNNER = r"""
hook=$1; shift
for value do
    (
        DOCKER_RESOURCE_GPU=$value
        export DOCKER_RESOURCE_GPU
        set -e
        . "$hook"
        printf 'CVD=%s\n' "$CUDA_VISIBLE_DEVICES"
    ) 2>&1
    printf '\0%s\0' "$?"
done
"""
SHELLS = ["sh", "bash"]


def batches(values: list[str], max_bytes: int = 200_000, max_count: int = 300) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for value in values:
        length = len(value.encode("utf-8", "surrogateescape")) + 1
        if out[-1] and (size + length > max_bytes or len(out[-1]) >= max_count):
            out.append([])
            size = 0
        out[-1].append(value)
        size += length
    return out


def run_hook(shell: str, values: list[str]) -> list[tuple[str, str]]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "left-from-the-image"}
    result = subprocess.run([shell, "-c", RUNNER, "runner", str(HOOK), *values], env=env, capture_output=True,
                            timeout=300)
    fields = result.stdout.split(b"\0")
    assert result.returncode == 0 and len(fields) == 2 * len(values) + 1, result.stderr[-2000:]
    return [hook_answer(fields[2 * i].decode("utf-8", "surrogateescape"), fields[2 * i + 1].decode())
            for i in range(len(values))]


def hook_answer(output: str, status: str) -> tuple[str, str]:
    lines = output.split("\n")
    if status == "0" and len(lines) == 3 and lines[2] == "" and lines[1].startswith("CVD="):
        devices = lines[1][4:]
        if lines[0] == f"gpuswarm-cuda-env: CUDA_VISIBLE_DEVICES='{devices}' (from {VARIABLE})":
            return ("devices", devices)
    prefix, suffix = "gpuswarm-cuda-env: slice '", f"' in {VARIABLE} is malformed {EXPECTED}"
    if status == "1" and len(lines) == 2 and lines[1] == "" and lines[0].startswith(prefix) \
            and lines[0].endswith(suffix):
        return ("malformed", lines[0][len(prefix):-len(suffix)])
    return ("unexpected", f"exit {status}: {output!r}")


@pytest.fixture(scope="module")
def hook_answers() -> dict[str, list[tuple[str, str]]]:
    jobs = [(shell, batch) for shell in SHELLS for batch in batches(CORPUS)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        answers = list(pool.map(lambda job: run_hook(*job), jobs))
    out: dict[str, list[tuple[str, str]]] = {shell: [] for shell in SHELLS}
    for (shell, _batch), batch_answers in zip(jobs, answers):
        out[shell].extend(batch_answers)
    return out


@pytest.fixture(scope="module")
def python_answers() -> list[tuple[str, str]]:
    return [python_answer(value) for value in CORPUS]


@pytest.fixture(scope="module")
def program() -> types.ModuleType:
    """The wrapper's program, as setup renders it, loaded as a module (its main() does not run)."""
    module = types.ModuleType("gpuswarm_runtime_program")
    exec(compile(wrapper_program_text(), "gpuswarm-runtime.py", "exec"), module.__dict__)
    return module


def disagreements(values: list[str], expected: list, actual: list) -> list[str]:
    return [f"{value[:120]!r}: expected {want!r}, got {got!r}"
            for value, want, got in zip(values, expected, actual) if want != got]


def test_the_corpus_mixes_accepted_and_refused_values(python_answers):
    kinds = [kind for kind, _ in python_answers]
    assert len(CORPUS) > 2200
    assert kinds.count("devices") > 600 and kinds.count("malformed") > 1200
    assert len(ADVERTISED) > 100 and len(ITEMS) - len(ADVERTISED) > 1000


# The syntax itself, written once more apart from both copies of well_formed: ASCII only, no
# trailing newline (fullmatch, not $), MIG UUIDs without a number.
SYNTAX = re.compile(r"GPU-[A-Za-z0-9/-]+::[1-9][0-9]*|(?:GPU|MIG)-[A-Za-z0-9/-]+", re.ASCII)


def test_slices_py_follows_the_syntax():
    differ = [item for item in ITEMS if well_formed(item) != bool(SYNTAX.fullmatch(item))]
    assert not differ, [f"{item[:120]!r}: slices.py says {well_formed(item)}" for item in differ[:20]]


def test_the_wrapper_judges_every_slice_as_slices_py_does(program):
    differ = [item for item in ITEMS if program.well_formed(item) != well_formed(item)]
    assert not differ, [f"{item[:120]!r}: slices.py says {well_formed(item)}" for item in differ[:20]]


def test_the_wrapper_agrees_with_cuda_env(program, python_answers):
    node = json.loads(slice_map_text("gpu", ADVERTISED))
    assert node["variable"] == VARIABLE
    assert node["slices"] == {s: device_of(s) for s in ADVERTISED}
    answers = [wrapper_answer(program, node["slices"], value) for value in CORPUS]
    differ = disagreements(CORPUS, python_answers, answers)
    assert not differ, f"{len(differ)} values:\n" + "\n".join(differ[:20])


@pytest.mark.parametrize("shell", SHELLS)
def test_the_hook_agrees_with_cuda_env(shell, hook_answers, python_answers):
    differ = disagreements(CORPUS, python_answers, hook_answers[shell])
    assert not differ, f"{len(differ)} values:\n" + "\n".join(differ[:20])


# --- a sample through the real programs ----------------------------------------------------------

def sample(size: int) -> list[str]:
    """A seeded pick of the corpus's short values."""
    short = [v for v in CORPUS if len(v) < 300]
    return random.Random(SEED + size).sample(short, size)


def test_the_installed_wrapper_agrees_on_a_sample(tmp_path):
    values = [f"{G0}::1\n", "\n", f"{G0}::\u0661", f"{G0}::1,", f"{MIG},{G0}::2,{G0}::1", ""] + sample(24)
    node = Node(tmp_path, slices=sorted({item for value in values for item in value.split(",")
                                         if well_formed(item)}))
    differ = []
    for value in values:
        node.spec(resource_env(value))
        result = node.create()
        kind, answer = expected = python_answer(value)
        if kind == "devices":
            ok = result.returncode == 0 and node.visible() == [f"NVIDIA_VISIBLE_DEVICES={answer or 'void'}"]
        else:
            ok = result.returncode == 1 and "is malformed" in result.stderr
        if not ok:
            differ.append(f"{value!r}: expected {expected!r}, got exit {result.returncode}, "
                          f"{result.stderr.strip()!r}")
    assert not differ, "\n".join(differ)


def test_the_cuda_env_command_agrees_on_a_sample(gsn):
    values = [f"{G0}::1\n", "\n", f"{G0}::1\r", f"{G0}::\u00b2", f"{G0}\udcff::1", f"{MIG},{G0}::2"] + sample(4)
    differ = []
    for value in values:
        result = gsn("cuda-env", env={VARIABLE: value})
        kind, answer = expected = python_answer(value)
        if kind == "devices":
            ok = result.returncode == 0 and result.stdout == cuda_env_text(value, answer)
        else:
            ok = result.returncode == 1 and result.stdout == "" and "is malformed" in result.stderr
        if not ok:
            differ.append(f"{value!r}: expected {expected!r}, got exit {result.returncode}, "
                          f"{result.stdout!r} {result.stderr.strip()!r}")
    assert not differ, "\n".join(differ)

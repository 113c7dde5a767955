"""setup.sh's own work before the tool runs: its install, killed at random moments and run again
(the tool's environment is complete or absent at every moment, and the next run converges), and
its own apt-get, which waits for the locks another apt holds.

Honest about what runs: the real setup.sh (`--install-only`, which stops before `gpuswarm-node setup`)
as root in a temporary GPUSWARM_PREFIX; the real `python3 -m venv` and pip (run from the wheel the
interpreter bundles for ensurepip), installing this project's dependencies from the package index
pip is configured with on this machine (as on a real node) and copying its package in;
/usr/local/bin is a temporary directory bind-mounted in a private mount namespace, so the link
setup.sh makes lands there and nowhere else. A kill is SIGKILL to the whole process group:
setup.sh, venv and pip. The kill test takes 30-60 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_apt_locks import FAKE_APT, hold, lock_file  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
SETUP_SH = REPO / "setup.sh"
BUILD = re.compile(r"venv-([0-9a-f]{12})-([0-9]+)")
COMPLETIONS = "/usr/share/bash-completion/completions"  # setup.sh's COMPLETION is gpuswarm-node there

pytestmark = pytest.mark.usefixtures("as_root")


def source_hash() -> str:
    """What setup.sh hashes: pyproject.toml, gpuswarm_node and templates, in C-locale path order."""
    paths = ["pyproject.toml"] + sorted(
        str(p.relative_to(REPO)) for top in ("gpuswarm_node", "templates")
        for p in (REPO / top).rglob("*") if p.is_file() and p.suffix != ".pyc")
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update((REPO / path).read_bytes())
    return digest.hexdigest()


class Installs:
    """Runs of `setup.sh --install-only` into one prefix, with /usr/local/bin replaced by `bin`
    and bash-completion's directory by `completions`."""

    def __init__(self, root: Path) -> None:
        self.prefix = root / "opt" / "gpuswarm-node"
        self.bin = root / "usr-local-bin"
        self.bin.mkdir(parents=True)
        self.link = self.bin / "gpuswarm-node"
        self.completions = root / "completions"
        self.completions.mkdir()
        self.completion = self.completions / "gpuswarm-node"

    def start(self) -> subprocess.Popen:
        script = (f"mount --bind {shlex.quote(str(self.bin))} /usr/local/bin && "
                  f"mount --bind {shlex.quote(str(self.completions))} {COMPLETIONS} && "
                  f"exec sh {shlex.quote(str(SETUP_SH))} --install-only")
        env = {**os.environ, "GPUSWARM_PREFIX": str(self.prefix)}
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def kill(self, proc: subprocess.Popen) -> str:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # setup.sh, venv and pip
        except ProcessLookupError:
            pass
        output, _ = proc.communicate(timeout=60)
        return output

    def builds(self) -> list[str]:
        return sorted(p.name for p in self.prefix.glob("venv-*")) if self.prefix.exists() else []

    def session_runs(self, proc: subprocess.Popen, word: str) -> bool:
        """Whether a process of this run's process group has `word` in its command line."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != proc.pid:
                    continue
                if word in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    return True
            except (OSError, ValueError):
                continue
        return False

    def assert_complete_or_absent(self, when: str) -> None:
        """The invariant at any moment: the venv link names a complete environment, or there is
        none (or only the half-built venv directory of an install from before the link)."""
        venv = self.prefix / "venv"
        hash_file = self.prefix / "source.sha256"
        if venv.is_symlink():
            target = os.readlink(venv)
            assert BUILD.fullmatch(target), (when, target)
            result = subprocess.run([str(venv / "bin" / "gpuswarm-node"), "version"], capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0 and result.stdout.startswith("gpuswarm-node "), (when, result)
        else:
            assert not hash_file.exists() or hash_file.read_text().strip() != source_hash(), \
                f"{when}: the source hash says installed, but no environment is in use"
        if hash_file.exists() and hash_file.read_text().strip() == source_hash():
            assert venv.is_symlink() and os.readlink(venv)[5:17] == source_hash()[:12], when
        if os.path.lexists(self.link):
            assert os.readlink(self.link) == str(venv / "bin" / "gpuswarm-node"), when


def wait_until(what: str, condition, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """True once `condition()` holds; False when the run ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def test_setup_sh_killed_anywhere_in_its_install_then_run_again_converges(tmp_path):
    # A fixed seed, so that two runs of the suite try the same delays; GSN_KILL_SEED tries others.
    seed = int(os.environ.get("GSN_KILL_SEED", 20261207))
    rng = random.Random(seed)
    installs = Installs(tmp_path)
    # Where every run failed before: a venv cut short while it was created (python, no pip).
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(installs.prefix / "venv")], check=True)

    kills = [
        # while `python3 -m venv` builds the new environment, or soon after
        ("venv creation", lambda proc: installs.builds() != [], lambda: rng.uniform(0.0, 1.5)),
        # while pip installs the dependencies (`python /…/pip-*.whl/pip install`)
        ("pip", lambda proc: installs.session_runs(proc, "pip install"), lambda: rng.uniform(0.0, 4.0)),
        # anywhere, the end included
        ("anywhere", lambda proc: True, lambda: rng.uniform(0.0, 15.0)),
    ]
    log = []
    for name, reached, delay in kills:
        proc = installs.start()
        if wait_until(f"{name} started", lambda: reached(proc), proc):
            pause = delay()
            time.sleep(pause)
            ended = proc.poll()
            output = installs.kill(proc)
            log.append(f"killed during {name} after {pause:.2f} s (builds: {installs.builds()})"
                       if ended is None else f"{name}: the run ended first, rc {ended}")
        else:
            output = proc.communicate(timeout=60)[0]
            log.append(f"{name}: the run ended first, rc {proc.returncode}")
        installs.assert_complete_or_absent(f"seed {seed}, {log[-1]}: {output[-2000:]}")

    print(f"\nseed {seed} (GSN_KILL_SEED): " + "; ".join(log))
    proc = installs.start()
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, f"seed {seed}, {log}: {output}"
    if "setup.sh: installing gpuswarm-node" in output:  # the kills left it to this run
        assert "setup.sh: pip: Processing " in output and "setup.sh: pip: done in " in output, output
    installs.assert_complete_or_absent("after the run to the end")
    target = os.readlink(installs.prefix / "venv")
    assert target[5:17] == source_hash()[:12]
    assert sorted(p.name for p in installs.prefix.iterdir()) == sorted(["venv", target, "source.sha256"]), \
        f"leftovers of killed runs: {log}"
    assert (installs.prefix / "source.sha256").read_text() == source_hash() + "\n"
    assert os.readlink(installs.link) == str(installs.prefix / "venv" / "bin" / "gpuswarm-node")
    assert subprocess.run([str(installs.link), "version"], capture_output=True, text=True).returncode == 0
    assert [p.name for p in installs.completions.iterdir()] == ["gpuswarm-node"], f"leftovers of killed runs: {log}"
    for path in [installs.prefix, *(installs.prefix / target).rglob("*")]:
        assert path.is_symlink() or not path.lstat().st_mode & 0o022, path  # umask 022 kept

    proc = installs.start()
    again = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and "installing" not in again, again  # current: nothing rebuilt
    assert os.readlink(installs.prefix / "venv") == target and installs.builds() == [target], installs.builds()


def test_a_failed_install_keeps_the_environment_in_use(tmp_path):
    installs = Installs(tmp_path)
    installs.prefix.mkdir(parents=True)
    old = installs.prefix / "venv-0123456789ab-1"
    (old / "bin").mkdir(parents=True)
    (old / "bin" / "gpuswarm-node").write_text("#!/bin/sh\necho gpuswarm-node old\n")
    (old / "bin" / "gpuswarm-node").chmod(0o755)
    (installs.prefix / "venv").symlink_to(old.name)
    (installs.prefix / "source.sha256").write_text("0123456789ab\n")
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    # A python3 whose venv module fails (no disk, no ensurepip): the build fails half-way.
    real = shutil.which("python3")
    (fake_bin / "python3").write_text(f'#!/bin/sh\n[ "$1 $2" = "-m venv" ] || exec {shlex.quote(real)} "$@"\n'
                                      'for dir; do :; done\n'  # the last argument
                                      'mkdir -p "$dir/bin" && echo "venv: no space left on device" >&2 && exit 1\n')
    (fake_bin / "python3").chmod(0o755)
    env_path = f"{fake_bin}:{os.environ['PATH']}"
    script = (f"mount --bind {shlex.quote(str(installs.bin))} /usr/local/bin && "
              f"exec sh {shlex.quote(str(SETUP_SH))} --install-only")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env={**os.environ, "PATH": env_path, "GPUSWARM_PREFIX": str(installs.prefix)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no space left on device" in result.stderr and "is unchanged" in result.stderr
    assert os.readlink(installs.prefix / "venv") == old.name
    assert (installs.prefix / "source.sha256").read_text() == "0123456789ab\n"
    assert installs.builds() == [old.name]  # the half-built one is gone


FAKE_PIP_PYTHON = """#!/bin/sh
# The new environment's python: pip that collects for a while, then fails as a full disk makes it.
case " $* " in *" install "*) ;; *) exit 3 ;; esac
echo "Processing /src/gpuswarm-node"
sleep 1.5
echo "Collecting typer>=0.12"
echo "  Downloading typer-0.12.5-py3-none-any.whl (47 kB)"
sleep 1.5
echo "Installing collected packages: typer, gpuswarm-node"
echo "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device" >&2
exit 1
"""


def test_setup_sh_says_what_pip_is_at_and_shows_its_whole_output_when_it_fails(tmp_path):
    installs = Installs(tmp_path)
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (tmp_path / "python").write_text(FAKE_PIP_PYTHON)
    (tmp_path / "python").chmod(0o755)
    real = shutil.which("python3")
    # `python3 -m venv DIR` makes a DIR whose python is the fake pip above.
    (fake_bin / "python3").write_text(f'#!/bin/sh\n[ "$1 $2" = "-m venv" ] || exec {shlex.quote(real)} "$@"\n'
                                      f'for dir; do :; done; mkdir -p "$dir/bin" && '
                                      f'cp {shlex.quote(str(tmp_path / "python"))} "$dir/bin/python"\n')
    (fake_bin / "python3").chmod(0o755)
    script = (f"mount --bind {shlex.quote(str(installs.bin))} /usr/local/bin && "
              f"exec sh {shlex.quote(str(SETUP_SH))} --install-only")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}",
                                 "GPUSWARM_PREFIX": str(installs.prefix)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("setup.sh: pip: ")]
    assert said == ["setup.sh: pip: Processing /src/gpuswarm-node", "setup.sh: pip: Collecting typer>=0.12",
                    "setup.sh: pip: Installing collected packages: typer, gpuswarm-node"], result.stderr
    # On failure, all pip said, its error included, then setup.sh's own verdict.
    assert "  Downloading typer-0.12.5-py3-none-any.whl (47 kB)" in result.stderr
    assert "[Errno 28] No space left on device" in result.stderr and "is unchanged" in result.stderr
    assert installs.builds() == []


def shell_function(name: str) -> str:
    return re.search(rf"^{name}\(\) \{{.*?^\}}$", SETUP_SH.read_text(), re.S | re.M).group(0)


def test_setup_sh_installs_the_dependencies_pyproject_lists():
    # setup.sh reads them with sed (no TOML parser before the venv exists; 3.10 has no tomllib).
    import tomllib

    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    script = f'SRC={shlex.quote(str(REPO))}\n{shell_function("dependencies")}\ndependencies'
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == expected


def test_setup_sh_finds_the_pip_wheel_the_interpreter_bundles():
    result = subprocess.run(["sh", "-c", f'{shell_function("bundled_pip")}\nbundled_pip'], capture_output=True,
                            text=True, check=True)
    wheel = Path(result.stdout.strip())
    assert re.fullmatch(r"pip-[0-9.]+-py3-none-any\.whl", wheel.name) and wheel.is_file(), result


def test_the_installed_package_is_the_source_without_links_or_bytecode(tmp_path):
    installs = Installs(tmp_path / "a")
    proc = installs.start()
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    venv = installs.prefix / "venv"
    [package] = venv.glob("lib/python3*/site-packages/gpuswarm_node")
    for path in (REPO / "gpuswarm_node").rglob("*.py"):
        assert (package / path.relative_to(REPO / "gpuswarm_node")).read_bytes() == path.read_bytes(), path
    for path in (REPO / "templates").rglob("*"):
        if path.is_file():
            assert (package / "templates" / path.relative_to(REPO / "templates")).is_file(), path
    assert not [p for p in package.rglob("*") if p.is_symlink()]
    # Installed from a checkout: the commit --version names is the checkout's (git archive writes
    # it into a release tarball instead).
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert (package / "COMMIT").read_text() == head + "\n"
    assert (venv / "bin" / "gpuswarm-node").read_text().startswith(f"#!{installs.prefix / os.readlink(venv)}/bin/python\n")
    # The tool renders from its installed templates, not from the source tree.
    result = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "from gpuswarm_node.render import templates_dir; print(templates_dir())"],
                            cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(result.stdout.strip()) == package / "templates"


# --- setup.sh's own apt-get (python3-venv, before the tool exists) ---------------------------------

def apt_get_function() -> str:
    text = SETUP_SH.read_text()
    return re.search(r"^apt_get\(\) \{.*?^\}$", text, re.S | re.M).group(0)


def setup_sh_apt_get(tmp_path: Path, lock_file: Path, timeout: int, *args: str) -> subprocess.CompletedProcess:
    """setup.sh's apt_get function, run with an apt-get on PATH that locks `lock_file` as apt does."""
    function = apt_get_function()
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir(exist_ok=True)
    (tmp_path / "fake-apt.py").write_text(FAKE_APT)
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake-apt.py"} {lock_file} '
                    f'{tmp_path / "ran.jsonl"} "$@"\n')
    fake.chmod(0o755)
    script = (f'set -eu\nAPT_LOCK_TIMEOUT={timeout}\nsay() {{ printf "setup.sh: %s\\n" "$*" >&2; }}\n'
              f'{function}\napt_get "$@"\n')
    return subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})


def test_setup_sh_apt_get_waits_for_the_lists_lock_then_runs(lock_file, hold, tmp_path):
    child = hold(1.5)
    started = time.monotonic()
    result = setup_sh_apt_get(tmp_path, lock_file, 30, "update", "-qq")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.0
    assert (f"setup.sh: waiting (up to 30 s) for another apt: Could not get lock {lock_file}. "
            "It is held by process") in result.stderr
    assert result.stderr.count("waiting") == 1  # said once, not once a second
    [argv] = (tmp_path / "ran.jsonl").read_text().splitlines()
    # apt gets what is left of the 30 s: less by the wait (at least 1 s), however long that took.
    assert json.loads(argv)[-2:] == ["update", "-qq"]
    option, _, left = json.loads(argv)[1].partition("=")
    assert option == "DPkg::Lock::Timeout" and 0 <= int(left) <= 29
    child.wait()


def test_setup_sh_apt_get_gives_up_at_its_timeout_with_apts_message(lock_file, hold, tmp_path):
    hold(60)
    started = time.monotonic()
    result = setup_sh_apt_get(tmp_path, lock_file, 1, "update", "-qq")
    assert result.returncode == 100
    assert time.monotonic() - started >= 1  # it waited its whole timeout first
    assert f"E: Could not get lock {lock_file}" in result.stderr
    assert "gave up waiting after 1 s (GPUSWARM_APT_LOCK_TIMEOUT)" in result.stderr
    assert not (tmp_path / "ran.jsonl").exists()


def test_setup_sh_apt_get_does_not_retry_other_failures(tmp_path):
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    runs = tmp_path / "runs"
    fake.write_text(f'#!/bin/sh\necho run >> {runs}\necho "E: Unable to locate package python3-venv" >&2\nexit 100\n')
    fake.chmod(0o755)
    script = f"set -eu\nAPT_LOCK_TIMEOUT=30\n{apt_get_function()}\napt_get install python3-venv"
    result = subprocess.run(["sh", "-c", script],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert result.returncode == 100 and "Unable to locate package" in result.stderr
    assert runs.read_text() == "run\n"  # once: a failure that is no lock is not waited out


def mirror_fails_then_answers(tmp_path: Path, failures: int) -> tuple[Path, Path]:
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    runs = tmp_path / "runs"
    fake.write_text(f'#!/bin/sh\necho run >> {runs}\n[ "$(wc -l < {runs})" -gt {failures} ] && exit 0\n'
                    "echo \"E: Failed to fetch http://archive.ubuntu.com/ubuntu/dists/jammy/InRelease  "
                    "Temporary failure resolving 'archive.ubuntu.com'\" >&2\nexit 100\n")
    fake.chmod(0o755)
    return fake, runs


@pytest.mark.parametrize("window, runs_wanted, rc", [(120, 2, 0), (0, 1, 100)])
def test_setup_sh_apt_get_retries_a_mirror_that_fails_within_the_network_window(tmp_path, window, runs_wanted, rc):
    fake, runs = mirror_fails_then_answers(tmp_path, 1)
    script = (f"set -eu\nAPT_LOCK_TIMEOUT=30\nNETWORK_RETRY={window}\nsay() {{ printf 'setup.sh: %s\\n' \"$*\" >&2; }}\n"
              f"{apt_get_function()}\napt_get update -qq")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert result.returncode == rc, result.stderr
    assert runs.read_text() == "run\n" * runs_wanted
    said = [line for line in result.stderr.splitlines() if line.startswith("setup.sh:")]
    assert said == (["setup.sh: apt-get update -qq failed on a mirror (E: Failed to fetch "
                     "http://archive.ubuntu.com/ubuntu/dists/jammy/InRelease  Temporary failure resolving "
                     "'archive.ubuntu.com'); trying again in 2 s (GPUSWARM_NODE_NETWORK_RETRY)"] if window else [])
# --- --help and --dry-run change nothing -----------------------------------------------------------

def untouched_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path, Path, Path]:
    """setup.sh ARGS as root with its PREFIX, /usr/local/bin and TMPDIR in `tmp_path`, and the
    host's state directories overlaid (conftest.private_state): (result, prefix, bin, tmpdir)."""
    from .conftest import private_state

    prefix, bin_dir, tmp = tmp_path / "opt" / "gpuswarm-node", tmp_path / "usr-local-bin", tmp_path / "tmp"
    bin_dir.mkdir(parents=True)
    tmp.mkdir()
    completions = tmp_path / "completions"  # nothing may land there either: checked with bin_dir
    completions.mkdir()
    script = f"mount --bind {shlex.quote(str(bin_dir))} /usr/local/bin && " \
             f"mount --bind {shlex.quote(str(completions))} {COMPLETIONS} && " \
             f"exec sh {shlex.quote(str(SETUP_SH))} " + " ".join(map(shlex.quote, args))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GPUSWARM_", "SUDO_"))},
           "GPUSWARM_PREFIX": str(prefix), "TMPDIR": str(tmp)}
    result = subprocess.run([*private_state(tmp_path / "host-state"), "sh", "-c", script], env=env,
                            capture_output=True, text=True, timeout=600)
    return result, prefix, bin_dir, tmp


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_setup_sh_help_prints_its_usage_and_installs_nothing(tmp_path, flag):
    result, prefix, bin_dir, tmp = untouched_run(tmp_path, "--config", "node.toml", flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: sudo ./setup.sh [SETUP OPTIONS]") and "--install-only" in result.stdout
    assert not prefix.exists() and list(bin_dir.iterdir()) == [] and list(tmp.iterdir()) == []
    assert list((tmp_path / "completions").iterdir()) == []


def test_setup_sh_dry_run_shows_setups_plan_from_a_temporary_copy_and_installs_nothing(tmp_path):
    """The plan comes from the tool built into TMPDIR, which is gone afterwards; nothing lands in
    PREFIX or /usr/local/bin, and the boot step knows setup.sh would link the tool first."""
    node = tmp_path / "node.toml"
    node.write_text(f'[tmpfs]\npath = "{tmp_path / "scratch"}"\n')
    result, prefix, bin_dir, tmp = untouched_run(tmp_path, "--dry-run", "--json", "--config", str(node))
    assert result.returncode in (0, 1), result.stderr  # 1: this test machine runs no systemd, say
    assert "setup.sh: dry run: would install gpuswarm-node into" in result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and re.fullmatch(r"\d+\.\d+\.\d+ \([0-9a-f]{7}\)", plan["version"])
    boot = next(s for s in plan["steps"] if s["name"] == "boot")
    assert boot["state"] == "needs-change" and "setup.sh links /usr/local/bin/gpuswarm-node" in boot["detail"]
    assert not prefix.exists() and list(bin_dir.iterdir()) == [] and list(tmp.iterdir()) == []
    assert list((tmp_path / "completions").iterdir()) == []


def test_setup_sh_hub_runs_the_hub_command_instead_of_setup(tmp_path):
    """`./setup.sh hub init --dry-run`: hub init's plan, from the temporary copy, nothing installed."""
    result, prefix, bin_dir, tmp = untouched_run(tmp_path, "hub", "init", "--dry-run", "--json", "--config", os.devnull,
                                                 "--set", "hub.name=hub.example.org")
    assert result.returncode in (0, 1), result.stderr  # 1: this test machine runs no systemd, say
    plan = json.loads(result.stdout)
    from gpuswarm_node.hub_init import HUB_STEP_NAMES

    assert [s["name"] for s in plan["steps"]] == list(HUB_STEP_NAMES)
    assert plan["dry_run"] is True and "hub-name" in [p["name"] for p in plan["preflight"]]
    assert not prefix.exists() and list(bin_dir.iterdir()) == [] and list(tmp.iterdir()) == []


def test_setup_sh_dry_run_leaves_an_install_open_to_others_as_it_is_and_says_it_would_fix_it(tmp_path):
    """The repair of an install made under umask 000 is a change: a dry run only notes it."""
    text = SETUP_SH.read_text()
    function = re.search(r"^current_venv\(\) \{.*?^\}$", text, re.S | re.M).group(0)
    block = re.search(r"^# An install made under umask 000.*?^fi$", text, re.S | re.M).group(0)
    prefix = tmp_path / "opt" / "gpuswarm-node"
    (prefix / "venv" / "bin").mkdir(parents=True)
    os.chmod(prefix, 0o777)
    script = (f'set -eu\nPREFIX={prefix}\ndry_run=1\nsay() {{ printf "%s\\n" "$*"; }}\n{function}\n{block}\n'
              'echo "unsafe=$unsafe rebuild=$rebuild"\n')
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "unsafe=1 rebuild=\n" and prefix.stat().st_mode & 0o777 == 0o777


# --- the bash completion ---------------------------------------------------------------------------

def test_setup_sh_installs_the_bash_completion_roots_and_only_when_it_changed(tmp_path):
    installs = Installs(tmp_path)
    # What a killed run left, and the operator's link where the script goes: neither followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("the operator's file\n")
    installs.completion.symlink_to(elsewhere)
    (installs.completions / "gpuswarm-node.new.999999").write_text("half")
    proc = installs.start()
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    script = subprocess.run([str(installs.link), "completion", "bash"], capture_output=True, text=True,
                            check=True).stdout
    assert "complete -o default -F _gpuswarm_node_completion gpuswarm-node" in script
    st = installs.completion.lstat()
    assert installs.completion.read_text() == script and not installs.completion.is_symlink()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o644)
    assert elsewhere.read_text() == "the operator's file\n"
    assert [p.name for p in installs.completions.iterdir()] == ["gpuswarm-node"]
    # Current: left as it is (the same inode, not rewritten).
    proc = installs.start()
    again = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, again
    assert installs.completion.lstat().st_ino == st.st_ino
    # Changed (by hand, or an older tool's): put right.
    installs.completion.write_text("stale\n")
    installs.completion.chmod(0o666)
    proc = installs.start()
    third = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, third
    assert installs.completion.read_text() == script and installs.completion.stat().st_mode & 0o7777 == 0o644

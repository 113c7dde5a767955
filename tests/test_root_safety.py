"""Root safety of what the tool writes on this machine: modes that do not depend on the umask,
root as owner, no symlink followed, and records (backups, journal, run log, lock) kept where no
other user can change them. Everything lives under tmp_path; nothing touches the host's /etc,
/run, /var/log or /var/lib."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuswarm_node import config, metrics, runlog
from gpuswarm_node.engine import RunReport, State, StepReport, converge
from gpuswarm_node.errors import GpuswarmError, StepFailed
from gpuswarm_node.host import LocalHost, atomic_write, ensure_dir, file_status, unsafe
from gpuswarm_node.journal import Journal
from gpuswarm_node.lock import run_lock
from gpuswarm_node.steps.docker_daemon import DROPIN, DockerDaemonStep
from gpuswarm_node.steps.registry_trust import RegistryTrustStep
from gpuswarm_node.context import Context

from .fakes import FakeDocker, FakeHost, inventory_from_case, stats_from_case

REPO = Path(__file__).resolve().parent.parent
# Changes file owners: the suite runs as root (run-tests.sh); elsewhere this fails, never skips.
needs_root = pytest.mark.usefixtures("as_root")


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def report() -> RunReport:
    return RunReport([StepReport("tmpfs", State.OK, "fine", seconds=0.1)], "setup")


# --- umask ----------------------------------------------------------------------------------------

def test_under_umask_000_written_files_and_created_directories_get_their_own_modes(tmp_path):
    host = LocalHost(backup_dir=str(tmp_path / "var" / "backups" / "gpuswarm-node"),
                     journal=Journal(str(tmp_path / "var" / "lib" / "gpuswarm-node" / "changes.jsonl")))
    lib = tmp_path / "usr" / "local" / "lib" / "gpuswarm-node"
    with umask(0o000):
        host.write_text(str(lib / "gpuswarm-runtime"), "#!/bin/sh\n", 0o755)
        host.write_text(str(lib / "gpuswarm-runtime.py"), "print()\n", 0o644)
        host.write_text(str(lib / "gpuswarm-runtime.py"), "print(1)\n", 0o644)  # a replacement: backup
        host.makedirs(str(tmp_path / "mnt" / "tmpfs"))
        host.makedirs(str(tmp_path / "private"), 0o700)
    assert mode(tmp_path / "usr") == mode(tmp_path / "usr" / "local") == 0o755
    assert mode(lib) == 0o755
    assert mode(lib / "gpuswarm-runtime") == 0o755
    assert mode(lib / "gpuswarm-runtime.py") == 0o644
    assert mode(tmp_path / "mnt") == mode(tmp_path / "mnt" / "tmpfs") == 0o755
    assert mode(tmp_path / "private") == 0o700
    assert mode(tmp_path / "var" / "backups" / "gpuswarm-node") == 0o700
    assert mode(tmp_path / "var" / "lib" / "gpuswarm-node") == 0o700
    assert mode(tmp_path / "var" / "lib" / "gpuswarm-node" / "changes.jsonl") == 0o600
    [(_, backup)] = host.backups
    assert mode(Path(backup)) == 0o644


def test_under_umask_000_the_run_log_lock_and_metrics_get_their_own_modes(tmp_path):
    with umask(0o000):
        runlog.append(report(), str(tmp_path / "log" / "gpuswarm-node" / "runs.jsonl"))
        with run_lock(str(tmp_path / "run" / "gpuswarm-node.lock")):
            pass
        (tmp_path / "textfile").mkdir()
        metrics.write(report(), str(tmp_path / "textfile" / "gpuswarm_node.prom"))
    assert mode(tmp_path / "log") == mode(tmp_path / "log" / "gpuswarm-node") == 0o755
    assert mode(tmp_path / "log" / "gpuswarm-node" / "runs.jsonl") == 0o640
    assert mode(tmp_path / "run") == 0o755 and mode(tmp_path / "run" / "gpuswarm-node.lock") == 0o600
    assert mode(tmp_path / "textfile" / "gpuswarm_node.prom") == 0o644


def test_a_strict_umask_does_not_narrow_the_modes_either(tmp_path):
    # The wrapper must stay readable and runnable by everyone (a non-root status compares it).
    with umask(0o077):
        LocalHost(backup_dir=str(tmp_path / "bk")).write_text(str(tmp_path / "lib" / "front"), "x\n", 0o755)
    assert mode(tmp_path / "lib") == 0o755 and mode(tmp_path / "lib" / "front") == 0o755


def test_the_cli_sets_umask_022_before_anything_runs(tmp_path):
    code = ("import os, sys\n"
            "from gpuswarm_node import cli\n"
            "sys.argv = ['gpuswarm-node', 'version']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print(oct(os.umask(0)))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            preexec_fn=lambda: os.umask(0o000), timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "0o22", result.stderr


def test_status_under_umask_000_writes_metrics_with_fixed_modes(gsn, tmp_path):
    metrics_file = tmp_path / "textfile" / "gpuswarm_node.prom"
    metrics_file.parent.mkdir()
    (tmp_path / "node.toml").write_text(f'[tmpfs]\npath = "{tmp_path / "scratch"}"\n')
    env = {"GPUSWARM_CONFIG": str(tmp_path / "node.toml")}
    old = os.umask(0o000)  # inherited by the CLI's process
    try:
        gsn("status", "--json", "--prometheus", str(metrics_file), env=env)
    finally:
        os.umask(old)
    assert mode(metrics_file) == 0o644


def setup_sh_lines() -> list[str]:
    return [line.strip() for line in (REPO / "setup.sh").read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_setup_sh_sets_umask_022_before_anything_else():
    # The first two commands, before python3 -m venv, pip, apt-get or anything else runs.
    assert setup_sh_lines()[:2] == ["set -eu", "umask 022"]


@needs_root
@pytest.mark.parametrize("layout", ["link", "directory"])
def test_setup_sh_makes_a_venv_left_by_an_install_under_umask_000_roots(tmp_path, layout):
    # "link": venv -> venv-<hash>-<pid>, as setup.sh installs now; "directory": from before the link.
    text = (REPO / "setup.sh").read_text()
    function = re.search(r"^current_venv\(\) \{.*?^\}$", text, re.S | re.M).group(0)
    block = re.search(r"^# An install made under umask 000.*?^fi$", text, re.S | re.M).group(0)
    prefix = tmp_path / "opt" / "gpuswarm-node"
    venv = prefix / ("venv-0123456789ab-42" if layout == "link" else "venv")
    (venv / "bin").mkdir(parents=True)
    if layout == "link":
        (prefix / "venv").symlink_to(venv.name)
    (venv / "bin" / "gpuswarm-node").write_text("#!/bin/sh\n")
    (prefix / "source.sha256").write_text("abc\n")
    os.symlink("/usr/bin/python3", venv / "bin" / "python")
    for path in (prefix, venv, venv / "bin"):
        os.chmod(path, 0o777)
    os.chmod(venv / "bin" / "gpuswarm-node", 0o777)
    os.chmod(prefix / "source.sha256", 0o666)
    os.chown(venv / "bin" / "gpuswarm-node", 65534, 65534)
    neighbour = tmp_path / "opt" / "other-software"
    neighbour.mkdir()
    os.chmod(neighbour, 0o777)
    script = (f'set -eu\nPREFIX={prefix}\nsay() {{ printf "%s\\n" "$*"; }}\n{function}\n{block}\n'
              'echo "rebuild=$rebuild"\n')
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"making {prefix} and {venv} owned" in result.stdout
    # What others could write may have been changed: it is rebuilt from the source, not trusted.
    assert "rebuild=1" in result.stdout
    for path in (prefix, venv, venv / "bin"):
        assert mode(path) == 0o755 and path.stat().st_uid == 0
    assert mode(venv / "bin" / "gpuswarm-node") == 0o755
    assert os.lstat(venv / "bin" / "gpuswarm-node").st_uid == 0
    assert mode(prefix / "source.sha256") == 0o644
    assert os.readlink(venv / "bin" / "python") == "/usr/bin/python3"
    assert mode(neighbour) == 0o777  # PREFIX's neighbours are not the script's


# --- symlinks ---------------------------------------------------------------------------------------

def test_a_symlinked_target_is_replaced_never_written_through_or_backed_up_through(tmp_path):
    victim = tmp_path / "elsewhere" / "shadow"
    victim.parent.mkdir()
    victim.write_text("root:secret\n")
    os.chmod(victim, 0o600)
    target = tmp_path / "etc" / "slices.json"
    target.parent.mkdir()
    target.symlink_to(victim)
    journal = Journal(str(tmp_path / "journal" / "changes.jsonl"))
    host = LocalHost(backup_dir=str(tmp_path / "bk"), journal=journal)

    host.write_text(str(target), "{}\n")

    assert not target.is_symlink() and target.read_text() == "{}\n" and mode(target) == 0o644
    assert victim.read_text() == "root:secret\n" and mode(victim) == 0o600
    assert host.backups == []  # the link's target is not copied
    [entry] = journal.entries()
    assert entry["symlink"] == str(victim) and entry["backup"] is None


def test_file_status_reports_a_symlink_itself(tmp_path):
    real = tmp_path / "real"
    real.write_text("x")
    os.chmod(real, 0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    status = LocalHost(backup_dir=str(tmp_path / "bk")).file_status(str(link))
    assert status.is_symlink and unsafe(status) == "is a symlink"
    assert file_status(real).mode == 0o600 and not file_status(real).is_symlink
    assert file_status(tmp_path / "missing") is None


@pytest.mark.parametrize("tamper, problem", [
    ("symlink", "is a symlink"),
    ("owner", "is owned by uid 65534, not root"),
    ("mode", "is writable by others (mode 0777)"),
])
def test_an_unsafe_backup_directory_is_refused_and_nothing_is_written(tmp_path, tamper, problem):
    if tamper == "owner" and os.geteuid() != 0:
        pytest.fail("changes file owners: run the suite as root (./run-tests.sh)")
    backups = tmp_path / "backups"
    if tamper == "symlink":
        (tmp_path / "attacker").mkdir()
        backups.symlink_to(tmp_path / "attacker")
    else:
        backups.mkdir(mode=0o700)
        if tamper == "owner":
            os.chown(backups, 65534, 65534)
        else:
            os.chmod(backups, 0o777)
    target = tmp_path / "fstab"
    target.write_text("old\n")
    with pytest.raises(StepFailed) as info:
        LocalHost(backup_dir=str(backups)).write_text(str(target), "new\n")
    message = info.value.message()
    assert f"backup directory {backups} {problem}" in message
    assert f"chmod 0700 {backups}" in message
    assert target.read_text() == "old\n"
    if tamper == "symlink":
        assert list((tmp_path / "attacker").iterdir()) == []


def test_backups_are_never_written_through_a_planted_name(tmp_path):
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    target = tmp_path / "fstab"
    target.write_text("old\n")
    host = LocalHost(backup_dir=str(backups))
    name = f"{str(target).strip('/').replace('/', '__')}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.0"
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (backups / name).symlink_to(victim)
    host.write_text(str(target), "new\n")
    assert victim.read_text() == "keep\n"
    [(_, backup)] = host.backups
    assert Path(backup).read_text() == "old\n" and not Path(backup).is_symlink()


def test_the_lock_refuses_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    lock = tmp_path / "gpuswarm-node.lock"
    lock.symlink_to(victim)
    with pytest.raises(GpuswarmError) as info:
        with run_lock(str(lock)):
            pass
    assert info.value.message() == (f"the run lock {lock} is a symlink, so another user could hold or redirect "
                                    f"it. Remove it (rm {lock}) and run again.")
    assert victim.read_text() == "keep\n"


@needs_root
def test_the_lock_refuses_another_users_file(tmp_path):
    lock = tmp_path / "gpuswarm-node.lock"
    lock.write_text("")
    os.chown(lock, 65534, 65534)
    with pytest.raises(GpuswarmError, match="is owned by uid 65534, not root"):
        with run_lock(str(lock)):
            pass


def test_the_lock_refuses_a_hard_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    lock = tmp_path / "gpuswarm-node.lock"
    os.link(victim, lock)
    with pytest.raises(GpuswarmError, match="has 2 hard links"):
        with run_lock(str(lock)):
            pass
    assert victim.read_text() == "keep\n"


def test_the_lock_file_is_made_private(tmp_path):
    lock = tmp_path / "gpuswarm-node.lock"
    lock.write_text("")
    os.chmod(lock, 0o666)
    with run_lock(str(lock)):
        assert mode(lock) == 0o600


@pytest.mark.parametrize("bits, says", [(0o622, "writable by others (mode 0622)"),
                                        (0o620, "writable by its group (mode 0620)")])
def test_a_journal_someone_else_could_write_is_neither_read_nor_appended(tmp_path, bits, says):
    journal_dir = tmp_path / "lib"
    journal_dir.mkdir(mode=0o700)
    path = journal_dir / "changes.jsonl"
    path.write_text('{"kind": "write", "path": "/etc/shadow", "undo": {"op": "remove", "path": "/etc/shadow"}}\n')
    os.chmod(path, bits)
    journal = Journal(str(path))
    with pytest.raises(StepFailed, match=f"journal .* is {re.escape(says)}"):
        journal.entries()  # reset must not act on what another user may have written
    with pytest.raises(StepFailed, match=f"journal .* is {re.escape(says)}"):
        journal.record(kind="write", path="/etc/fstab")
    assert mode(path) == bits and path.read_text().count("\n") == 1


def test_the_journal_refuses_a_symlink_and_an_open_directory(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    journal_dir = tmp_path / "lib"
    journal_dir.mkdir(mode=0o700)
    (journal_dir / "changes.jsonl").symlink_to(victim)
    journal = Journal(str(journal_dir / "changes.jsonl"))
    with pytest.raises(StepFailed, match="journal .* is a symlink"):
        journal.record(kind="write", path="/etc/fstab")
    with pytest.raises(StepFailed, match="journal .* is a symlink"):
        journal.entries()  # reset must not act on a planted record either
    assert victim.read_text() == "keep\n"

    os.chmod(journal_dir, 0o777)
    with pytest.raises(StepFailed, match=f"journal directory {journal_dir} is writable by others"):
        journal.record(kind="write", path="/etc/fstab")


def test_a_change_the_journal_cannot_record_is_not_made(tmp_path):
    journal_dir = tmp_path / "lib"
    journal_dir.mkdir(mode=0o777)
    os.chmod(journal_dir, 0o777)
    target = tmp_path / "fstab"
    target.write_text("old\n")
    host = LocalHost(backup_dir=str(tmp_path / "bk"), journal=Journal(str(journal_dir / "changes.jsonl")))
    with pytest.raises(StepFailed):
        host.write_text(str(target), "new\n")
    with pytest.raises(StepFailed):
        host.remove(str(target))
    assert target.read_text() == "old\n" and not (tmp_path / "bk").exists()


@needs_root
def test_the_journal_refuses_a_hard_link_and_another_users_file(tmp_path):
    journal_dir = tmp_path / "lib"
    journal_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    os.link(victim, journal_dir / "changes.jsonl")
    with pytest.raises(StepFailed, match="has 2 hard links"):
        Journal(str(journal_dir / "changes.jsonl")).record(kind="x")
    os.unlink(journal_dir / "changes.jsonl")
    (journal_dir / "changes.jsonl").write_text("")
    os.chown(journal_dir / "changes.jsonl", 65534, 65534)
    with pytest.raises(StepFailed, match="is owned by uid 65534, not root"):
        Journal(str(journal_dir / "changes.jsonl")).record(kind="x")
    assert victim.read_text() == "keep\n"


def test_the_run_log_refuses_a_symlink_and_an_open_directory(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    os.chmod(log_dir, 0o755)
    (log_dir / "runs.jsonl").symlink_to(victim)
    with pytest.raises(StepFailed, match="run log .* is a symlink"):
        runlog.append(report(), str(log_dir / "runs.jsonl"))
    assert victim.read_text() == "keep\n"
    (log_dir / "runs.jsonl").unlink()
    os.chmod(log_dir, 0o777)
    with pytest.raises(StepFailed, match=f"run log directory {log_dir} is writable by others \\(mode 0777\\)"):
        runlog.append(report(), str(log_dir / "runs.jsonl"))
    # setup asks before its first step, so that an unsafe directory stops it before any change.
    with pytest.raises(StepFailed, match="is writable by others"):
        runlog.prepare(str(log_dir / "runs.jsonl"))
    os.chmod(log_dir, 0o755)
    runlog.append(report(), str(log_dir / "runs.jsonl"))
    assert json.loads((log_dir / "runs.jsonl").read_text())["step"] == "tmpfs"


# --- unchanged content keeps its modification time ---------------------------------------------------

def test_rewriting_the_same_content_keeps_the_modification_time(tmp_path):
    # dockerd is restarted when daemon.json changed after it started: an owner/mode repair must
    # not look like a change.
    target = tmp_path / "daemon.json"
    target.write_text("{}\n")
    os.chmod(target, 0o666)
    os.utime(target, (1_700_000_000, 1_700_000_100))
    atomic_write(target, "{}\n")
    assert target.stat().st_mtime == 1_700_000_100 and mode(target) == 0o644
    atomic_write(target, '{"debug": true}\n')
    assert target.stat().st_mtime > 1_700_000_100


def test_rewriting_a_symlink_with_the_content_it_showed_keeps_what_mtime_reported(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}\n")
    os.utime(real, (1_700_000_000, 1_700_000_100))
    target = tmp_path / "daemon.json"
    target.symlink_to(real)
    LocalHost(backup_dir=str(tmp_path / "bk")).write_text(str(target), "{}\n")
    assert not target.is_symlink() and target.stat().st_mtime == 1_700_000_100


# --- status: owner and mode of what root trusts ---------------------------------------------------------

ONE_GPU = {"driver": "550.54.15", "gpus": [{"uuid": "GPU-00000000-1111-4222-8333-444444444444"}]}


def converged_docker_daemon(stats: dict) -> tuple[Context, FakeHost]:
    """A docker-daemon that needs a drop-in (daemon.json sets hosts), already converged."""
    case = json.loads((REPO / "tests" / "steps" / "docker-daemon" / "hosts-needs-dropin.json").read_text())
    host = FakeHost.from_case(case["host"])
    docker = FakeDocker()
    ctx = Context(config=config.from_tables({}), host=host, docker_factory=lambda: docker,
                  inventory_reader=inventory_from_case(case["gpus"]))
    assert converge(DockerDaemonStep(), ctx).state is State.OK
    host.actions.clear()
    host.facts.setdefault("main_pid", {})["docker"] = 0
    host.stats.update(stats_from_case(stats))
    ctx.facts.forget()  # the machine changed under the run
    return ctx, host


def test_a_group_writable_drop_in_is_rewritten_without_a_restart():
    ctx, host = converged_docker_daemon({DROPIN: {"gid": 27, "mode": "0664"}})
    check = DockerDaemonStep().check(ctx)
    assert check.state is State.NEEDS_CHANGE
    assert f"drop-in {DROPIN} is writable by group 27 (mode 0664)" in check.detail
    assert [a.describe() for a in check.actions] == [f"update {DROPIN}"]
    before = host.files[DROPIN]
    report_ = converge(DockerDaemonStep(), ctx)
    assert report_.state is State.OK and host.actions == [f"write {DROPIN}"]
    assert host.files[DROPIN] == before and host.file_status(DROPIN).mode == 0o644


def test_a_world_writable_drop_in_directory_is_tightened():
    directory = os.path.dirname(DROPIN)
    ctx, host = converged_docker_daemon({directory: {"mode": "0777", "dir": True}})
    check = DockerDaemonStep().check(ctx)
    assert f"directory {directory} is writable by others (mode 0777)" in check.detail
    assert [a.describe() for a in check.actions] == [f"run chmod go-w {directory}"]


def test_a_directory_is_made_roots_before_anything_is_written_into_it():
    from gpuswarm_node.steps.docker_daemon import WRAPPER
    directory = os.path.dirname(WRAPPER)
    ctx, host = converged_docker_daemon({directory: {"mode": "0777", "dir": True}})
    host.files[WRAPPER] = "#!/bin/sh\nexec runc \"$@\"\n"  # an older front
    check = DockerDaemonStep().check(ctx)
    assert [a.describe() for a in check.actions][:2] == [f"run chmod go-w {directory}", f"update {WRAPPER}"]


ADDRESS = "registry.hub.example:5000"
CA_TARGET = f"/etc/docker/certs.d/{ADDRESS}/ca.crt"
PEM = ("-----BEGIN CERTIFICATE-----\n"
       "MIIBszCCAVmgAwIBAgIUJb2Kc0y0vQmZ3Xq1c1r1bQfJ1ZcwCgYIKoZIzj0EAwIw\n"
       "-----END CERTIFICATE-----\n")


def registry_context(tmp_path: Path, stats: dict) -> tuple[Context, FakeHost]:
    ca = tmp_path / "ca.crt"
    ca.write_text(PEM)
    host = FakeHost(files={CA_TARGET: PEM, str(ca): PEM}, stats=stats_from_case(stats))
    cfg = config.from_tables({"registry": {"address": ADDRESS, "ca_cert": str(ca)}})
    return Context(config=cfg, host=host, docker_factory=FakeDocker), host


@pytest.mark.parametrize("stat, problem", [
    ({"uid": 1000, "mode": "0644"}, "is owned by uid 1000, not root"),
    ({"mode": "0666"}, "is writable by others (mode 0666)"),
    ({"mode": "0777", "symlink": True}, "is a symlink"),
])
def test_a_registry_ca_anyone_could_replace_is_reported_and_rewritten(tmp_path, stat, problem):
    ctx, host = registry_context(tmp_path, {CA_TARGET: stat})
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.NEEDS_CHANGE
    assert check.detail == f"{CA_TARGET} {problem}"
    assert [a.describe() for a in check.actions] == [f"update {CA_TARGET}"]
    report_ = converge(RegistryTrustStep(), ctx)
    assert report_.state is State.OK and report_.changed
    assert host.files[CA_TARGET] == PEM
    assert host.file_status(CA_TARGET) == (0, 0, 0o644, False, False, True)


def test_a_registry_ca_directory_anyone_could_change_is_tightened(tmp_path):
    directory = f"/etc/docker/certs.d/{ADDRESS}"
    ctx, host = registry_context(tmp_path, {directory: {"uid": 1000, "mode": "0777", "dir": True}})
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.NEEDS_CHANGE
    assert f"directory {directory} is owned by uid 1000, not root" in check.detail
    assert [a.describe() for a in check.actions] == [f"run chown root:root {directory}",
                                                     f"run chmod go-w {directory}"]


def test_a_symlinked_certs_d_is_blocked(tmp_path):
    ctx, host = registry_context(tmp_path, {"/etc/docker/certs.d": {"mode": "0777", "symlink": True}})
    check = RegistryTrustStep().check(ctx)
    assert check.state is State.BLOCKED and "directory /etc/docker/certs.d is a symlink" in check.detail


def test_a_root_owned_registry_ca_is_ok(tmp_path):
    ctx, _host = registry_context(tmp_path, {})
    assert RegistryTrustStep().check(ctx).state is State.OK


def test_ensure_dir_returns_only_what_it_created(tmp_path):
    (tmp_path / "a").mkdir()
    os.chmod(tmp_path / "a", 0o750)
    assert ensure_dir(tmp_path / "a" / "b" / "c", 0o700) == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert mode(tmp_path / "a") == 0o750  # existing: left as it is
    assert mode(tmp_path / "a" / "b") == 0o755 and mode(tmp_path / "a" / "b" / "c") == 0o700
    assert ensure_dir(tmp_path / "a" / "b" / "c", 0o700) == []

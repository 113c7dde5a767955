"""`reset --purge` removes what the tool installed for itself, on a fake machine under tmp_path:
never through a symlink, never what is not root's, keeping the backups and the operator's files,
and a second run finds nothing to do."""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from gpuswarm_node import purge

REPO = Path(__file__).resolve().parent.parent
VENV = "venv-0123456789ab-4242"
ME = os.geteuid()


def make_machine(root: Path) -> tuple[purge.Paths, Path]:
    """A machine after `setup.sh` and `setup`, then `reset` (the journal archived), as setup.sh lays
    out its prefix; plus a directory outside every tree that symlinks point at."""
    outside = root / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "precious").write_text("the operator's\n")
    p = purge.paths(root / "machine")
    env = p.prefix / VENV
    (env / "bin").mkdir(parents=True)
    (env / "lib" / "site-packages" / "gpuswarm_node").mkdir(parents=True)
    (env / "lib" / "site-packages" / "gpuswarm_node" / "cli.py").write_text("")
    (env / "bin" / "gpuswarm-node").write_text("#!/bin/sh\n")
    (env / "bin" / "python3").symlink_to(outside / "data" / "precious")  # as a venv's python3 -> /usr/bin
    (env / "lib64").symlink_to("lib")
    (p.prefix / "venv").symlink_to(VENV)
    (p.prefix / "source.sha256").write_text("0123456789ab\n")
    (p.prefix / "venv.new.77").mkdir()  # what a killed setup.sh left
    p.bin_link.parent.mkdir(parents=True)
    p.bin_link.symlink_to(p.prefix / "venv" / "bin" / "gpuswarm-node")
    p.wrapper_dir.mkdir(parents=True)
    (p.wrapper_dir / "gpuswarm-runtime").write_text("#!/bin/sh\n")
    p.config_dir.mkdir(parents=True)
    for name in ("config.toml", "id_ed25519", "known_hosts", "registry-ca.pem"):
        (p.config_dir / name).write_text("")
    p.slice_map.write_text("{}\n")
    p.state_dir.mkdir(parents=True)
    (p.state_dir / "changes.jsonl.reset-20250101T000000").write_text("")
    (p.state_dir / "elsewhere").symlink_to(outside / "data")  # a link out of the tree: only the link goes
    p.log_dir.mkdir(parents=True)
    (p.log_dir / "runs.jsonl").write_text("")
    (p.backup_dir / "etc" / "docker").mkdir(parents=True)
    (p.backup_dir / "etc" / "docker" / "daemon.json.20250101").write_text("{}\n")
    p.lock.parent.mkdir(parents=True)
    p.lock.write_text("1 reset\n")
    p.completion.parent.mkdir(parents=True)
    p.completion.write_text("complete ... _GPUSWARM_NODE_COMPLETE=complete_bash ...\n")  # setup.sh's
    (p.completion.parent / "gpuswarm-node.new.77").write_text("")  # what a killed setup.sh left
    (p.completion.parent / "git").write_text("")  # another package's
    return p, outside


def test_paths_default_to_the_machine_and_agree_with_setup_sh():
    p = purge.paths()
    assert (str(p.prefix), str(p.bin_link), str(p.wrapper_dir), str(p.slice_map), str(p.config_dir),
            str(p.state_dir), str(p.log_dir), str(p.backup_dir), str(p.lock)) == (
        "/opt/gpuswarm-node", "/usr/local/bin/gpuswarm-node", "/usr/local/lib/gpuswarm-node",
        "/etc/gpuswarm-node/slices.json", "/etc/gpuswarm-node", "/var/lib/gpuswarm-node",
        "/var/log/gpuswarm-node", "/var/backups/gpuswarm-node", "/run/gpuswarm-node.lock")
    setup_sh = (REPO / "setup.sh").read_text()
    assert re.search(r"^PREFIX=\$\{GPUSWARM_PREFIX:-" + re.escape(purge.PREFIX) + r"\}$", setup_sh, re.M)
    assert re.search(r"^BIN_LINK=" + re.escape(purge.BIN_LINK) + "$", setup_sh, re.M)
    assert re.search(r"^COMPLETION=" + re.escape(purge.COMPLETION) + "$", setup_sh, re.M)
    assert str(p.completion) == purge.COMPLETION


def test_purge_removes_the_tools_own_files_and_keeps_the_rest(tmp_path):
    p, outside = make_machine(tmp_path)
    plan = purge.plan(p)
    described = [r.describe() for r in plan.remove]
    assert f"remove {p.bin_link} (the command's link to {p.prefix}/venv/bin/gpuswarm-node)" in described
    assert f"remove {p.prefix / 'venv'} (the link to the environment in use)" in described
    assert described[-1] == f"remove {p.lock} (the run lock)"
    assert f"{p.config_dir / 'config.toml'} (the operator's)" in plan.kept
    assert f"{p.slice_map} (the operator's)" not in plan.kept
    assert any(k.startswith(f"{p.backup_dir} (the backups") for k in plan.kept)
    assert plan.kept[-1] == purge.PACKAGES_NOTE

    report = purge.execute(p, owner=ME)

    assert report.failed == []
    for gone in (p.prefix, p.bin_link, p.wrapper_dir, p.slice_map, p.state_dir, p.log_dir, p.lock, p.completion):
        assert not os.path.lexists(gone), gone
    assert os.listdir(p.completion.parent) == ["git"]
    assert sorted(os.listdir(p.config_dir)) == ["config.toml", "id_ed25519", "known_hosts", "registry-ca.pem"]
    assert (p.backup_dir / "etc" / "docker" / "daemon.json.20250101").exists()
    assert (outside / "data" / "precious").read_text() == "the operator's\n"  # links removed, never followed
    assert f"removed directory {p.prefix}" in report.done

    # A second run: nothing left to remove, nothing fails.
    again = purge.plan(p)
    assert again.remove == []
    assert purge.execute(p, owner=ME).done == []


def test_a_path_that_is_not_roots_is_refused_and_the_rest_goes(tmp_path, as_root):  # chown: root, or fail
    p, _ = make_machine(tmp_path)
    planted = p.prefix / VENV / "lib" / "site-packages" / "planted.pth"
    planted.write_text("")
    os.chown(planted, 65534, 65534)
    report = purge.execute(p, owner=0)
    assert report.failed == [f"remove {p.prefix / VENV}: refused: {planted} is owned by uid 65534, not root; "
                             "remove it yourself if it is to go"]
    assert planted.exists() and not os.path.lexists(p.prefix / "venv") and not p.state_dir.exists()
    assert p.prefix.exists()  # not empty, so kept


def test_only_setup_shs_names_and_links_into_the_prefix_are_taken(tmp_path):
    p, outside = make_machine(tmp_path)
    (p.prefix / "other-tool").mkdir()
    p.bin_link.unlink()
    p.bin_link.symlink_to(outside / "data" / "precious")  # the operator's own command of that name
    plan = purge.plan(p)
    assert f"{p.prefix / 'other-tool'} (not setup.sh's)" in plan.kept
    assert f"{p.bin_link} (not setup.sh's link into {p.prefix})" in plan.kept
    assert purge.execute(p, owner=ME).failed == []
    assert (p.prefix / "other-tool").is_dir() and os.path.islink(p.bin_link)
    assert sorted(os.listdir(p.prefix)) == ["other-tool"]


def test_a_prefix_that_is_a_symlink_is_not_followed(tmp_path):
    p, outside = make_machine(tmp_path)
    (outside / "data" / "venv").mkdir()
    os.rename(p.prefix, tmp_path / "real-prefix")
    p.prefix.symlink_to(outside / "data")
    plan = purge.plan(p)
    assert f"{p.prefix} (a symlink, not followed)" in plan.kept
    purge.execute(p, owner=ME)
    assert (outside / "data" / "venv").is_dir() and os.path.islink(p.prefix)


def invoke(tmp_path, monkeypatch, *args):
    from typer.testing import CliRunner

    from gpuswarm_node import cli, journal as journal_module

    journal = journal_module.Journal(str(tmp_path / "journal" / "changes.jsonl"))  # nothing recorded
    monkeypatch.setattr(journal_module, "Journal", lambda: journal)
    monkeypatch.setattr(purge, "paths", functools.partial(purge.paths, tmp_path / "machine"))
    if not hasattr(purge.execute, "func") and purge.execute.__name__ == "execute":
        monkeypatch.setattr(purge, "execute", functools.partial(purge.execute, owner=ME))
    return CliRunner().invoke(cli.app, ["reset", *args])


def test_the_reset_command_prints_the_purge_plan_without_yes(tmp_path, monkeypatch):
    p, _ = make_machine(tmp_path)
    result = invoke(tmp_path, monkeypatch, "--purge")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("nothing to revert")
    assert lines[1] == "then, with --purge, uninstall the tool itself:"
    assert f"  - remove {p.state_dir} (the journal of changes)" in lines
    assert f"  - keep {p.config_dir / 'id_ed25519'} (the operator's)" in lines
    assert f"  - keep {purge.PACKAGES_NOTE}" in lines
    assert lines[-1] == "run `gpuswarm-node reset --yes --purge` to do this."
    assert os.path.lexists(p.prefix / "venv") and p.state_dir.exists()  # nothing changed


class NoImports:
    """Every import fails: the environment the tool runs from is gone."""

    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"import of {name} after the purge began")


def test_the_reset_command_purges_importing_nothing_once_it_began_and_twice_is_a_no_op(tmp_path, monkeypatch):
    p, outside = make_machine(tmp_path)
    execute = functools.partial(purge.execute, owner=ME)

    def without_imports(paths):
        sys.meta_path.insert(0, blocker)
        return execute(paths)

    blocker = NoImports()
    try:
        monkeypatch.setattr(purge, "execute", without_imports)
        result = invoke(tmp_path, monkeypatch, "--yes", "--purge")
    finally:
        if blocker in sys.meta_path:
            sys.meta_path.remove(blocker)
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.output
    assert out.index(f"kept: {p.backup_dir} (the backups") < out.index(f"purged: removed {p.state_dir}")
    assert f"purged: removed {p.prefix / VENV} (the tool's environment)" in out
    assert f"kept: {purge.PACKAGES_NOTE}" in out
    assert not os.path.lexists(p.prefix) and not os.path.lexists(p.lock) and p.backup_dir.exists()
    assert (outside / "data" / "precious").exists()

    monkeypatch.undo()
    again = invoke(tmp_path, monkeypatch, "--yes", "--purge")
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-2:] == [f"purged: removed {p.lock} (the run lock)",
                                              "nothing else to purge: the tool's own files were gone already"]
    assert sorted(os.listdir(p.config_dir)) == ["config.toml", "id_ed25519", "known_hosts", "registry-ca.pem"]


def test_a_completion_script_that_is_not_setup_shs_is_kept(tmp_path):
    p, outside = make_machine(tmp_path)
    p.completion.unlink()
    p.completion.symlink_to(outside / "data" / "precious")  # a link: never followed, never removed
    plan = purge.plan(p)
    assert f"{p.completion} (not setup.sh's completion script)" in plan.kept
    p.completion.unlink()
    p.completion.write_text("# the operator's own completion for a command of that name\n")
    assert f"{p.completion} (not setup.sh's completion script)" in purge.plan(p).kept
    purge.execute(p, owner=ME)
    assert p.completion.exists() and (outside / "data" / "precious").exists()

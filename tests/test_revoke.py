"""`hub revoke` (gate.revoke): a node's keys leave every authorized_keys that `hub authorize` and
`hub bundle` write, however an operator hardened their lines within sshd's authorized_keys format
(sshd(8) AUTHORIZED_KEYS FILE FORMAT; OpenSSH sshkey.c sshkey_advance_past_options, auth-options.c
sshauthopt_parse), and a revocation that cannot finish exits non-zero."""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

import pytest

from gpuswarm_node import gate, host
from gpuswarm_node.errors import GpuswarmError

from .test_bundle import bundle_args, hub  # noqa: F401  (the fixture)

PROGRAM = "/usr/local/bin/gpuswarm-node"
GATE = f"{PROGRAM} hub gate --node worker-7"

# Each way an operator may rewrite the gated line `restrict,command="GATE" TYPE BLOB COMMENT` that
# sshd still reads as the same key with the same forced command.
HARDENINGS = {
    "from= before": lambda line: 'from="198.18.0.0/16,10.0.0.1",no-pty,' + line,
    "options reordered": lambda line: line.replace(f'restrict,command="{GATE}"',
                                                   f'no-agent-forwarding,command="{GATE}",restrict,from="10.*"'),
    "names in upper case": lambda line: line.replace("restrict,command=", "Restrict,COMMAND="),
    "quoted node": lambda line: line.replace("--node worker-7", '--node \\"worker-7\\"'),
    "--node=NAME": lambda line: line.replace("--node worker-7", "--node=worker-7"),
    "exec in the command": lambda line: line.replace(f'command="{PROGRAM}', f'command="exec {PROGRAM}'),
    "blank in a quoted option": lambda line: 'environment="NOTE=a b",' + line,
    "leading blanks": lambda line: "  \t" + line,
    "comment dropped": lambda line: line.rsplit(" ", 1)[0],
    "command rewritten, comment kept": lambda line: line.replace(f'command="{GATE}"', 'command="/bin/true"'),
}


def fingerprints(path: Path) -> set[str]:
    """The keys sshd's own parser finds in an authorized_keys file (ssh-keygen -l reads its options)."""
    done = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    return {line.split()[1] for line in done.stdout.splitlines()}


def key_pair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    fp = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    return key.with_suffix(".pub"), fp


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """Three users of this host (their homes under tmp_path); the running user is `hubadmin`."""
    users = {}
    for name in ("hubadmin", "swarm", "other"):
        (tmp_path / "home" / name).mkdir(parents=True)
        users[name] = tmp_path / "home" / name
    entries = [pwd.struct_passwd((name, "x", 1000 + i, 1000 + i, "", str(home), "/bin/sh"))
               for i, (name, home) in enumerate(users.items())]
    entries.append(pwd.struct_passwd(("nobody", "x", 65534, 65534, "", "/nonexistent", "/usr/sbin/nologin")))
    monkeypatch.setattr(pwd, "getpwall", lambda: entries)
    monkeypatch.setenv("HOME", str(users["hubadmin"]))
    return users


@pytest.mark.parametrize("hardening", sorted(HARDENINGS))
def test_revoke_finds_the_nodes_keys_in_every_file_however_hardened(gsn, hub, homes, tmp_path,  # noqa: F811
                                                                     hardening):
    keys = tmp_path / "keys"
    keys.mkdir()
    own = homes["hubadmin"] / ".ssh" / "authorized_keys"
    other = homes["other"] / ".ssh" / "authorized_keys"
    swarm = homes["swarm"] / ".ssh" / "authorized_keys"
    # `hub authorize` into the running user's file (HOME), and into another user's (--authorized-keys).
    pub1, fp1 = key_pair(keys, "one")
    done = gsn("hub", "authorize", "--key", str(pub1), "--node", "worker-7", "--program", PROGRAM,
               env={"HOME": str(homes["hubadmin"])})
    assert done.returncode == 0, done.stderr
    pub2, fp2 = key_pair(keys, "two")
    done = gsn("hub", "authorize", "--key", str(pub2), "--node", "worker-7", "--program", PROGRAM,
               "--authorized-keys", str(other))
    assert done.returncode == 0, done.stderr
    # `hub bundle` into swarm.ssh_user's file; and a neighbour that must stay.
    swarm.parent.mkdir()
    swarm.write_text(hub["ak"].read_text())
    args = bundle_args(hub, tmp_path / "worker-7")
    args[args.index("--authorized-keys") + 1] = str(swarm)
    assert gsn(*args).returncode == 0
    fp3 = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "worker-7" / "id_ed25519.pub")],
                         capture_output=True, text=True, check=True).stdout.split()[1]
    pub8, fp8 = key_pair(keys, "eight")
    assert gsn("hub", "authorize", "--key", str(pub8), "--node", "worker-70", "--program", PROGRAM,
               "--authorized-keys", str(swarm)).returncode == 0
    for path in (own, other, swarm):
        path.write_text("".join(HARDENINGS[hardening](line) + "\n" if "worker-7 " in line or
                                line.endswith("worker-7") or "worker-7\"" in line else line + "\n"
                                for line in path.read_text().splitlines()))
    # The same key given a full login elsewhere is the same key.
    own.write_text(own.read_text() + " ".join(pub2.read_text().split()[:2]) + " copied\n")
    assert fp1 in fingerprints(own) and fp2 in fingerprints(other) and fp3 in fingerprints(swarm)

    said = gate.revoke("worker-7", gate.revoke_targets([]))

    assert any("revoked" in line for line in said)
    assert not {fp1, fp2, fp3} & (fingerprints(own) | fingerprints(other) | fingerprints(swarm))
    assert fp8 in fingerprints(swarm)  # worker-70 is another node
    assert swarm.read_text().splitlines()[0].endswith(" admin")  # the operator's own key
    again = gate.revoke("worker-7", gate.revoke_targets([]))
    assert "nothing changed" in again[0]


def test_revoke_fails_when_a_file_cannot_be_read(homes):
    (homes["other"] / ".ssh").mkdir()
    (homes["other"] / ".ssh" / "authorized_keys").mkdir()  # not readable as a file, even by root
    with pytest.raises(GpuswarmError, match="cannot be read"):
        gate.revoke("worker-7", gate.revoke_targets([]))


def test_revoke_fails_when_a_file_cannot_be_written_or_the_key_stays(homes, tmp_path, monkeypatch):
    pub, _ = key_pair(tmp_path, "k")
    path = homes["other"] / ".ssh" / "authorized_keys"
    gate.authorize(pub.read_text(), "k", "worker-7", path, PROGRAM)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(host, "atomic_write", refuse)
    with pytest.raises(GpuswarmError, match="cannot be written"):
        gate.revoke("worker-7", gate.revoke_targets([]))
    monkeypatch.setattr(host, "atomic_write", lambda *args, **kwargs: None)  # "written", yet unchanged
    with pytest.raises(GpuswarmError, match="still lets 1 key"):
        gate.revoke("worker-7", gate.revoke_targets([]))


def test_revoke_cli_exits_non_zero_when_it_cannot_finish(gsn, tmp_path):
    bad = tmp_path / "authorized_keys"
    bad.mkdir()
    result = gsn("hub", "revoke", "--node", "worker-7", "--authorized-keys", str(bad))
    assert result.returncode == 1 and "the revocation is not complete" in result.stderr
    assert "Traceback" not in result.stderr


def test_gate_nodes_reads_options_as_sshd_does():
    assert gate.gate_nodes('from="a,b",command="/x hub gate --node n1",no-pty ssh-ed25519 AAAA c') == {"n1"}
    assert gate.gate_nodes('command="/x hub gate --node n10" ssh-ed25519 AAAA') == {"n10"}
    assert gate.gate_nodes('environment="command=/x hub gate --node n1" ssh-ed25519 AAAA') == set()
    assert gate.gate_nodes("ssh-ed25519 AAAA command=/x hub gate --node n1") == set()

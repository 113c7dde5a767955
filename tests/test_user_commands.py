"""User and group names reach getent, usermod, gpasswd and groupadd only as operands after "--",
and getent's answer counts only for the name asked (it looks numbers up as ids)."""

from __future__ import annotations

from gpuswarm_node.facts import GROUP_MEMBERS, USER_EXISTS, Facts
from gpuswarm_node.journal import Undo
from gpuswarm_node.reset import plan

from .fakes import FakeHost

ALICE = "alice:x:1000:1000:alice:/home/alice:/bin/bash\n"


def test_user_exists_asks_with_double_dash_and_checks_the_name():
    host = FakeHost(commands={"getent passwd -- alice": {"stdout": ALICE}})
    assert Facts(host).get(USER_EXISTS, "alice")


def test_an_entry_of_another_name_is_not_this_user():
    # `getent passwd 1000` answers alice: that is not a user called "1000".
    host = FakeHost(commands={"getent passwd -- 1000": {"stdout": ALICE}})
    assert not Facts(host).get(USER_EXISTS, "1000")


def test_a_user_in_etc_passwd_is_found_without_starting_getent():
    host = FakeHost(files={"/etc/passwd": "root:x:0:0::/root:/bin/sh\n" + ALICE})  # no command answers
    assert Facts(host).get(USER_EXISTS, "alice")


def test_group_members_of_another_group_are_not_this_groups():
    host = FakeHost(commands={"getent group -- 998": {"stdout": "docker:x:998:alice\n"},
                              "getent group -- docker": {"stdout": "docker:x:998:alice\n"}})
    assert Facts(host).get(GROUP_MEMBERS, "998") is None
    assert Facts(host).get(GROUP_MEMBERS, "docker") == ["alice"]


def test_group_members_come_from_etc_group_first():
    host = FakeHost(files={"/etc/group": "root:x:0:\ndocker:x:998:alice,bob\nvideo:x:44:\n"})
    assert Facts(host).get(GROUP_MEMBERS, "docker") == ["alice", "bob"]
    assert Facts(host).get(GROUP_MEMBERS, "video") == []


def test_reset_removes_the_user_with_double_dash():
    entry = {"kind": "run", "step": "docker-group", "argv": ["usermod", "--append", "--groups", "docker", "--", "bob"]}
    assert plan([entry]) == [Undo("leave-group", user="bob", group="docker")]


def test_reset_reads_journals_written_before_the_double_dash():
    entry = {"kind": "run", "step": "docker-group", "argv": ["usermod", "--append", "--groups", "docker", "bob"]}
    assert plan([entry]) == [Undo("leave-group", user="bob", group="docker")]


def test_reset_keeps_the_group_it_created_with_double_dash():
    entry = {"kind": "run", "step": "docker-group", "argv": ["groupadd", "--system", "--", "docker"]}
    assert plan([entry]) == [Undo("keep", note="group docker left in place (the docker package uses it)")]

"""What a configuration value may hold: one line of printable text for every string key, and the
shape each key's consumer needs (a host for a certs.d directory, a user name for usermod, ...)."""

from __future__ import annotations

import os
import re

import pytest

from gpuswarm_node import config
from gpuswarm_node.errors import ConfigError
from gpuswarm_node.steps.registry_trust import CERTS_D, ca_path

# A configuration that uses every key that has a consumer, each with a valid value.
VALID = {
    "node": {"user": "alice"},
    "tmpfs": {"path": "/mnt/tmpfs"},
    "registry": {"address": "hub.example.org:5000", "ca_cert": "/etc/gpuswarm-node/registry-ca.crt"},
    "image": {"name": "hub.example.org:5000/singleuser-torch-nvidia:latest"},
    "swarm": {"manager": "hub.example.org", "ssh_user": "root", "advertise_addr": "10.0.0.5"},
}

STRING_KEYS = [(section, name) for section, name, default, _help in config.reference() if isinstance(default, str)]

# C0 controls, DEL, a C1 control, the Unicode line and paragraph separators, a bidi override.
CONTROL_CHARACTERS = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e"]


def tables(section: str, name: str, value) -> dict:
    merged = {s: dict(keys) for s, keys in VALID.items()}
    merged.setdefault(section, {})[name] = value
    return merged


def refused(section: str, name: str, value) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.from_tables(tables(section, name, value))
    error = info.value
    assert f"[{section}] {name}" in error.message()
    assert error.exit_code == 2
    assert re.fullmatch(r"[^\n\r\u2028\u2029\x85]+", error.message()), "the message must be one line"
    return error


def test_the_valid_configuration_is_accepted():
    cfg = config.from_tables(VALID)
    assert cfg.registry.address == "hub.example.org:5000"


def test_every_string_key_is_covered():
    # The generic rule must reach keys added later too: this list comes from the dataclasses.
    assert ("nvidia", "toolkit_apt_source") in STRING_KEYS and len(STRING_KEYS) >= 14


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=[f"U+{ord(c):04X}" for c in CONTROL_CHARACTERS])
@pytest.mark.parametrize("section, name", STRING_KEYS, ids=[f"{s}.{n}" for s, n in STRING_KEYS])
def test_no_string_key_holds_a_control_character(section, name, char):
    # The rule comes before any key's own: even a value that is otherwise wrong names the character.
    error = refused(section, name, f"x{char}y")
    assert "control character" in error.message()


def test_a_newline_cannot_add_a_second_apt_source():
    injected = ("deb [signed-by=/usr/share/keyrings/nvidia.asc] https://nvidia.github.io/x /\n"
                "deb [trusted=yes] http://attacker.example/ ./")
    assert "control character" in refused("nvidia", "toolkit_apt_source", injected).message()


@pytest.mark.parametrize("origin", ["environment", "flag"])
def test_control_characters_are_refused_from_every_origin(tmp_path, origin):
    value = "deb https://example.org/repo ./\ndeb [trusted=yes] http://attacker.example/ ./"
    env = {"GPUSWARM_NVIDIA_TOOLKIT_APT_SOURCE": value} if origin == "environment" else {}
    overrides = [f"nvidia.toolkit_apt_source={value}"] if origin == "flag" else []
    path = tmp_path / "empty.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        config.load(path, env=env, overrides=overrides)
    assert "control character" in info.value.message() and "[nvidia] toolkit_apt_source" in info.value.message()


def test_a_control_character_in_the_file_is_refused(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[image]\nname = "nb\\u2028x"\n')
    with pytest.raises(ConfigError, match=r"\[image\] name .*control character"):
        config.load(path, env={})


# --- registry.address: the directory name under /etc/docker/certs.d ----------------------------------

GOOD_ADDRESSES = ["hub.example.org:5000", "hub.example.org", "localhost:5000", "hub", "Hub.Example.ORG:443",
                  "10.0.0.1:5000", "10.0.0.1", "[::1]:5000", "[2001:db8::1]", "a-b.c-d.example:65535"]
BAD_ADDRESSES = ["..", ".", "../x", "./x", "a/b", "/hub", "hub/", "a\\b", "..\\x", "hub 5000", " hub", "hub..org",
                 ".hub", "hub.", "-hub", "hub-", "hub.-x.org", "x_y:5000", "hub:", "hub:0", "hub:65536", "hub:5a",
                 "hub:+5", "hub:-1", "hub:5000:1", "::1", "2001:db8::1:5000", "[::1", "[::1]5000", "[nope]:5000",
                 "[fe80::1%eth0]:5000", "[10.0.0.1]:5000", "1.2.3", "999.1.1.1:5000", "010.0.0.1", "hüb:5000",
                 "a" * 64 + ".org", "hub:5000\u00a0"]


@pytest.mark.parametrize("address", GOOD_ADDRESSES)
def test_registry_addresses_that_are_host_and_port(address):
    cfg = config.from_tables(tables("registry", "address", address))
    # The CA lands exactly one directory below certs.d, whatever the address.
    path = ca_path(cfg.registry.address)
    assert os.path.dirname(os.path.dirname(os.path.normpath(path))) == CERTS_D
    assert os.path.normpath(path) == path


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_registry_addresses_that_are_not_host_and_port(address):
    error = refused("registry", "address", address)
    assert "control character" in error.message() or "host[:port]" in error.message()


def test_dot_dot_would_have_put_the_ca_in_etc_docker():
    # Why the rule exists: certs.d/../ca.crt is /etc/docker/ca.crt.
    assert os.path.normpath(ca_path("..")) == "/etc/docker/ca.crt"
    refused("registry", "address", "..")


# --- node.user: an operand of getent and usermod -------------------------------------------------

@pytest.mark.parametrize("user", ["alice", "Bob", "_svc", "ci-runner", "build_01", "machine$", "a" * 32])
def test_user_names_are_accepted(user):
    assert config.from_tables(tables("node", "user", user)).node_user == user


@pytest.mark.parametrize("user", ["--", "-", "-i", "-s/bin/sh", "--help", "0", "1000", "1abc", "a b", "a:b", "a/b",
                                  "a.b", "a$b", "$", "\u00e1lice", "a" * 33, " alice"])
def test_user_names_that_are_options_numbers_or_odd_are_refused(user):
    refused("node", "user", user)


def test_valid_user_name_is_the_same_rule():
    assert config.valid_user_name("alice") and not config.valid_user_name("-G") and not config.valid_user_name("0")


# --- image.name ------------------------------------------------------------------------------------

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize("name", ["nb", "ubuntu:22.04", "library/python:3.11-slim", "hub.example.org:5000/a/b:c",
                                  "hub.example.org:5000/singleuser-torch-nvidia:latest", "[::1]:5000/nb:1",
                                  f"hub:5000/nb@{DIGEST}", f"nb:1@{DIGEST}", "a__b/c-d.e:T_1"])
def test_image_references_are_accepted(name):
    assert config.from_tables(tables("image", "name", name)).image.name == name


@pytest.mark.parametrize("name", ["-x", "--help", "-hub/nb", "nb latest", " nb", "nb ", "Hub/NB", "NB", ":tag",
                                  "nb:", "nb@sha256:abc", "/nb", "nb/", "hub:5000//nb", "nb:-tag", "nb;ls",
                                  "nb$(id)", "nb'", "hub:5000/nb:" + "t" * 129])
def test_image_names_that_are_not_references_are_refused(name):
    refused("image", "name", name)


# --- nvidia.toolkit_apt_source ---------------------------------------------------------------------

@pytest.mark.parametrize("line", [config.NVIDIA_TOOLKIT_SOURCE, "deb [trusted=yes] file:/srv/repo ./",
                                  "deb https://example.org/debian bookworm main contrib",
                                  "deb [arch=amd64 signed-by=/k.asc] https://example.org/d ./"])
def test_single_deb_lines_are_accepted(line):
    assert config.from_tables(tables("nvidia", "toolkit_apt_source", line)).nvidia.toolkit_apt_source == line


@pytest.mark.parametrize("line", ["deb", "deb ", "deb https://example.org", "deb-src https://example.org/d ./",
                                  "https://example.org/d ./", "deb [trusted=yes https://example.org/d ./",
                                  "deb [a] [b] https://example.org/d ./", "deb example.org/d ./",
                                  " deb https://example.org/d ./"])
def test_other_apt_source_lines_are_refused(line):
    refused("nvidia", "toolkit_apt_source", line)


# --- swarm: the SSH host, user and the address given to Docker --------------------------------------

@pytest.mark.parametrize("manager", ["hub.example.org", "hub.example.org.", "hub", "gpu_hub", "198.18.0.1",
                                     "2001:db8::1", "::1"])
def test_manager_hosts_are_accepted(manager):
    assert config.from_tables(tables("swarm", "manager", manager)).swarm.manager == manager


@pytest.mark.parametrize("manager", ["-oProxyCommand=sh", "-hub", "hub example", "hub\u00a0x", "[2001:db8::1]",
                                     "hub/x", "..", "hub..org", "user@hub", "hub:22", "999.0.0.1"])
def test_manager_values_that_are_not_hosts_are_refused(manager):
    refused("swarm", "manager", manager)


@pytest.mark.parametrize("name, value", [("ssh_user", "-oProxyCommand=sh"), ("ssh_user", "root x"),
                                         ("ssh_user", ""), ("advertise_addr", "-x"),
                                         ("advertise_addr", "10.0.0.5 10.0.0.6"), ("advertise_addr", "eth0\u2003")])
def test_ssh_user_and_advertise_addr_are_no_options_and_one_word(name, value):
    refused("swarm", name, value)


@pytest.mark.parametrize("name, value", [("ssh_user", "deploy"), ("advertise_addr", ""), ("advertise_addr", "eth0"),
                                         ("advertise_addr", "10.0.0.5:2377")])
def test_ssh_user_and_advertise_addr_accepted(name, value):
    assert getattr(config.from_tables(tables("swarm", name, value)).swarm, name) == value


# --- paths -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section, name, value", [
    ("tmpfs", "path", "mnt/tmpfs"), ("tmpfs", "path", "/"), ("tmpfs", "path", "//"),
    ("tmpfs", "path", "/mnt/../etc"), ("tmpfs", "path", "/mnt/x/../tmpfs"), ("tmpfs", "path", "/mnt/tmp fs"),
    ("registry", "ca_cert", "registry-ca.crt"), ("registry", "ca_cert", "./ca.crt"),
    ("swarm", "ssh_key", "id_ed25519"), ("swarm", "ssh_key", "~/.ssh/id_ed25519"), ("swarm", "ssh_key", ""),
    ("swarm", "known_hosts", "known_hosts"), ("swarm", "known_hosts", ""),
])
def test_paths_must_be_absolute_where_they_are_used(section, name, value):
    refused(section, name, value)


def test_ca_cert_may_be_empty_only_without_a_registry():
    refused("registry", "ca_cert", "")
    cfg = config.from_tables({"registry": {"address": "", "ca_cert": ""}})
    assert cfg.registry.ca_cert == ""


def test_known_hosts_may_be_empty_when_the_fingerprint_is_pinned():
    data = tables("swarm", "known_hosts", "")
    data["swarm"]["host_key_fingerprint"] = "SHA256:" + "A" * 43
    assert config.from_tables(data).swarm.known_hosts == ""


def test_without_a_manager_ssh_paths_may_be_empty():
    cfg = config.from_tables({"swarm": {"ssh_key": "", "known_hosts": ""}})
    assert cfg.swarm.manager == ""


@pytest.mark.parametrize("path", ["/mnt/tmpfs", "/scratch", "/srv/gpu-scratch", "/var/lib/scratch", "/home/tmpfs",
                                  "/mnt/tmpfs-gpu", "/library", "/etcetera", "/users", "/mnt/tmpfs/gpu"])
def test_tmpfs_paths_accepted(path):
    assert config.from_tables({"tmpfs": {"path": path}}).tmpfs.path == path


# --- tmpfs.path: one spelling, and never over the system ----------------------------------------------

@pytest.mark.parametrize("path, normal", [
    ("/mnt//tmpfs/", "/mnt/tmpfs"), ("/scratch/", "/scratch"), ("//mnt/tmpfs", "/mnt/tmpfs"),
    ("///mnt///tmpfs///", "/mnt/tmpfs"), ("/mnt/./tmpfs/.", "/mnt/tmpfs"),
])
def test_tmpfs_path_is_stored_normalised(path, normal):
    # fstab and mountinfo name the mount point in this form: any other spelling was never seen
    # mounted, so every run planned another fstab line and another mount over the last one.
    assert config.from_tables({"tmpfs": {"path": path}}).tmpfs.path == normal


def test_tmpfs_path_is_normalised_from_every_origin(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('[tmpfs]\npath = "/mnt//from-file/"\n')
    assert config.load(file, env={}).tmpfs.path == "/mnt/from-file"
    assert config.load(file, env={"GPUSWARM_TMPFS_PATH": "/mnt/env//"}).tmpfs.path == "/mnt/env"
    assert config.load(file, env={}, overrides=["tmpfs.path=/mnt/./flag/"]).tmpfs.path == "/mnt/flag"


@pytest.mark.parametrize("path", [
    "/", "//", "/etc", "/etc/", "/usr", "/var", "/home", "/boot", "/root", "/bin", "/sbin", "/lib", "/lib64",
    "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/libexec", "/opt", "/srv", "/proc", "/sys", "/dev", "/run",
    "/tmp", "/mnt", "/mnt/", "/media", "/var/lib", "/var/log", "/var/tmp", "/var/lib/docker",
    "/var/lib/docker/volumes", "/var/lib/containerd", "/var/lib/gpuswarm-node", "/var/backups/gpuswarm-node",
    "/etc/gpuswarm-node", "/etc/docker", "/boot/efi", "/dev/shm", "/proc/1", "/sys/fs", "/run/user",
    "/usr/local", "/usr/share", "/usr/local/scratch", "/lib/modules", "/var/lib/dpkg",
])
def test_tmpfs_path_is_never_a_system_directory(path):
    # Before: setup planned `mount /etc` over a tmpfs fstab line.
    error = refused("tmpfs", "path", path)
    assert "system directory" in error.message()


@pytest.mark.parametrize("path, normal", [("/mnt/../usr", "/usr"), ("/mnt/tmpfs/../../etc", "/etc"),
                                          ("/usr/./", "/usr"), ("//etc//", "/etc")])
def test_tmpfs_path_is_judged_by_the_directory_it_names(path, normal):
    error = refused("tmpfs", "path", path)
    assert f"{path!r}, which is {normal}" in error.message()


# --- bounds on numbers that size something ------------------------------------------------------------

@pytest.mark.parametrize("value", [65, 1000, 100000000])
def test_slices_per_gpu_has_a_maximum(value):
    # Before: 100000000 built a list of that many slice IDs per GPU, and ran out of memory.
    error = refused("gpu", "slices_per_gpu", value)
    assert f"from 1 to {config.MAX_SLICES_PER_GPU}" in error.message() and str(value) in error.message()


def test_slices_per_gpu_up_to_the_maximum_is_accepted():
    assert config.from_tables({"gpu": {"slices_per_gpu": 64}}).gpu.slices_per_gpu == 64


@pytest.mark.parametrize("value", ["1", "255MiB", "268435455", "1KiB", "0.2GiB", "100B"])
def test_slice_memory_has_a_minimum(value):
    # Before: "1" (one byte) gave one slice per byte of GPU memory: billions of IDs.
    error = refused("gpu", "slice_memory", value)
    assert "at least 256MiB" in error.message() and repr(value) in error.message()


@pytest.mark.parametrize("value", ["256MiB", "268435456", "0.25GiB", "4GiB"])
def test_slice_memory_from_the_minimum_is_accepted(value):
    assert config.from_tables({"gpu": {"slice_memory": value}}).gpu.slice_memory_bytes >= config.MIN_SLICE_MEMORY


@pytest.mark.parametrize("value", [3601, 86400, 10**9])
def test_apt_lock_timeout_has_an_upper_bound(value):
    error = refused("apt", "lock_timeout", value)
    assert "from 0 to 3600 seconds" in error.message()


@pytest.mark.parametrize("value", [0, 600, 3600])
def test_apt_lock_timeout_within_bounds(value):
    assert config.from_tables({"apt": {"lock_timeout": value}}).apt.lock_timeout == value


@pytest.mark.parametrize("value", ["CVE-2019-5736", "CVE-2025-31133,CVE-2099-1", "all", "CVE-2025-31133;rm -rf /"])
def test_accepting_an_advisory_no_floor_closes_is_refused(value):
    error = refused("docker", "accept_advisories", value)
    assert "which no minimum version of this tool closes" in error.message() and "CVE-2025-23266" in error.message()


@pytest.mark.parametrize("value, advisories", [
    ("", ()), ("CVE-2025-31133", ("CVE-2025-31133",)),
    (" cve-2025-52565 , CVE-2025-52881,", ("CVE-2025-52565", "CVE-2025-52881")),
])
def test_accepted_advisories_are_read_as_ids(value, advisories):
    from gpuswarm_node.floors import accepted

    cfg = config.from_tables({"docker": {"accept_advisories": value}})
    assert accepted(cfg.docker.accept_advisories) == advisories


# --- what a hurried operator types, and a message that names the right fix ----------------------------

@pytest.mark.parametrize("tables, key, fix", [
    ({"registry": {"address": "https://hub.example.org:5000", "ca_cert": "/etc/ca.crt"}}, "[registry] address",
     "without a scheme such as https://"),
    ({"swarm": {"manager": "hub.example.org:2222"}}, "[swarm] manager", "swarm.ssh_port = 2222"),
    ({"swarm": {"manager": "ubuntu@hub.example.org"}}, "[swarm] manager", "swarm.ssh_user"),
    ({"swarm": {"manager": "ssh://hub.example.org"}}, "[swarm] manager", "without a scheme"),
    ({"registry": {"ca_cert": "/etc/ca.crt"}}, "[registry] address", "registry.address too"),
    ({"registry": {"address": "hub.example.org:5000"}}, "[registry] ca_cert", "registry.ca_cert too"),
], ids=["registry-scheme", "manager-port", "manager-user", "manager-scheme", "ca-without-address",
        "address-without-ca"])
def test_a_hurried_value_gets_the_right_fix(tables, key, fix):
    with pytest.raises(ConfigError) as info:
        config.from_tables(tables)
    assert key in info.value.message() and fix in info.value.message()


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "node.toml"
    path.write_bytes(b"\xff\xfe[gpu]\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        config.load(path, env={})


def test_a_missing_file_names_where_it_was_named(tmp_path):
    with pytest.raises(ConfigError, match="named by GPUSWARM_CONFIG"):
        config.load(None, env={"GPUSWARM_CONFIG": str(tmp_path / "nope.toml")})
    with pytest.raises(ConfigError, match="named by --config"):
        config.load(tmp_path / "nope.toml", env={})


def test_a_step_both_selected_and_skipped_is_a_usage_error():
    from gpuswarm_node import steps

    with pytest.raises(ConfigError, match="--only and --skip both name tmpfs"):
        steps.select(["tmpfs", "image"], ["tmpfs"])
    assert [s.name for s in steps.select(["tmpfs"], ["image"])] == ["tmpfs"]


# --- [[shared.mounts]] ----------------------------------------------------------------------------

EFS = "fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com"


def test_shared_mounts_are_read_from_tables():
    cfg = config.from_tables({"shared": {"mounts": [{"source": f"{EFS}:/", "path": "/srv//shared/", "options": "ro"},
                                                    {"source": "[2001:db8::5]:/data", "path": "/srv/data"}]}})
    assert cfg.shared.mounts == (config.SharedMount(f"{EFS}:/", "/srv/shared", "ro"),
                                 config.SharedMount("[2001:db8::5]:/data", "/srv/data", ""))
    assert cfg.shared.mounts[0].read_only and not cfg.shared.mounts[1].read_only


@pytest.mark.parametrize("mount, says", [
    ({"source": EFS, "path": "/srv/x"}, "source must be host:/export"),
    ({"source": f"{EFS}:/ x", "path": "/srv/x"}, "source must be host:/export"),
    ({"source": f"-o{EFS}:/", "path": "/srv/x"}, "source must be host:/export"),
    ({"source": f"{EFS}:/", "path": "srv/x"}, "path must be an absolute path"),
    ({"source": f"{EFS}:/", "path": "/srv/../etc"}, "path must be an absolute path"),
    ({"source": f"{EFS}:/", "path": "/usr"}, "must not be / or a system directory"),
    ({"source": f"{EFS}:/", "path": "/srv/x", "options": "ro,bg rw"}, "options must be comma-separated"),
    ({"source": f"{EFS}:/", "path": "/srv/x", "opts": "ro"}, "unknown key 'opts'"),
    ({"source": f"{EFS}:/", "path": "/srv/x", "options": 1}, "options must be a string"),
])
def test_bad_shared_mounts_are_refused_naming_the_table(mount, says):
    with pytest.raises(ConfigError, match=re.escape(says)) as raised:
        config.from_tables({"shared": {"mounts": [mount]}})
    assert "[[shared.mounts]] number 1" in raised.value.message()


@pytest.mark.parametrize("options, reopened", [("suid", "suid"), ("ro,dev", "dev"), ("defaults", "defaults"),
                                               ("nosuid,suid", "suid")])
def test_share_options_that_undo_nosuid_nodev_are_refused(options, reopened):
    with pytest.raises(ConfigError) as raised:
        config.from_tables({"shared": {"mounts": [{"source": f"{EFS}:/", "path": "/srv/x", "options": options}]}})
    message = raised.value.message()
    assert f"must not contain {reopened!r}" in message and "nosuid,nodev" in message
    assert message.count(". ") <= 2  # one sentence and its fix


@pytest.mark.parametrize("options", ["ro", "exec,actimeo=30", "nosuid,nodev", "noexec"])
def test_share_options_that_keep_nosuid_nodev_are_accepted(options):
    cfg = config.from_tables({"shared": {"mounts": [{"source": f"{EFS}:/", "path": "/srv/x", "options": options}]}})
    from gpuswarm_node.steps.shared_fs import options as mount_options
    assert {"nosuid", "nodev"} <= set(mount_options(cfg.shared.mounts[0]).split(","))


def test_shared_mounts_need_mount_points_of_their_own():
    mounts = [{"source": f"{EFS}:/a", "path": "/srv/shared"}, {"source": f"{EFS}:/b", "path": "/srv/shared/data"}]
    with pytest.raises(ConfigError, match="holds another"):
        config.from_tables({"shared": {"mounts": mounts}})
    with pytest.raises(ConfigError, match="tmpfs's mount point"):
        config.from_tables({"shared": {"mounts": [{"source": f"{EFS}:/", "path": "/mnt/tmpfs"}]}})


def test_shared_mounts_come_only_from_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"only be given as \[\[shared.mounts\]\] tables"):
        config.load(None, env={"GPUSWARM_CONFIG": ""}, overrides=["shared.mounts=x:/y"])

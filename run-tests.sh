#!/bin/sh
# Install what the test suite needs and run all of it: unit tests, CLI tests and the real-machine
# lab (namespaces, dockerd, sshd, a TLS registry, a fresh Debian machine under systemd-nspawn).
# Run as root on Debian 12. Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")"
. tests/prepare.sh
exec .venv/bin/python -m pytest "$@"

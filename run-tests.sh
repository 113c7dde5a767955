#!/bin/sh
# Install what the test suite needs and run all of it: unit tests, CLI tests and the real-machine
# lab (namespaces, dockerd, sshd, a TLS registry, a fresh Debian machine under systemd-nspawn).
# ruff and mypy run first (as .pre-commit-config.yaml does). Run as root on Debian 12. Extra
# arguments go to pytest.
set -eu
cd "$(dirname "$0")"
. tests/prepare.sh
# First stage, in seconds: a lint or type error fails before the unit tests and the lab start.
.venv/bin/ruff check gpuswarm_node tests bench
.venv/bin/mypy gpuswarm_node
exec .venv/bin/python -m pytest "$@"

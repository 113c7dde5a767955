#!/bin/sh
# The benchmark from a clean checkout, in one command (as root): installs what the lab needs,
# then runs bench/run.py with the project's .venv. Extra arguments go to bench/run.py.
set -eu
cd "$(dirname "$0")/.."
. tests/prepare.sh
exec .venv/bin/python bench/run.py "$@"

#!/bin/sh
# The benchmark from a clean checkout, in one command (as root): installs what the lab needs,
# then runs bench/run.py with the project's .venv. Extra arguments go to bench/run.py.
# Progress goes to stderr; the commands' own output (apt, pip, setup.sh) to bench/out/bench.log.
set -eu
cd "$(dirname "$0")/.."
mkdir -p bench/out
log=bench/out/bench.log
echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) bench/run.sh $*" >"$log"
echo "preparing the lab's packages and .venv (tests/prepare.sh; output in $log)" >&2
if ! (. tests/prepare.sh) >>"$log" 2>&1; then
    echo "tests/prepare.sh failed; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
exec .venv/bin/python bench/run.py "$@"

#!/bin/sh
# Install gpuswarm-node into its own virtual environment, put it on PATH, and run
# `gpuswarm-node setup` with this script's arguments. Safe to re-run: the tool is reinstalled only
# when this source tree changed, and setup itself changes only what is not yet right.
set -eu
# Before anything is created: under umask 000 (some cloud-init setups) the venv, and everything
# pip and the tool put in place, would be writable by every local user.
umask 022

PREFIX=${GPUSWARM_PREFIX:-/opt/gpuswarm-node}
BIN_LINK=/usr/local/bin/gpuswarm-node
SRC=$(cd "$(dirname "$0")" && pwd)

say() { printf 'setup.sh: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "must run as root: sudo ./setup.sh $*"
    exit 2
fi
if ! command -v python3 >/dev/null 2>&1; then
    say "python3 is missing; install it (apt-get install python3) and run again"
    exit 2
fi

# Debian and Ubuntu ship venv separately from python3.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    say "installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends python3-venv >&2
fi

# An install made under umask 000 (before this script set its own) left the tool writable by
# every local user: root only, before anything runs from it. Only what this script created is
# touched (PREFIX may be shared); symlinks carry no permissions of their own.
if [ -d "$PREFIX/venv" ] && [ -n "$(find "$PREFIX" -maxdepth 0 \( -perm /022 -o ! -user 0 \) -print;
                                   find "$PREFIX/venv" ! -type l \( -perm /022 -o ! -user 0 -o ! -group 0 \) -print -quit)" ]; then
    say "making $PREFIX/venv owned and writable by root only"
    chown -h root:root "$PREFIX"
    chmod go-w "$PREFIX"
    chown -R -h root:root "$PREFIX/venv"
    chmod -R go-w "$PREFIX/venv"
    [ ! -f "$PREFIX/source.sha256" ] || { chown -h root:root "$PREFIX/source.sha256"; chmod 0644 "$PREFIX/source.sha256"; }
fi

# A hash of the installable source decides whether the installed copy is current.
src_hash=$(cd "$SRC" && find pyproject.toml gpuswarm_node templates -type f ! -name '*.pyc' \
           | LC_ALL=C sort | xargs cat | sha256sum | cut -d' ' -f1)
if [ ! -x "$PREFIX/venv/bin/gpuswarm-node" ] || [ "$(cat "$PREFIX/source.sha256" 2>/dev/null)" != "$src_hash" ]; then
    say "installing gpuswarm-node into $PREFIX/venv"
    [ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SRC" >&2
    printf '%s\n' "$src_hash" > "$PREFIX/source.sha256"
fi
ln -sfn "$PREFIX/venv/bin/gpuswarm-node" "$BIN_LINK"

exec "$BIN_LINK" setup "$@"

#!/bin/sh
# What the test suite and the benchmark need on this machine: the lab's Debian packages and the
# project in .venv. Sourced by run-tests.sh and bench/run.sh from the repository root, as root.

if [ "$(id -u)" -ne 0 ]; then
    echo "the lab needs root (network namespaces, dockerd, nspawn); run this as root" >&2
    exit 2
fi

LAB_PACKAGES="docker.io openssh-server docker-registry busybox-static debootstrap systemd-container
dpkg-dev gcc iproute2 iptables openssl"
missing=""
for pkg in $LAB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
# The lab's JupyterHub needs configurable-http-proxy from npm (tests/lab/hub_build.py): node and
# npm from anywhere will do, else Debian's.
command -v node >/dev/null && command -v npm >/dev/null || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
    echo "installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

#!/bin/sh
# Install what the test suite needs and run all of it: unit tests, CLI tests and the real-machine
# lab (namespaces, dockerd, sshd, a TLS registry, a fresh Debian machine under systemd-nspawn).
# Run as root on Debian 12. Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
    echo "run-tests.sh: the lab needs root (network namespaces, dockerd, nspawn); run it as root" >&2
    exit 2
fi

LAB_PACKAGES="docker.io openssh-server docker-registry busybox-static debootstrap systemd-container
dpkg-dev gcc iproute2 iptables openssl"
missing=""
for pkg in $LAB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "run-tests.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"

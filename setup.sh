#!/bin/sh
# Install gpuswarm-node into its own virtual environment, put it on PATH, and run
# `gpuswarm-node setup` with this script's arguments (`./setup.sh --install-only`: install, do not
# run setup; `./setup.sh hub init ...`: run that hub command instead of setup). Safe to re-run and to kill at any moment: the tool is rebuilt only when this source
# tree changed, beside the environment in use, which is switched only once the new one works; and
# setup itself changes only what is not yet right. `--help` and `--dry-run` change nothing: a dry
# run uses the installed tool when it is current, else a temporary copy it removes afterwards.
set -eu
# Before anything is created: under umask 000 (some cloud-init setups) the venv, and everything
# pip and the tool put in place, would be writable by every local user.
umask 022

PREFIX=${GPUSWARM_PREFIX:-/opt/gpuswarm-node}
BIN_LINK=/usr/local/bin/gpuswarm-node
COMPLETION=/usr/share/bash-completion/completions/gpuswarm-node
SRC=$(cd "$(dirname "$0")" && pwd)
APT_LOCK_TIMEOUT=${GPUSWARM_APT_LOCK_TIMEOUT:-600}
NETWORK_RETRY=${GPUSWARM_NODE_NETWORK_RETRY:-120}

say() { printf 'setup.sh: %s\n' "$*" >&2; }

usage() {
    cat <<EOF
Usage: sudo ./setup.sh [SETUP OPTIONS]     install gpuswarm-node, then run \`gpuswarm-node setup\`
       sudo ./setup.sh --install-only     install it (into $PREFIX, linked as $BIN_LINK), nothing else
       sudo ./setup.sh --dry-run [...]    show what setup would change; change nothing (not even the install)
       sudo ./setup.sh hub init [...]     install it, then run \`gpuswarm-node hub init\` (the hub; --dry-run too)

SETUP OPTIONS go to \`gpuswarm-node setup\`: --config FILE, --set SECTION.KEY=VALUE, --dry-run,
--only STEP, --skip STEP, --json, ... (\`gpuswarm-node setup --help\` lists them all).
Environment: GPUSWARM_PREFIX (the install directory), GPUSWARM_APT_LOCK_TIMEOUT (seconds to wait for
another apt), and the tool's GPUSWARM_CONFIG and GPUSWARM_<SECTION>_<KEY>.
EOF
}

install_only=
help=
dry_run=
if [ "${1:-}" = "--install-only" ]; then
    if [ "$#" -ne 1 ]; then
        say "--install-only takes no other arguments"
        exit 2
    fi
    install_only=1
fi
# `./setup.sh hub ...` runs that command of the tool's hub group instead of setup.
if [ "${1:-}" = "hub" ]; then command=; else command=setup; fi
for arg in "$@"; do
    case $arg in
        -h | --help) help=1 ;;
        --dry-run) dry_run=1 ;;
    esac
done
if [ -n "$help" ]; then  # before anything else: help changes nothing and needs no root
    usage
    exit 0
fi
case $APT_LOCK_TIMEOUT in
    '' | *[!0-9]*) say "GPUSWARM_APT_LOCK_TIMEOUT must be a whole number of seconds, not '$APT_LOCK_TIMEOUT'"; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    say "must run as root: sudo ./setup.sh $*"
    exit 2
fi
if ! command -v python3 >/dev/null 2>&1; then
    say "python3 is missing; install it (apt-get install python3) and run again"
    exit 2
fi

# apt-get waiting, like the tool, for the locks another apt holds (cloud-init or unattended-upgrades
# on a first boot), up to GPUSWARM_APT_LOCK_TIMEOUT (the tool's apt.lock_timeout) seconds in all:
# apt waits for dpkg's locks itself (DPkg::Lock::Timeout gets the time left) but fails at once
# (exit 100) on the package lists' and the download directory's, so it is run again until they are
# free. apt's own message names who holds the lock. A mirror that failed (apt's words for a name
# that does not resolve yet, a connection, a server error; the tool's steps/apt.py MIRROR_TRANSIENT)
# is tried again with backoff for GPUSWARM_NODE_NETWORK_RETRY (the tool's node.network_retry) seconds.
apt_get() {
    apt_deadline=$(( $(date +%s) + APT_LOCK_TIMEOUT ))
    apt_net_deadline=$(( $(date +%s) + ${NETWORK_RETRY:-120} ))
    apt_wait=2
    apt_said=
    while :; do
        apt_left=$(( apt_deadline - $(date +%s) ))
        [ "$apt_left" -gt 0 ] || apt_left=0
        apt_rc=0
        apt_out=$(LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$apt_left" "$@" 2>&1) \
            || apt_rc=$?
        if [ "$apt_rc" -eq 0 ]; then
            [ -z "$apt_out" ] || printf '%s\n' "$apt_out" >&2
            return 0
        fi
        apt_held=$(printf '%s\n' "$apt_out" | sed -n 's/^E: \(Could not get lock .*\)/\1/p' | head -n 1)
        apt_net=$(printf '%s\n' "$apt_out" | grep -m 1 -E 'Temporary failure resolving|Could not resolve|Could not connect to|Connection (timed out|failed|refused|reset)|Unable to connect to|Network is unreachable|No route to host| (500|502|503|504) |Bad Gateway|Service Unavailable|Hash Sum mismatch' || true)
        if [ -z "$apt_held" ] && [ -n "$apt_net" ] && [ "$(date +%s)" -lt "$apt_net_deadline" ]; then
            say "apt-get $* failed on a mirror ($apt_net); trying again in $apt_wait s (GPUSWARM_NODE_NETWORK_RETRY)"
            sleep "$apt_wait"
            apt_wait=$(( apt_wait * 2 > 30 ? 30 : apt_wait * 2 ))
            continue
        fi
        # -gt: date counts whole seconds, so the wait is at least the timeout, at most 1 s more.
        if [ -z "$apt_held" ] || [ "$(date +%s)" -gt "$apt_deadline" ]; then
            printf '%s\n' "$apt_out" >&2
            [ -z "$apt_held" ] || say "gave up waiting after $APT_LOCK_TIMEOUT s (GPUSWARM_APT_LOCK_TIMEOUT)"
            return "$apt_rc"
        fi
        if [ "$apt_held" != "$apt_said" ]; then
            say "waiting (up to $APT_LOCK_TIMEOUT s) for another apt: $apt_held"
            apt_said=$apt_held
        fi
        sleep 1
    done
}

# Debian and Ubuntu ship venv separately from python3 (a dry run installs nothing: see below).
if [ -z "$dry_run" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    say "installing python3-venv"
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends python3-venv
fi

# pip installing the tool and its dependencies takes a minute or more; with --quiet it says nothing
# all that time, without it a wall of text. So its output goes to pip.log in the new environment
# (shown whole when pip fails), and this says what pip is at (the package it collects, the wheel it
# builds, the installing) whenever that changes, and how long it has worked when nothing changed
# for PIP_QUIET_SECONDS. pip runs in the background and leaves its exit status in pip.rc: polling
# for that file works in every sh, where waiting on a job while printing does not.
PIP_QUIET_SECONDS=15
pip_install() {
    pip_env=$1
    shift
    rm -f "$pip_env/pip.rc"
    ( pip_rc=0
      "$@" >"$pip_env/pip.log" 2>&1 || pip_rc=$?
      echo "$pip_rc" > "$pip_env/pip.rc" ) &
    pip_started=$(date +%s)
    pip_said=
    pip_said_at=$pip_started
    while [ ! -s "$pip_env/pip.rc" ]; do
        sleep 1
        pip_at=$(grep -E '^(Processing|Collecting|Building wheels? for|Installing collected packages)' \
                 "$pip_env/pip.log" 2>/dev/null | tail -n 1 | cut -c 1-120)
        pip_now=$(date +%s)
        if [ -n "$pip_at" ] && [ "$pip_at" != "$pip_said" ]; then
            say "pip: $pip_at"
            pip_said=$pip_at
            pip_said_at=$pip_now
        elif [ $(( pip_now - pip_said_at )) -ge "$PIP_QUIET_SECONDS" ]; then
            say "pip: still working ($(( pip_now - pip_started )) s)"
            pip_said_at=$pip_now
        fi
    done
    pip_rc=$(cat "$pip_env/pip.rc")
    if [ "$pip_rc" -ne 0 ]; then
        cat "$pip_env/pip.log" >&2
        return "$pip_rc"
    fi
    say "pip: done in $(( $(date +%s) - pip_started )) s"
    rm -f "$pip_env/pip.log" "$pip_env/pip.rc"
}

# The tool's environment: $PREFIX/venv is a symlink to the one in use, venv-<source hash>-<pid of the
# setup.sh that built it>. A new one is built beside it (a venv cannot be moved once built: its
# scripts name its path), checked, and the link switched by a rename, so at every moment the link
# names a complete environment or nothing; what a killed run left behind is removed by the next.
# A venv directory instead of the link is an install from before this layout.
current_venv() {
    if [ -L "$PREFIX/venv" ]; then
        target=$(readlink "$PREFIX/venv")
        case $target in
            */* | venv-) ;;
            venv-*)
                if [ -d "$PREFIX/$target" ] && [ ! -L "$PREFIX/$target" ]; then
                    printf '%s\n' "$PREFIX/$target"
                fi ;;
        esac
    elif [ -d "$PREFIX/venv" ]; then
        printf '%s\n' "$PREFIX/venv"
    fi
    return 0
}

# Replace the symlink $2 by one to $1 with a rename: never absent, never half-written.
switch_link() {
    ln -sfn "$1" "$2.new.$$"
    mv -T "$2.new.$$" "$2"
}

# What killed runs of this script left: environments not in use and temporary names, each named
# after the pid of the run that made it; kept while that run (or the tool it became) still runs.
remove_leftovers() {
    in_use=$(current_venv)
    for path in "$PREFIX"/venv-* "$PREFIX"/venv.new.* "$PREFIX"/source.sha256.new.* "$BIN_LINK".new.* \
                "$COMPLETION".new.*; do
        [ -e "$path" ] || [ -L "$path" ] || continue
        [ "$path" != "$in_use" ] || continue
        printf '%s\n' "${path##*/}" | grep -Eq \
            '^(venv-([0-9a-f]{12}|old)-|venv\.new\.|source\.sha256\.new\.|gpuswarm-node\.new\.)[0-9]+$' || continue
        pid=${path##*[.-]}
        if [ "$pid" != "$$" ] && kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        rm -rf "$path"
    done
}

# The tool's dependencies: the `dependencies` list of pyproject.toml, one requirement a line (the
# project's own file, written one requirement a line; tests/test_setup_sh.py holds it to tomllib).
dependencies() {
    sed -n '/^dependencies = \[/,/^\]/s/^ *"\([^"]*\)",\{0,1\} *$/\1/p' "$SRC/pyproject.toml"
}

# The pip wheel the interpreter carries for ensurepip: Debian and Ubuntu keep it in WHEEL_PKG_DIR
# (python3-pip-whl, which python3-venv brings), python.org builds in ensurepip/_bundled. Empty when
# there is none.
bundled_pip() {
    python3 -c 'import ensurepip, glob, os, sysconfig
dirs = [sysconfig.get_config_var("WHEEL_PKG_DIR"), os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
print(max((w for d in dirs if d for w in glob.glob(os.path.join(d, "pip-*.whl"))), default=""))'
}

# Build the tool's environment in the new directory $1. What made it slow (bench/setup_sh_env.py):
# `python3 -m venv` installing and byte-compiling pip into it, pip fetching hatchling to build this
# project from source, and byte-compiling every module of every dependency (pygments alone has
# hundreds the tool never imports). So: a venv without pip, run by pip straight from the wheel
# ensurepip would have installed (a wheel is importable as it is); the dependencies as
# pyproject.toml lists them, resolved by pip and not compiled: Python compiles a module once, on
# its first import by root (the setup run that follows, or the check below); and this project's
# package copied in as its wheel lays it out (templates inside the package), with the entry point
# pip would write. Only the source is copied (no links, no bytecode), with fixed modes.
build_venv() {
    venv=$1
    pip_wheel=$(bundled_pip) || return 1
    if [ -n "$pip_wheel" ]; then
        python3 -m venv --without-pip "$venv" >&2 || return 1
        set -- "$venv/bin/python" "$pip_wheel/pip"
    else
        python3 -m venv "$venv" >&2 || return 1
        set -- "$venv/bin/python" -m pip
    fi
    deps=$(dependencies)
    if [ -z "$deps" ]; then
        say "found no dependencies in $SRC/pyproject.toml"
        return 1
    fi
    printf '%s\n' "$deps" > "$venv/requirements.txt" || return 1
    pip_install "$venv" "$@" install --disable-pip-version-check --progress-bar off --no-compile \
        -r "$venv/requirements.txt" || return 1
    rm -f "$venv/requirements.txt"
    package=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/gpuswarm_node \
        || return 1
    mkdir -p "$package/templates" &&
        cp -R "$SRC/gpuswarm_node/." "$package/" &&
        cp -R "$SRC/templates/." "$package/templates/" &&
        find "$package" -name __pycache__ -prune -exec rm -rf {} + \
            -o ! -type d ! -type f -exec rm -f {} + -o -name '*.pyc' -exec rm -f {} + &&
        chmod -R u=rwX,go=rX "$package" || return 1
    # The commit the tool names in --version and --json (gpuswarm_node.commit()): `git archive`
    # wrote it into a release tarball already; from a checkout, git says it.
    if grep -q '^\$Format' "$package/COMMIT" 2>/dev/null; then
        commit=$(git -C "$SRC" rev-parse --short=7 HEAD 2>/dev/null) || commit=
        [ -z "$commit" ] || printf '%s\n' "$commit" > "$package/COMMIT" || return 1
    fi
    printf '#!%s\nimport sys\nfrom gpuswarm_node.entry import main\nsys.exit(main())\n' "$venv/bin/python" \
        > "$venv/bin/gpuswarm-node" && chmod 0755 "$venv/bin/gpuswarm-node"
}

# An install made under umask 000 (before this script set its own) left the tool writable by
# every local user: root only, before anything runs from it. Only what this script created is
# touched (PREFIX may be shared); symlinks carry no permissions of their own. What others could
# write may have been changed, so it is rebuilt from this source too.
venv_dir=$(current_venv)
rebuild=
unsafe=
if [ -d "$PREFIX" ] && [ -n "$(find "$PREFIX" -maxdepth 0 \( -perm /022 -o ! -user 0 \) -print
                              [ -z "$venv_dir" ] ||
                              find "$venv_dir" ! -type l \( -perm /022 -o ! -user 0 -o ! -group 0 \) -print -quit)" ]
then
    unsafe=1
    if [ -z "${dry_run:-}" ]; then  # a dry run changes nothing; it says what it would do (below)
        say "making $PREFIX${venv_dir:+ and $venv_dir} owned and writable by root only"
        chown -h root:root "$PREFIX"
        chmod go-w "$PREFIX"
        if [ -n "$venv_dir" ]; then
            chown -R -h root:root "$venv_dir"
            chmod -R go-w "$venv_dir"
        fi
        [ ! -L "$PREFIX/venv" ] || chown -h root:root "$PREFIX/venv"
        if [ -f "$PREFIX/source.sha256" ]; then
            chown -h root:root "$PREFIX/source.sha256"
            chmod 0644 "$PREFIX/source.sha256"
        fi
        rebuild=1
    fi
fi

# A hash of the installable source decides whether the installed copy is current. It is written
# only once the environment built from that source is the one in use.
src_hash=$(cd "$SRC" && find pyproject.toml gpuswarm_node templates -type f ! -name '*.pyc' \
           | LC_ALL=C sort | xargs cat | sha256sum | cut -d' ' -f1)

# A dry run changes nothing: the installed tool's own dry run where it is current and safe, else
# the dry run of a temporary copy built from this source, removed when it ends. The tool knows
# (GPUSWARM_INSTALLING) that a real run of this script links it at BIN_LINK first.
if [ -n "$dry_run" ]; then
    if [ -z "$unsafe" ] && [ -L "$PREFIX/venv" ] && [ -n "$venv_dir" ] && [ -x "$venv_dir/bin/gpuswarm-node" ] \
       && [ "$(cat "$PREFIX/source.sha256" 2>/dev/null)" = "$src_hash" ] \
       && [ "$(readlink "$BIN_LINK" 2>/dev/null || true)" = "$PREFIX/venv/bin/gpuswarm-node" ]; then
        exec "$BIN_LINK" ${command:+"$command"} "$@"
    fi
    say "dry run: would ${unsafe:+make $PREFIX owned and writable by root only, }install gpuswarm-node into $PREFIX (python3 -m venv, then pip) and link $BIN_LINK; the plan below comes from a temporary copy, removed afterwards"
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        say "dry run: python3-venv is not installed (a real run installs it with apt-get), so the tool cannot run without changing this machine; install python3-venv, or run without --dry-run"
        exit 1
    fi
    dry_tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpuswarm-node-dry-run.XXXXXX")
    trap 'rm -rf "$dry_tmp"' EXIT
    trap 'exit 130' INT TERM
    if ! { build_venv "$dry_tmp/venv" && "$dry_tmp/venv/bin/gpuswarm-node" version >/dev/null; }; then
        say "dry run: building the temporary copy of the tool failed (see above); nothing was changed"
        exit 1
    fi
    dry_rc=0
    GPUSWARM_INSTALLING=1 "$dry_tmp/venv/bin/gpuswarm-node" ${command:+"$command"} "$@" || dry_rc=$?
    exit "$dry_rc"
fi

if [ -n "$rebuild" ] || [ ! -L "$PREFIX/venv" ] || [ -z "$venv_dir" ] \
   || [ ! -x "$venv_dir/bin/gpuswarm-node" ] || [ "$(cat "$PREFIX/source.sha256" 2>/dev/null)" != "$src_hash" ]; then
    mkdir -p "$PREFIX"
    remove_leftovers
    build=venv-$(printf '%.12s' "$src_hash")-$$
    say "installing gpuswarm-node into $PREFIX/$build: a virtual environment (python3 -m venv), then pip"
    # Checked before it is used: the entry point runs and imports the CLI with its dependencies.
    if ! { build_venv "$PREFIX/$build" && "$PREFIX/$build/bin/gpuswarm-node" version >/dev/null; }; then
        rm -rf "$PREFIX/$build"
        say "installing gpuswarm-node failed (see above); the installed tool, if any, is unchanged"
        exit 1
    fi
    if [ -d "$PREFIX/venv" ] && [ ! -L "$PREFIX/venv" ]; then
        mv -T "$PREFIX/venv" "$PREFIX/venv-old-$$"  # a rename cannot put a link over a directory
    fi
    switch_link "$build" "$PREFIX/venv"
    printf '%s\n' "$src_hash" > "$PREFIX/source.sha256.new.$$"
    mv -f "$PREFIX/source.sha256.new.$$" "$PREFIX/source.sha256"
    remove_leftovers
fi
# Through the venv link, so the command stays valid across every switch.
[ "$(readlink "$BIN_LINK" 2>/dev/null || true)" = "$PREFIX/venv/bin/gpuswarm-node" ] \
    || switch_link "$PREFIX/venv/bin/gpuswarm-node" "$BIN_LINK"

# bash's completion of the tool's commands, step names and config keys, from the tool just linked
# (bash-completion loads it by the command's name): root's, 0644, written beside it and renamed over
# it (never half-written; a link there is replaced, not followed), and only when it changed. Not
# where the directory could be changed by someone other than root, nor a reason to stop setup.
install_completion() {
    completion_dir=${COMPLETION%/*}
    mkdir -p "$completion_dir" || return 1
    if [ -n "$(find "$completion_dir" -maxdepth 0 \( -perm /022 -o ! -user 0 \) -print)" ]; then
        say "$completion_dir is not root's alone, so the bash completion is not installed there"
        return 1
    fi
    completion_new=$COMPLETION.new.$$
    rm -f "$completion_new"
    # noclobber: the temporary name is created, never opened through something already there.
    if ! ( set -C; "$BIN_LINK" completion bash > "$completion_new" ) \
       || ! chown root:root "$completion_new" || ! chmod 0644 "$completion_new"; then
        rm -f "$completion_new"
        return 1
    fi
    if [ -f "$COMPLETION" ] && [ ! -L "$COMPLETION" ] && cmp -s "$completion_new" "$COMPLETION" \
       && [ -z "$(find "$COMPLETION" -maxdepth 0 \( ! -perm 0644 -o ! -user 0 -o ! -group 0 \) -print)" ]; then
        rm -f "$completion_new"
        return 0
    fi
    mv -f "$completion_new" "$COMPLETION"
}
install_completion || say "the bash completion was not installed (see above); the tool works without it"

if [ -n "$install_only" ]; then
    say "gpuswarm-node is installed: $BIN_LINK"
    exit 0
fi
exec "$BIN_LINK" ${command:+"$command"} "$@"

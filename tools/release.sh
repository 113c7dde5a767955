#!/bin/sh
# Build the release tarball of a commit (default HEAD) and its SHA-256:
#   dist/gpuswarm-node-X.Y.Z.tar.gz         `git archive` of the commit, setup.sh at its top (as
#                                           the quick start unpacks it and `hub bundle --tool`
#                                           wants it); X.Y.Z is its gpuswarm_node.__version__,
#                                           and gpuswarm_node/COMMIT holds its commit
#                                           (.gitattributes: export-subst)
#   dist/gpuswarm-node-X.Y.Z.tar.gz.sha256  its checksum, as `sha256sum -c` reads it
# Usage: tools/release.sh [-o DIR] [COMMIT]. Tagging the release is left to whoever publishes it.
# The archive is made from the commit alone: changes not committed are not in it (this says so).
set -eu

say() { printf 'release.sh: %s\n' "$*" >&2; }

out=dist
if [ "${1:-}" = "-o" ]; then
    [ "$#" -ge 2 ] || { say "-o needs a directory"; exit 2; }
    out=$2
    shift 2
fi
[ "$#" -le 1 ] || { say "usage: tools/release.sh [-o DIR] [COMMIT]"; exit 2; }
rev=${1:-HEAD}

cd "$(dirname "$0")/.."
commit=$(git rev-parse --verify --quiet "$rev^{commit}") || { say "$rev is not a commit of this repository"; exit 2; }
short=$(git rev-parse --short=7 "$commit")
version=$(git show "$commit:gpuswarm_node/__init__.py" | sed -n 's/^__version__ = "\([0-9][0-9.]*\)"$/\1/p')
[ -n "$version" ] || { say "no __version__ = \"X.Y.Z\" line in gpuswarm_node/__init__.py at $short"; exit 1; }
if [ "$rev" = HEAD ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    say "note: the tarball holds commit $short; the uncommitted changes of this checkout are not in it"
fi

name=gpuswarm-node-$version
mkdir -p "$out"
# Written beside, then renamed: a killed build leaves no half tarball under the release's name.
git archive --format=tar.gz -o "$out/$name.tar.gz.new.$$" "$commit"
mv -f "$out/$name.tar.gz.new.$$" "$out/$name.tar.gz"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256.new.$$" && mv -f "$name.tar.gz.sha256.new.$$" "$name.tar.gz.sha256")
say "built $version ($short): $out/$name.tar.gz"
printf '%s\n' "$out/$name.tar.gz" "$out/$name.tar.gz.sha256"

#!/usr/bin/env bash
# Re-fetches the vendored uPlot (the web console's chart library) from the npm registry and
# checks it against the sha256 sums recorded here; how a maintainer refreshes or updates it.
# Not run by the tests: the files it writes are committed.
#
# To move to another version: set VERSION, run with UPDATE=1 once to print the new sums,
# review the upstream changes, paste the sums below, run again without UPDATE.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.6.32
TARBALL_SHA256=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
# file in the package -> sha256
declare -A FILES=(
    [dist/uPlot.esm.js]=5dd9b3281aa64b461b42d9945f6adb2649d346502b12281a9ae0d46599a80eba
    [dist/uPlot.min.css]=df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04
    [LICENSE]=8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd
)
DEST=crates/ferrymq-mgmt/console/vendor/uplot

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url="https://registry.npmjs.org/uplot/-/uplot-$VERSION.tgz"
curl -sSfL --retry 3 -o "$work/uplot.tgz" "$url"

check() { # file expected-sum
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "${UPDATE:-0}" = 1 ]; then
        echo "$got  $1"
    elif [ "$got" != "$2" ]; then
        echo "sha256 mismatch for $1: got $got, want $2" >&2
        exit 1
    fi
}

check "$work/uplot.tgz" "$TARBALL_SHA256"
tar -xzf "$work/uplot.tgz" -C "$work"
for f in "${!FILES[@]}"; do
    check "$work/package/$f" "${FILES[$f]}"
done
[ "${UPDATE:-0}" = 1 ] && exit 0

mkdir -p "$DEST"
for f in "${!FILES[@]}"; do
    install -m 0644 "$work/package/$f" "$DEST/$(basename "$f")"
done
echo "$VERSION" >"$DEST/VERSION"
echo "uPlot $VERSION written to $DEST"

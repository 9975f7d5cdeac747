#!/usr/bin/env bash
# Build the Debian root filesystems the chroot runs of the bats suite use, once, and cache them
# outside the clone: debootstrap --variant=minbase plus bash, sqlite3, util-linux and procps
# (and python3-minimal, for the solver-like job of a signal test).
# A root is rebuilt only when its recipe (this file's package list and suite) changes.
#
# Usage: bash tests/build_rootfs.sh            prints one "NAME PATH_TO_ROOT" line per root
# Environment: SP_CACHE (default /var/cache/solverpilot-test), SP_DEBIAN_MIRROR (default
#   http://deb.debian.org/debian).
# Exit status: 0 when every root was built (or cached), 1 otherwise. Needs root and debootstrap.
set -euo pipefail

MIRROR=${SP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${SP_CACHE:-/var/cache/solverpilot-test}
PACKAGES=bash,sqlite3,util-linux,procps,python3-minimal
# NAME SUITE: Debian 11 carries bash 5.1 and sqlite 3.34, the oldest the debian profile targets
ROOTS=('debian-11 bullseye' 'debian-13 trixie')

build_one() { # build_one NAME SUITE: prints "NAME ROOT"
  local name=$1 suite=$2 key dest
  key=$(printf '%s %s %s\n' "$suite" "$PACKAGES" minbase | sha256sum | cut -c1-12)
  dest=$CACHE/rootfs-$name-$key
  if [[ ! -x $dest/bin/bash ]]; then
    echo "build_rootfs: debootstrap $suite (a few minutes)" >&2
    rm -rf "$dest.part"
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$dest.part" "$MIRROR" \
      >"$CACHE/rootfs-$name.log" 2>&1; then
      echo "build_rootfs: debootstrap $suite failed; see $CACHE/rootfs-$name.log" >&2
      rm -rf "$dest.part"
      return 1
    fi
    rm -rf "$dest.part/var/cache/apt/archives"/*.deb
    mv "$dest.part" "$dest"
  fi
  printf '%s %s\n' "$name" "$dest"
}

command -v debootstrap >/dev/null || { echo "build_rootfs: debootstrap is missing" >&2; exit 1; }
mkdir -p "$CACHE"
failed=0
for root in "${ROOTS[@]}"; do
  # shellcheck disable=SC2086 # NAME and SUITE, split on purpose
  build_one $root || failed=1
done
exit "$failed"

#!/usr/bin/env bash
# Build the old bash releases kept in ../shared/bash-src (or $SP_BASH_SRC) once, and cache them
# outside the clone, keyed by the tarball's sha256; a later run reuses the build.
#
# Usage: bash tests/build_bash.sh           prints one "VERSION PATH_TO_BASH" line per release
# Environment: SP_BASH_SRC (default ../shared/bash-src beside the checkout, else
#   /work/shared/bash-src),
#   SP_CACHE (default /var/cache/solverpilot-test, else ~/.cache/solverpilot-test).
# Exit status: 0 when every release built (or was cached), 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=${SP_BASH_SRC:-}
if [[ -z $SRC ]]; then # the shared folder beside the checkout, or beside the main one
  for SRC in "$ROOT/../shared/bash-src" /work/shared/bash-src; do [[ -d $SRC ]] && break; done
fi
CACHE=${SP_CACHE:-/var/cache/solverpilot-test}
mkdir -p "$CACHE" 2>/dev/null && [[ -w $CACHE ]] || CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/solverpilot-test
mkdir -p "$CACHE"

build_one() { # build_one TARBALL: prints "VERSION BASH"
  local tarball=$1 version sum dest work
  version=$(basename "$tarball" .tar.gz)
  version=${version#bash-}
  sum=$(sha256sum "$tarball" | cut -c1-16)
  dest=$CACHE/bash-$version-$sum
  if [[ ! -x $dest/bin/bash ]]; then
    work=$(mktemp -d "$CACHE/.build.XXXXXX")
    echo "build_bash: building bash $version (about a minute)" >&2
    if ! (tar -xzf "$tarball" -C "$work" && cd "$work"/*/ &&
      ./configure --prefix="$dest.part" --without-bash-malloc CFLAGS='-O2 -w -std=gnu89' &&
      make -j"$(nproc)" && make install) >"$work.log" 2>&1; then
      echo "build_bash: bash $version failed to build; see $work.log" >&2
      rm -rf "$work" "$dest.part"
      return 1
    fi
    rm -rf "$work" "$work.log" "$dest"
    mv "$dest.part" "$dest"
  fi
  printf '%s %s\n' "$version" "$dest/bin/bash"
}

shopt -s nullglob
tarballs=("$SRC"/bash-*.tar.gz)
((${#tarballs[@]})) || { echo "build_bash: no bash-*.tar.gz in $SRC" >&2; exit 1; }
status=0
for tarball in "${tarballs[@]}"; do build_one "$tarball" || status=1; done
exit "$status"

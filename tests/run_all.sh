#!/usr/bin/env bash
# Install everything the tests need, then run them all: lint (ruff, mypy), pytest, the bats
# behaviour suite once per distro profile, and once more under each old bash release
# (4.2, 4.4, 5.0, built once by tests/build_bash.sh and cached outside the clone).
#
# Usage: bash tests/run_all.sh        (from anywhere; as root, or a user with sudo)
# Installs, when missing: Debian packages (sqlite3, busybox-static, util-linux, strace,
# openssh-server, python3-venv, gcc, make) and, into .venv-test/, this package with its test
# extras. SP_STRESS_RUNS sets the stress loops' runs for the first profile (default 300; the
# other suite runs use a fifth of it).
# Exit status: 0 when every check passed, 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SP_TEST_VENV:-$ROOT/.venv-test}
cd "$ROOT"

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}

install_debian_packages() {
  local -A wanted=([sqlite3]=sqlite3 [busybox]=busybox-static [flock]=util-linux
    [setsid]=util-linux [strace]=strace [sshd]=openssh-server [ssh-keygen]=openssh-client
    [gcc]=gcc [make]=make)
  local tool missing=()
  for tool in "${!wanted[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("${wanted[$tool]}")
  done
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  ((${#missing[@]} == 0)) && return 0
  echo "run_all: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

install_python_packages() {
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$ROOT[test]"
}

# bats_suite LABEL WRAPPER USERLAND BASH RUNS: the bats suite once; adds to PASSED and FAILED.
bats_suite() {
  local label=$1 tap
  tap=$OUT/$label.tap
  echo "== bats: $label"
  SP_WRAPPER=$2 SP_USERLAND=$3 SP_BASH=$4 SP_STRESS_RUNS=$5 \
    "$VENV/bin/bats_core_pkg" --formatter tap "$ROOT/bats" | tee "$tap" || true
  PASSED=$((PASSED + $(grep -c '^ok ' "$tap" || true)))
  FAILED=$((FAILED + $(grep -c '^not ok ' "$tap" || true)))
  grep -q '^1\.\.[1-9]' "$tap" || FAILED=$((FAILED + 1)) # bats itself failed to run
}

# run_bats: the bats suite once per profile, then under each old bash with the debian profile;
# prints "bats: N passed, N failed".
run_bats() {
  local profile userland runs=${SP_STRESS_RUNS:-300} version bash rest
  rest=$(((${SP_STRESS_RUNS:-300} + 4) / 5))
  OUT=$(mktemp -d) PASSED=0 FAILED=0
  while read -r profile userland; do
    "$VENV/bin/sp-deploy" render --distro "$profile" -o "$OUT/job_wrapper.$profile.sh"
    bats_suite "profile-$profile-$userland" "$OUT/job_wrapper.$profile.sh" "$userland" '' "$runs"
    runs=$rest
  done < <("$VENV/bin/python" -c '
from solverpilot_deploy.profiles import load_profiles
for p in load_profiles():
    print(p.name, p.userland)')
  if ! bash "$ROOT/tests/build_bash.sh" >"$OUT/bashes"; then
    echo "run_all: the old bash releases did not build"
    FAILED=$((FAILED + 1))
  fi
  while read -r version bash; do
    bats_suite "bash-$version" "$OUT/job_wrapper.debian.sh" gnu "$bash" "$rest"
  done <"$OUT/bashes"
  rm -rf "$OUT"
  BATS_SUMMARY="bats: $PASSED passed, $FAILED failed"
  BATS_FAILED=$FAILED
}

main() {
  install_debian_packages
  install_python_packages
  export PATH="$VENV/bin:$PATH"
  local status=0
  echo "== ruff"
  ruff check solverpilot_deploy tests bench && ruff format --check solverpilot_deploy tests bench || status=1
  echo "== mypy"
  mypy || status=1
  echo "== pytest"
  python -m pytest -q tests || status=1
  run_bats
  ((BATS_FAILED == 0)) || status=1
  if ((status == 0)); then echo "run_all: all checks passed"; else echo "run_all: FAILED"; fi
  echo "$BATS_SUMMARY"
  return "$status"
}

main "$@"

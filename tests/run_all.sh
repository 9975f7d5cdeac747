#!/usr/bin/env bash
# Install everything the tests need, then run them all: lint (ruff, mypy), pytest, and the
# bats behaviour suite once per distro profile.
#
# Usage: bash tests/run_all.sh        (from anywhere; as root, or a user with sudo)
# Installs, when missing: Debian packages (sqlite3, busybox-static, util-linux, strace,
# openssh-server, python3-venv) and, into .venv-test/, this package with its test extras.
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
    [setsid]=util-linux [strace]=strace [sshd]=openssh-server [ssh-keygen]=openssh-client)
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

# run_bats: the bats suite once per profile; prints "bats: N passed, N failed" per profile.
run_bats() {
  local out profile userland failed=0 passed=0 tap
  out=$(mktemp -d)
  while read -r profile userland; do
    "$VENV/bin/sp-deploy" render --distro "$profile" -o "$out/job_wrapper.$profile.sh"
    echo "== bats: profile $profile ($userland userland)"
    tap=$out/$profile.tap
    SP_WRAPPER=$out/job_wrapper.$profile.sh SP_USERLAND=$userland \
      "$VENV/bin/bats_core_pkg" --formatter tap "$ROOT/bats" | tee "$tap" || true
    passed=$((passed + $(grep -c '^ok ' "$tap" || true)))
    failed=$((failed + $(grep -c '^not ok ' "$tap" || true)))
    grep -q '^1\.\.[1-9]' "$tap" || failed=$((failed + 1)) # bats itself failed to run
  done < <("$VENV/bin/python" -c '
from solverpilot_deploy.profiles import load_profiles
for p in load_profiles():
    print(p.name, p.userland)')
  rm -rf "$out"
  BATS_SUMMARY="bats: $passed passed, $failed failed"
  BATS_FAILED=$failed
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

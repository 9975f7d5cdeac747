#!/usr/bin/env bash
# Install everything the tests need, then run them all: lint (ruff, mypy; pytest runs the
# hadolint and shellcheck checks), pytest (real sshd hosts, one per login shell among them) and,
# beside it on the other core, the bats behaviour suite once per distro profile and once more
# under each old bash release (4.2, 4.4, 5.0, built once by tests/build_bash.sh); then once
# inside each Debian root filesystem (11 and 13, built once by tests/build_rootfs.sh, run
# through chroot); both caches live outside the clone (/var/cache/solverpilot-test).
#
# Usage: bash tests/run_all.sh        (from anywhere; as root, or a user with sudo)
#        bash tests/run_all.sh --quick   (contributors' inner loop, under 3 minutes: lint, the
#        quicker pytest half and the bats suite for one profile; see quick below)
# Installs, when missing: Debian packages (sqlite3, busybox-static, util-linux, strace,
# openssh-server, python3-venv, gcc, make, tcsh, fish, dash, bindfs, tmux, debootstrap, slurm-wlm,
# munge, btrfs-progs, procps, inotify-tools) and, into
# .venv-test/, this package with its test extras. SP_STRESS_RUNS sets the stress loops' runs
# for the first profile (default 300, 50 with CI set; the other suite runs use a fifth of it, a third of that
# fifth for a profile whose userland was already raced, half of it in the Debian roots).
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
    [gcc]=gcc [make]=make [tcsh]=tcsh [fish]=fish [zsh]=zsh [dash]=dash [bindfs]=bindfs
    [tmux]=tmux [debootstrap]=debootstrap [slurmctld]=slurm-wlm [slurmd]=slurm-wlm
    [sbatch]=slurm-wlm [munged]=munge [mkfs.btrfs]=btrfs-progs [pkill]=procps
    [inotifywait]=inotify-tools)
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
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${ROOT}[test]"
}

# bats_suite LABEL WRAPPER USERLAND BASH RUNS [PATH]: the bats suite once, its TAP kept in
# $OUT/LABEL.tap (bats_totals counts them all)
bats_suite() {
  local label=$1 tap
  tap=$OUT/$label.tap
  echo "== bats: $label (at ${SECONDS}s)"
  # a test that hangs fails after 10 minutes (the longest takes about 2) instead of holding CI
  SP_WRAPPER=$2 SP_USERLAND=$3 SP_BASH=$4 SP_STRESS_RUNS=$5 BATS_TEST_TIMEOUT=600 \
    "$VENV/bin/bats_core_pkg" --formatter tap "${6:-$ROOT/bats}" | tee "$tap" || true
}

# bats_totals: PASSED and FAILED over every suite's TAP in $OUT (a suite whose bats did not
# run at all counts as one failure), plus the FAILED set-up failures noted so far
bats_totals() {
  local tap
  PASSED=0
  for tap in "$OUT"/*.tap; do
    [[ -e $tap ]] || continue
    PASSED=$((PASSED + $(grep -c '^ok ' "$tap" || true)))
    FAILED=$((FAILED + $(grep -c '^not ok ' "$tap" || true)))
    grep -q '^1\.\.[1-9]' "$tap" || FAILED=$((FAILED + 1)) # bats itself failed to run
  done
}

# chroot_suite NAME ROOT WRAPPER RUNS: the bats suite with the wrapper run inside ROOT through
# chroot (its own bash, coreutils, sqlite3, flock). The suite's temporary folder is seen at
# the same path inside, as a shared mount, so the tmpfs mounts of the disk tests reach it too.
chroot_suite() {
  local name=$1 root=$2 tmp
  tmp=$(mktemp -d /tmp/sp-chroot.XXXXXX)
  if mount_at "$tmp" --bind "$tmp" && mount --make-shared "$tmp" &&
    mkdir -p "$root$tmp" && mount_at "$root$tmp" --bind "$tmp" &&
    mount_at "$root/proc" -t proc proc && mount_at "$root/dev" --bind /dev; then
    cp "$3" "$tmp/job_wrapper.debian.sh"
    # (in a root the stress loops see the wrapper's traps late: most runs end unaimed there)
    SP_ROOT=$root TMPDIR=$tmp SP_MAX_UNAIMED=0.9 bats_suite "chroot-$name" "$tmp/job_wrapper.debian.sh" gnu '' "$4"
  else
    echo "run_all: cannot set up the chroot $root"
    FAILED=$((FAILED + 1))
  fi
  unmount_all
  rmdir "$root$tmp" 2>/dev/null || true
  rm -rf "$tmp"
}

MOUNTED=() # what mount_at mounted, undone by unmount_all (also when the run is interrupted)
mount_at() { # mount_at TARGET MOUNT_ARGS...
  local target=$1
  shift
  mount "$@" "$target" && MOUNTED+=("$target")
}
unmount_all() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" || true
  done
  MOUNTED=()
}
trap unmount_all EXIT

# prebuild: the old bash releases, then the Debian roots, built (when not cached) at the lowest
# priority while lint and pytest run, so that their minutes overlap. Each build holds a lock
# ($LOCKS/bashes, $LOCKS/roots) from before it starts until it ends: prebuilt NAME waits for
# that one alone (the suites then find it cached, or build what failed, saying why).
LOCKS=''
prebuild() {
  LOCKS=$(mktemp -d)
  # taken here, before the builder starts: no suite can look before the lock is held
  exec 8>"$LOCKS/bashes" 9>"$LOCKS/roots"
  flock 8 && flock 9
  (
    nice -n 19 bash "$ROOT/tests/build_bash.sh" >/dev/null 2>&1
    flock -u 8
    nice -n 19 bash "$ROOT/tests/build_rootfs.sh" >/dev/null 2>&1
  ) &
  exec 8>&- 9>&- # (the builder holds them now)
}
prebuilt() {
  [[ -z $LOCKS ]] || flock "$LOCKS/$1" true
}

# the stress loops' runs for the first profile: 300, or 50 in CI (CI set), which must stay
# within its time budget
STRESS_DEFAULT=300
[[ -z ${CI-} ]] || STRESS_DEFAULT=50

# same_code WRAPPER: its lines but the header's "Rendered by" and the install hint (data)
same_code() { grep -v -e '^# Rendered by ' -e '^readonly INSTALL_HINT=' "$1"; }

# profile_suites: the bats suite once per profile (they need no build: CI runs them beside
# pytest, on the other core)
profile_suites() {
  local profile userland runs rest
  runs=${SP_STRESS_RUNS:-$STRESS_DEFAULT}
  rest=$(((runs + 4) / 5))
  local seen=' ' first
  while read -r profile userland; do
    "$VENV/bin/sp-deploy" render --distro "$profile" -o "$OUT/job_wrapper.$profile.sh"
    # a profile whose userland a suite has already raced here gets a third of the loops; one
    # whose wrapper is the same code as that suite's (only its header and install hint, data
    # the pytest goldens check, differ) only the basics: the rest would race the same bytes
    first=$OUT/first.$userland.sh
    if [[ $seen == *" $userland "* ]] && cmp -s <(same_code "$first") <(same_code "$OUT/job_wrapper.$profile.sh"); then
      bats_suite "profile-$profile-$userland" "$OUT/job_wrapper.$profile.sh" "$userland" '' "$rest" \
        "$ROOT/bats/basics.bats"
    else
      [[ $seen != *" $userland "* ]] || runs=$(((rest + 2) / 3))
      bats_suite "profile-$profile-$userland" "$OUT/job_wrapper.$profile.sh" "$userland" '' "$runs"
      [[ -e $first ]] || cp "$OUT/job_wrapper.$profile.sh" "$first"
    fi
    seen+="$userland " runs=$rest
  done < <("$VENV/bin/python" -c '
from solverpilot_deploy.profiles import load_profiles
for p in load_profiles():
    print(p.name, p.userland)')
}

# bash_suites: the bats suite under each old bash with the debian profile (built by prebuild,
# or here); a build that failed is a failed test of its own (CI runs this beside pytest too)
bash_suites() {
  local version bash rest
  rest=$(((${SP_STRESS_RUNS:-$STRESS_DEFAULT} + 4) / 5))
  prebuilt bashes
  if ! bash "$ROOT/tests/build_bash.sh" >"$OUT/bashes"; then
    echo "run_all: the old bash releases did not build"
    printf '1..1\nnot ok 1 the old bash releases build\n' >"$OUT/build-bash.tap"
  fi
  while read -r version bash; do
    bats_suite "bash-$version" "$OUT/job_wrapper.debian.sh" gnu "$bash" "$rest"
  done <"$OUT/bashes"
}

# chroot_suites: the bats suite inside each Debian root (built by prebuild, or here); FAILED
# counts what did not build
chroot_suites() {
  local name root rest
  rest=$(((${SP_STRESS_RUNS:-$STRESS_DEFAULT} + 4) / 5))
  prebuilt roots
  if ! bash "$ROOT/tests/build_rootfs.sh" >"$OUT/roots"; then
    echo "run_all: the Debian root filesystems did not build"
    FAILED=$((FAILED + 1))
  fi
  while read -r name root; do
    # half the stress runs: these suites prove the userland; the races are run above
    chroot_suite "$name" "$root" "$OUT/job_wrapper.debian.sh" "$(((rest + 1) / 2))"
  done <"$OUT/roots"
}

# quick: the contributors' inner loop (--quick): lint, the quicker half of pytest (SP_QUICK:
# tests/conftest.py says what it leaves out) and, beside it on the other core, the bats suite
# once for the debian profile with short stress loops. Not the CI: that is the full run.
quick() {
  local status=0 tap
  echo "== ruff, mypy (set-up done at ${SECONDS}s)"
  ruff check solverpilot_deploy tests bench && ruff format --check solverpilot_deploy tests bench || status=1
  mypy || status=1
  OUT=$(mktemp -d)
  tap=$OUT/bats.tap
  "$VENV/bin/sp-deploy" render --distro debian -o "$OUT/job_wrapper.debian.sh"
  echo "== pytest (quick) and bats (debian) at once (at ${SECONDS}s)"
  SP_WRAPPER=$OUT/job_wrapper.debian.sh SP_USERLAND=gnu SP_BASH='' SP_STRESS_RUNS=${SP_STRESS_RUNS:-10} \
    BATS_TEST_TIMEOUT=300 "$VENV/bin/bats_core_pkg" --formatter tap "$ROOT/bats" >"$tap" 2>&1 &
  local bats=$!
  SP_QUICK=1 python -m pytest -q -p no:cacheprovider tests || status=1
  wait "$bats" || true
  sed -n '/^not ok/,/^ok /p' "$tap" | grep -v '^ok ' || true
  grep -q '^1\.\.[1-9]' "$tap" && ! grep -q '^not ok' "$tap" || status=1
  echo "bats: $(grep -c '^ok ' "$tap" || true) passed, $(grep -c '^not ok ' "$tap" || true) failed"
  rm -rf "$OUT"
  if ((status == 0)); then echo "run_all --quick: all checks passed"; else echo "run_all --quick: FAILED"; fi
  echo "run_all --quick: ${SECONDS}s in all"
  return "$status"
}

main() {
  install_debian_packages
  install_python_packages
  export PATH="$VENV/bin:$PATH"
  if [[ ${1-} == --quick ]]; then
    quick
    return
  fi
  [[ $# == 0 ]] || { echo "usage: bash tests/run_all.sh [--quick]" >&2; return 2; }
  prebuild
  local status=0
  echo "== ruff (set-up done at ${SECONDS}s)"
  ruff check solverpilot_deploy tests bench && ruff format --check solverpilot_deploy tests bench || status=1
  echo "== mypy"
  mypy || status=1
  OUT=$(mktemp -d) FAILED=0
  # the bats suites per profile, then under the old bash releases, run beside pytest on the
  # other core (their lines go to a file, shown after it); the Debian roots' suites (mounts,
  # chroot) come after it
  echo "== pytest, and beside it the bats suites per profile and per old bash (at ${SECONDS}s)"
  {
    profile_suites
    bash_suites
  } >"$OUT/beside.log" 2>&1 &
  local beside=$!
  python -m pytest -q --durations=10 tests || status=1
  echo "== pytest done at ${SECONDS}s; the bats suites beside it:"
  local ended=0
  wait "$beside" || ended=$?
  cat "$OUT/beside.log"
  if ((ended != 0)); then # (set -e ended it: suites may be missing, which no TAP would show)
    echo "run_all: the bats suites beside pytest ended early (exit $ended)"
    FAILED=$((FAILED + 1))
  fi
  echo "== the bats suites beside pytest done at ${SECONDS}s"
  chroot_suites
  bats_totals
  rm -rf "$OUT" "$LOCKS"
  ((FAILED == 0)) || status=1
  if ((status == 0)); then echo "run_all: all checks passed"; else echo "run_all: FAILED"; fi
  echo "run_all: ${SECONDS}s in all"
  echo "bats: $PASSED passed, $FAILED failed"
  return "$status"
}

main "$@"

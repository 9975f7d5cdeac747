#!/usr/bin/env bats
# Per-job cost: the programs the wrapper executes for one job (see bench/overhead.py for time).

setup() {
  load test_helper/common
  common_setup
}

teardown() {
  common_teardown
}

@test "one job costs exactly stat, flock, mv, sqlite3, setsid, mv, sqlite3 besides the job and bash" {
  require_or_skip "strace is needed to count execs (apt-get install strace)" command -v strace
  run -0 wrapper job-warm true # folders exist from now on, as on a server in use
  # the job is sqlite3 -version: a program, not a busybox applet (busybox runs those in-process)
  USER=someone strace -f -qq -e trace=execve -e signal=none -o "$WORK/trace" \
    "${WRAPPER_CMD[@]}" job-count sqlite3 -version
  local execs
  execs=$(grep -E '= 0$' "$WORK/trace" | sed -E 's/^[0-9]+ +execve\("([^"]*)".*/\1/' |
    xargs -n1 basename | tr '\n' ' ')
  # run through its #! line (bash -p) the wrapper is one exec; as `SP_BASH -p wrapper`, bash
  local start
  start=$(basename "$SP_WRAPPER")
  [[ -z ${SP_BASH:-} ]] || start=bash
  assert_equal "$execs" "${SP_ROOT:+in-root chroot env }env $start stat flock mv sqlite3 setsid sqlite3 mv sqlite3 "
  assert_equal "$(db_row job-count)" 'completed|0|1'
}

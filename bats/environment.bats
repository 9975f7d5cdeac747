#!/usr/bin/env bats
# A hostile caller's environment must not change the wrapper: shell options, start-up files,
# exported functions, odd variables and locales, ignored signals, closed descriptors.

setup() {
  load test_helper/common
  common_setup
  export SOLVERPILOT_KILL_GRACE=5
}

teardown() {
  common_teardown
}

# A job that says it started, then runs until $WORK/go exists.
WAIT_JOB='touch "$0/started"; while [ ! -e "$0/go" ]; do sleep 0.05; done'

# still_running ID: the state says running, for at least half a second after the job started
still_running() {
  local i
  for i in 1 2 3 4 5; do
    [[ $(state_field "$1" status) == '"running"' ]] || return 1
    sleep 0.1
  done
}

# stop_and_end ENV_ASSIGNMENT...: under that environment a running job stays "running", TERM is
# recorded as failed/143/TERM, and a job ending on its own is recorded with its own code
stop_and_end() {
  rm -f "$WORK/started" "$WORK/go"
  start_wrapper env-stop env "$@" sh -c "$WAIT_JOB" "$WORK"
  poll_until 10 test -e "$WORK/started" || fail "job did not start under: $*"
  still_running env-stop || fail "a running job was not recorded running under: $*"
  kill -TERM "$WPID"
  wait_rc "$WPID"
  assert_equal "$RC" 143
  assert_equal "$(state_field env-stop signal)" '"TERM"'
  assert_equal "$(db_row env-stop)" 'failed|143|1'
  run -7 wrapper env-own env "$@" sh -c 'exit 7'
  assert_equal "$(state_field env-own exit_code)" 7
  assert_equal "$(db_row env-own)" 'failed|7|1'
  rm -rf "$SERVER"
}

# with_env ENV_ASSIGNMENT...: WRAPPER_CMD with those variables set for the wrapper itself
with_env() {
  WRAPPER_CMD=("${IN_ROOT[@]}" env --default-signal PATH="$WRAPPER_PATH" "$@"
    ${SP_BASH:+"$SP_BASH" -p} "$SP_WRAPPER")
}

@test "an exported SHELLOPTS (monitor, errexit, xtrace, nounset, pipefail) changes nothing" {
  local opts
  for opts in braceexpand:hashall:interactive-comments:monitor errexit:xtrace:nounset:pipefail \
    monitor:errexit:noclobber:allexport:errtrace:functrace; do
    with_env SHELLOPTS="$opts"
    stop_and_end
    run -0 --separate-stderr wrapper env-quiet true
    assert_equal "$stderr" '' # no xtrace, no job-control chatter
  done
}

@test "BASH_ENV is ignored: a start-up file that sets -e, traps, prints or exits changes nothing" {
  local script=$WORK/bash_env.sh
  printf '%s\n' 'set -e' 'trap "echo EXIT-TRAP >&2" EXIT' 'trap "" TERM INT' 'echo BASH_ENV-ran >&2' \
    'alias wait=true' 'shopt -s expand_aliases nullglob failglob nocasematch' >"$script"
  with_env BASH_ENV="$script" ENV="$script"
  stop_and_end
  run -0 --separate-stderr wrapper env-quiet true
  assert_equal "$stderr" ''
  printf 'exit 0\n' >"$script"
  run -3 wrapper env-exit sh -c 'exit 3'
  assert_equal "$(db_row env-exit)" 'failed|3|1'
}

@test "BASH_ENV still reaches a bash job, as the caller set it" {
  printf 'echo from-bash-env\n' >"$WORK/bash_env.sh"
  with_env BASH_ENV="$WORK/bash_env.sh"
  run -0 --separate-stderr wrapper env-job bash -c 'echo job'
  assert_output $'from-bash-env\njob'
}

@test "exported functions named like the commands and builtins the wrapper uses change nothing" {
  local name exports=()
  for name in mv sqlite3 flock setsid sleep kill wait trap printf read exit rm id hash mkdir \
    builtin command unset set local; do
    exports+=("BASH_FUNC_$name%%=() { echo hijacked-$name >&2; return 0; }")
  done
  with_env "${exports[@]}"
  stop_and_end
  run -0 --separate-stderr wrapper env-quiet true
  assert_equal "$stderr" ''
}

@test "POSIXLY_CORRECT, BASH_COMPAT, IFS, SECONDS, TMOUT, CDPATH and GLOBIGNORE change nothing" {
  local assignment
  for assignment in POSIXLY_CORRECT=1 BASH_COMPAT=42 BASH_COMPAT=31 IFS=/ SECONDS=99999999 \
    TMOUT=1 CDPATH=/ GLOBIGNORE='*' BASH_XTRACEFD=2 PS4='$(echo injected >&2)'; do
    with_env "$assignment"
    stop_and_end
    run -0 --separate-stderr wrapper env-quiet true
    assert_equal "$stderr" '' "stderr under $assignment"
  done
}

@test "odd HOME, USER, TZ, HOSTNAME and locales keep the record valid and exact" {
  local assignment
  for assignment in "HOME=/nonexistent/-x y" 'USER=' $'USER=a\nb' "USER=o'b" TZ=garbage \
    TZ=:/nonexistent TZ=UTC-14 LANG=tr_TR.UTF-8 LC_ALL=C.UTF-8 LC_ALL=POSIX HOSTNAME=not-this-host; do
    with_env "$assignment"
    stop_and_end
  done
  with_env HOSTNAME=login-node
  run -0 wrapper env-host true
  assert_equal "$(state_field env-host host)" "\"$(cat /proc/sys/kernel/hostname)\""
}

@test "signals the caller ignores stay ignored: the wrapper cannot be stopped by them, the job ends on its own" {
  WRAPPER_CMD=("${IN_ROOT[@]}" env --ignore-signal=TERM,HUP --default-signal=INT,QUIT
    PATH="$WRAPPER_PATH" ${SP_BASH:+"$SP_BASH" -p} "$SP_WRAPPER")
  start_wrapper env-ign sh -c "$WAIT_JOB" "$WORK"
  poll_until 10 test -e "$WORK/started" || fail "job did not start"
  kill -TERM "$WPID"
  kill -HUP "$WPID"
  still_running env-ign || fail "an ignored signal stopped the job"
  touch "$WORK/go"
  wait_rc "$WPID"
  assert_equal "$RC" 0
  assert_equal "$(db_row env-ign)" 'completed|0|1'
}

@test "closed stdin, stdout or stderr: the job runs with it closed and is recorded" {
  # not through bats' run, which opens its own pipes on the lowest free descriptors
  local rc
  "${WRAPPER_CMD[@]}" env-in0 sh -c 'if read -r x; then exit 9; fi; exit 0' <&- 2>"$WORK/err0" && rc=0 || rc=$?
  assert_equal "$rc" 0
  "${WRAPPER_CMD[@]}" env-out1 sh -c 'echo x 2>/dev/null && exit 9; exit 0' >&- 2>"$WORK/err1" && rc=0 || rc=$?
  assert_equal "$rc" 0
  "${WRAPPER_CMD[@]}" env-err2 sh -c 'exit 5' 2>&- && rc=0 || rc=$?
  assert_equal "$rc" 5
  "${WRAPPER_CMD[@]}" env-all sh -c 'exit 6' <&- >&- 2>&- && rc=0 || rc=$?
  assert_equal "$rc" 6
  assert_equal "$(cat "$WORK/err0" "$WORK/err1")" ''
  assert_equal "$(db_row env-in0)" 'completed|0|1'
  assert_equal "$(db_row env-out1)" 'completed|0|1'
  assert_equal "$(db_row env-err2)" 'failed|5|1'
  assert_equal "$(db_row env-all)" 'failed|6|1'
}

@test "no descriptor of the wrapper reaches the job but the lock (200)" {
  local list='for f in /proc/$$/fd/*; do printf "%s " "${f##*/}"; done' direct wrapped
  direct=$(sh -c "$list" 3>&-)
  wrapped=$("${WRAPPER_CMD[@]}" env-fds sh -c "$list" 3>&-)
  assert_equal "$wrapped" "$(printf '%s\n' $direct 200 | sort | tr '\n' ' ')"
}

@test "run as 'bash job_wrapper.sh' with options and a BASH_ENV: restarts clean in privileged mode" {
  printf 'set -e\n' >"$WORK/bash_env.sh"
  WRAPPER_CMD=("${IN_ROOT[@]}" env --default-signal PATH="$WRAPPER_PATH"
    BASH_ENV="$WORK/bash_env.sh" "${SP_BASH:-bash}" -eu -o pipefail -o errtrace "$SP_WRAPPER")
  stop_and_end
  run -0 --separate-stderr wrapper env-quiet true
  assert_equal "$stderr" ''
}

@test "run by sh instead of bash: a clear error, exit 64, nothing written" {
  run -64 --separate-stderr "${IN_ROOT[@]}" sh "$SP_WRAPPER" env-sh true
  assert_equal "$stderr" 'job_wrapper: run it with bash'
  [[ ! -e $SERVER ]]
}

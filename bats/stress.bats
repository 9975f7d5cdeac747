#!/usr/bin/env bats
# The promise under races: a signal at a random moment of every phase (start, running-state
# write, job end, final write), many times; every run must end with exactly one final record.
# SP_STRESS_RUNS sets the number of runs per test (default 300).

setup() {
  load test_helper/common
  common_setup
  RUNS=${SP_STRESS_RUNS:-300}
  export SOLVERPILOT_KILL_GRACE=5
  # a busy machine widens every race window: one spinning process per core
  local i
  for ((i = 0; i < $(nproc); i++)); do
    sh -c 'while :; do :; done' 3>&- &
    STARTED+=("$!")
  done
}

teardown() {
  common_teardown
}

STOP_SIGNALS=(HUP INT QUIT TERM USR1 USR2 ALRM)

# random_delay MAX_MS: sleep a random 0..MAX_MS milliseconds, counted from the wrapper's start.
# In a chroot, the sh, chroot and env that start it cost more (measured here: 5 ms median, and
# 9 ms median, 13 ms at the 90th percentile, with two more spinning processes): 15 ms more
# keeps the signals aimed at the start from landing before it.
random_delay() {
  local ms=$((${SP_ROOT:+15} + RANDOM % ($1 + 1)))
  sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
}

# traps_set PID: wait until PID runs the wrapper (its command line names it: the fork of this
# test's shell, before it execs, shows this shell's own caught signals, USR1 among them) and
# catches USR1 (/proc/PID/status, SigCgt bit 10), which bash does only once the wrapper has set
# its traps; or, false, until PID has ended: a run the loop could not aim ("unaimed": under a
# heavy load, the first read of /proc/PID once took as long as the whole job). Polled with
# builtins only.
traps_set() { # traps_set PID [exec]: with "exec", only until PID runs the wrapper
  local k v a zombie mine
  while :; do
    mine='' zombie='' v=0
    { while IFS= read -r -d '' a; do [[ $a != "$SP_WRAPPER" ]] || mine=1; done <"/proc/$1/cmdline"; } 2>/dev/null ||
      return 1
    { while read -r k v; do
      case $k in State:) [[ $v != Z* ]] || zombie=1 ;; SigCgt:) break ;; esac
    done <"/proc/$1/status"; } 2>/dev/null || return 1
    [[ -z $zombie && $v =~ ^[0-9a-f]+$ ]] || return 1
    [[ -n $mine ]] && { [[ ${2-} == exec ]] || (((16#$v >> 9) & 1)); } && return 0
  done
}

# signal_run ID SIGNAL MAX_MS OWN SCRIPT: one run of `sh -c SCRIPT` with SIGNAL sent after a
# random delay, counted from the moment the wrapper has set its traps (from the exec that names
# it when FROM_FORK is set: the signals then aim at its start too, which no trap covers in its first
# milliseconds, a documented limit); appends "ID WRAPPER_EXIT OWN SIGNAL" to $WORK/runs. The
# job first creates $WORK/ran/ID, so that a run without a record can be told from one that
# never started.
signal_run() {
  local id=$1 sig=$2 max=$3 own=$4 pid rc=0
  mkdir -p "$WORK/ran"
  "${WRAPPER_CMD[@]}" "$id" sh -c ": >\"\$0\"; $5" "$WORK/ran/$id" </dev/null >/dev/null \
    2>>"$WORK/stderr" 3>&- &
  pid=$!
  if [[ -n ${FROM_FORK-} ]]; then traps_set "$pid" exec; else traps_set "$pid"; fi || sig=unaimed
  if [[ $sig != unaimed ]]; then
    random_delay "$max"
    kill -s "$sig" "$pid" 2>/dev/null || true
  fi
  wait "$pid" || rc=$?
  echo "$id $rc $own $sig" >>"$WORK/runs"
}

check_runs() { # check_runs [MAX_UNSTARTED_SHARE [MAX_UNAIMED_SHARE]]
  run -0 python3 "$BATS_TEST_DIRNAME/test_helper/check_records.py" "$SERVER" "$WORK/runs" \
    "$WORK/ran" "${1:-0.25}" "${2:-0.5}"
  printf '# %s\n' "${lines[@]}" >&3
  [[ $output == *", 0 bad" ]] || fail "some runs lost or falsified their record"
}

@test "TERM just as the job ends on its own: exactly one final record, own end or the stop, in every run" {
  local i
  for ((i = 0; i < RUNS; i++)); do
    signal_run "end-$i" TERM 150 3 'sleep 0.1; exit 3' # (long enough to be aimed at under load)
  done
  check_runs
  assert_equal "$(grep -c . "$WORK/runs")" "$RUNS"
}

@test "every stop signal at a random moment of a slow start, job end and final write: every record sound" {
  # a userland whose mv and sqlite3 take a random 0-30 ms widens the state and DB writes
  local slow=$BATS_TEST_TMPDIR/slow tool i sig
  mkdir -p "$slow"
  for tool in mv sqlite3; do
    printf '#!/bin/sh\nsleep "0.0$(($$ %% 30))"\nexec %s "$@"\n' "$(PATH=$WRAPPER_PATH command -v "$tool")" \
      >"$slow/$tool"
    chmod +x "$slow/$tool"
  done
  use_path "$slow:$WRAPPER_PATH"
  for ((i = 0; i < RUNS; i++)); do
    sig=${STOP_SIGNALS[RANDOM % ${#STOP_SIGNALS[@]}]}
    case $((i % 3)) in
      0) signal_run "slow-$i" "$sig" 150 0 : ;;
      1) signal_run "slow-$i" "$sig" 150 5 'sleep 0.03; exit 5' ;;
      2) signal_run "slow-$i" "$sig" 150 137 'sleep 0.02; kill -KILL $$' ;;
    esac
  done
  check_runs
}

@test "signals at random moments while eight wrappers at once contend for one DB" {
  local i j sig batch
  for ((i = 0; i < RUNS; i += 8)); do
    batch=()
    for ((j = i; j < i + 8 && j < RUNS; j++)); do
      sig=${STOP_SIGNALS[RANDOM % ${#STOP_SIGNALS[@]}]}
      signal_run "busy-$j" "$sig" 200 4 'sleep 0.1$(($$ % 5)); exit 4' & # (aimed at under load)
      batch+=("$!")
    done
    wait "${batch[@]}"
  done
  # eight starting at once on a busy machine: more are signalled before they begin, and more
  # end before the loop sees their traps (fresh10: 8 of 15 under bash 4.4; fresh25, with jobs of
  # 0-40 ms: 9 of 10; with 100-140 ms, measured: 6 and 9 of 80 idle, 17 and 22 of 80 under three
  # more CPU hogs, at most 4 of 10 under bash 4.4 so loaded; a third aimed is still asked for)
  check_runs 0.4 0.67
  # no write failed and none was reported, and bash printed nothing of its own ("...sh: line
  # N: PID Killed ..."); the jobs' own shells may print "Quit" and the like
  run -1 grep -E -e '^(job_wrapper:|WARNING:)' -e '\.sh: (line [0-9]+: )?' "$WORK/stderr"
}

@test "a stop in the first milliseconds after the traps are set is recorded, never lost" {
  # bash 5.2 once lost one that it ran while expanding a $( ) (the server folder's stat, then
  # done with the traps set): the job ran to its end. The job ends 0 only long after the signal;
  # 7, an end it never has, leaves the stop as the only sound record.
  export SOLVERPILOT_KILL_GRACE=1 # under bash 4.2 the job ignores INT and QUIT: killed at the grace
  local i sig
  for ((i = 0; i < RUNS; i++)); do
    sig=${STOP_SIGNALS[RANDOM % ${#STOP_SIGNALS[@]}]}
    signal_run "early-$i" "$sig" 3 7 'sleep 2'
  done
  check_runs 0
}

@test "a burst of stop signals to the whole group just after the traps: each run recorded as the stop" {
  # a few Ctrl-C's or hangups kill the helpers (flock) again and again: never a false "already
  # running" or "cannot create", and nothing of bash's own on stderr
  local i n pid rc sent runs=$(((RUNS + 1) / 2))
  mkdir -p "$WORK/ran"
  for ((i = 0; i < runs; i++)); do
    setsid "${WRAPPER_CMD[@]}" "burst-$i" sh -c ': >"$0"; exec sleep 5' "$WORK/ran/burst-$i" \
      </dev/null >/dev/null 2>>"$WORK/stderr" 3>&- &
    pid=$!
    sent=TERM
    traps_set "$pid" || sent=unaimed
    for n in 1 2 3 4 5; do
      [[ $sent == TERM ]] || break
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || : # gone: no matter
      read -r -t "0.00$n" _ </dev/zero || : # n ms without a fork: /dev/zero sends no newline
    done
    rc=0
    wait "$pid" || rc=$?
    echo "burst-$i $rc 7 $sent" >>"$WORK/runs"
  done
  # a run that did not end as the stop (143): its exit status and the wrappers' words, so that
  # a CI log says why (one run in 75 under busybox once ended with no record, not reproduced)
  awk '$2 != 143 { print "# run " $1 " exited " $2 }' "$WORK/runs" >&3
  [[ ! -s $WORK/stderr ]] || sed -n '1,20s/^/# stderr: /p' "$WORK/stderr" >&3
  check_runs 0
  run -1 grep -E -e '^(job_wrapper:|WARNING:)' -e '\.sh: (line [0-9]+: )?' -e 'Terminated' "$WORK/stderr"
}

@test "a stop signal at a random moment of the start: the job is stopped within the grace, never runs to its end" {
  export SOLVERPILOT_KILL_GRACE=1
  local i sig t0 ms slow=0 runs=$(((RUNS + 2) / 3)) FROM_FORK=1
  ((runs >= 10)) || runs=10 # a share of unstarted runs means nothing in fewer
  for ((i = 0; i < runs; i++)); do
    # not QUIT or INT: in bash's first moment it drops them (a documented limit)
    sig=$(printf '%s\n' HUP TERM USR1 USR2 ALRM | shuf -n 1)
    t0=$(date +%s%N)
    signal_run "fork-$i" "$sig" 60 0 'exec sleep 6'
    ms=$((($(date +%s%N) - t0) / 1000000))
    # (an unaimed run sent nothing: its job ran its 6 s)
    [[ $(tail -n 1 "$WORK/runs") != *' unaimed' ]] || continue
    ((ms < 4000)) || { slow=$((slow + 1)); echo "# run $i ($sig) took $ms ms" >&3; }
  done
  check_runs 0.75 # aimed at the start: many runs are signalled before they begin
  assert_equal "$slow" 0
}

@test "a stream of signals from the very start: a recorded stop, or nothing written and nothing run" {
  export SOLVERPILOT_KILL_GRACE=1
  local i pid rc deadline runs=$(((RUNS + 4) / 5)) crashed=0
  ((runs >= 10)) || runs=10 # a share of unstarted runs means nothing in fewer
  mkdir -p "$WORK/ran"
  for ((i = 0; i < runs; i++)); do
    "${WRAPPER_CMD[@]}" "flood-$i" sh -c ': >"$0"; exec sleep 6' "$WORK/ran/flood-$i" \
      </dev/null >/dev/null 2>>"$WORK/stderr" 3>&- &
    pid=$!
    random_delay 60 # its first moments, stat included, are unrecorded: aim past them too
    # until it has ended: kill alone succeeds on a zombie this shell has not reaped yet, which
    # once kept this loop going for hours
    deadline=$((SECONDS + 30))
    while alive "$pid" && kill -HUP "$pid" 2>/dev/null && ((SECONDS < deadline)); do :; done
    rc=0
    wait "$pid" || rc=$?
    if ((rc == 139)) && [[ ! -e $SERVER/jobs/flood-$i.status && ! -e $WORK/ran/flood-$i ]]; then
      crashed=$((crashed + 1)) # bash itself crashed (SIGSEGV) under the flood before it began
      continue
    fi
    echo "flood-$i $rc 0 HUP" >>"$WORK/runs"
  done
  check_runs 0.75
  printf '# bash crashed in %s of %s runs before it began\n' "$crashed" "$runs" >&3
  ((crashed <= 1 + runs / 50)) || fail "bash crashed in $crashed of $runs runs"
  run -1 grep -E -e '\.sh: (line [0-9]+: )?' "$WORK/stderr"
}

@test "signal bursts while a stop's writes wait for the database: the wrapper always exits, the stop stands" {
  # bash 4.4 and 4.2 keep the SIGINT handler of a `wait` that a trap cut short; an INT between
  # two of the stop's commands then re-raised itself forever (3 runs in 10 here before the fix)
  local i k release runs=$(((RUNS + 2) / 3)) job
  for ((i = 0; i < runs; i++)); do
    # half the jobs die of the TERM at once, half hold out a while (the stop then polls them)
    job='exec sleep 100'
    ((i % 2)) || job='trap "" HUP INT QUIT TERM USR1 USR2 ALRM; sleep 0.4'
    start_wrapper "burst-$i" sh -c "$job"
    poll_until 10 file_has "$SERVER/jobs/burst-$i.status" running || fail "run $i did not start"
    hold_db_lock
    kill -TERM "$WPID"
    poll_until 10 file_has "$SERVER/jobs/burst-$i.status" failed || fail "run $i: no stop record"
    release=$((RANDOM % 8))
    for ((k = 0; k < 8; k++)); do
      ((k != release)) || release_db_lock
      kill -INT "$WPID" 2>/dev/null || true # INT is the signal bash handles apart
      random_delay 30
      kill -s "${STOP_SIGNALS[RANDOM % ${#STOP_SIGNALS[@]}]}" "$WPID" 2>/dev/null || true
      random_delay 30
    done
    poll_until 20 not_alive "$WPID" || fail "run $i: the wrapper did not exit"
    wait_rc "$WPID"
    assert_equal "$RC" 143
    assert_equal "$(db_row "burst-$i")" 'failed|143|1'
    assert_equal "$(state_field "burst-$i" signal)" '"TERM"'
    assert_equal "$(cat "$WORK/burst-$i.err")" ''
  done
}

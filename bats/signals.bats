#!/usr/bin/env bats
# Signals to the wrapper and to the job; SIGKILL of the wrapper.

setup() {
  load test_helper/common
  common_setup
}

teardown() {
  common_teardown
}

# A job whose child records its pid and starts a grandchild, then both wait forever.
TREE_JOB='echo $$ >"$0/child.pid"; sleep 1000 & echo $! >"$0/grandchild.pid"; wait'

start_tree_job() { # start_tree_job ID
  start_wrapper "$1" sh -c "$TREE_JOB" "$WORK"
  poll_until 10 file_has "$WORK/grandchild.pid" . || fail "job did not start"
  CHILD=$(cat "$WORK/child.pid") GRANDCHILD=$(cat "$WORK/grandchild.pid")
}

# signal_stops_tree SIGNAL CODE: the signal stops child and grandchild at once and is recorded.
signal_stops_tree() {
  local sig=$1 code=$2 id=job-$1 start
  # the documented bash 4.2 limit: the job starts with INT ignored; the grace's KILL stops it
  if bash_is_42 && [[ $sig == INT ]]; then export SOLVERPILOT_KILL_GRACE=1; fi
  start_tree_job "$id"
  start=$SECONDS
  kill "-$sig" "$WPID"
  wait_rc "$WPID"
  assert_equal "$RC" "$code"
  ((SECONDS - start < 5)) ||
    fail "took $((SECONDS - start)) s to stop; the grace is 10 s; state: $(cat "$SERVER/jobs/$id.status")"
  poll_until 10 not_alive "$CHILD" || fail "child survived"
  poll_until 10 not_alive "$GRANDCHILD" || fail "grandchild survived"
  assert_equal "$(state_field "$id" status)" '"failed"'
  assert_equal "$(state_field "$id" exit_code)" "$code"
  assert_equal "$(state_field "$id" signal)" "\"$sig\""
  assert_equal "$(db_row "$id")" "failed|$code|1"
  assert_equal "$(cat "$WORK/$id.out")" ''
}

@test "TERM stops the job's whole tree at once: failed, 143, TERM" {
  signal_stops_tree TERM 143
}

@test "INT stops the job's whole tree at once: failed, 130, INT" {
  signal_stops_tree INT 130
}

@test "HUP stops the job's whole tree at once: failed, 129, HUP" {
  signal_stops_tree HUP 129
}

@test "a job that ignores TERM is killed after SOLVERPILOT_KILL_GRACE" {
  export SOLVERPILOT_KILL_GRACE=2
  start_wrapper job-stubborn sh -c 'trap "" TERM; echo $$ >"$0/child.pid"; while :; do sleep 0.05; done' "$WORK"
  poll_until 10 file_has "$WORK/child.pid" . || fail "job did not start"
  CHILD=$(cat "$WORK/child.pid")
  local start=$SECONDS
  kill -TERM "$WPID"
  poll_until 1 not_alive "$CHILD" && fail "the job died before the grace ran out"
  wait_rc "$WPID"
  assert_equal "$RC" 143
  local took=$((SECONDS - start))
  ((took >= 1 && took <= 5)) || fail "stop took $took s with a 2 s grace"
  poll_until 10 not_alive "$CHILD" || fail "stubborn job survived"
  assert_equal "$(state_field job-stubborn signal)" '"TERM"'
  assert_equal "$(db_row job-stubborn)" 'failed|143|1'
}

@test "a job killed by KILL (as the OOM killer would) is failed, 137, KILL" {
  run -137 --separate-stderr wrapper job-oom sh -c 'kill -KILL $$'
  assert_equal "$stderr" ''
  assert_equal "$(state_field job-oom status)" '"failed"'
  assert_equal "$(state_field job-oom signal)" '"KILL"'
  assert_equal "$(db_row job-oom)" 'failed|137|1'
}

@test "KILL of the wrapper leaves running state with pid and host, and the lock held while the job lives" {
  start_tree_job job-lost
  kill -KILL "$WPID"
  wait "$WPID" || true
  assert_equal "$(state_field job-lost status)" '"running"'
  assert_equal "$(state_field job-lost pid)" "$WPID"
  assert_equal "$(state_field job-lost host)" "\"$(hostname)\""
  run -1 flock -n "$SERVER/locks/job-lost.lock" true
  run -75 wrapper job-lost true
  kill -KILL "$CHILD"
  poll_until 10 not_alive "$CHILD"
  run -1 flock -n "$SERVER/locks/job-lost.lock" true # the grandchild still holds it
  kill -KILL "$GRANDCHILD"
  poll_until 10 not_alive "$GRANDCHILD"
  poll_until 10 flock -n "$SERVER/locks/job-lost.lock" true || fail "lock still held"
}

@test "a second signal during the final write does not abort it" {
  start_tree_job job-second
  hold_db_lock
  kill -TERM "$WPID"
  poll_until 10 file_has "$SERVER/jobs/job-second.status" failed || fail "no final state"
  kill -TERM "$WPID"
  kill -INT "$WPID"
  kill -HUP "$WPID"
  alive "$WPID" || fail "the wrapper died of the second signal"
  release_db_lock
  # bounded: under bash 4.4 a second INT here left the wrapper re-raising INT to itself at
  # 100% CPU (bash's `wait` SIGINT handler kept after a trap); fail, never hang the suite
  poll_until 30 not_alive "$WPID" || fail "the wrapper did not exit after its final write"
  wait_rc "$WPID"
  assert_equal "$RC" 143
  assert_equal "$(cat "$WORK/job-second.err")" ''
  assert_equal "$(db_row job-second)" 'failed|143|1'
  assert_equal "$(state_field job-second signal)" '"TERM"'
}

@test "a signal during the final write of a finished job is ignored: the job's own status stands" {
  start_wrapper job-done sh -c 'while [ ! -e "$0/go" ]; do sleep 0.05; done' "$WORK"
  poll_until 10 file_has "$SERVER/jobs/job-done.status" running || fail "job did not start"
  hold_db_lock
  touch "$WORK/go"
  poll_until 10 file_has "$SERVER/jobs/job-done.status" completed || fail "no final state"
  kill -TERM "$WPID"
  kill -HUP "$WPID"
  alive "$WPID" || fail "the wrapper died of a signal during its final write"
  release_db_lock
  wait_rc "$WPID"
  assert_equal "$RC" 0
  assert_equal "$(db_row job-done)" 'completed|0|1'
  assert_equal "$(state_field job-done signal)" null
}

# A job that records which stop signal reached it, then exits 0.
NAMING_JOB='for s in HUP INT QUIT TERM USR1 USR2 ALRM; do trap "echo $s >\"\$0/got\"; exit 0" "$s"; done
touch "$0/started"; while :; do sleep 0.05; done'

@test "each stop signal reaches the job as itself and is recorded by its name" {
  local sig code
  for sig in HUP INT QUIT TERM USR1 USR2 ALRM; do
    if bash_is_42 && [[ $sig == INT || $sig == QUIT ]]; then
      continue # bash 4.2 starts background jobs with INT and QUIT ignored: a documented limit
    fi
    rm -f "$WORK/started" "$WORK/got"
    start_wrapper "job-$sig" sh -c "$NAMING_JOB" "$WORK"
    poll_until 10 test -e "$WORK/started" || fail "job did not start"
    kill -s "$sig" "$WPID"
    wait_rc "$WPID"
    code=$((128 + $(kill -l "$sig")))
    assert_equal "$RC" "$code"
    assert_equal "$(cat "$WORK/got")" "$sig"
    assert_equal "$(state_field "job-$sig" signal)" "\"$sig\""
    assert_equal "$(db_row "job-$sig")" "failed|$code|1"
  done
}

@test "INT lets a solver save its best solution: the job gets INT, ends its clean-up, failed/130/INT" {
  export SOLVERPILOT_KILL_GRACE=4
  local py
  if [[ -n ${SP_ROOT:-} ]]; then # the root's own python3
    py=/usr/bin/python3
    [[ -x $SP_ROOT$py ]] || fail "python3 is needed in $SP_ROOT"
  else
    py=$(command -v python3) || fail "python3 is needed"
  fi
  start_wrapper job-solver "$py" -c '
import sys, time
work = sys.argv[1]
open(work + "/started", "w").close()
try:
    time.sleep(1000)
except KeyboardInterrupt:
    time.sleep(0.5)  # writing the best solution found
    with open(work + "/saved", "w") as saved:
        saved.write("best")
' "$WORK"
  poll_until 10 test -e "$WORK/started" || fail "job did not start"
  local start=$SECONDS
  kill -INT "$WPID"
  wait_rc "$WPID"
  assert_equal "$RC" 130
  assert_equal "$(state_field job-solver signal)" '"INT"'
  assert_equal "$(db_row job-solver)" 'failed|130|1'
  if bash_is_42; then
    # the documented bash 4.2 limit: the job started with INT ignored, so it is killed at the end
    # of the grace without saving
    [[ ! -e $WORK/saved ]] || fail "bash 4.2 delivered INT to the job?"
    ((SECONDS - start >= 3)) || fail "killed before the grace ran out"
  else
    assert_equal "$(cat "$WORK/saved")" best
    ((SECONDS - start < 3)) || fail "took $((SECONDS - start)) s"
  fi
}

@test "the job starts with its caller's signal dispositions" {
  local caller expected got
  for caller in "env --default-signal" "env --default-signal=INT,QUIT --ignore-signal=HUP,TERM,USR1" \
    "env --ignore-signal=INT,QUIT,PIPE"; do
    expected=$($caller grep -E '^Sig(Ign|Blk)' /proc/self/status | tr '\n' ' ')
    got=$("${IN_ROOT[@]}" $caller PATH="$WRAPPER_PATH" ${SP_BASH:+"$SP_BASH" -p} "$SP_WRAPPER" job-disp \
      grep -E '^Sig(Ign|Blk)' /proc/self/status | tr '\n' ' ')
    if bash_is_42 && [[ $caller == "env --default-signal"* ]]; then
      # the documented bash 4.2 limit: INT and QUIT (mask 0x6) start ignored
      local ign ign42
      [[ $expected =~ SigIgn:[[:space:]]*([0-9a-f]+) ]] || fail "no SigIgn in: $expected"
      ign=${BASH_REMATCH[1]}
      printf -v ign42 '%016x' $((0x$ign | 0x6))
      expected=${expected/SigIgn:$'\t'$ign/SigIgn:$'\t'$ign42}
    fi
    assert_equal "$got" "$expected" "caller: $caller"
  done
}

@test "a job whose children ignore only the forwarded signal stops within about a second once its main process exits" {
  export SOLVERPILOT_KILL_GRACE=20
  # the documented bash 4.2 limit: the job's main process ignores INT too; the grace ends it
  ! bash_is_42 || export SOLVERPILOT_KILL_GRACE=1
  start_wrapper job-kids2 sh -c '(trap "" INT; exec sleep 1000) & echo $! >"$0/grandchild.pid"
    echo $$ >"$0/child.pid"; wait' "$WORK"
  poll_until 10 file_has "$WORK/grandchild.pid" . || fail "job did not start"
  GRANDCHILD=$(cat "$WORK/grandchild.pid")
  local t0
  t0=$(date +%s%N)
  kill -INT "$WPID"
  wait_rc "$WPID"
  local ms=$((($(date +%s%N) - t0) / 1000000))
  assert_equal "$RC" 130
  ((ms < 2500)) || fail "took $ms ms to stop a job whose main process died at once"
  poll_until 2 not_alive "$GRANDCHILD" || fail "the child survived the stop"
  assert_equal "$(state_field job-kids2 signal)" '"INT"'
}

@test "the grace counts from the first signal, however many follow" {
  export SOLVERPILOT_KILL_GRACE=3
  start_wrapper job-deaf sh -c 'trap "" INT TERM HUP; echo $$ >"$0/child.pid"; while :; do sleep 0.05; done' "$WORK"
  poll_until 10 file_has "$WORK/child.pid" . || fail "job did not start"
  local t0
  t0=$(date +%s%N)
  kill -INT "$WPID"
  sleep 1.5
  kill -TERM "$WPID"
  sleep 0.5
  kill -HUP "$WPID"
  wait_rc "$WPID"
  local ms=$((($(date +%s%N) - t0) / 1000000))
  assert_equal "$RC" 130
  ((ms >= 2900 && ms < 4800)) || fail "KILL came $ms ms after the first signal; the grace is 3 s"
  assert_equal "$(state_field job-deaf signal)" '"INT"'
  assert_equal "$(db_row job-deaf)" 'failed|130|1'
}

@test "the stop is recorded at once, while the job still cleans up; a KILL of the wrapper then keeps it" {
  export SOLVERPILOT_KILL_GRACE=30
  start_wrapper job-slowstop sh -c 'trap "sleep 1000; exit 0" TERM; echo $$ >"$0/child.pid"; while :; do sleep 0.05; done' "$WORK"
  poll_until 10 file_has "$WORK/child.pid" . || fail "job did not start"
  CHILD=$(cat "$WORK/child.pid")
  kill -TERM "$WPID"
  poll_until 5 file_has "$SERVER/jobs/job-slowstop.status" '"failed"' || fail "the stop was not recorded at once"
  alive "$CHILD" || fail "the job was already gone: nothing was shown"
  assert_equal "$(state_field job-slowstop signal)" '"TERM"'
  assert_equal "$(db_row job-slowstop)" 'failed|143|1'
  kill -KILL "$WPID"
  wait "$WPID" || true
  kill -KILL -- "-$CHILD"
  assert_equal "$(state_field job-slowstop status)" '"failed"'
  assert_equal "$(state_field job-slowstop exit_code)" 143
}

@test "a stop while the running state waits on a locked DB is recorded as that stop; the job never runs" {
  hold_db_lock
  start_wrapper job-early sh -c 'touch "$0/ran"' "$WORK"
  poll_until 10 file_has "$SERVER/jobs/job-early.status" running || fail "no running state"
  kill -TERM "$WPID"
  release_db_lock
  wait_rc "$WPID"
  assert_equal "$RC" 143
  assert_equal "$(state_field job-early signal)" '"TERM"'
  assert_equal "$(db_row job-early)" 'failed|143|1'
  assert_equal "$(cat "$WORK/job-early.err")" ''
  [[ ! -e $WORK/ran ]] || fail "the job ran after the stop"
}

@test "a stop signal to the whole group while a helper runs before the job: recorded, and nothing of bash's own" {
  # a terminal's hangup or Ctrl-\ reaches every process of the group: here flock or mv, each
  # made slow by a shim that first marks that it runs; they die of it, and used to give a false
  # "already running" (75) and bash's own "Terminated" line
  local slow=$BATS_TEST_TMPDIR/slow tool sig code
  mkdir -p "$slow"
  for tool in flock mv; do
    printf '#!/bin/sh\n: >"%s/%s.runs"\nsleep 0.3\nexec %s "$@"\n' "$WORK" "$tool" \
      "$(PATH=$WRAPPER_PATH command -v "$tool")" >"$slow/$tool"
    chmod +x "$slow/$tool"
  done
  use_path "$slow:$WRAPPER_PATH"
  WRAPPER_CMD=(setsid "${WRAPPER_CMD[@]}") # its own group, as under a terminal or tmux
  for tool in flock mv; do
    for sig in TERM USR1 HUP; do
      rm -f "$WORK/flock.runs" "$WORK/mv.runs"
      start_wrapper "grp-$tool-$sig" sleep 30
      poll_until 10 test -e "$WORK/$tool.runs" || fail "$tool never ran"
      kill -s "$sig" -- "-$WPID"
      poll_until 20 not_alive "$WPID" || fail "the wrapper did not exit ($tool, $sig)"
      wait_rc "$WPID"
      code=$((128 + $(kill -l "$sig")))
      assert_equal "$RC" "$code"
      assert_equal "$(state_field "grp-$tool-$sig" signal)" "\"$sig\""
      assert_equal "$(db_row "grp-$tool-$sig")" "failed|$code|1"
      assert_equal "$(cat "$WORK/grp-$tool-$sig.err")" ''
    done
  done
}

@test "a time limit: INT to the job's group SAVE s before it, then the stop, recorded with its reason" {
  export SOLVERPILOT_TIME_LIMIT=3 SOLVERPILOT_SAVE_BEFORE=1 SOLVERPILOT_KILL_GRACE=5
  local start=$SECONDS
  # saves on INT (and goes on), ends on TERM only through the stop
  start_wrapper job-limit sh -c 'trap "echo saved >>\"\$0/said\"" INT; echo $$ >"$0/child.pid"; while :; do sleep 0.1; done' "$WORK"
  wait_rc "$WPID"
  assert_equal "$RC" 143
  ((SECONDS - start >= 2 && SECONDS - start < 6)) || fail "took $((SECONDS - start)) s"
  # (under bash 4.2 the job ignores INT, a documented limit: only the stop reaches it)
  if bash_is_42; then [[ ! -e $WORK/said ]]; else assert_equal "$(cat "$WORK/said")" saved; fi
  assert_equal "$(state_field job-limit status)" '"failed"'
  assert_equal "$(state_field job-limit signal)" '"TERM"'
  assert_equal "$(state_field job-limit reason)" '"time limit (3 s)"'
  assert_equal "$(db_row job-limit)" "failed|143|1"
  # the timer is gone with the wrapper, and never held the job's lock
  run -0 flock -n "$SERVER/locks/job-limit.lock" true
}

@test "a job that ends itself on the time limit's INT keeps its own end, with the reason" {
  export SOLVERPILOT_TIME_LIMIT=2 SOLVERPILOT_SAVE_BEFORE=1
  start_wrapper job-saves sh -c 'trap "exit 0" INT; while :; do sleep 0.1; done'
  wait_rc "$WPID"
  if bash_is_42; then # the job ignores INT (a documented limit): the stop at the limit ends it
    assert_equal "$RC" 143
    assert_equal "$(state_field job-saves status)" '"failed"'
  else
    assert_equal "$RC" 0
    assert_equal "$(state_field job-saves status)" '"completed"'
  fi
  assert_equal "$(state_field job-saves reason)" '"time limit (2 s)"'
}

@test "a job that ends before its time limit: no reason, no timer left behind" {
  export SOLVERPILOT_TIME_LIMIT=617
  start_wrapper job-quick sh -c 'exit 4'
  wait_rc "$WPID"
  assert_equal "$RC" 4
  assert_equal "$(state_field job-quick reason)" ''
  # no process of this test's runs is still sleeping out the 617 s (the timer, told to end by
  # the wrapper's exit, ends its sleep a moment later: under load, some milliseconds)
  no_timer() { ! pgrep -f "sleep 617" >/dev/null; }
  poll_until 10 no_timer || fail "a timer sleeps on: $(pgrep -af 'sleep 617')"
  # and when the wrapper's exit tells the timer to end just as it forks its sleep (a TERM
  # before it knew the sleep's pid left 15 sleeps of 300 such runs behind): 40 runs at once
  local i pids=()
  for i in $(seq 40); do
    start_wrapper "job-quick-$i" true
    pids+=("$WPID")
  done
  for i in "${pids[@]}"; do wait_rc "$i"; done
  poll_until 10 no_timer || fail "timers sleep on: $(pgrep -af 'sleep 617' | wc -l)"
  for bad in 0x10 -5 1.5 ' 3'; do
    SOLVERPILOT_TIME_LIMIT=$bad run -64 "${WRAPPER_CMD[@]}" job-bad true
    [[ $output == *"whole numbers of seconds"* ]] || fail "$bad: $output"
  done
  [[ ! -e $SERVER/jobs/job-bad.status ]]
}

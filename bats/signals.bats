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

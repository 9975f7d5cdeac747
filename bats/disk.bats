#!/usr/bin/env bats
# The initial state cannot be written: a full disk, a read-only folder. Needs root (mount).

setup() {
  load test_helper/common
  common_setup
  require_or_skip "mounting a tmpfs needs root" test "$(id -u)" = 0
  MNT=$BATS_TEST_TMPDIR/mnt
  mkdir -p "$MNT"
  mount -t tmpfs -o size=64k tmpfs "$MNT"
  export SOLVERPILOT_SERVER_DIR=$MNT/server
  SERVER=$SOLVERPILOT_SERVER_DIR
  DB=$SERVER/server.db
}

WARNING='WARNING: Failed to update SQLite, state file written'

teardown() {
  common_teardown
  umount "$DB" 2>/dev/null || true
  umount "$BATS_TEST_TMPDIR/server/jobs" 2>/dev/null || true
  umount "$MNT" 2>/dev/null || true
}

@test "a full disk: exit 73 with a clear message, the job never runs, nothing half-written" {
  mkdir -p "$SERVER/jobs" "$SERVER/locks"
  head -c 1M /dev/zero >"$MNT/filler" 2>/dev/null || true
  run -73 --separate-stderr wrapper job-full touch "$WORK/ran"
  [[ $stderr == *'cannot write state file'* ]]
  [[ ! -e $WORK/ran ]]
  run -0 find "$SERVER/jobs" -type f
  assert_output ''
  rm "$MNT/filler"
  run -0 wrapper job-full true
  assert_equal "$(state_field job-full status)" '"completed"'
}

@test "a read-only folder: exit 73, the job never runs" {
  mount -o remount,ro "$MNT"
  run -73 --separate-stderr wrapper job-ro touch "$WORK/ran"
  [[ $stderr == *'cannot create'* ]]
  [[ ! -e $WORK/ran ]]
}

@test "a read-only DB: warning, the state file is written, the DB is unchanged" {
  export SOLVERPILOT_SERVER_DIR=$BATS_TEST_TMPDIR/server
  SERVER=$SOLVERPILOT_SERVER_DIR
  DB=$SERVER/server.db
  run -0 wrapper job-ro-setup true
  cp "$DB" "$WORK/db.before"
  mount --bind "$DB" "$DB"
  mount -o remount,ro,bind "$DB"
  # a chroot sees the bind mount (a shared one) but not its read-only flag, which is per mount
  [[ -z ${SP_ROOT:-} ]] || mount -o remount,ro,bind "$SP_ROOT$DB"
  run -0 --separate-stderr wrapper job-rodb true
  umount "$DB"
  assert_equal "$stderr" "$WARNING"$'\n'"$WARNING"
  cmp "$DB" "$WORK/db.before"
  assert_equal "$(state_field job-rodb status)" '"completed"'
}

# fill_disk DIR: fill the filesystem of DIR to the last byte
fill_disk() {
  head -c 10M /dev/zero >"$1/filler" 2>/dev/null || true
  local i
  for i in $(seq 50); do : >"$1/filler-$i" 2>/dev/null || break; done # the inodes too
}

# tiny_state_folder: the server folder on the test's disk, its jobs/ on a 64 KiB tmpfs of its own
tiny_state_folder() {
  export SOLVERPILOT_SERVER_DIR=$BATS_TEST_TMPDIR/server
  SERVER=$SOLVERPILOT_SERVER_DIR
  DB=$SERVER/server.db
  mkdir -p "$SERVER/jobs" "$SERVER/locks"
  mount -t tmpfs -o size=64k,mode=700 tmpfs "$SERVER/jobs" # 0700: the wrapper refuses a jobs/ others can write
}

@test "the disk fills during the job, state folder only: stderr says the DB has the final state, and the file still says running" {
  tiny_state_folder
  start_wrapper job-fill sh -c 'while [ ! -e "$0/go" ]; do sleep 0.05; done; exit 4' "$WORK"
  poll_until 10 file_has "$SERVER/jobs/job-fill.status" running || fail "job did not start"
  fill_disk "$SERVER/jobs"
  touch "$WORK/go"
  wait_rc "$WPID"
  umount "$SERVER/jobs"
  assert_equal "$RC" 4
  assert_equal "$(cat "$WORK/job-fill.err")" \
    "job_wrapper: cannot write state file $SERVER/jobs/job-fill.status (it still says \"running\"); the database has the final state"
  assert_equal "$(db_row job-fill)" 'failed|4|1'
}

@test "the disk fills during the job, state and DB: stderr says the final state was not recorded, nothing else" {
  mkdir -p "$SERVER"
  start_wrapper job-full2 sh -c 'while [ ! -e "$0/go" ]; do sleep 0.05; done; exit 4' "$WORK"
  poll_until 10 file_has "$SERVER/jobs/job-full2.status" running || fail "job did not start"
  fill_disk "$MNT"
  touch "$WORK/go"
  wait_rc "$WPID"
  assert_equal "$RC" 4
  assert_equal "$(cat "$WORK/job-full2.err")" \
    "job_wrapper: final state NOT recorded: cannot write state file $SERVER/jobs/job-full2.status (it still says \"running\") nor update the database"
  assert_equal "$(state_field job-full2 status)" '"running"'
  assert_equal "$(sqlite3 "$DB" "SELECT status FROM jobs WHERE id = 'job-full2'")" running
  [[ -z $(find "$SERVER/jobs" -name '*.tmp') ]] || fail "a temporary file was left"
}

@test "a stop on a full disk: the messages say what the state file holds" {
  tiny_state_folder
  start_wrapper job-fillstop sh -c 'touch "$0/started"; while :; do sleep 0.05; done' "$WORK"
  poll_until 10 test -e "$WORK/started" || fail "job did not start"
  fill_disk "$SERVER/jobs"
  kill -TERM "$WPID"
  wait_rc "$WPID"
  umount "$SERVER/jobs"
  assert_equal "$RC" 143
  assert_equal "$(cat "$WORK/job-fillstop.err")" \
    "job_wrapper: cannot write state file $SERVER/jobs/job-fillstop.status (it still says \"running\"); the database has the final state"
  assert_equal "$(db_row job-fillstop)" 'failed|143|1'
}

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
}

WARNING='WARNING: Failed to update SQLite, state file written'

teardown() {
  common_teardown
  umount "$DB" 2>/dev/null || true
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
  run -0 wrapper job-ro-setup true
  cp "$DB" "$WORK/db.before"
  mount --bind "$DB" "$DB"
  mount -o remount,ro,bind "$DB"
  run -0 --separate-stderr wrapper job-rodb true
  umount "$DB"
  assert_equal "$stderr" "$WARNING"$'\n'"$WARNING"
  cmp "$DB" "$WORK/db.before"
  assert_equal "$(state_field job-rodb status)" '"completed"'
}

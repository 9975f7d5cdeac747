#!/usr/bin/env bats
# The SQLite side: creation, existing tables, locks, corruption, absence, concurrency.

setup() {
  load test_helper/common
  common_setup
}

teardown() {
  common_teardown
}

WARNING='WARNING: Failed to update SQLite, state file written'

@test "DB and table absent: both are created with the job's row" {
  [[ ! -e $DB ]]
  run -0 wrapper job-new true
  assert_equal "$(db_row job-new)" 'completed|0|1'
  run -0 sqlite3 "$DB" "SELECT name FROM pragma_table_info('jobs') ORDER BY cid"
  assert_output $'id\nstatus\nstarted_at\ncompleted_at\nexit_code\ntmux_session_name\nsignal\nreason\nname\nqueue\nsubmitted_at'
}

@test "table present, row absent: the row is inserted and other rows are untouched" {
  mkdir -p "$SERVER"
  sqlite3 "$DB" "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, started_at TEXT,
    completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT);
    INSERT INTO jobs VALUES ('other', 'completed', 'a', 'b', 0, 't');"
  run -0 wrapper job-row true
  assert_equal "$(db_row job-row)" 'completed|0|1'
  assert_equal "$(sqlite3 "$DB" "SELECT * FROM jobs WHERE id = 'other'")" 'other|completed|a|b|0|t'
  assert_equal "$(sqlite3 "$DB" "SELECT count(*) FROM jobs")" 2
}

@test "a table with extra columns and no primary key keeps working; other columns untouched" {
  mkdir -p "$SERVER"
  sqlite3 "$DB" "CREATE TABLE jobs (id TEXT, owner TEXT DEFAULT 'nobody', status TEXT,
    started_at TEXT, completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT, note TEXT);
    INSERT INTO jobs (id, owner, status, note) VALUES ('job-extra', 'alice', 'queued', 'keep me');"
  run -0 wrapper job-extra true
  assert_equal "$(sqlite3 "$DB" "SELECT owner, status, exit_code, note FROM jobs WHERE id = 'job-extra'")" \
    'alice|completed|0|keep me'
  assert_equal "$(sqlite3 "$DB" "SELECT count(*) FROM jobs")" 1
  run -0 wrapper job-extra-2 true
  assert_equal "$(sqlite3 "$DB" "SELECT owner, status FROM jobs WHERE id = 'job-extra-2'")" 'nobody|completed'
}

@test "sqlite3 absent from PATH: warning, state file written, job's exit code" {
  use_path "$(path_without_sqlite)"
  run -3 --separate-stderr wrapper job-nosql sh -c 'exit 3'
  assert_equal "$stderr" "$WARNING"$'\n'"$WARNING"
  assert_equal "$(state_field job-nosql status)" '"failed"'
  assert_equal "$(state_field job-nosql exit_code)" 3
  [[ ! -e $DB ]]
}

@test "a corrupt DB is left byte-identical; the state file is still written" {
  mkdir -p "$SERVER"
  head -c 8192 /dev/urandom >"$DB"
  cp "$DB" "$WORK/db.before"
  run -0 --separate-stderr wrapper job-corrupt true
  assert_equal "$stderr" "$WARNING"$'\n'"$WARNING"
  cmp "$DB" "$WORK/db.before"
  assert_equal "$(state_field job-corrupt status)" '"completed"'
}

@test "a DB locked briefly: the write waits and succeeds" {
  run -0 wrapper job-warm true # DB and table exist
  hold_db_lock
  start_wrapper job-wait true
  local start=$SECONDS
  # keep the lock for about a second while the wrapper's first write waits on it
  poll_until 1 not_alive "$WPID" && fail "the wrapper did not wait for the lock"
  release_db_lock
  wait_rc "$WPID"
  assert_equal "$RC" 0
  assert_equal "$(cat "$WORK/job-wait.err")" ''
  assert_equal "$(db_row job-wait)" 'completed|0|1'
}

@test "a DB locked for a long time: each write gives up within 5-10 s with the warning; the row comes once it is free" {
  run -0 wrapper job-warm true
  hold_db_lock
  local start=$SECONDS
  run -3 --separate-stderr wrapper job-locked sh -c 'exit 3'
  local took=$((SECONDS - start))
  assert_equal "$stderr" "$WARNING"$'\n'"$WARNING"
  ((took >= 9 && took <= 21)) || fail "two writes took $took s; each must wait 5-10 s"
  assert_equal "$(state_field job-locked status)" '"failed"'
  release_db_lock
  # the wrapper's last act (--advance ID, apart) tries again until the DB is free: the DB
  # converges on the state file without anyone asking
  row_final() { [[ $(sqlite3 "$DB" "SELECT status, exit_code, completed_at FROM jobs WHERE id = 'job-locked'" 2>/dev/null) == "failed|3|$(state_field job-locked completed_at | tr -d '"')" ]]; }
  poll_until 30 row_final || fail "the row never came: $(sqlite3 "$DB" "SELECT * FROM jobs")"
}

@test "100 jobs finishing at once lose no DB update" {
  local i pids=()
  # each job waits for a shared lock on a gate this test holds exclusively (no polling: 100
  # jobs polling with sleep starved the wrappers' writes on a loaded 2-core machine; and unlike
  # a fifo's end, a lock released before a job reaches it lets that job pass at once); closing
  # the test's descriptor ends all of them together
  exec 7>"$WORK/gate"
  flock -x 7
  for i in $(seq 100); do
    start_wrapper "job-many-$i" flock -s "$WORK/gate" true 7>&-
    pids+=("$WPID")
  done
  all_running() { [[ $(sqlite3 "$DB" "SELECT count(*) FROM jobs WHERE status = 'running'" 2>/dev/null) == 100 ]]; }
  poll_until 60 all_running || fail "not all 100 jobs started"
  exec 7>&-
  for i in "${pids[@]}"; do wait "$i"; done
  assert_equal "$(sqlite3 "$DB" "SELECT count(*) FROM jobs WHERE status = 'completed' AND exit_code = 0")" 100
  run -0 cat "$WORK"/job-many-*.err
  assert_output ''
}

@test "--migrate adds the new columns to an old table; --sync copies ends, judges lost, changes nothing twice" {
  mkdir -p "$SERVER"
  sqlite3 "$DB" "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, started_at TEXT,
    completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT, app TEXT);
    INSERT INTO jobs (id, status, app) VALUES ('old', 'completed', 'keep');"
  run -0 wrapper --migrate
  assert_equal "$(sqlite3 "$DB" 'PRAGMA user_version')" 1
  assert_equal "$(sqlite3 "$DB" "SELECT count(*) FROM pragma_table_info('jobs')")" 12
  assert_equal "$(sqlite3 "$DB" "SELECT status, app FROM jobs")" 'completed|keep'
  # a stopped job whose rows went missing, and a running record whose wrapper is gone
  run -143 wrapper job-stop sh -c 'kill -TERM $PPID; sleep 5'
  sqlite3 "$DB" "DELETE FROM jobs WHERE id = 'job-stop'"
  sed 's/"id":"job-stop","status":"failed"/"id":"job-gone","status":"running"/; s/"pid":[0-9]*/"pid":999999999/' \
    "$SERVER/jobs/job-stop.status" >"$SERVER/jobs/job-gone.status"
  run -0 wrapper --sync
  assert_line 'changed|job-stop|-|failed|'
  assert_line 'changed|job-gone|-|lost|wrapper gone, lock free'
  assert_equal "$(sqlite3 "$DB" "SELECT status, exit_code, signal FROM jobs WHERE id = 'job-stop'")" 'failed|143|TERM'
  assert_equal "$(sqlite3 "$DB" "SELECT completed_at FROM jobs WHERE id = 'job-stop'")" \
    "$(state_field job-stop completed_at | tr -d '"')"
  run -0 wrapper --sync
  assert_output ''
}

@test "--sync: a reason's line end cannot forge a line; a spec that is a link or a fifo is never opened; a huge state file is not read whole" {
  run -0 wrapper job-seed true
  printf '%s\n' '{"id":"job-nl","status":"failed","exit_code":1,"completed_at":"2026-01-01T00:00:01+00:00","signal":null,"reason":"x\nchanged|FORGED|running|completed|y"}' \
    >"$SERVER/jobs/job-nl.status"
  printf '%s\n' '{"name":"FROM-LINK"}' >"$WORK/target.json"
  cp "$SERVER/jobs/job-seed.status" "$SERVER/jobs/job-ln.status"
  sed -i 's/"job-seed"/"job-ln"/' "$SERVER/jobs/job-ln.status"
  ln -s "$WORK/target.json" "$SERVER/jobs/job-ln.spec"
  sed 's/"job-seed"/"job-ff"/' "$SERVER/jobs/job-seed.status" >"$SERVER/jobs/job-ff.status"
  mkfifo "$SERVER/jobs/job-ff.spec"
  { printf '{"id":"job-big","status":"completed","x":"'; head -c 2000000 /dev/zero | tr '\0' a; printf '"}\n'; } \
    >"$SERVER/jobs/job-big.status"
  run -0 timeout 60 "${WRAPPER_CMD[@]}" --sync
  assert_line 'changed|job-nl|-|failed|x?changed|FORGED|running|completed|y'
  refute_line --regexp '^changed[|]FORGED'
  assert_equal "$(sqlite3 "$DB" "SELECT count(*) FROM jobs WHERE name = 'FROM-LINK' OR id IN ('FORGED', 'job-big')")" 0
  assert_equal "$(sqlite3 "$DB" "SELECT status FROM jobs WHERE id = 'job-ff'")" completed
}

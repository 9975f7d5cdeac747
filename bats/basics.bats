#!/usr/bin/env bats
# Exit codes, pass-through, the running and final states, job ids and users.

setup() {
  load test_helper/common
  common_setup
}

teardown() {
  common_teardown
}

ISO_RE='^"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[+-][0-9]{2}:[0-9]{2}"$'

@test "success: exit 0, state and DB say completed with ISO 8601 times" {
  run -0 --separate-stderr wrapper job-ok true
  assert_output ''
  assert_equal "$stderr" ''
  assert_equal "$(state_field job-ok status)" '"completed"'
  assert_equal "$(state_field job-ok exit_code)" 0
  assert_equal "$(state_field job-ok signal)" null
  [[ $(state_field job-ok started_at) =~ $ISO_RE ]]
  [[ $(state_field job-ok completed_at) =~ $ISO_RE ]]
  assert_equal "$(db_row job-ok)" 'completed|0|1'
}

@test "failure: the job's own exit code, recorded as failed" {
  run -42 wrapper job-fail sh -c 'exit 42'
  assert_equal "$(state_field job-fail status)" '"failed"'
  assert_equal "$(state_field job-fail exit_code)" 42
  assert_equal "$(state_field job-fail signal)" null
  assert_equal "$(db_row job-fail)" 'failed|42|1'
}

@test "a command that is not found exits 127 and is recorded" {
  run -127 wrapper job-127 "$WORK/no-such-command"
  assert_equal "$(state_field job-127 exit_code)" 127
  assert_equal "$(db_row job-127)" 'failed|127|1'
}

@test "a command that is not executable exits 126 and is recorded" {
  printf 'echo hi\n' >"$WORK/not-executable"
  chmod 644 "$WORK/not-executable"
  run -126 wrapper job-126 "$WORK/not-executable"
  assert_equal "$(state_field job-126 exit_code)" 126
  assert_equal "$(db_row job-126)" 'failed|126|1'
}

@test "timestamps carry the local offset" {
  TZ='IST-05:30' run -0 wrapper job-tz true
  [[ $(state_field job-tz started_at) == *'+05:30"' ]]
  [[ $(state_field job-tz completed_at) == *'+05:30"' ]]
}

@test "arguments, stdin, stdout and stderr pass through untouched" {
  printf '#!/bin/sh\nfor a in "$@"; do printf "<%%s>\\n" "$a"; done\ncat\nprintf err-line >&2\n' \
    >"$WORK/echo-args"
  chmod 755 "$WORK/echo-args"
  local args=('a b' '' "it's" '"q"' $'two\nlines' '*' '-n' '$HOME' '\x')
  printf 'stdin line 1\nstdin\ttab\n' >"$WORK/stdin"
  "$WORK/echo-args" "${args[@]}" <"$WORK/stdin" >"$WORK/direct.out" 2>"$WORK/direct.err"
  wrapper job-args "$WORK/echo-args" "${args[@]}" <"$WORK/stdin" >"$WORK/wrapped.out" \
    2>"$WORK/wrapped.err"
  cmp "$WORK/direct.out" "$WORK/wrapped.out"
  cmp "$WORK/direct.err" "$WORK/wrapped.err"
  grep -q 'stdin	tab' "$WORK/wrapped.out"
}

@test "a command whose name starts with a dash is run as itself, not read as an option" {
  mkdir -p "$WORK/bin"
  printf '#!/bin/sh\nprintf "%%s|" "$0" "$@" >"%s/ran"\n' "$WORK" >"$WORK/bin/-w"
  chmod +x "$WORK/bin/-w"
  use_path "$WORK/bin:$WRAPPER_PATH"
  run wrapper job-dash -w echo not-this
  assert_success
  assert_equal "$(cat "$WORK/ran")" "$WORK/bin/-w|echo|not-this|"
  assert_equal "$(state_field job-dash status)" '"completed"'
}

@test "slurm_job_id: the batch script's (SOLVERPILOT_SLURM_JOB_ID) alone, with its attempt; null elsewhere, when malformed, or from SLURM_JOB_ID" {
  SOLVERPILOT_SLURM_JOB_ID=4242 SOLVERPILOT_SLURM_ATTEMPT=2 run wrapper job-slurm sh -c 'env >"$0"' "$WORK/env"
  assert_success
  assert_equal "$(state_field job-slurm slurm_job_id)" '"4242"'
  assert_equal "$(state_field job-slurm slurm_attempt)" 2
  run grep -c '^SOLVERPILOT_SLURM_' "$WORK/env" # the batch script's word for the wrapper, not the job's
  assert_output 0
  SLURM_JOB_ID=4242 run wrapper job-tmux true # a tmux server started inside an allocation
  assert_success
  assert_equal "$(state_field job-tmux slurm_job_id)" null
  run env -u SLURM_JOB_ID "${WRAPPER_CMD[@]}" job-plain true
  assert_success
  assert_equal "$(state_field job-plain slurm_job_id)" null
  for bad in '' '12;x' '"1"' 1e3 -1 0x10 '１２' 1234567890123456789; do
    SOLVERPILOT_SLURM_JOB_ID=$bad SOLVERPILOT_SLURM_ATTEMPT=$bad run wrapper job-bad true
    assert_success
    assert_equal "$(state_field job-bad slurm_job_id)" null
    rm -f "$SERVER/jobs/job-bad.status"
  done
  for bad in '' 0 01 '1,"x":1' 1e3 -1; do
    SOLVERPILOT_SLURM_JOB_ID=7 SOLVERPILOT_SLURM_ATTEMPT=$bad run wrapper job-bad true
    assert_success
    assert_equal "$(state_field job-bad slurm_job_id)" '"7"'
    run state_field job-bad slurm_attempt # not recorded
    assert_failure
    rm -f "$SERVER/jobs/job-bad.status"
  done
}

@test "running state in both stores before the job ends: pid, host, boot id, user, tmux name" {
  USER=tester start_wrapper job-run sh -c "touch '$WORK/started'; while [ ! -e '$WORK/go' ]; do sleep 0.05; done"
  poll_until 10 test -e "$WORK/started"
  assert_equal "$(state_field job-run status)" '"running"'
  assert_equal "$(state_field job-run pid)" "$WPID"
  assert_equal "$(state_field job-run host)" "\"$(hostname)\""
  assert_equal "$(state_field job-run boot_id)" "\"$(cat /proc/sys/kernel/random/boot_id)\""
  assert_equal "$(state_field job-run user)" '"tester"'
  # the start time in clock ticks since boot, as /proc/PID/stat field 22 says for the wrapper
  local stat fields
  read -r stat <"/proc/$WPID/stat"
  read -r -a fields <<<"${stat##*) }"
  assert_equal "$(state_field job-run start_ticks)" "${fields[19]}"
  run ! state_field job-run exit_code
  assert_equal "$(sqlite3 "$DB" "SELECT status, started_at IS NOT NULL, completed_at IS NULL, exit_code IS NULL, tmux_session_name FROM jobs WHERE id = 'job-run'")" \
    'running|1|1|1|solverpilot_tester_job-run'
  touch "$WORK/go"
  wait_rc "$WPID"
  assert_equal "$RC" 0
  assert_equal "$(state_field job-run status)" '"completed"'
}

@test "the tmux session name uses the first 8 characters of the job id" {
  USER=ann run -0 wrapper 0123456789abcdef true
  assert_equal "$(sqlite3 "$DB" "SELECT tmux_session_name FROM jobs")" 'solverpilot_ann_01234567'
}

@test "usage errors exit 64 and write nothing" {
  run -64 --separate-stderr wrapper
  assert_equal "$stderr" 'job_wrapper: usage: job_wrapper.sh JOB_ID COMMAND [ARG...]'
  run -64 wrapper only-an-id
  [[ ! -e $SERVER ]]
}

@test "hostile job ids exit 64, write nothing and never run the command" {
  local long
  printf -v long '%0200d' 0
  local id
  for id in '../x' "a'b" 'a"b' 'a b' $'a\nb' $'ab\n' '' "$long" '.hidden' '-x' 'a/b' 'a;b'; do
    run -64 --separate-stderr wrapper "$id" touch "$WORK/ran"
    assert_output ''
    [[ $stderr == 'job_wrapper: invalid JOB_ID'* ]] || fail "no clear error for id [$id]: $stderr"
    [[ ! -e $WORK/ran ]] || fail "command ran for id [$id]"
    [[ ! -e $SERVER && ! -e $BATS_TEST_TMPDIR/x.status ]] || fail "something written for [$id]"
  done
}

@test "the longest valid job id (128 characters) and a UUID are accepted" {
  local long
  printf -v long 'a%0127d' 0
  run -0 wrapper "$long" true
  assert_equal "$(state_field "$long" status)" '"completed"'
  run -0 wrapper 123e4567-e89b-12d3-a456-426614174000 true
  assert_equal "$(db_row 123e4567-e89b-12d3-a456-426614174000)" 'completed|0|1'
}

@test "a hostile USER keeps the JSON and the SQL valid and is stored exactly" {
  local hostile=$'o\'brien"; DROP TABLE jobs; --\\\n\t\x01é'
  USER=$hostile run -0 --separate-stderr wrapper job-user true
  assert_equal "$stderr" ''
  run -0 python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["user"] == sys.argv[2])' \
    "$SERVER/jobs/job-user.status" "$hostile"
  assert_output True
  assert_equal "$(sqlite3 "$DB" "SELECT tmux_session_name = 'solverpilot_' || char(111,39,98,114,105,101,110,34,59,32,68,82,79,80,32,84,65,66,76,69,32,106,111,98,115,59,32,45,45,92,10,9,1,233) || '_job-user' FROM jobs WHERE id = 'job-user'")" 1
}

@test "a bad SOLVERPILOT_KILL_GRACE is a usage error" {
  SOLVERPILOT_KILL_GRACE=soon run -64 --separate-stderr wrapper job-grace touch "$WORK/ran"
  [[ $stderr == *SOLVERPILOT_KILL_GRACE* ]]
  [[ ! -e $WORK/ran && ! -e $SERVER ]]
}

@test "the same job id twice at once: the second refuses with 75 and touches nothing" {
  start_wrapper job-twice sh -c "touch '$WORK/started'; while [ ! -e '$WORK/go' ]; do sleep 0.05; done"
  poll_until 10 test -e "$WORK/started"
  cp "$SERVER/jobs/job-twice.status" "$WORK/before"
  local db_before
  db_before=$(sqlite3 "$DB" "SELECT * FROM jobs")
  run -75 --separate-stderr wrapper job-twice touch "$WORK/second-ran"
  assert_equal "$stderr" "job_wrapper: job job-twice is already running (its wrapper, pid $WPID, holds lock $SERVER/locks/job-twice.lock)"
  [[ ! -e $WORK/second-ran ]]
  cmp "$WORK/before" "$SERVER/jobs/job-twice.status"
  assert_equal "$(sqlite3 "$DB" "SELECT * FROM jobs")" "$db_before"
  touch "$WORK/go"
  wait_rc "$WPID"
  assert_equal "$RC" 0
  assert_equal "$(state_field job-twice status)" '"completed"'
  run -0 wrapper job-twice true
}

@test "a reader never sees half a state file" {
  local reader=$WORK/reader.py
  cat >"$reader" <<'EOF'
import json, os, sys
path, stop = sys.argv[1], sys.argv[2]
reads = bad = 0
while not os.path.exists(stop):
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        continue
    reads += 1
    try:
        json.loads(text)
    except ValueError:
        bad += 1
print(reads, bad)
EOF
  python3 "$reader" "$SERVER/jobs/job-read.status" "$WORK/stop" >"$WORK/reader.out" 3>&- &
  local rpid=$! i
  # a long USER makes each state file ~64 KiB, written in several write() calls
  for i in $(seq 60); do
    USER="user-$(printf '%065536d' "$i")" wrapper job-read true || fail "run $i failed"
  done
  touch "$WORK/stop"
  wait "$rpid"
  read -r reads bad <"$WORK/reader.out"
  echo "reads=$reads bad=$bad"
  ((reads > 100))
  assert_equal "$bad" 0
  run -0 find "$SERVER/jobs" -name '*.tmp'
  assert_output ''
}

@test "the wrapper runs on the userland its profile names" {
  [[ ${SP_USERLAND:-gnu} != host ]] || skip "SP_USERLAND=host: the container's own userland"
  local tool resolved
  for tool in mv setsid sleep rm; do
    resolved=$(PATH=$WRAPPER_PATH command -v "$tool")
    if [[ ${SP_USERLAND:-gnu} == busybox ]]; then
      [[ $(readlink -f "$resolved") == "$(readlink -f "$(command -v busybox)")" ]] ||
        fail "$tool is $resolved, not busybox"
    else
      [[ $(readlink -f "$resolved") != *busybox* ]] || fail "$tool is busybox on a GNU profile"
    fi
  done
}

@test "every path the wrapper writes is what it claims to be, or a clear error and exit 73" {
  mkdir -p "$SERVER/jobs" "$SERVER/locks"
  mkdir "$SERVER/jobs/job-dir.status"
  run -73 --separate-stderr wrapper job-dir touch "$WORK/ran"
  assert_equal "$stderr" "job_wrapper: state file $SERVER/jobs/job-dir.status is a folder"
  ln -s "$WORK" "$SERVER/jobs/job-link.status"
  run -73 --separate-stderr wrapper job-link touch "$WORK/ran"
  assert_equal "$stderr" "job_wrapper: state file $SERVER/jobs/job-link.status is a folder"
  mkdir "$SERVER/locks/job-lockdir.lock"
  run -73 --separate-stderr wrapper job-lockdir touch "$WORK/ran"
  assert_equal "$stderr" "job_wrapper: lock file $SERVER/locks/job-lockdir.lock is not a regular file"
  mkfifo "$SERVER/locks/job-fifo.lock"
  run -73 --separate-stderr timeout 10 "${WRAPPER_CMD[@]}" job-fifo touch "$WORK/ran"
  assert_equal "$stderr" "job_wrapper: lock file $SERVER/locks/job-fifo.lock is not a regular file"
  [[ ! -e $WORK/ran ]] || fail "the job ran"
  [[ -z $(find "$SERVER/jobs" -name '*.tmp') ]] || fail "a temporary file was left"
  [[ -z $(find "$WORK" -newer "$SERVER/locks" -type f) ]] || fail "something was written into the folder"
}

@test "a jobs or locks path that is a file: a clear error and exit 73" {
  mkdir -p "$SERVER"
  : >"$SERVER/jobs"
  run -73 --separate-stderr wrapper job-x touch "$WORK/ran"
  assert_equal "$stderr" "job_wrapper: cannot create $SERVER/jobs and $SERVER/locks"
  [[ ! -e $WORK/ran ]]
}

@test "a relative or option-like server folder is used as the folder it names, from the caller's directory" {
  cd "$WORK"
  SOLVERPILOT_SERVER_DIR=-odd run -0 --separate-stderr wrapper job-odd true
  assert_equal "$stderr" ''
  [[ -f $WORK/-odd/jobs/job-odd.status ]] || fail "state file not under ./-odd"
  assert_equal "$(sqlite3 "$WORK/-odd/server.db" "SELECT status FROM jobs WHERE id = 'job-odd'")" completed
  SOLVERPILOT_SERVER_DIR='--help' run -0 wrapper job-help true
  [[ -f $WORK/--help/jobs/job-help.status ]]
}

@test "HOME unset and no SOLVERPILOT_SERVER_DIR: a clear error, exit 64, nothing run" {
  unset SOLVERPILOT_SERVER_DIR
  cd "$WORK"
  run -64 --separate-stderr env -u HOME -u SOLVERPILOT_SERVER_DIR "${WRAPPER_CMD[@]}" job-nohome touch "$WORK/ran"
  assert_equal "$stderr" 'job_wrapper: HOME is not set: set HOME or SOLVERPILOT_SERVER_DIR'
  HOME='' run -64 wrapper job-nohome touch "$WORK/ran"
  [[ ! -e $WORK/ran ]]
  HOME=$WORK/home run -0 wrapper job-home true
  [[ -f $WORK/home/.solverpilot-server/jobs/job-home.status ]]
}

@test "a process left running by an earlier run holds the lock: 75 names it and its pid" {
  run -0 wrapper job-left sh -c '(exec sleep 1000 </dev/null >/dev/null 2>&1 3>&-) &
    echo $! >"$0/grandchild.pid"' "$WORK"
  local pid
  pid=$(cat "$WORK/grandchild.pid")
  alive "$pid" || fail "the leftover process is gone"
  run -75 --separate-stderr wrapper job-left touch "$WORK/ran"
  assert_equal "$stderr" "job_wrapper: job job-left: a process of its earlier run still holds lock $SERVER/locks/job-left.lock: pid $pid (sleep); stop it or let it end"
  [[ ! -e $WORK/ran ]]
  assert_equal "$(state_field job-left status)" '"completed"'
  kill "$pid"
  poll_until 10 not_alive "$pid"
  run -0 wrapper job-left true
}

@test "a USER that is not UTF-8 is read as Latin-1: the state file stays valid JSON" {
  USER=$'ren\xe9 \xff' run -0 --separate-stderr wrapper job-latin1 true
  assert_equal "$stderr" ''
  assert_equal "$(state_field job-latin1 user)" '"ren\u00e9 \u00ff"'
  USER=$'caf\xc3\xa9' run -0 wrapper job-utf8 true
  run -0 python3 -c 'import json, sys; print(json.load(open(sys.argv[1], encoding="utf-8"))["user"])' \
    "$SERVER/jobs/job-utf8.status"
  assert_output 'café'
}

@test "the final state records the job's CPU seconds (user, system) and wall seconds" {
  # about 0.3 s of CPU in the job (and a grandchild), then 0.4 s asleep
  run -0 wrapper job-cost sh -c '
    spin() { i=0; while [ $((i += 1)) -lt 150000 ]; do :; done; }
    (spin); spin; sleep 0.4'
  local user sys wall
  user=$(state_field job-cost cpu_user_s) sys=$(state_field job-cost cpu_sys_s)
  wall=$(state_field job-cost wall_s)
  [[ $user =~ ^[0-9]+\.[0-9]+$ && $sys =~ ^[0-9]+\.[0-9]+$ && $wall =~ ^[0-9]+\.[0-9]+$ ]] ||
    fail "not numbers: user $user sys $sys wall $wall"
  python3 - "$user" "$sys" "$wall" <<'PY' || fail "user $user sys $sys wall $wall"
import sys
user, sys_, wall = map(float, sys.argv[1:])
assert user + sys_ >= 0.1, "the job's CPU is missing"
assert wall >= 0.4 + user * 0.5, "wall shorter than the sleep and the spinning"
assert wall < 30
PY
  # a job that does nothing costs (almost) nothing: the wrapper's own programs are not counted
  run -0 wrapper job-idle true
  python3 -c 'import sys; assert float(sys.argv[1]) + float(sys.argv[2]) <= 0.02, sys.argv' \
    "$(state_field job-idle cpu_user_s)" "$(state_field job-idle cpu_sys_s)"
}

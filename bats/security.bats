#!/usr/bin/env bats
# Another local user must never reach a user's jobs, records or files through the server folder;
# and without /proc a stop signal still stops the job. The adversary is a second local user
# (spevil, with SP_TEST_USER_SUFFIX: spevil_SUFFIX); the wrapper runs as the test's user (root).
# Needs root (useradd, chown, unshare, mount).

setup() {
  load test_helper/common
  common_setup
  require_or_skip "another local user and mounts need root" test "$(id -u)" = 0
  EVIL=spevil${SP_TEST_USER_SUFFIX:+_$SP_TEST_USER_SUFFIX}
  id -u "$EVIL" >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin "$EVIL" ||
    fail "cannot create the user $EVIL"
}

teardown() {
  common_teardown
}

# evil_mkdir MODE DIR...: folders the other user made first, with that mode
evil_mkdir() {
  local mode=$1
  shift
  mkdir -p -- "$@"
  chown "$EVIL:" -- "$@"
  chmod "$mode" -- "$@"
}

# refused ID: the wrapper exits 73 with one `job_wrapper: unsafe server folder: ...` line naming
# WHY_PART, runs nothing and writes no file anywhere in the server folder
refused() {
  local why=$1 before
  before=$(find "$SERVER" | sort)
  run -73 --separate-stderr wrapper job-evil touch "$WORK/ran"
  assert_equal "${#lines[@]}" 0
  [[ $stderr == "job_wrapper: unsafe server folder: "*"$why"* ]] || fail "stderr: $stderr"
  [[ $stderr != *$'\n'* ]] || fail "more than one line: $stderr"
  [[ ! -e $WORK/ran ]] || fail "the job ran"
  run -0 find "$SERVER" -type f
  assert_output ''
  # nothing created either: no jobs/ or locks/ made in a folder that is not the user's alone
  assert_equal "$(find "$SERVER" | sort)" "$before"
}

@test "a server folder another user made first (mode 0777): exit 73, the job never runs" {
  evil_mkdir 777 "$SERVER"
  refused "$SERVER is owned by uid $(id -u "$EVIL"), not by"
  # and made first with the subfolders too, as the attack left it
  evil_mkdir 777 "$SERVER/jobs" "$SERVER/locks"
  refused "is owned by uid $(id -u "$EVIL")"
}

@test "a control character in the server folder's path: the refusal is still one line, shown as ?" {
  SERVER=$WORK/$'srv\njob_wrapper: forged\e[2J'
  export SOLVERPILOT_SERVER_DIR=$SERVER
  mkdir -p "$SERVER"
  chmod 777 "$SERVER"
  refused "$WORK/srv?job_wrapper: forged?[2J can be written by group or others (mode 777)"
}

@test "a jobs, locks or logs folder another user owns inside the user's own server folder: exit 73" {
  local sub
  for sub in jobs locks logs; do
    rm -rf "$SERVER"
    mkdir -m 700 -p "$SERVER/jobs" "$SERVER/locks"
    evil_mkdir 700 "$SERVER/$sub"
    refused "$SERVER/$sub is owned by uid $(id -u "$EVIL")"
  done
}

@test "a server folder or subfolder the user owns but group or others can write: exit 73" {
  local mode sub
  for sub in '' /jobs /locks /logs; do
    for mode in 777 757 770 1777; do
      rm -rf "$SERVER"
      mkdir -m 700 -p "$SERVER/jobs" "$SERVER/locks" "$SERVER/logs"
      chmod "$mode" "$SERVER$sub"
      refused "$SERVER$sub can be written by group or others (mode $mode)"
    done
  done
  # 0755, as older versions made them: not writable by others, accepted as it is
  rm -rf "$SERVER"
  mkdir -m 755 -p "$SERVER/jobs" "$SERVER/locks" "$SERVER/logs"
  chmod 755 "$SERVER"
  run -0 wrapper job-ok true
  assert_equal "$(stat -c %a "$SERVER" "$SERVER/jobs")" $'755\n755'
}

@test "a subfolder that is a symbolic link is refused; the server folder may be the user's own link" {
  local real=$BATS_TEST_TMPDIR/real sub
  for sub in jobs locks logs; do
    rm -rf "$SERVER" "$real"
    mkdir -m 700 -p "$SERVER/jobs" "$SERVER/locks" "$real"
    rm -rf "${SERVER:?}/$sub"
    ln -s "$real" "$SERVER/$sub"
    refused "$SERVER/$sub is a symbolic link"
  done
  # the user's own link to the user's own folder: accepted (a home's ~/.solverpilot-server
  # pointing to scratch space)
  rm -rf "$SERVER" "$real"
  mkdir -m 700 "$real"
  ln -s "$real" "$SERVER"
  run -0 wrapper job-link true
  [[ -f $real/jobs/job-link.status ]]
  # a link another user planted, even to the user's own folder: refused
  chown -h "$EVIL:" "$SERVER"
  refused "$SERVER is owned by uid $(id -u "$EVIL")"
  # named with a trailing / or /., the link itself is still read, not only the folder it names
  local named
  for named in "$SERVER/" "$SERVER/." "$SERVER//./"; do
    SOLVERPILOT_SERVER_DIR=$named
    refused "$SERVER is owned by uid $(id -u "$EVIL")"
  done
  SOLVERPILOT_SERVER_DIR=$SERVER
  # the user's own link that leads through that link, or a name with ".." through it: refused
  local mine=$BATS_TEST_TMPDIR/mine
  ln -s "$SERVER" "$mine"
  SOLVERPILOT_SERVER_DIR=$mine
  refused "$SERVER is owned by uid $(id -u "$EVIL")"
  local target # the same link named with a trailing / or /., or through ".."
  for target in "$SERVER/" "$SERVER/." "$SERVER//"; do
    ln -sfn "$target" "$mine"
    refused "$SERVER is owned by uid $(id -u "$EVIL")"
  done
  ln -sfn "$SERVER/jobs/.." "$mine"
  refused "$SERVER/jobs/..: a link names a folder through \"..\""
  ln -s "$real" "$SERVER"$'\n' # another user's link whose name ends in a newline
  chown -h "$EVIL:" "$SERVER"$'\n'
  ln -sfn "$SERVER"$'\n' "$mine"
  refused "$SERVER? is owned by uid $(id -u "$EVIL")"
  rm -f "$SERVER"$'\n'
  # in a UTF-8 locale as well: a name that is no valid UTF-8 is still trimmed ("." in a regex
  # matched no byte of it there, so evil/ was never read as the link evil)
  local odd=$BATS_TEST_TMPDIR/$'\xe9quipe'
  mkdir "$odd" && ln -s "$real" "$odd/evil" && chown -h "$EVIL:" "$odd/evil"
  ln -sfn "$odd/evil/" "$mine"
  LC_ALL=C.UTF-8 refused "evil is owned by uid $(id -u "$EVIL")"
  ln -sfn "$SERVER" "$mine"
  SOLVERPILOT_SERVER_DIR=$SERVER/jobs/..
  refused "$SERVER/jobs/.. is named through \"..\": name it without"
  chown -h "$(id -u)" "$SERVER"
  SOLVERPILOT_SERVER_DIR=$mine
  run -0 wrapper job-chain true # every link on the way the user's own
  SOLVERPILOT_SERVER_DIR=$SERVER
  # a stat that prints a line more than it was asked is not read
  mkdir -p "$WORK/shim"
  printf '#!/bin/sh\nPATH=%s stat "$@"; echo "%s 700"\n' "$WRAPPER_PATH" "$(id -u)" >"$WORK/shim/stat"
  chmod 755 "$WORK/shim/stat"
  use_path "$WORK/shim:$WRAPPER_PATH"
  refused "stat cannot read $SERVER"
  use_path "$(userland_path)"
  # the user's own link to no folder, or to a file: refused
  rm -f "$SERVER"
  ln -s "$BATS_TEST_TMPDIR/none" "$SERVER"
  refused "stat cannot read $SERVER"
  rm -f "$SERVER"
  touch "$WORK/file"
  ln -s "$WORK/file" "$SERVER"
  refused "stat cannot read $SERVER"
}

@test "a setgid server folder (as mkdir makes it in a setgid parent) is the user's alone: accepted" {
  mkdir -m 700 "$SERVER"
  chmod 2700 "$SERVER"
  run -0 wrapper job-setgid true
  assert_equal "$(state_field job-setgid status)" "\"completed\""
}

@test "a link planted at the temporary state file is never written through" {
  echo precious >"$WORK/victim"
  start_wrapper job-tmp sh -c 'while [ ! -e "$0/go" ]; do sleep 0.05; done' "$WORK"
  poll_until 10 file_has "$SERVER/jobs/job-tmp.status" running || fail "no running state"
  local pid
  pid=$(state_field job-tmp pid)
  ln -s "$WORK/victim" "$SERVER/jobs/job-tmp.status.$pid.tmp"
  touch "$WORK/go"
  wait_rc "$WPID"
  assert_equal "$RC" 0
  assert_equal "$(cat "$WORK/victim")" precious
  [[ -f $SERVER/jobs/job-tmp.status && ! -L $SERVER/jobs/job-tmp.status ]]
  assert_equal "$(state_field job-tmp status)" '"completed"'
}

@test "everything a run creates is 0700 or 0600, and the job keeps the caller's umask" {
  local mask
  for mask in 0000 0022 0002; do
    rm -rf "$SERVER"
    (umask "$mask" && exec "${WRAPPER_CMD[@]}" "job-$mask" sh -c 'umask >"$0/umask"' "$WORK")
    assert_equal "$(cat "$WORK/umask")" "$mask"
    run -0 stat -c '%a %n' "$SERVER" "$SERVER/jobs" "$SERVER/locks" "$SERVER/server.db" \
      "$SERVER/jobs/job-$mask.status" "$SERVER/locks/job-$mask.lock"
    assert_output "700 $SERVER
700 $SERVER/jobs
700 $SERVER/locks
600 $SERVER/server.db
600 $SERVER/jobs/job-$mask.status
600 $SERVER/locks/job-$mask.lock"
  done
}

# no_proc CMD...: CMD in a mount namespace where /proc (and SP_ROOT's) is an empty tmpfs
no_proc_cmd() {
  NO_PROC_CMD=(unshare --mount sh -c 'mount -t tmpfs tmpfs /proc &&
    { [ -z "$SP_ROOT" ] || mount -t tmpfs tmpfs "$SP_ROOT/proc"; } && exec "$@"' sh)
}

@test "without /proc a TERM still stops the job and the rest of its group, and is recorded" {
  require_or_skip "needs unshare (util-linux)" command -v unshare
  no_proc_cmd
  "${NO_PROC_CMD[@]}" sh -c '[ ! -e /proc/self/stat ]' || fail "/proc is still there"
  export SOLVERPILOT_KILL_GRACE=2
  # the job: its main process, and a child that ignores TERM (KILL at the grace ends it)
  (exec "${NO_PROC_CMD[@]}" "${WRAPPER_CMD[@]}" job-noproc sh -c '
    sh -c "trap \"\" TERM; echo \$\$ >\"$0/grandchild.pid\"; exec sleep 60" &
    echo $$ >"$0/child.pid"; exec sleep 60' "$WORK") >"$WORK/out" 2>"$WORK/err" 3>&- &
  WPID=$!
  STARTED+=("$WPID")
  poll_until 10 file_has "$SERVER/jobs/job-noproc.status" running || fail "no running state"
  poll_until 10 test -s "$WORK/grandchild.pid" || fail "the job did not start"
  assert_equal "$(state_field job-noproc start_ticks)" null
  kill -TERM "$WPID"
  poll_until 8 not_alive "$WPID" || fail "the wrapper still runs 8 s after TERM"
  wait_rc "$WPID"
  assert_equal "$RC" 143
  not_alive "$(cat "$WORK/child.pid")" || fail "the job still runs"
  poll_until 3 not_alive "$(cat "$WORK/grandchild.pid")" || fail "the job's child still runs"
  assert_equal "$(state_field job-noproc status)" '"failed"'
  assert_equal "$(state_field job-noproc exit_code)" 143
  assert_equal "$(state_field job-noproc signal)" '"TERM"'
  assert_equal "$(db_row job-noproc)" 'failed|143|1'
}

@test "without /proc a job that ends on its own keeps its own status" {
  require_or_skip "needs unshare (util-linux)" command -v unshare
  no_proc_cmd
  run -3 "${NO_PROC_CMD[@]}" "${WRAPPER_CMD[@]}" job-noproc-end sh -c 'exit 3'
  assert_equal "$(state_field job-noproc-end exit_code)" 3
  assert_equal "$(state_field job-noproc-end cpu_user_s)" 0.0
}

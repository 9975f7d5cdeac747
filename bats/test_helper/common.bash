# Shared set-up for the wrapper's behaviour tests.
#
# Environment (tests/run_all.sh sets it for each profile):
#   SP_WRAPPER   the rendered job_wrapper.sh under test (mode 0755)
#   SP_USERLAND  "gnu" (the host's GNU tools), "busybox" (a folder of busybox-static applets
#                plus bash, sqlite3 and flock, as on Alpine) or "host" (whatever PATH has,
#                as in Dockerfile.test)
#   SP_BASH      optional: a bash binary (an old release built by tests/build_bash.sh) that
#                runs the wrapper as `SP_BASH -p job_wrapper.sh ...`, as the #! line would on
#                a host whose /bin/bash it is; default: the #! line
#   SP_ROOT      optional: a Debian root filesystem (tests/build_rootfs.sh) the wrapper runs in,
#                through chroot, with that root's own bash, coreutils, sqlite3 and flock; the
#                harness (bats, its checks) stays outside. The test folders and SP_WRAPPER must
#                be seen at the same paths inside (tests/run_all.sh bind-mounts them).
#   SP_STRESS_RUNS  runs per stress test (default 300)
# Outside CI a test that needs root or a missing tool is skipped with the reason; with CI set
# it fails instead.

bats_require_minimum_version 1.5.0

common_setup() {
  bats_load_library bats-support
  bats_load_library bats-assert
  [[ -x ${SP_WRAPPER:-} ]] || fail "SP_WRAPPER must name a rendered, executable wrapper"
  export SOLVERPILOT_SERVER_DIR="$BATS_TEST_TMPDIR/server"
  export SOLVERPILOT_KILL_GRACE=10
  SERVER=$SOLVERPILOT_SERVER_DIR
  IN_ROOT=() # the prefix that runs a command where the wrapper runs
  [[ -z ${SP_ROOT:-} ]] || IN_ROOT=("$(in_root_command)")
  DB=$SERVER/server.db
  WORK=$BATS_TEST_TMPDIR/work
  STARTED=()
  mkdir -p "$WORK"
  use_path "$(userland_path)"
}

# use_path DIR...: the PATH the wrapper runs with. Run as a user runs it, with every signal at
# its default (a shell's background jobs inherit INT and QUIT ignored, nohup HUP).
use_path() {
  WRAPPER_PATH=$1
  # with SP_BASH, as its #! line would run it were SP_BASH the host's /bin/bash; with SP_ROOT,
  # inside that root, where its #! line names the root's own /bin/bash
  WRAPPER_CMD=("${IN_ROOT[@]}" env --default-signal PATH="$WRAPPER_PATH"
    ${SP_BASH:+"$SP_BASH" -p} "$SP_WRAPPER")
}

# in_root_command: an executable that runs its arguments inside SP_ROOT through chroot, in the
# caller's directory when the root has it (chroot alone would start them in /), else in /.
# Each step execs the next: the wrapper keeps the pid the test started.
in_root_command() {
  local cmd=$BATS_RUN_TMPDIR/in-root
  if [[ ! -x $cmd ]]; then
    printf '%s
' '#!/bin/sh' 'dir=$PWD' '[ -d "$SP_ROOT$dir" ] || dir=/' \
      'exec chroot "$SP_ROOT" /usr/bin/env -C "$dir" "$@"' >"$cmd.new"
    chmod 755 "$cmd.new"
    mv "$cmd.new" "$cmd"
  fi
  printf '%s' "$cmd"
}

# bash_is_42: the wrapper runs under bash 4.2, whose documented limits some tests name.
bash_is_42() {
  [[ $("${SP_BASH:-/bin/bash}" -c 'echo "${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}"') == 4.2 ]]
}

# require_or_skip COND_DESCRIPTION CMD...: run CMD; when it fails, skip (or fail in CI).
require_or_skip() {
  local why=$1
  shift
  "$@" >/dev/null 2>&1 && return 0
  [[ -n ${CI:-} ]] && fail "cannot run in CI: $why"
  skip "$why"
}

# The PATH the wrapper runs with: the host's, a chroot's, or a busybox userland built once per run.
userland_path() {
  if [[ -n ${SP_ROOT:-} ]]; then
    printf '%s' /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    return
  fi
  if [[ ${SP_USERLAND:-gnu} != busybox ]]; then # gnu or host
    printf '%s' "$PATH"
    return
  fi
  local dir=$BATS_RUN_TMPDIR/busybox-userland bb tool
  if [[ ! -d $dir ]]; then
    bb=$(command -v busybox) || fail "busybox not found (apt-get install busybox-static)"
    mkdir -p "$dir.new"
    for tool in $("$bb" --list); do ln -s "$bb" "$dir.new/$tool"; done
    for tool in bash sqlite3 flock; do
      ln -sf "$(command -v "$tool")" "$dir.new/$tool" || fail "$tool not found"
    done
    mv "$dir.new" "$dir" 2>/dev/null || rm -rf "$dir.new"
  fi
  printf '%s' "$dir"
}

# A PATH with the userland's tools but without sqlite3 (in a chroot, links to the root's own).
path_without_sqlite() {
  local dir=$BATS_TEST_TMPDIR/no-sqlite f root=${SP_ROOT:-}
  mkdir -p "$dir"
  local IFS=:
  for f in $WRAPPER_PATH; do
    set -- "$root$f"/*
    [[ -e $1 ]] || continue
    # one ln per folder (a fork per tool took 20 s); an earlier folder's tool is kept, as PATH
    # would find it; in a chroot the links name the root's own paths
    ln -s -- "${@#"$root"}" "$dir"/ 2>/dev/null
  done
  rm -f -- "$dir/sqlite3"
  printf '%s' "$dir"
}

wrapper() { "${WRAPPER_CMD[@]}" "$@"; }

# poll_until DEADLINE_SECONDS CMD...: true as soon as CMD succeeds, false at the deadline.
poll_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# state_field ID KEY: one field of a job's state file, printed as JSON.
state_field() {
  python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))[sys.argv[2]]))' \
    "$SERVER/jobs/$1.status" "$2"
}

db_row() { # db_row ID: status|exit_code|completed_at? of the job's DB row (waits for a writer)
  sqlite3 -cmd ".timeout 5000" "$DB" "SELECT status, exit_code, completed_at IS NOT NULL FROM jobs WHERE id = '$1'"
}

file_has() { [[ -s $1 ]] && grep -q -- "$2" "$1"; }

# alive PID: the process exists and is not a zombie.
alive() {
  local s
  { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 1
  s=${s##*) }
  [[ ${s:0:1} != Z ]]
}

not_alive() { ! alive "$1"; }

# start_wrapper ID CMD...: run the wrapper in the background; sets WPID. Its stdout and stderr
# go to $WORK/ID.out and $WORK/ID.err; fd 3 (bats' own) is closed so a leftover cannot hang bats.
start_wrapper() {
  local id=$1
  (exec "${WRAPPER_CMD[@]}" "$@") >"$WORK/$id.out" 2>"$WORK/$id.err" 3>&- &
  WPID=$!
  STARTED+=("$WPID")
}

# common_teardown: stop what this test started, even when it failed half-way. Test jobs end
# when $WORK/go exists, the lock holder on $WORK/release, the state reader on $WORK/stop; the
# wrappers stop their jobs on TERM; child.pid and grandchild.pid name processes a test left
# running on purpose.
common_teardown() {
  local pid
  touch "$WORK/go" "$WORK/release" "$WORK/stop"
  for pid in $(cat "$WORK/child.pid" "$WORK/grandchild.pid" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    poll_until 15 not_alive "$pid" || kill -KILL "$pid" 2>/dev/null || true
  done
}

# wait_rc PID: RC becomes the exit status of a background process of this shell.
wait_rc() {
  RC=0
  wait "$1" || RC=$?
}

# hold_db_lock: take an exclusive lock on $DB with the sqlite3 CLI until release_db_lock.
hold_db_lock() {
  mkdir -p "$SERVER"
  rm -f "$WORK/release"
  {
    # .timeout: a wrapper's own write may hold the DB this moment; the lock waits for it
    printf '.timeout 10000\nBEGIN EXCLUSIVE;\nSELECT '\''locked'\'';\n'
    while [[ ! -e $WORK/release ]]; do sleep 0.05; done
    printf 'COMMIT;\n'
  } 3>&- | sqlite3 -bail "$DB" >"$WORK/locker.out" 3>&- &
  LOCKER=$!
  poll_until 10 file_has "$WORK/locker.out" locked || fail "could not lock the database"
}

release_db_lock() {
  touch "$WORK/release"
  wait "$LOCKER"
}

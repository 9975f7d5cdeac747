#!/usr/bin/env bash
# job_wrapper.sh: run one SolverPilot job and record how it ended.
# Rendered by sp-deploy 0.1.0 for profile alpine (Alpine 3.18+).
# Usage: job_wrapper.sh JOB_ID COMMAND [ARG...]    JOB_ID: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$
#   Files under ${SOLVERPILOT_SERVER_DIR:-$HOME/.solverpilot-server}: server.db (table jobs),
#   jobs/JOB_ID.status (JSON, replaced by rename), locks/JOB_ID.lock (flock, held by the job).
#   On HUP INT QUIT TERM USR1 USR2 ALRM the job's process group gets TERM, then KILL after
#   SOLVERPILOT_KILL_GRACE seconds (default 10).
# Exit codes: the job's own; 128+N when the job or the wrapper died of signal N (HUP 129,
#   INT 130, TERM 143); 64 usage error or invalid JOB_ID (nothing written); 73 initial state
#   cannot be written; 75 JOB_ID already running. On 64, 73 and 75 the command is not run.
# Limitations: SIGKILL of the wrapper cannot be recorded; the state stays "running" with pid,
#   host and boot_id, and the lock stays held while any job process lives, so a reconciler
#   can tell "still running" from "lost". A job exiting 129-192 itself reads as killed by a
#   signal. Processes that leave the job's process group escape the stop.
set -u

readonly INSTALL_HINT='apk add bash sqlite flock'
readonly DB_WARNING='WARNING: Failed to update SQLite, state file written'
readonly SCHEMA='CREATE TABLE IF NOT EXISTS jobs ( id TEXT PRIMARY KEY, status TEXT NOT NULL, started_at TEXT, completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT );'
SIGNALS=(HUP INT QUIT TERM USR1 USR2 ALRM) CHILD='' SIGNAL=''

die() { trap - EXIT; printf 'job_wrapper: %s\n' "$2" >&2; exit "$1"; }
now() { # now VAR: ISO 8601 local time with offset, no fork
  printf -v "$1" '%(%Y-%m-%dT%H:%M:%S%z)T' -1
  printf -v "$1" '%s:%s' "${!1:0:-2}" "${!1: -2}"
}
json_str() { # json_str VAR TEXT: VAR becomes TEXT as a JSON string literal
  local LC_ALL=C s=$2 out='' c
  s=${s//\\/\\\\} s=${s//\"/\\\"}
  while [[ $s =~ ^([^[:cntrl:]]*)([[:cntrl:]])(.*)$ ]]; do
    printf -v c '\\u%04x' "'${BASH_REMATCH[2]}"
    out+=${BASH_REMATCH[1]}$c s=${BASH_REMATCH[3]}
  done
  printf -v "$1" '"%s%s"' "$out" "$s"
}
write_state() { # write_state STATUS [MORE_JSON]: replace the state file by rename
  local tmp="$STATE.$$.tmp"
  printf '{"id":"%s","status":"%s",%s%s}\n' "$JOB_ID" "$1" "$COMMON" "${2-}" 2>/dev/null >"$tmp" &&
    mv -f -- "$tmp" "$STATE" 2>/dev/null && return 0
  rm -f -- "$tmp" 2>/dev/null; return 1
}
db_write() { # db_write STATUS COMPLETED_AT EXIT_CODE (SQL literals); never fatal
  sqlite3 -init /dev/null -bail -cmd '.timeout 5000' "$DB" "BEGIN IMMEDIATE; $SCHEMA
INSERT INTO jobs (id, status) SELECT '$JOB_ID', '$1' WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = '$JOB_ID');
UPDATE jobs SET status = '$1', started_at = '$STARTED_AT', completed_at = $2, exit_code = $3,
  tmux_session_name = '${TMUX_NAME//\'/\'\'}' WHERE id = '$JOB_ID'; COMMIT;" >/dev/null 2>&1 ||
    printf '%s\n' "$DB_WARNING" >&2
}
group_alive() { # true while a process that is not a zombie is in the job's process group
  local f s
  for f in /proc/[0-9]*/stat; do
    { read -r s <"$f"; } 2>/dev/null || continue
    s=${s##*) }
    [[ ${s:0:1} != [ZX] ]] && s=${s#* * } && [[ ${s%% *} == "$CHILD" ]] && return 0
  done
  return 1
}
on_signal() { # on_signal NAME: stop the job's process group, then exit 128+N
  trap '' "${SIGNALS[@]}"
  CHILD=${!-}
  if [[ -n $CHILD ]] && ! kill -TERM -- "-$CHILD" 2>/dev/null && ! kill -TERM "$CHILD" 2>/dev/null; then
    wait "$CHILD" 2>/dev/null
    exit # the job had already ended on its own: keep its status
  fi
  SIGNAL=$1
  local i end=$((SECONDS + 10#$GRACE)) # the wall clock bounds the wait, even on a busy host
  for ((i = 10#$GRACE * 10; i > 0 && SECONDS <= end; i--)); do group_alive || break; sleep 0.1; done
  kill -KILL -- "-$CHILD" 2>/dev/null
  wait "$CHILD" 2>/dev/null
  exit $((128 + $(kill -l "$1")))
}
finish() { # EXIT trap: record how the job ended; further signals are ignored meanwhile
  local rc=$1 status=failed sig=null end
  trap '' "${SIGNALS[@]}"
  ((rc == 0)) && status=completed
  if [[ -n $SIGNAL ]]; then sig="\"$SIGNAL\""; elif ((rc > 128 && rc <= 192)); then sig="\"$(kill -l "$rc")\""; fi
  now end
  write_state "$status" ",\"exit_code\":$rc,\"completed_at\":\"$end\",\"signal\":$sig" ||
    printf 'job_wrapper: cannot write state file %s\n' "$STATE" >&2
  db_write "$status" "'$end'" "$rc"
}

(($# >= 2)) || die 64 'usage: job_wrapper.sh JOB_ID COMMAND [ARG...]'
JOB_ID=$1 GRACE=${SOLVERPILOT_KILL_GRACE:-10}
shift
[[ $JOB_ID =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] || die 64 'invalid JOB_ID: use 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit'
[[ $GRACE =~ ^[0-9]{1,6}$ ]] || die 64 'SOLVERPILOT_KILL_GRACE must be a whole number of seconds'
BASE=${SOLVERPILOT_SERVER_DIR:-$HOME/.solverpilot-server}
DB=$BASE/server.db STATE=$BASE/jobs/$JOB_ID.status LOCK=$BASE/locks/$JOB_ID.lock
hash flock setsid mv 2>/dev/null || die 73 "flock, setsid or mv not found; install them: $INSTALL_HINT"
[[ -d $BASE/jobs && -d $BASE/locks ]] || mkdir -p -- "$BASE/jobs" "$BASE/locks" 2>/dev/null ||
  die 73 "cannot create $BASE/jobs and $BASE/locks"
{ exec 200>>"$LOCK"; } 2>/dev/null || die 73 "cannot open lock file $LOCK"
flock -n 200 || die 75 "job $JOB_ID is already running (lock $LOCK is held)"

RUN_USER=${USER:-$(id -un 2>/dev/null)} BOOT_ID=null
TMUX_NAME="solverpilot_${RUN_USER}_${JOB_ID:0:8}"
{ read -r boot_id </proc/sys/kernel/random/boot_id && json_str BOOT_ID "$boot_id"; } 2>/dev/null
json_str J_USER "$RUN_USER"; json_str J_HOST "$HOSTNAME"; now STARTED_AT
COMMON="\"started_at\":\"$STARTED_AT\",\"user\":$J_USER,\"pid\":$$,\"host\":$J_HOST,\"boot_id\":$BOOT_ID"
# shellcheck disable=SC2064 # each trap names its own signal, expanded now on purpose
for sig in "${SIGNALS[@]}"; do trap "on_signal $sig" "$sig"; done
trap 'finish "$?"' EXIT # from here on, a signal is recorded as the end of the job
write_state running || die 73 "cannot write state file $STATE (disk full or folder not writable?)"
db_write running NULL NULL
setsid "$@" <&0 & # own process group, so a stop reaches grandchildren; explicit stdin
trap '' PIPE; wait "$!" 2>/dev/null

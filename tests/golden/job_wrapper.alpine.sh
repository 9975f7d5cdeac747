#!/bin/bash -p
# job_wrapper.sh: run one SolverPilot job and record how it ended.
# Rendered by sp-deploy 0.1.0 for profile alpine (Alpine 3.18+).
# Usage: job_wrapper.sh JOB_ID COMMAND [ARG...]    JOB_ID: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$
#   (and --submit, --advance, --slots: the queues; --sync: the DB; at the end of this file)
# Time limit: SOLVERPILOT_TIME_LIMIT=SECONDS ends the job at that limit as a stop does (TERM,
#   recorded with "reason":"time limit"), INT going to its group SOLVERPILOT_SAVE_BEFORE s
#   before (a solver saves its best solution); a job that then ends itself keeps the reason.
#   Files under ${SOLVERPILOT_SERVER_DIR:-$HOME/.solverpilot-server}: server.db (table jobs),
#   jobs/JOB_ID.status (JSON, replaced by rename), locks/JOB_ID.lock (flock, held by the job).
#   The state names pid, host, boot_id and slurm_job_id (SOLVERPILOT_SLURM_JOB_ID, which only
#   the Slurm batch script sets, else null; with slurm_attempt, its SOLVERPILOT_SLURM_ATTEMPT).
#   They must be the user's alone (owner, no group/other write, no linked subfolder): else 73.
#   The wrapper creates folders 0700, files 0600; the job keeps the caller's umask.
# Signals: on HUP INT QUIT TERM USR1 USR2 ALRM the stop is recorded at once (failed, 128+N, the
#   signal's name) and the same signal goes to the job's process group; once the job's main
#   process has exited, the rest of the group gets TERM; whatever still lives when
#   SOLVERPILOT_KILL_GRACE seconds (default 10) have passed since the first signal gets KILL.
#   A signal that comes after the job ended on its own changes nothing. The stop's record is
#   written as soon as the signal is forwarded, before any wait for the job, so a KILL of the
#   wrapper during the grace (Slurm's KillWait, a service manager's timeout) keeps it; the
#   wrapper's exit then brings completed_at up to date.
# Environment: runs as `bash -p` (restarts so when run as `bash job_wrapper.sh`), so the
#   caller's BASH_ENV, SHELLOPTS, BASHOPTS and exported functions cannot change it; they still
#   reach the job. The job starts with the caller's signal dispositions, except under bash 4.2,
#   which cannot undo its own ignoring of INT and QUIT for background jobs.
# Exit codes: the job's own; 128+N when the job or the wrapper died of signal N (HUP 129,
#   INT 130, TERM 143); 64 usage error, invalid JOB_ID or no HOME (nothing written); 73 initial
#   state cannot be written, or an unsafe server folder (see Usage); 75 JOB_ID already running, or a process of its earlier run still
#   holds its lock (the message names the pid). On 64, 73 and 75 the command is not run.
# Limitations: a signal that comes before the wrapper's first lines have run (its first few
#   milliseconds; longer when run as `bash job_wrapper.sh` with a BASH_ENV, which runs
#   first) either ends it unrecorded, the job never starting, or, for QUIT (which bash ignores
#   until a trap is set) and INT, is lost. SIGKILL of the wrapper before a stop cannot be
#   recorded; the state stays "running" with pid, host and boot_id, and the lock stays held
#   while any job process lives, so a reconciler can tell "still running" from "lost". A job
#   exiting 129-192 itself reads as killed by a signal. Processes that leave the job's process
#   group escape the stop. Two different stop signals within the same moment before the job
#   starts may be recorded by either name (bash runs pending traps in signal-number order).
#   Three Ctrl-C's (INT to the group) while the final DB write waits for a lock end that
#   sqlite3 (it handles INT itself): the state file has the end, the DB does not (the warning
#   says so). Without /proc (a chroot, a sandbox) a stop still stops the job (kill -0), but
#   start_ticks is null, cpu and wall seconds 0, and exit 75 names no pid.
if [ -z "${BASH_VERSION-}" ]; then echo 'job_wrapper: run it with bash' >&2; exit 64; fi
# run as `bash job_wrapper.sh`: restart as `bash -p`, with the stop signals back to the caller's
# dispositions (a BASH_ENV may have ignored them; what the caller ignored stays ignored)
case $- in *p*) ;; *) trap - HUP INT QUIT TERM USR1 USR2 ALRM && exec "$BASH" -p -- "$0" "$@" ;; esac
set +aefkmtvxCET +o pipefail +o posix -hBu

readonly INSTALL_HINT='apk add bash sqlite flock'
readonly DB_WARNING='WARNING: Failed to update SQLite, state file written'
readonly SCHEMA='CREATE TABLE IF NOT EXISTS jobs ( id TEXT PRIMARY KEY, status TEXT NOT NULL, started_at TEXT, completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT, signal TEXT, reason TEXT, name TEXT, queue TEXT, submitted_at TEXT );'
# valid UTF-8, byte by byte: JSON strings must be UTF-8
readonly UTF8=$'^([\x01-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})*$'
SIGNALS=(HUP INT QUIT TERM USR1 USR2 ALRM)
SIGNAL='' LATE='' FINAL='' SAYS='' PENDING='' CHILD='' QUIET='' STOPPING='' NO_PROC=''
TIMER='' REASON='' LIMIT_INT=''
SEEN=() SENT=0
# Everything is in functions and main runs last, so bash has parsed the whole script before any
# trap is set: bash 5.2 can run a trap inside its parser and lose it while reading a $( ).

warn() { (trap '' PIPE; printf '%s\n' "$1" >&2); } # stderr's reader may have gone: no SIGPIPE
shown() { local LC_ALL=C; printf -v "$1" '%s' "${2//[[:cntrl:]]/?}"; } # shown VAR TEXT: no controls
die() { # die CODE MESSAGE: one line on stderr, its control characters shown as ?; no stop signal
  trap - EXIT && trap '' "${SIGNALS[@]}" PIPE # can cut it short (nor kill a subshell of it)
  shown MESSAGE "$2" && printf 'job_wrapper: %s\n' "$MESSAGE" >&2
  exit "$1"
}
now() { # now VAR: ISO 8601 local time with offset, no fork
  printf -v "$1" '%(%Y-%m-%dT%H:%M:%S%z)T' -1
  printf -v "$1" '%s:%s' "${!1:0:-2}" "${!1: -2}"
}
json_str() { # json_str VAR TEXT: VAR becomes TEXT as a JSON string literal; text that is
  # not UTF-8 is read as Latin-1, so that the file stays valid JSON
  local LC_ALL=C s=$2 out='' c keep='[^[:cntrl:]]' odd='[[:cntrl:]]'
  [[ $s =~ $UTF8 ]] || keep='[ -~]' odd='[^ -~]'
  s=${s//\\/\\\\} s=${s//\"/\\\"}
  while [[ $s =~ ^($keep*)($odd)(.*)$ ]]; do
    printf -v c '\\u%04x' "'${BASH_REMATCH[2]}"
    out+=${BASH_REMATCH[1]}$c s=${BASH_REMATCH[3]}
  done
  printf -v "$1" '"%s%s"' "$out" "$s"
}
valid_id() { local LC_ALL=C; [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]]; }
helper() { # helper COMMAND...: braced, bash's "Terminated" line goes to /dev/null too; again
  # when a signal to the whole group killed it (the trap noted that signal for the record), up
  # to 10 times: a burst of stops to the group must not read as the command's own failure
  local _
  for _ in 1 2 3 4 5 6 7 8 9 10; do { "$@"; } 2>/dev/null && return 0; (($? > 128)) || return 1; done
  return 1
}
write_state() { # write_state STATUS [MORE_JSON]: replace the state file by rename (the
  local tmp="$STATE.$$.tmp" # temporary file created new: noclobber, set in main)
  [[ ! -d $STATE ]] || return 1 # mv would move the file into it
  [[ ! -e $tmp && ! -L $tmp ]] || helper rm -f -- "$tmp" # a killed wrapper's, or a planted link
  printf '{"id":"%s","status":"%s",%s%s}\n' "$JOB_ID" "$1" "$COMMON" "${2-}" 2>/dev/null >"$tmp" &&
    helper mv -f -- "$tmp" "$STATE" && SAYS=$1 && return 0
  rm -f -- "$tmp" 2>/dev/null
  return 1
}
db_write() { # db_write STATUS COMPLETED_AT EXIT_CODE [BUSY_MS] (SQL literals): one transaction, of
  # the first version's columns (any table of them works; --sync, kicked by finish, does the rest)
  helper sqlite3 -init /dev/null -bail -cmd ".timeout ${4:-5000}" "$DB" "BEGIN IMMEDIATE; $SCHEMA
INSERT INTO jobs (id, status) SELECT '$JOB_ID', '$1' WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = '$JOB_ID');
UPDATE jobs SET status = '$1', started_at = '$STARTED_AT', completed_at = $2, exit_code = $3,
  tmux_session_name = '$SQL_TMUX_NAME' WHERE id = '$JOB_ID'; COMMIT;" >/dev/null 2>&1
}
running() { # running PID: the process exists and is not a zombie; without /proc, kill -0
  # reaches it (bash reaps its child at once). No bare `return`: in a trap, the earlier status
  local s
  [[ -z $NO_PROC ]] || { kill -0 "$1" 2>/dev/null && return 0; return 1; }
  { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 1
  s=${s##*) }
  [[ ${s:0:1} != [ZX] ]]
}
group_alive() { # true while a process that is not a zombie is in the job's process group
  local f s # without /proc: while kill -0 reaches the group (zombies too, until reaped)
  [[ -z $NO_PROC ]] || { kill -0 -- "-$CHILD" 2>/dev/null && return 0; return 1; }
  for f in /proc/[0-9]*/stat; do
    { read -r s <"$f"; } 2>/dev/null || continue
    s=${s##*) }
    [[ ${s:0:1} != [ZX] ]] && s=${s#* * } && [[ ${s%% *} == "$CHILD" ]] && return 0
  done
  return 1
}
quiet() { # from here on, stderr is for the wrapper's own messages only (fd 201): bash's own
  # "Killed" job reports and trap warnings would add to the job's stderr
  [[ -z $QUIET ]] || return 0
  QUIET=1
  exec 201>&2 2>/dev/null || exec 201>/dev/null 2>/dev/null # stderr may be closed
}
signum() { # signum NAME: SIGNUM becomes its number on Linux (x86, ARM, POWER, s390, RISC-V),
  # without a $( ), which bash 5.2 can break by running a trap inside its parser
  case $1 in
    HUP) SIGNUM=1 ;; INT) SIGNUM=2 ;; QUIT) SIGNUM=3 ;; USR1) SIGNUM=10 ;;
    USR2) SIGNUM=12 ;; ALRM) SIGNUM=14 ;; TERM) SIGNUM=15 ;; *) SIGNUM=0 ;;
  esac
}
# bash < 5.0 keeps the SIGINT handler of a `wait` that a trap cut short, and the next foreground
# command makes it stick (an INT then re-raises itself forever): set the INT trap's own again
rearm_int() { trap 'on_signal INT' INT; }
grace_left() { ((TICKS-- > 0 && SECONDS <= STOP_END)); } # counted and by the wall clock
forward_seen() { # each stop signal not yet forwarded to the job's process group, in order; to
  # its pid (and again to the group at the next poll) while it has none yet, just after the fork
  while ((SENT < ${#SEEN[@]})); do
    if ! kill -s "${SEEN[SENT]}" -- "-$CHILD" 2>/dev/null; then
      kill -s "${SEEN[SENT]}" "$CHILD" 2>/dev/null
      return
    fi
    SENT=$((SENT + 1))
  done
}
# shellcheck disable=SC2329 # invoked by the traps set in main
on_signal() { # on_signal NAME: the trap of every stop signal
  SEEN+=("$1") # first: a signal that comes while another is handled is noted, in order
  [[ -z $FINAL && -z $STOPPING ]] || return 0 # during a stop, its poll forwards the rest
  STOPPING=1
  local pid
  set +u
  pid=${CHILD:-$!} # $! unset until the job is forked (bash 4 fails on ${!-}); the timer's after
  set -u
  if [[ -n $pid ]] && ! running "$pid"; then # the job ended on its own
    LATE=$1 STOPPING='' SEEN=()
    return 0
  fi
  SIGNAL=${SEEN[0]}
  [[ -n $pid ]] || exit # the job never starts: finish records the stop
  CHILD=$pid
  stop_job
}
proc_clock() { # PROC_TICKS (start, clock ticks since boot), PROC_CU and PROC_CS (the CPU of
  # waited-for children, hundredths of s: Linux reports USER_HZ 100), PROC_UP (uptime,
  # hundredths); read, not run: `times` would need a $( ) or a file to be read back
  local s f
  PROC_TICKS=null PROC_CU=0 PROC_CS=0 PROC_UP=0
  { read -r s <"/proc/$$/stat" && read -r PROC_UP _ </proc/uptime; } 2>/dev/null || return 0
  # shellcheck disable=SC2206 # split on spaces on purpose: the fields after "pid (comm) "
  f=(${s##*) })
  PROC_TICKS=${f[19]:-null} PROC_CU=${f[13]:-0} PROC_CS=${f[14]:-0} PROC_UP=${PROC_UP/./}
}
seconds() { printf -v "$1" '%d.%02d' $(($2 / 100)) $(($2 % 100)); } # seconds VAR HUNDREDTHS
record() { # record STATUS RC SIGNAL_JSON [BUSY_MS]: the final state, with the job's CPU and
  # wall seconds so far, in both stores; sets ST_OK and DB_OK
  local end cu cs wall
  now end
  proc_clock
  seconds cu $((10#$PROC_CU - CU0)); seconds cs $((10#$PROC_CS - CS0))
  seconds wall $((10#$PROC_UP - UP0))
  ST_OK='' DB_OK=''
  write_state "$1" ",\"exit_code\":$2,\"completed_at\":\"$end\",\"signal\":$3,\"cpu_user_s\":$cu,\"cpu_sys_s\":$cs,\"wall_s\":$wall${REASON:+,\"reason\":\"$REASON\"}" && ST_OK=1
  db_write "$1" "'$end'" "$2" "${4-}" && DB_OK=1
}
stop_job() { # the signals go to the job and the stop is recorded at once (the DB waits at
  # most 1 s for a lock here: the final write waits longer); then the job's answer, TERM to
  # the rest of the group, KILL when the grace runs out; then exit
  TICKS=$((10#$GRACE * 10)) STOP_END=$((SECONDS + 10#$GRACE)) # the grace starts now
  rearm_int
  quiet
  forward_seen
  signum "$SIGNAL"
  record failed "$((128 + SIGNUM))" "\"$SIGNAL\"" 1000
  while running "$CHILD" && grace_left; do
    forward_seen
    sleep 0.1
  done
  if ! running "$CHILD"; then
    kill -TERM -- "-$CHILD" 2>/dev/null
    while group_alive && grace_left; do sleep 0.1; done
  fi
  group_alive && kill -KILL -- "-$CHILD" 2>/dev/null
  wait "$CHILD"
  exit
}
# shellcheck disable=SC2329 # invoked by the EXIT trap
finish() { # EXIT trap: the final record, and exactly what could not be written
  FINAL=1
  local rc=$1 status=failed sig=null
  quiet # first: a signal pending when the next line ignores it makes bash warn on stderr
  trap '' "${SIGNALS[@]}" PIPE XCPU
  [[ -z $TIMER ]] || kill "$TIMER" 2>/dev/null
  if [[ -n $SIGNAL ]]; then
    signum "$SIGNAL"
    rc=$((128 + SIGNUM)) sig="\"$SIGNAL\""
  elif ((rc > 128 && rc <= 192)); then
    sig=$(kill -l "$rc" 2>/dev/null) && [[ -n $sig ]] && sig="\"$sig\"" || sig=null
  fi
  ((rc == 0)) && status=completed
  record "$status" "$rc" "$sig"
  shown SHOWN "$STATE" # the messages below: one line each
  if [[ -n $ST_OK && -z $DB_OK ]]; then
    printf '%s\n' "$DB_WARNING" >&201
  elif [[ -z $ST_OK && -n $DB_OK ]]; then
    printf 'job_wrapper: cannot write state file %s (it still says "%s"); the database has the final state\n' "$SHOWN" "$SAYS" >&201
  elif [[ -z $ST_OK ]]; then
    printf 'job_wrapper: final state NOT recorded: cannot write state file %s (it still says "%s") nor update the database\n' "$SHOWN" "$SAYS" >&201
  fi
  # the queues go on, the DB row gets what it lacks (apart; not on a Slurm node, whose tmux is
  # not the login node's), with the signals ignored here back to their defaults, which a tmux
  # server it starts would pass to every pane; but HUP: the pane's hangup must not end it early
  [[ $SLURM_ID == null ]] && [[ -d $BASE/queues || -f $BASE/jobs/$JOB_ID.spec || (-z $DB_OK && -f $DB) ]] &&
    (trap - INT QUIT TERM USR1 USR2 ALRM PIPE XCPU && exec setsid -- "$0" --advance "$JOB_ID" </dev/null >/dev/null 2>&1 200>&- 201>&- &)
  exit "$rc"
}
# shellcheck disable=SC2329 # invoked by the XCPU trap
on_limit() { # the timer's XCPU: INT to the job's group SAVE s before the limit, then the stop
  REASON="time limit ($LIMIT s)"
  if ((SAVE > 0)) && [[ -z $LIMIT_INT ]]; then
    LIMIT_INT=1
    kill -s INT -- "-$CHILD" 2>/dev/null
    return 0
  fi
  on_signal TERM
}
timer() { # XCPU to the wrapper at LIMIT-SAVE s and at LIMIT s, while it is still the parent; it
  # looks every 5 s: a TERM from finish can be lost (to a sleep not yet exec'd, its TERM trapped,
  # or in the fork), and then it ends within 5 s of the wrapper, not at the limit
  local s p='' stop='' t w=$((LIMIT - SAVE))
  trap - EXIT "${SIGNALS[@]}" && trap 'stop=1 && kill -KILL "$p" 2>/dev/null' TERM
  exec 200>&- 201>&- >/dev/null 2>&1 # the lock is the job's alone
  for w in "$((w > 0 ? w : 0))" "$((SAVE < LIMIT ? SAVE : LIMIT))"; do
    while ((w > 0)); do
      t=$((w < 5 ? w : 5)) && w=$((w - t))
      sleep "$t" & p=$!
      [[ -z $stop ]] && wait "$p" && [[ -z $stop ]] || { kill -KILL "$p" 2>/dev/null; exit 0; }
      { read -r s <"/proc/$BASHPID/stat"; } 2>/dev/null && s=${s##*) } && s=${s#* } && [[ ${s%% *} != "$$" ]] && exit 0
    done
    kill -s XCPU "$$" || exit 0
  done
}
server_dir() { # BASE: the server folder, absolute
  local LC_ALL=C # names read byte by byte: in UTF-8, "." matches no byte of an invalid sequence
  if [[ -n ${SOLVERPILOT_SERVER_DIR-} ]]; then
    BASE=$SOLVERPILOT_SERVER_DIR
  elif [[ -n ${HOME-} ]]; then
    BASE=$HOME/.solverpilot-server
  else
    die 64 'HOME is not set: set HOME or SOLVERPILOT_SERVER_DIR'
  fi
  [[ $BASE == /* ]] || BASE=$PWD/$BASE # never an option-like path; the same folder after a cd
  # no trailing / or /.: through them, a link's own owner would go unread; nor a "..", which
  # can name the folder through a link of another user (a/link/jobs/..)
  while [[ $BASE =~ ^(.+)/\.?$ ]]; do BASE=${BASH_REMATCH[1]}; done
  [[ /$BASE/ != */../* ]] || die 73 "unsafe server folder: $BASE is named through \"..\": name it without; the job was not run"
}
server_safe() { # the server folder and those of jobs/, locks/, logs/ that exist are the user's
  # alone: owned by the user, not writable by group or others, the subfolders no links (the
  # server folder may be the user's own link); one stat for all, read by a $( ) before any trap
  local d i out got=() paths=("$BASE" "$BASE/") l=$BASE LC_ALL=C # (as server_dir)
  for d in jobs locks logs; do
    [[ ! -L $BASE/$d ]] || { WHY="$BASE/$d is a symbolic link" && return 1; }
    [[ ! -e $BASE/$d ]] || paths+=("$BASE/$d")
  done
  while [[ -L $l ]] && ((${#paths[@]} < 45)); do # each link a link leads through: the user's too
    d=$(readlink -- "$l" && echo x) || { WHY="cannot read the link $l" && return 1; } # (x: a \n ending it)
    d=${d%?x} && while [[ $d =~ ^(.+)/\.?$ ]]; do d=${BASH_REMATCH[1]}; done # as server_dir's
    [[ $d == /* ]] && l=$d || l=${l%/*}/$d
    [[ ${l##*/} != .. ]] || { WHY="$l: a link names a folder through \"..\"" && return 1; }
    [[ ! -L $l ]] || paths+=("$l")
  done
  local IFS=$'\n' # not piped to mapfile: bash < 5.2 runs that apart when stdin is closed
  for i in 1 2 3 4 5 6 7 8 9 10; do # as helper: again after a signal, only the last run read
    out=$({ stat -c '%u %a' -- "${paths[@]}"; } 2>/dev/null) && break; (($? > 128)) || break
  done
  # shellcheck disable=SC2206 # "UID MODE" lines, split at newlines on purpose: no glob in them
  got=($out)
  ((${#got[@]} == ${#paths[@]})) || { WHY="stat cannot read $BASE" && return 1; }
  for i in "${!paths[@]}"; do
    [[ ${got[i]%% *} == "$EUID" ]] || { WHY="${paths[i]} is owned by uid ${got[i]%% *}, not by $RUN_USER" && return 1; }
    [[ -L ${paths[i]} ]] && continue # a link's own mode means nothing (the subfolders are none)
    [[ ${got[i]#* } =~ ^[0-7]+$ ]] && ((!(8#${got[i]#* } & 8#022))) && continue
    WHY="${paths[i]} can be written by group or others (mode ${got[i]#* })" && return 1
  done
}
lock_holder_message() { # the 75 message: who holds the lock
  local f pid='' comm='' state=''
  for f in /proc/[0-9]*/fd/200; do
    [[ $f != "/proc/$$/fd/200" && $f -ef $LOCK ]] && pid=${f#/proc/} && pid=${pid%%/*} && break
  done 2>/dev/null
  if [[ -z $pid ]]; then
    printf -v MESSAGE 'job %s is already running (lock %s is held)' "$JOB_ID" "$LOCK"
    return
  fi
  { read -r comm <"/proc/$pid/comm"; read -r -d '' state <"$STATE"; } 2>/dev/null
  if [[ $state == *'"status":"running"'* && $state == *"\"pid\":$pid,"* ]]; then
    printf -v MESSAGE 'job %s is already running (its wrapper, pid %s, holds lock %s)' "$JOB_ID" "$pid" "$LOCK"
  else
    printf -v MESSAGE 'job %s: a process of its earlier run still holds lock %s: pid %s (%s); stop it or let it end' "$JOB_ID" "$LOCK" "$pid" "${comm:-?}"
  fi
}

main() {
  local fd
  for fd in 0 1 2; do # a descriptor the caller had closed, on which bash opened this script
    [[ ! /dev/fd/$fd -ef $0 ]] || eval "exec $fd<&-"
  done
  local k v
  RUN_USER=${USER-} UMASK0=''
  # before any trap: a $( ) while traps are set is what bash 5.2 can break
  [[ -n $RUN_USER ]] || RUN_USER=$(id -un 2>/dev/null)
  # the job gets the caller's umask back; the wrapper creates 0700 and 0600, and only anew
  { while read -r k v; do [[ $k != Umask: ]] || { UMASK0=$v && break; }; done </proc/self/status; } 2>/dev/null
  [[ -n $UMASK0 ]] || UMASK0=$(umask)
  umask 077 && set -C && { [[ -r /proc/$$/stat ]] || NO_PROC=1; } # no /proc: see running
  (($# >= 2)) || die 64 'usage: job_wrapper.sh JOB_ID COMMAND [ARG...]'
  JOB_ID=$1 GRACE=${SOLVERPILOT_KILL_GRACE:-10}
  shift
  valid_id "$JOB_ID" || die 64 'invalid JOB_ID: use 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit'
  [[ $GRACE =~ ^[0-9]{1,6}$ ]] || die 64 'SOLVERPILOT_KILL_GRACE must be a whole number of seconds'
  LIMIT=${SOLVERPILOT_TIME_LIMIT-} SAVE=${SOLVERPILOT_SAVE_BEFORE:-0}
  [[ $LIMIT =~ ^([1-9][0-9]{0,9})?$ && $SAVE =~ ^[0-9]{1,6}$ ]] || die 64 'SOLVERPILOT_TIME_LIMIT and SOLVERPILOT_SAVE_BEFORE must be whole numbers of seconds'
  unset SOLVERPILOT_TIME_LIMIT SOLVERPILOT_SAVE_BEFORE
  server_dir
  DB=$BASE/server.db STATE=$BASE/jobs/$JOB_ID.status LOCK=$BASE/locks/$JOB_ID.lock
  hash flock setsid mv sleep stat 2>/dev/null || die 73 "flock, setsid, mv, sleep or stat not found; install them: $INSTALL_HINT"
  [[ ! -e $BASE && ! -L $BASE ]] || server_safe || die 73 "unsafe server folder: $WHY; the job was not run"
  if [[ ! -d $BASE/jobs || ! -d $BASE/locks ]]; then # nothing is created in an unsafe folder
    helper mkdir -p -- "$BASE/jobs" "$BASE/locks" || die 73 "cannot create $BASE/jobs and $BASE/locks"
    server_safe || die 73 "unsafe server folder: $WHY; the job was not run"
  fi
  # shellcheck disable=SC2064 # until the lock is taken, a stop signal is only noted (after the $( ))
  for sig in "${SIGNALS[@]}"; do trap "PENDING=\${PENDING:-$sig}" "$sig"; done
  [[ ! -L $LOCK && (! -e $LOCK || -f $LOCK) ]] || die 73 "lock file $LOCK is not a regular file"
  [[ ! -d $STATE ]] || die 73 "state file $STATE is a folder"
  { exec 200>>"$LOCK"; } 2>/dev/null || die 73 "cannot open lock file $LOCK"
  helper flock -n 200 || { lock_holder_message; die 75 "$MESSAGE"; }

  BOOT_ID=null HOST=${HOSTNAME-}
  TMUX_NAME="solverpilot_${RUN_USER}_${JOB_ID:0:8}" SQ="'"
  SQL_TMUX_NAME=${TMUX_NAME//$SQ/$SQ$SQ} # quotes doubled; through variables, as bash 4.2 needs
  { read -r boot_id </proc/sys/kernel/random/boot_id && json_str BOOT_ID "$boot_id"; } 2>/dev/null
  { read -r HOST </proc/sys/kernel/hostname; } 2>/dev/null # not $HOSTNAME, which callers may pass on
  json_str J_USER "$RUN_USER"; json_str J_HOST "$HOST"; now STARTED_AT
  SLURM_ID=null && [[ ${SOLVERPILOT_SLURM_JOB_ID-} =~ ^[0-9]{1,18}$ ]] && SLURM_ID="\"$SOLVERPILOT_SLURM_JOB_ID\"" &&
    [[ ${SOLVERPILOT_SLURM_ATTEMPT-} =~ ^[1-9][0-9]{0,8}$ ]] && SLURM_ID+=",\"slurm_attempt\":$SOLVERPILOT_SLURM_ATTEMPT"
  unset SOLVERPILOT_SLURM_JOB_ID SOLVERPILOT_SLURM_ATTEMPT # the batch script's word, not the job's
  proc_clock # the start time tells this wrapper from a later process given the same pid
  CU0=$((10#$PROC_CU)) CS0=$((10#$PROC_CS)) UP0=$((10#$PROC_UP)) # a stop before the job starts
  COMMON="\"started_at\":\"$STARTED_AT\",\"user\":$J_USER,\"pid\":$$,\"start_ticks\":$PROC_TICKS,\"host\":$J_HOST,\"boot_id\":$BOOT_ID,\"slurm_job_id\":$SLURM_ID"
  trap 'finish "$?"' EXIT # from here on, a signal is recorded as the end of the job
  # shellcheck disable=SC2064 # each trap names its own signal, expanded now on purpose
  for sig in "${SIGNALS[@]}"; do trap "on_signal $sig" "$sig"; done
  [[ -z $PENDING ]] || on_signal "$PENDING" # a stop before the lock: recorded, the job never runs
  write_state running || die 73 "cannot write state file $STATE (disk full or folder not writable?)"
  db_write running NULL NULL || warn "$DB_WARNING"
  proc_clock # the job's CPU and wall time count from here
  CU0=$((10#$PROC_CU)) CS0=$((10#$PROC_CS)) UP0=$((10#$PROC_UP))
  # The job: its own session and process group, so a stop reaches grandchildren; the caller's
  # stdin (closed stays closed) and the caller's INT and QUIT (bash ignores them for & jobs).
  if { : <&0; } 2>/dev/null; then
    (trap - INT QUIT; umask "$UMASK0"; exec setsid -- "$@") <&0 &
  else
    (trap - INT QUIT; umask "$UMASK0"; exec setsid -- "$@") <&- &
  fi
  CHILD=$!
  trap '' PIPE # from here on, a stderr whose reader has gone cannot end the wrapper
  if [[ -n $LIMIT ]]; then
    trap on_limit XCPU
    timer &
    TIMER=$!
  fi
  wait "$CHILD" 2>/dev/null # bash's own "Killed" line would add to the job's stderr
  rc=$?
  rearm_int
  while [[ $LIMIT_INT == 1 ]]; do # the time limit's INT cut the wait short: the job goes on
    LIMIT_INT=2
    jobs %1 >/dev/null 2>&1 || break
    wait "$CHILD" 2>/dev/null
    rc=$?
    rearm_int
  done
  while [[ -n $LATE ]]; do # a signal came after the job ended: keep its own status
    wait "$CHILD" 2>/dev/null
    rc=$?
    rearm_int
    # bash loses the status of a child it reaps just as a trap interrupts its wait (it still
    # lists the job then): the signal's stop is the record
    if jobs %1 >/dev/null 2>&1; then
      SIGNAL=$LATE SEEN=()
      stop_job
    fi
    LATE=''
  done
  exit "$rc"
}

# ---- queues (job_wrapper.sh --submit | --advance | --slots; README "Queues") ----------------
# Under SERVER/queues: seq (the last submission number), NAME/slots (how many of NAME's jobs may
# run at once; 1 when missing), NAME/wait/SEQ.ID (a waiting job; its text: the ids it waits
# for), NAME/active/SEQ.ID (a job the queue started; gone once it has ended). _now holds the
# jobs that wait only for others (run --after without --queue): no slot limit. A job is
# started in a detached tmux session running run/ID/launch (run.sh wrote it); every wrapper
# reruns --advance as it ends (finish), a launcher for a job its wrapper refused. Exit codes: 0; 64 usage; 73 unsafe server folder; 75 the
# queues' lock was held over 60 s; 76 (--submit) a job named in --after has no record.
readonly QUEUE_NAME='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
ENDED=''
q_lock() { # the queues' lock on fd 199, for the rest of this process (and not its children)
  local LC_ALL=C
  RUN_USER=${USER-}
  [[ -n $RUN_USER ]] || RUN_USER=$(id -un 2>/dev/null)
  umask 077
  server_dir
  [[ ! -e $BASE && ! -L $BASE ]] || server_safe || die 73 "unsafe server folder: $WHY"
  Q=$BASE/queues # (created by the first submission or --slots: --sync needs only the lock)
  helper mkdir -p -- "$BASE/jobs" "$BASE/locks" || die 73 "cannot create $BASE/locks"
  server_safe || die 73 "unsafe server folder: $WHY"
  [[ ! -e $Q && ! -L $Q ]] || [[ ! -L $Q && -O $Q ]] || die 73 "unsafe queues folder $Q"
  { exec 199>>"$BASE/locks/queues.lock"; } 2>/dev/null || die 73 "cannot open $BASE/locks/queues.lock"
  helper flock -w 60 199 || die 75 'the queues are busy: locks/queues.lock was held over 60 s'
}
q_session() { Q_SESSION="solverpilot_${RUN_USER}_${1:0:8}" && Q_SESSION=${Q_SESSION//[.:]/_}; }
q_state() { # q_state ID: Q_ST the state's status ("" without a state file), Q_LINE its text
  Q_LINE='' Q_ST=''
  { read -r Q_LINE <"$BASE/jobs/$1.status"; } 2>/dev/null
  [[ $Q_LINE =~ \"status\":\"([a-z]+)\" ]] && Q_ST=${BASH_REMATCH[1]}
  return 0
}
q_alive() { # q_alive: the wrapper Q_LINE names (pid and start ticks) runs
  local s
  [[ $Q_LINE =~ \"pid\":([0-9]+),\"start_ticks\":([0-9]+) ]] || return 1
  { read -r s <"/proc/${BASH_REMATCH[1]}/stat"; } 2>/dev/null || return 1
  s=${s##*) }
  # shellcheck disable=SC2206 # the fields after "pid (comm) ", split on spaces on purpose
  s=($s)
  [[ ${s[0]} != [ZX] && ${s[19]} == "${BASH_REMATCH[2]}" ]]
}
q_held() { # q_held ID: a process (a lost job's, its wrapper gone) still holds the job's lock;
  # tried, not waited for: no wrapper of that id can be starting (its record is there)
  [[ -f $BASE/locks/$1.lock && ! -L $BASE/locks/$1.lock ]] || return 1
  ! (exec 198<"$BASE/locks/$1.lock" && flock -n 198) 2>/dev/null
}
q_record() { # q_record ID REASON: a job that never ran ends failed, in both stores, keeping
  # what its queued record said (only while it still says queued)
  local at tmp=$BASE/jobs/$1.status.$$.tmp line
  q_state "$1"
  [[ $Q_ST == queued ]] || return 0
  line=${Q_LINE/\"status\":\"queued\"/\"status\":\"failed\"}
  now at
  # the DB first: killed before the state file is written, the next advance records it again
  helper sqlite3 -init /dev/null -bail -cmd '.timeout 5000' "$BASE/server.db" "BEGIN IMMEDIATE; $SCHEMA
UPDATE jobs SET status = 'failed', completed_at = '$at' WHERE id = '$1' AND status = 'queued'; COMMIT;" >/dev/null
  [[ ! -e $tmp && ! -L $tmp ]] || rm -f -- "$tmp"
  if ! { (set -C && printf '%s,"exit_code":null,"completed_at":"%s","signal":null,"reason":"%s","recorded_by":"sp-deploy queue"}\n' \
    "${line%\}}" "$at" "$2" >"$tmp") 2>/dev/null && mv -f -- "$tmp" "$BASE/jobs/$1.status"; }; then
    rm -f -- "$tmp"
    return 1
  fi
  rm -rf -- "$BASE/run/$1" # its launcher never runs now: the id is the record's alone
}
q_dep() { # q_dep ID: Q_WHY says why a job waiting for ID never runs; false while ID may end well
  Q_WHY=''
  q_state "$1"
  case $Q_ST in
    completed) return 0 ;;
    queued) return 1 ;;
    running) q_alive && return 1; Q_WHY="job $1, which it waits for, was lost" ;;
    '') Q_WHY="job $1, which it waits for, has no record" ;;
    *) Q_WHY="job $1, which it waits for, ended $Q_ST" ;;
  esac
  [[ $Q_LINE =~ \"exit_code\":([0-9]+) ]] && Q_WHY+=" (exit ${BASH_REMATCH[1]})"
  return 0
}
q_start() { # q_start ID: its tmux session, running its launcher (which pipes its pane to the
  # log). 0 started; 1 its session name is taken (it waits); 2 it never can start: recorded
  local here=$BASE/run/$1 n=0 tries=0 ended_session='' err
  [[ -f $here/launch ]] || { q_record "$1" 'its run folder is gone: it never ran'; return 2; }
  [[ -z $ENDED ]] || { q_session "$ENDED" && ended_session=$Q_SESSION; }
  q_session "$1"
  # 199>&-: a tmux server started here must not hold the queues' lock (nor fd 3, a step's channel)
  until err=$(cd -- "$here" && exec tmux new-session -d -s "$Q_SESSION" "/bin/sh ./launch $1" 2>&1 3>&- 199>&-); do
    if ! tmux has-session -t "=$Q_SESSION" 2>/dev/null; then # not the name (a session that
      # just ended, looked at again): tmux cannot start it
      if ((++tries >= 3)); then
        shown err "${err//[\"\\]/?}"
        q_record "$1" "tmux could not start its session: ${err:0:200}"
        return 2
      fi
      sleep 0.1
      continue
    fi
    # the name is the ended job's (the same first 8 characters), whose session is closing
    [[ $Q_SESSION == "$ended_session" ]] && ((n++ < 50)) || return 1
    sleep 0.1
  done
}
q_release() { # q_release ENTRY ID: an active job with neither its session nor its wrapper
  q_state "$2"
  if [[ $Q_ST == queued && ! -d $BASE/run/$2/decided ]]; then # never started: waits again
    mv -f -- "$1" "${1%/active/*}/wait/${1##*/}"
    return
  fi
  if [[ $Q_ST == queued ]]; then # its launcher decided to run it and ended before its wrapper did
    local rc=''
    { read -r rc <"$BASE/run/$2/rc"; } 2>/dev/null
    if [[ $rc == cwd ]]; then
      q_record "$2" 'its working folder (--cwd) cannot be entered'
    elif [[ $rc =~ ^[0-9]+$ ]]; then
      q_record "$2" "the wrapper refused it (exit $rc)"
    else
      q_record "$2" 'its launcher ended before the job started'
    fi
    rm -rf -- "$BASE/run/$2"
  fi
  rm -f -- "$1"
}
advance() { # advance [ENDED_ID]: start, queue by queue, what its free slots allow, in
  # submission order (ENDED_ID: the job whose wrapper, or launcher, ran this as it ended: its
  # session and wrapper may still be there)
  local d e id name slots busy sessions ended=${1-}
  ENDED=$ended
  sessions=$'\n'$(tmux list-sessions -F '#{session_name}' 2>/dev/null)$'\n'
  for d in "$Q"/*/; do
    name=${d%/} name=${name##*/}
    [[ $name =~ $QUEUE_NAME || $name == _now ]] && [[ -d $d/wait && ! -L ${d%/} ]] || continue
    slots=1
    { read -r slots <"$d/slots"; } 2>/dev/null
    [[ $slots =~ ^[0-9]{1,6}$ ]] || slots=1
    [[ $name != _now ]] || slots=0 # no limit
    busy=0
    for e in "$d"active/*.*; do
      [[ -f $e ]] || continue
      id=${e##*/} id=${id#*.}
      q_session "$id"
      q_state "$id"
      # (the ended job's wrapper, which runs this, is still exiting: its slot is free)
      if [[ $id != "$ended" ]] && { [[ $sessions == *$'\n'"$Q_SESSION"$'\n'* ]] || q_alive || q_held "$id"; }; then
        busy=$((busy + 1))
      else
        q_release "$e" "$id"
      fi
    done
    local full='' deps dep blocked
    for e in "$d"wait/*.*; do
      [[ -f $e ]] || continue
      id=${e##*/} id=${id#*.} deps='' blocked=''
      { read -r deps <"$e"; } 2>/dev/null
      # once the slots are taken, only a job that waits for others may change: it never runs
      # when one of them ended otherwise
      [[ -z $full || -n $deps ]] || continue
      q_state "$id"
      [[ $Q_ST == queued ]] || { rm -f -- "$e" && continue; } # cancelled (or removed) meanwhile
      for dep in $deps; do
        q_dep "$dep" && [[ -z $Q_WHY ]] && continue
        [[ -z $Q_WHY ]] && blocked=1 && continue
        q_record "$id" "$Q_WHY" && rm -f -- "$e"
        continue 2
      done
      [[ -z $blocked && -z $full ]] || continue
      if ((slots > 0 && busy >= slots)); then full=1 && continue; fi
      mv -f -- "$e" "$d/active/${e##*/}" || { full=1 && continue; }
      q_start "$id"
      case $? in
        0) busy=$((busy + 1)) ;;
        2) rm -f -- "$d/active/${e##*/}" ;;
        *) # its session name is taken (an id with the same first 8 characters runs): it
          mv -f -- "$d/active/${e##*/}" "$e" # waits, and so do the later ones
          full=1
          ;;
      esac
    done
  done
}
submit() { # --submit ID QUEUE [AFTER_ID...]: record job ID queued (both stores), then advance
  local id=$1 queue=$2 seq=0 at dep deps='' user_json
  valid_id "$id" && [[ $queue =~ $QUEUE_NAME || $queue == _now ]] || die 64 'usage: job_wrapper.sh --submit ID QUEUE [AFTER_ID...]'
  shift 2
  q_lock
  for dep; do
    valid_id "$dep" || die 64 "not a job id: $dep"
    [[ -f $BASE/jobs/$dep.status ]] || die 76 "job $dep (--after) has no record on this host"
    deps+=" $dep"
  done
  { read -r seq <"$Q/seq"; } 2>/dev/null
  [[ $seq =~ ^[0-9]{1,12}$ ]] || seq=0
  seq=$((10#$seq + 1))
  helper mkdir -p -- "$Q/$queue/wait" "$Q/$queue/active" || die 73 "cannot create $Q/$queue"
  printf -v seq '%012d' "$seq"
  { printf '%s\n' "$seq" >|"$Q/seq.tmp" && mv -f -- "$Q/seq.tmp" "$Q/seq"; } || die 73 "cannot write $Q/seq"
  now at
  json_str user_json "$RUN_USER"
  JOB_ID=$id STATE=$BASE/jobs/$id.status COMMON="\"submitted_at\":\"$at\",\"started_at\":null,\"user\":$user_json,\"pid\":null,\"queue\":\"$queue\",\"seq\":$((10#$seq))"
  [[ ! -e $STATE ]] || die 64 "job $id has a record already"
  # the queue entry first: killed before the record, the next advance drops an entry with no
  # record; killed after it, the job is queued all the same
  printf '%s\n' "${deps# }" >|"$Q/$queue/wait/$seq.$id" || die 73 "cannot write $Q/$queue/wait/$seq.$id"
  set -C
  write_state queued || { rm -f -- "$Q/$queue/wait/$seq.$id"; die 73 "cannot write state file $STATE"; }
  set +C
  helper sqlite3 -init /dev/null -bail -cmd '.timeout 5000' "$BASE/server.db" "BEGIN IMMEDIATE; $SCHEMA
INSERT OR IGNORE INTO jobs (id, status) VALUES ('$id', 'queued'); COMMIT;" >/dev/null || warn "$DB_WARNING"
  advance
}
set_slots() { # --slots QUEUE N: QUEUE's number of slots (what runs goes on), then advance
  { [[ $1 =~ $QUEUE_NAME && $2 =~ ^[0-9]{1,6}$ ]] && ((10#$2 > 0)); } || die 64 'usage: job_wrapper.sh --slots QUEUE N (N >= 1)'
  q_lock
  helper mkdir -p -- "$Q/$1/wait" "$Q/$1/active" || die 73 "cannot create $Q/$1"
  { printf '%s\n' "$((10#$2))" >|"$Q/$1/slots.tmp" && mv -f -- "$Q/$1/slots.tmp" "$Q/$1/slots"; } || die 73 "cannot write $Q/$1/slots"
  advance
}
queue_main() { # the modes of the queues: --submit, --advance, --slots
  local mode=$1
  shift
  case $mode in
    --submit) (($# >= 2)) || die 64 'usage: job_wrapper.sh --submit ID QUEUE [AFTER_ID...]'; submit "$@" ;;
    --slots) (($# == 2)) || die 64 'usage: job_wrapper.sh --slots QUEUE N'; set_slots "$@" ;;
    *) # (an ended job's row gets what the state file has: its own write may have failed)
      { (($# < 2)) && valid_id "${1:-x}"; } || die 64 'usage: job_wrapper.sh --advance [ENDED_ID]'
      q_lock
      advance "$@"
      (($# == 0)) || sync_later "$1"
      ;;
  esac
  exit 0
}

# ---- the DB's sync (job_wrapper.sh --sync [ID...] | --migrate; README "Reconcile") ------------
# The DB's table gets the columns of schema.sql it lacks (then PRAGMA user_version), and the row
# of each named job (every job with a state file or a running row, when none is named) what its
# state file says, by the rule of sync.sql; a running record whose wrapper is gone is recorded
# "lost" with status's reason (lost_why: status.py's lost_reason; a test holds them equal). Slurm
# jobs' records are copied, never judged (Slurm's word is status's). Under the queues' lock,
# so that clean never loses a row to it. Prints sync.sql's lines. Exit codes: 0; 64 usage; 73
# unsafe server folder; 74 the DB could not be read or written (its last words; it is waited
# for SOLVERPILOT_DB_WAIT seconds, default 30); 75 the queues' lock was held over 60 s.
readonly COLUMNS=('id TEXT' 'status TEXT' 'started_at TEXT' 'completed_at TEXT' 'exit_code INTEGER' 'tmux_session_name TEXT' 'signal TEXT' 'reason TEXT' 'name TEXT' 'queue TEXT' 'submitted_at TEXT' ) SCHEMA_VERSION=1
readonly SYNC_SQL='DELETE FROM s WHERE st IS NOT NULL AND NOT json_valid(st);
UPDATE s SET spec = NULL WHERE spec IS NOT NULL AND NOT json_valid(spec);
CREATE TEMP TABLE n AS SELECT id,
  CASE WHEN lost <> '\'''\'' THEN '\''lost'\'' WHEN json_type(st, '\''$.status'\'') = '\''text'\''
    THEN json_extract(st, '\''$.status'\'') END AS status,
  CASE json_type(st, '\''$.started_at'\'') WHEN '\''text'\'' THEN json_extract(st, '\''$.started_at'\'') END AS started_at,
  CASE WHEN lost = '\'''\'' AND json_type(st, '\''$.completed_at'\'') = '\''text'\''
    THEN json_extract(st, '\''$.completed_at'\'') END AS completed_at,
  CASE WHEN lost = '\'''\'' AND json_type(st, '\''$.exit_code'\'') = '\''integer'\''
    THEN json_extract(st, '\''$.exit_code'\'') END AS exit_code,
  CASE WHEN lost = '\'''\'' AND json_type(st, '\''$.signal'\'') = '\''text'\'' THEN json_extract(st, '\''$.signal'\'') END AS signal,
  CASE WHEN lost <> '\'''\'' THEN lost WHEN json_type(st, '\''$.reason'\'') = '\''text'\''
    THEN json_extract(st, '\''$.reason'\'') END AS reason,
  CASE json_type(spec, '\''$.name'\'') WHEN '\''text'\'' THEN json_extract(spec, '\''$.name'\'') END AS name,
  nullif(coalesce(CASE json_type(st, '\''$.queue'\'') WHEN '\''text'\'' THEN json_extract(st, '\''$.queue'\'') END,
    CASE json_type(spec, '\''$.queue'\'') WHEN '\''text'\'' THEN json_extract(spec, '\''$.queue'\'') END), '\''_now'\'') AS queue,
  coalesce(CASE json_type(st, '\''$.submitted_at'\'') WHEN '\''text'\'' THEN json_extract(st, '\''$.submitted_at'\'') END,
    CASE json_type(spec, '\''$.submitted_at'\'') WHEN '\''text'\'' THEN json_extract(spec, '\''$.submitted_at'\'') END)
    AS submitted_at
FROM s;
CREATE TEMP TABLE c AS SELECT n.id AS id, j.status AS was, n.status AS status,
  coalesce(n.started_at, j.started_at) AS started_at, n.completed_at AS completed_at,
  n.exit_code AS exit_code, n.signal AS signal, n.reason AS reason,
  (j.id IS NULL) AS new
FROM n LEFT JOIN jobs AS j ON j.id = n.id
WHERE n.status IN ('\''queued'\'', '\''running'\'', '\''lost'\'', '\''completed'\'', '\''failed'\'') AND (
  j.id IS NULL
  OR (j.status IN ('\''completed'\'', '\''failed'\'') AND n.status = j.status AND n.exit_code IS j.exit_code
    AND (n.completed_at > j.completed_at OR (j.completed_at IS NULL AND n.completed_at IS NOT NULL)
      OR (j.signal IS NULL AND n.signal IS NOT NULL) OR (j.reason IS NULL AND n.reason IS NOT NULL)))
  OR (j.status NOT IN ('\''completed'\'', '\''failed'\'') AND (
    n.status IN ('\''completed'\'', '\''failed'\'')
    OR (n.status = '\''lost'\'' AND j.status IN ('\''queued'\'', '\''running'\''))
    OR (n.status = '\''running'\'' AND j.status IN ('\''queued'\'', '\''lost'\''))
    OR (n.status = j.status AND n.status <> '\''queued'\''
      AND (coalesce(n.started_at, j.started_at) IS NOT j.started_at OR n.reason IS NOT j.reason))
    OR j.status NOT IN ('\''queued'\'', '\''running'\'', '\''lost'\''))));
SELECT '\''changed|'\'' || id || '\''|'\'' || replace(replace(ifnull(was, '\''-'\'') || '\''|'\'' || status || '\''|'\'' ||
  ifnull(reason, '\'''\''), char(10), '\''?'\''), char(13), '\''?'\'') FROM c;
INSERT INTO jobs (id, status) SELECT id, status FROM c WHERE new;
UPDATE jobs SET (status, started_at, completed_at, exit_code, signal, reason) =
  (SELECT status, started_at, completed_at, exit_code, signal, reason FROM c WHERE c.id = jobs.id)
  WHERE id IN (SELECT id FROM c);
CREATE TEMP TABLE d AS SELECT n.id AS id, n.name AS name, n.queue AS queue, n.submitted_at AS submitted_at
FROM n JOIN jobs AS j ON j.id = n.id
WHERE (j.name IS NULL AND n.name IS NOT NULL) OR (j.queue IS NULL AND n.queue IS NOT NULL)
  OR (j.submitted_at IS NULL AND n.submitted_at IS NOT NULL);
SELECT '\''filled|'\'' || id FROM d WHERE id NOT IN (SELECT id FROM c);
UPDATE jobs SET name = coalesce(name, (SELECT name FROM d WHERE d.id = jobs.id)),
  queue = coalesce(queue, (SELECT queue FROM d WHERE d.id = jobs.id)),
  submitted_at = coalesce(submitted_at, (SELECT submitted_at FROM d WHERE d.id = jobs.id))
  WHERE id IN (SELECT id FROM d);'
sql() { # sql SQL: run on the DB in one sqlite3; SQL_OUT its answer, or its last words
  SQL_OUT=$(printf '%s\n' "PRAGMA temp_store = MEMORY; $1" |
    sqlite3 -init /dev/null -bail -cmd ".timeout $((WAIT_S * 1000))" "$DB" 2>&1) && return 0
  SQL_OUT=${SQL_OUT##*$'\n'} && return 1
}
migrate() { # the columns the table lacks, then user_version; RUNNING: the ids of running rows
  local v line name have add col
  for _ in 1 2; do # twice: another migrator may add a column between the look and the change
    sql "$SCHEMA PRAGMA user_version; PRAGMA table_info(jobs); SELECT 'r|' || id FROM jobs WHERE status = 'running';" || return 1
    v='' have='|' add='' RUNNING=()
    while IFS='|' read -r line name _; do
      if [[ -z $v ]]; then v=$line; elif [[ $line == r ]]; then RUNNING+=("$name"); else have+="$name|"; fi
    done < <(printf '%s\n' "$SQL_OUT")
    for col in "${COLUMNS[@]}"; do [[ $have == *"|${col%% *}|"* ]] || add+="ALTER TABLE jobs ADD COLUMN $col; "; done
    [[ $v =~ ^[0-9]+$ ]] || v=0
    [[ -z $add ]] && ((v >= SCHEMA_VERSION)) && return 0
    sql "BEGIN IMMEDIATE; $add PRAGMA user_version = $((v > SCHEMA_VERSION ? v : SCHEMA_VERSION)); COMMIT;" && return 0
  done
  return 1
}
lost_why() { # lost_why ID: WHY, why its running record (Q_LINE) is lost, or '' while it runs
  local s pid=''
  WHY=''
  [[ $Q_LINE =~ \"boot_id\":\"([^\"]+)\" && -n $BOOT && ${BASH_REMATCH[1]} != "$BOOT" ]] && WHY='host rebooted' && return
  [[ $Q_LINE =~ \"pid\":([0-9]+) ]] && pid=${BASH_REMATCH[1]}
  { [[ -n $pid ]] && read -r s <"/proc/$pid/stat" && s=${s##*) } && [[ ${s:0:1} != [ZX] ]]; } 2>/dev/null || {
    WHY='wrapper gone, lock free'
    if q_held "$1"; then WHY='wrapper gone, its job still holds the lock'; fi
    return
  }
  # shellcheck disable=SC2206 # the fields after "pid (comm) ", split on spaces on purpose
  s=($s)
  if [[ $Q_LINE =~ \"start_ticks\":([0-9]+) ]]; then
    [[ ${BASH_REMATCH[1]} == "${s[19]}" ]] || WHY='pid reused'
  else # a wrapper too old to record its start
    q_held "$1" || WHY='wrapper gone, lock free'
  fi
}
sync_db() { # sync_db [ID...]: one transaction of sync.sql over the named jobs (or all)
  local id f st spec rows='' LC_ALL=C
  BOOT=''
  { read -r BOOT </proc/sys/kernel/random/boot_id; } 2>/dev/null
  migrate || return 1
  local ids=("$@") seen='|'
  if (($# == 0)); then
    for f in "$BASE"/jobs/*.status; do id=${f##*/} && ids+=("${id%.status}"); done
    ids+=(${RUNNING[@]+"${RUNNING[@]}"}) # (bash < 4.4: an empty array is unset under -u)
  fi
  for id in "${ids[@]}"; do
    valid_id "$id" && [[ $seen != *"|$id|"* ]] || continue
    seen+="$id|" f=$BASE/jobs/$id.status st='' spec='' WHY=''
    if [[ -f $f && ! -L $f ]]; then # (never a link, a fifo: only a regular file is opened)
      { read -r -d '' -n 65537 st <"$f"; } 2>/dev/null # (at most 64 KiB is read, as by status)
      [[ ! -f ${f%.status}.spec || -L ${f%.status}.spec ]] || { read -r -d '' -n 65537 spec <"${f%.status}.spec"; } 2>/dev/null
      ((${#st} <= 65536)) || continue
      ((${#spec} <= 65536)) || spec=''
      Q_LINE=$st
      [[ ! $st =~ \"status\":\"running\" || -f $BASE/slurm/$id.sbatch ]] || lost_why "$id"
      st="'${st//\'/\'\'}'"
    elif [[ ! -e $f && ! -L $f && " ${RUNNING[*]-} " == *" $id "* ]]; then # a running row alone
      [[ ! -f $BASE/slurm/$id.sbatch ]] && ! q_held "$id" && WHY='wrapper gone, lock free'
      st=NULL
    else
      continue
    fi
    [[ -n $spec ]] && spec="'${spec//\'/\'\'}'" || spec=NULL
    rows+="INSERT INTO s VALUES ('$id', $st, $spec, '$WHY');"$'\n'
  done
  [[ -n $rows ]] || return 0
  sql "BEGIN IMMEDIATE; $SCHEMA
CREATE TEMP TABLE s (id TEXT PRIMARY KEY, st TEXT, spec TEXT, lost TEXT NOT NULL);
$rows$SYNC_SQL
COMMIT;" || return 1
  [[ -z $SQL_OUT ]] || printf '%s\n' "$SQL_OUT"
}
sync_main() { # --sync [ID...] | --migrate (the table's columns only)
  local id mode=$1
  shift
  for id; do
    if [[ $mode != --sync ]] || ! valid_id "$id"; then die 64 'usage: job_wrapper.sh --sync [ID...] | --migrate'; fi
  done
  WAIT_S=${SOLVERPILOT_DB_WAIT:-30}
  [[ $WAIT_S =~ ^[0-9]{1,5}$ ]] || die 64 'SOLVERPILOT_DB_WAIT must be a whole number of seconds'
  q_lock
  DB=$BASE/server.db
  hash sqlite3 2>/dev/null || die 74 "sqlite3 not found; install it: $INSTALL_HINT"
  if [[ $mode == --migrate ]]; then BOOT='' && migrate; else sync_db "$@"; fi || die 74 "cannot bring $DB up to date: $SQL_OUT"
  exit 0
}
sync_later() { # sync_later ID: its row from its state file, now (under the queues' lock, which
  # advance holds) or, while the DB is busy, again and again for about 10 minutes without the lock
  local d
  WAIT_S=5 DB=$BASE/server.db
  hash sqlite3 2>/dev/null || return 0
  for d in 1 2 4 8 16 30 60 60 60 60 60 60 60 60 60 60; do
    [[ -f $DB ]] || return 0 # (never a DB of its own: the server folder may be going)
    sync_db "$1" >/dev/null 2>&1 && return 0
    [[ $SQL_OUT == *locked* || $SQL_OUT == *busy* ]] || return 1 # (a damaged DB stays as it is)
    flock -u 199
    sleep "$d"
    helper flock -w 60 199 || return 1
  done
  return 1
}

case ${1-} in
  --submit | --advance | --slots) queue_main "$@" ;;
  --sync | --migrate) sync_main "$@" ;;
esac
main "$@"

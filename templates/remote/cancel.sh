# cancel.sh JOB_ID WAIT_SECONDS [force]: stop a running job the way the wrapper promises (TERM
# to the wrapper: the job's tree gets TERM, KILL when the grace runs out), then wait until the
# state is final. Only a wrapper that is still the process it recorded (pid and start ticks) is
# signalled: a pid since given to another process is never touched.
# A job run is still starting (its id claimed, run/JOB_ID, no state yet): of the launcher and
# cancel, the first to create run/JOB_ID/decided decides. When cancel does, the job never runs
# and cancel writes its record (failed, 143, TERM, no pid, recorded_by, wrote=yes); else the
# wrapper is starting, and cancel waits for its state (WAIT_SECONDS) and stops it as usual.
# A lost job (its wrapper gone, SIGKILLed) whose processes still hold its lock is stopped only
# with "force": TERM to the process group of each process holding locks/JOB_ID.lock (and to
# each of them; only this user's), KILL for what is left after WAIT_SECONDS; cancel then
# writes the record, in the state file and the DB: failed, 143 TERM (137 KILL when KILL was
# needed), recorded_by, keeping what the running state said (pid, start...).
# A Slurm job (one with a Slurm job id) is cancelled with scancel: Slurm sends TERM to the
# wrapper (it records it) and ends the job; the step waits until Slurm says it has. A job whose
# wrapper never ran (it was pending) gets its record here: failed, 143, TERM, no pid
# ("wrote=yes"). One that Slurm had already ended without a final record is lost (11,
# slurm_state= says how Slurm ended it).
# Answer: state= (the state file as it is at the end); was=STATUS when it was not running;
#   wrote=yes when this step wrote the record; error= with 14 and 15; held=PID COMM per
#   process holding the lock of a lost or ended job (16, 19); signalled=PID COMM per process
#   force stopped (the holders and the rest of their process groups); warning= when the DB
#   could not be updated.
# Exit: 0 stopped, the wrapper and the job's tree gone (or already ended: was= says so); 10 no
#   such job; 11 lost (its wrapper is gone, nothing of it runs, nothing signalled); 12 still
#   running after WAIT_SECONDS; 13 the state has no start time (an older wrapper): nothing
#   signalled (pid=); 14 a Slurm job, and Slurm cannot be asked here (no scancel or squeue, or
#   squeue failed); 15 scancel refused; 16 lost, or ended (was=), and processes of it still
#   hold its lock (held=): nothing signalled without force (with force, a final record is
#   kept as it is); 17 cannot write the record; 18 still starting
#   (its id claimed, no state) after WAIT_SECONDS; 19 force: processes still hold the lock
#   after KILL (held=).
id=$1 wait=$2 force=${3-}
state=$sp_server/jobs/$id.status
field() { sed -n "s/.*\"$1\": *\"*\([^\",}]*\).*/\1/p" "$state" | head -n 1; }
# never_ran: the record of a job Slurm ended before its wrapper ran, with the DB row when the
# DB is there (its warning= when it cannot be written)
never_ran() {
  at=$(date +%Y-%m-%dT%H:%M:%S%z | sed 's/\(..\)$/:\1/')
  who=$(printf '%s' "${USER:-$(id -un)}" | tr -c 'A-Za-z0-9._-' '?')
  mkdir -p -- "$sp_server/jobs" || exit 14
  printf '{"id":"%s","status":"failed","started_at":null,"user":"%s","pid":null,"host":null,"slurm_job_id":"%s","exit_code":143,"completed_at":"%s","signal":"TERM","recorded_by":"sp-deploy cancel: the job never started"}\n' \
    "$id" "$who" "$sid" "$at" >"$state.$$.tmp" && mv -f -- "$state.$$.tmp" "$state" || exit 14
  if [ -f "$sp_server/server.db" ] && ! sqlite3 -init /dev/null -bail -cmd '.timeout 5000' \
    "$sp_server/server.db" "BEGIN IMMEDIATE; INSERT INTO jobs (id, status) SELECT '$id', 'failed'
      WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = '$id'); UPDATE jobs SET status = 'failed',
      completed_at = '$at', exit_code = 143 WHERE id = '$id'; COMMIT;" >/dev/null 2>&1; then
    echo "warning=the database could not be updated; the state file has the record"
  fi
  echo wrote=yes
}
# wait_for_slurm: until Slurm has ended the job (its final record is written by then)
wait_for_slurm() {
  end=$(($(date +%s) + wait))
  while :; do # a squeue that fails (a busy controller) is asked again
    if q=$(sp_slurm_state "$sid"); then sp_slurm_active "$q" || return 0; fi
    [ "$(date +%s)" -lt "$end" ] || show 12
    sleep 0.2
  done
}
show() {
  if [ -f "$state" ]; then printf 'state='; cat -- "$state"; fi
  exit "$1"
}
sid=$(sp_slurm_id "$id")
if [ -n "$sid" ]; then
  if [ -f "$state" ] && [ "$(field status)" != running ]; then
    # ended: while Slurm still runs it, the wrapper brings completed_at up to date
    if q=$(sp_slurm_state "$sid") && sp_slurm_active "$q"; then wait_for_slurm; fi
    echo "was=$(field status)"
    show 0
  fi
  command -v scancel >/dev/null 2>&1 || { echo "error=scancel not found on this host"; exit 14; }
  q=$(sp_slurm_state "$sid") || { echo "error=squeue: $q"; exit 14; }
  if ! sp_slurm_active "$q"; then # Slurm ended it, and no final record: lost
    echo "slurm_state=${q:-forgotten}"
    show 11
  fi
  said=$(scancel "$sid" 2>&1) || { echo "error=${said:-scancel failed}"; exit 15; }
  wait_for_slurm
  if [ -f "$state" ]; then
    [ "$(field status)" != running ] || show 11
    show 0
  fi
  never_ran
  show 0
fi
# record RC SIGNAL BY: the final record cancel writes (failed, RC, SIGNAL, recorded_by BY), in
# the state file (what the running state said kept) and the DB row when the DB is there
record() {
  at=$(date +%Y-%m-%dT%H:%M:%S%z | sed 's/\(..\)$/:\1/')
  if [ -f "$state" ]; then # the wrapper's one line, status running
    was=$(sed -n '1s/"status": *"running"/"status":"failed"/p' "$state" | sed 's/} *$//')
    [ -n "$was" ] || exit 17
  else
    who=$(printf '%s' "${USER:-$(id -un)}" | tr -c 'A-Za-z0-9._-' '?')
    was="{\"id\":\"$id\",\"status\":\"failed\",\"started_at\":null,\"user\":\"$who\",\"pid\":null,\"host\":null,\"slurm_job_id\":null"
  fi
  mkdir -p -- "$sp_server/jobs" || exit 17
  tmp=$state.$$.tmp
  rm -f -- "$tmp"
  if ! (set -C && printf '%s,"exit_code":%s,"completed_at":"%s","signal":"%s","recorded_by":"%s"}\n' \
    "$was" "$1" "$at" "$2" "$3" >"$tmp") 2>/dev/null || ! mv -f -- "$tmp" "$state"; then
    rm -f -- "$tmp"
    exit 17
  fi
  if [ -f "$sp_server/server.db" ] && ! sqlite3 -init /dev/null -bail -cmd '.timeout 5000' \
    "$sp_server/server.db" "BEGIN IMMEDIATE; INSERT INTO jobs (id, status) SELECT '$id', 'failed'
      WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = '$id'); UPDATE jobs SET status = 'failed',
      completed_at = '$at', exit_code = $1 WHERE id = '$id'; COMMIT;" >/dev/null 2>&1; then
    echo "warning=the database could not be updated; the state file has the record"
  fi
  echo wrote=yes
}
# not_started: no state yet. While run is starting the job (its claim, run/ID, is there),
# cancel either decides that it never runs, or waits for its wrapper's state
not_started() {
  claim=$sp_server/run/$id
  [ -d "$claim" ] || exit 10
  if mkdir -- "$claim/decided" 2>/dev/null; then # the launcher will not run the wrapper
    record 143 TERM "sp-deploy cancel: cancelled before it started"
    show 0
  fi
  sp_deadline "$wait"
  until [ -f "$state" ]; do # the wrapper is starting
    if [ ! -d "$claim" ] || [ -f "$claim/rc" ]; then # it refused, or the start failed
      [ -f "$state" ] || exit 10
      break
    fi
    sp_in_time || exit 18
    sleep 0.1
  done
}
[ -f "$state" ] || not_started
status=$(field status) pid=$(field pid) ticks=$(field start_ticks)
wrapper_is_there() { sp_alive "$pid" "$ticks"; }
wait_for_the_wrapper() { # the job's whole tree is gone once the wrapper has exited
  sp_deadline "$wait"
  while wrapper_is_there; do
    sp_in_time || show 12
    sleep 0.1
  done
}
# holders: hold becomes the pids of this user's processes that hold the job's lock file open
holders() {
  hold='' lockf=$sp_server/locks/$id.lock
  # (a link there could name any file this user's other processes hold open)
  [ -f "$lockf" ] && [ ! -L "$lockf" ] || return 0
  for f in /proc/[0-9]*/fd/*; do
    # shellcheck disable=SC3013 # -ef: the test of dash, bash, busybox and mksh has it
    [ "$f" -ef "$lockf" ] || continue
    p=${f#/proc/} && p=${p%%/*}
    case " $hold " in *" $p "*) continue ;; esac
    [ "$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$p/status" 2>/dev/null)" = "$me" ] &&
      hold="$hold $p"
  done 2>/dev/null
}
me=$(id -u)
# named PID: "PID COMM", the name made safe
named() {
  c='' && { read -r c <"/proc/$1/comm"; } 2>/dev/null
  printf '%s %s' "$1" "$(printf '%s' "$c" | tr -c 'A-Za-z0-9._-' '?')"
}
pgid() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f3; }
# members: the pids of the live processes (no zombie) that are holders or in the groups; one
# awk for all, whatever the number of processes
members() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g=" $groups " -v h=" $hold " '{
    pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ")
    if (f[1] !~ /^[ZX]/ && (index(h, " " pid " ") || index(g, " " f[3] " "))) print pid
  }'
}
# left: a holder, or a process of the groups, is still there
left() {
  holders
  [ -n "$hold" ] || [ -n "$(members)" ]
}
# force_stop: TERM to what is left of a lost job (the lock holders' groups and the holders),
# KILL after WAIT_SECONDS, then its record
force_stop() {
  mine=$(pgid $$) groups=''
  for p in $hold; do
    g=$(pgid "$p")
    case $g in '' | *[!0-9]* | 0 | 1 | "$mine") continue ;; esac
    case " $groups " in *" $g "*) ;; *) groups="$groups $g" ;; esac
  done
  # every process signalled, named: the holders and the other members of their groups
  for p in $(members); do echo "signalled=$(named "$p")"; done
  for g in $groups; do kill -TERM -- "-$g" 2>/dev/null; done
  for p in $hold; do kill -TERM "$p" 2>/dev/null; done
  rc=143 sig=TERM
  sp_deadline "$wait"
  while left && sp_in_time; do sleep 0.1; done
  if left; then
    rc=137 sig=KILL
    for g in $groups; do kill -KILL -- "-$g" 2>/dev/null; done
    for p in $hold; do kill -KILL "$p" 2>/dev/null; done
    sp_deadline 5
    while left && sp_in_time; do sleep 0.1; done
    if left; then
      for p in $hold; do echo "held=$(named "$p")"; done
      show 19
    fi
  fi
  [ "$(field status)" = running ] || show 0 # (another cancel recorded it meanwhile)
  record "$rc" "$sig" "sp-deploy cancel --force: its wrapper was gone; what was left got $sig"
  show 0
}
if [ "$status" != running ]; then
  # the wrapper records a stop at once, then stops the job: a stop still under way is waited for
  if wrapper_is_there; then
    wait_for_the_wrapper
    show 0
  fi
  echo "was=$status"
  # processes it left (out of its group) that hold its lock: named, stopped only when forced
  holders
  [ -n "$hold" ] || show 0
  [ -n "$force" ] && force_stop
  for p in $hold; do echo "held=$(named "$p")"; done
  show 16
fi
case $pid in '' | *[!0-9]*) show 11 ;; esac
# without its start time (an older wrapper), a pid cannot be told from a later process's
case $ticks in '' | *[!0-9]*) echo "pid=$pid"; show 13 ;; esac
if ! wrapper_is_there; then # lost: what is left of it is stopped only when forced
  holders
  [ -n "$hold" ] || show 11
  [ -n "$force" ] && force_stop
  for p in $hold; do echo "held=$(named "$p")"; done
  show 16
fi
kill -TERM "$pid" 2>/dev/null
wait_for_the_wrapper
[ "$(field status)" != running ] || show 11
show 0

# cancel.sh JOB_ID WAIT_SECONDS [force]: stop a running job the way the wrapper promises (TERM
# to the wrapper: the job's tree gets TERM, KILL when the grace runs out), then wait until the
# state is final. Only a wrapper that is still the process it recorded (pid and start ticks) is
# signalled: a pid since given to another process is never touched.
# A job run is still starting (its id claimed, run/JOB_ID, no state yet): of the launcher and
# cancel, the first to create run/JOB_ID/decided decides. When cancel does, the job never runs
# and cancel writes its record (failed, 143, TERM, no pid, recorded_by, wrote=yes); else the
# wrapper is starting, and cancel waits for its state (WAIT_SECONDS) and stops it as usual.
# A queued job (README "Queues") never starts: of the launcher the queue started and cancel, the
# first to create run/JOB_ID/decided decides, as above; cancel's record keeps the queued one's
# fields (wrote=queued), its queue entry goes, and the queues are advanced (a job waiting for
# this one is recorded failed then). When the launcher decided first, cancel waits for the
# wrapper's state and stops it as usual.
# A lost job (its wrapper gone, SIGKILLed) whose processes still hold its lock is stopped only
# with "force": TERM to the process group of each process holding locks/JOB_ID.lock (and to
# each of them; only this user's), KILL for what is left after WAIT_SECONDS; cancel then
# writes the record, in the state file and the DB: failed, 143 TERM (137 KILL when KILL was
# needed), recorded_by, keeping what the running state said (pid, start...).
# A Slurm job (one with a Slurm job id) is cancelled with scancel in whatever state Slurm holds
# it (pending, held, requeued, running, suspended): Slurm sends TERM to a running wrapper (it
# records it) and ends the job; the step waits until Slurm says it has. When the wrapper could
# not record that end, this step writes it (failed, no signal the wrapper could take:
# "wrote=ended"): a suspended job, which Slurm KILLs (137, KILL), or one whose wrapper was gone
# (143, TERM). The attempt Slurm is at that never ran its wrapper (pending, or requeued: its
# earlier attempt's end is kept in slurm/ID.ends first) gets its record too: failed, 143, TERM,
# no pid ("wrote=yes"). A wrapper that recorded its end while Slurm still runs that attempt is
# stopping: waited for, never signalled twice. One that Slurm had already ended without a final
# record is lost (slurm_state= says how Slurm ended it).
# Answer: state= (the state file as it is at the end, one line); was=STATUS when it was not
#   running; wrote=yes|ended|queued when this step wrote the record (yes, queued: the job
#   never started);
#   stopped=yes when the wrapper was stopped but wrote no end (with cannot_write: nor could
#   this step); error= with slurm_unreachable and scancel_refused; held=PID COMM per process
#   holding the lock of a lost or ended job (lock_held, lock_held_after_kill); signalled=PID COMM per process force stopped (the holders and the rest of their
#   process groups); warning= when the DB could not be updated.
# Exit (templates/remote/codes): ok stopped, the wrapper and the job's tree gone (or already
#   ended: was= says so); no_job (db_only=STATUS when the DB still has a row for it); lost
#   (slurm_state= when Slurm ended it); still_running after WAIT_SECONDS; no_start_time (an
#   older wrapper's state: pid=); slurm_unreachable: a Slurm job, and Slurm cannot be asked here
#   (no scancel or squeue, or squeue failed or did not answer within 5 s); scancel_refused (or
#   no answer within 5 s); lock_held: lost, or ended (was=), and processes of it still hold its
#   lock (held=): nothing signalled without force (with force, a final record is kept as it
#   is); cannot_write the record; still_starting (its id claimed, no state) after WAIT_SECONDS;
#   lock_held_after_kill: force, and processes still hold the lock after KILL (held=);
#   unsafe_server_dir (lib.sh's sp_server_safe).
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
id=$1 wait=$2 force=${3-}
state=$sp_server/jobs/$id.status
field() { sed -n "s/.*\"$1\": *\"*\([^\",}]*\).*/\1/p" "$state" | head -n 1; }
# keep_end: the end an earlier attempt left in the state file, kept as a line of slurm/ID.ends
# (as the batch script keeps it when Slurm runs the job again)
keep_end() {
  ends=$sp_server/slurm/$id.ends
  last=$(head -n 1 -- "$state" 2>/dev/null)
  if [ -n "$last" ] && ! grep -qxF -- "$last" "$ends" 2>/dev/null; then
    (umask 077 && printf '%s\n' "$last" >>"$ends") || exit "$E_CANNOT_WRITE"
  fi
}
# record_end RC SIGNAL WHY WROTE [REASON]: the final record the wrapper could not write (failed, RC,
# SIGNAL, recorded_by "sp-deploy cancel: WHY"), in the state file and the DB row when the DB is
# there (warning= when it cannot be written); answers wrote=WROTE. WROTE "ended": from the
# running state, its pid, start and the rest kept (exit cannot_write when the state no longer
# says running); "queued": the same from a queued record; "yes": a job that never started (no
# pid; a Slurm job's id and the attempt Slurm is at). Exit cannot_write when the state file
# cannot be written.
record_end() {
  at=$(date +%Y-%m-%dT%H:%M:%S%z | sed 's/\(..\)$/:\1/')
  if [ "$4" = ended ] || [ "$4" = queued ]; then # one line, status running (queued)
    from=running
    [ "$4" = ended ] || from=queued
    was=$(sed -n "1s/\"status\": *\"$from\"/\"status\":\"failed\"/p" "$state" 2>/dev/null | sed 's/}[[:space:]]*$//')
    [ -n "$was" ] || exit "$E_CANNOT_WRITE"
  else
    who=$(printf '%s' "${USER:-$(id -un)}" | tr -c 'A-Za-z0-9._-' '?')
    slurm=null
    [ -z "$sid" ] || slurm="\"$sid\",\"slurm_attempt\":$at_attempt"
    was="{\"id\":\"$id\",\"status\":\"failed\",\"started_at\":null,\"user\":\"$who\",\"pid\":null,\"host\":null,\"slurm_job_id\":$slurm"
  fi
  mkdir -p -- "$sp_server/jobs" || exit "$E_CANNOT_WRITE"
  tmp=$state.$$.tmp
  rm -f -- "$tmp"
  [ -z "${5-}" ] || was="$was,\"reason\":\"$5\""
  if ! (umask 077 && set -C && printf '%s,"exit_code":%s,"completed_at":"%s","signal":"%s","recorded_by":"sp-deploy cancel: %s"}\n' \
    "$was" "$1" "$at" "$2" "$3" >"$tmp") 2>/dev/null || ! mv -f -- "$tmp" "$state"; then
    rm -f -- "$tmp"
    exit "$E_CANNOT_WRITE"
  fi
  if [ -f "$sp_server/server.db" ] && ! sqlite3 -init /dev/null -bail -cmd '.timeout 5000' \
    "$sp_server/server.db" "BEGIN IMMEDIATE; INSERT INTO jobs (id, status) SELECT '$id', 'failed'
      WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = '$id'); UPDATE jobs SET status = 'failed',
      completed_at = '$at', exit_code = $1 WHERE id = '$id'; COMMIT;" >/dev/null 2>&1; then
    echo "warning=the database could not be updated; the state file has the record"
  fi
  echo "wrote=$4"
}
# wait_for_slurm: until Slurm has ended the job (its final record is written by then)
wait_for_slurm() {
  sp_deadline "$wait"
  while :; do # a squeue that fails (a busy controller) is asked again
    if q=$(sp_slurm_state "$sid"); then sp_slurm_active "$q" || return 0; fi
    sp_in_time || show "$E_STILL_RUNNING"
    sleep 0.2
  done
}
# recorded: the state's status and attempt (1 when it names none), and whether that is the
# attempt Slurm is at (ours=yes)
recorded() {
  status='' attempt=1 ours=''
  [ -f "$state" ] || return 0
  status=$(field status) attempt=$(field slurm_attempt)
  case $attempt in '' | *[!0-9]*) attempt=1 ;; esac
  [ "$attempt" -lt "$at_attempt" ] || ours=yes
}
show() {
  # one line of at most 64 KiB: a newline in the file (not the wrapper's: it writes one line)
  # cannot forge a key, nor a huge file make the answer huge
  if [ -f "$state" ]; then printf 'state='; head -c 65536 -- "$state" | tr '\n' ' '; echo; fi
  exit "$1"
}
sid=$(sp_slurm_id "$id")
if [ -n "$sid" ]; then
  command -v scancel >/dev/null 2>&1 || { echo "error=scancel not found on this host"; exit "$E_SLURM_UNREACHABLE"; }
  q=$(sp_slurm_state "$sid") || { echo "error=Slurm could not answer (squeue: $q)"; exit "$E_SLURM_UNREACHABLE"; }
  if ! sp_slurm_active "$q"; then # Slurm has ended it (or forgotten it)
    if [ -f "$state" ] && [ "$(field status)" != running ]; then
      echo "was=$(field status)"
      show 0
    fi
    echo "slurm_state=${q:-forgotten}" | sed 's/ .*//'
    show "$E_LOST"
  fi
  slurm_was=${q%% *} at_attempt=${q#* } # Slurm's state, and the attempt it is at (restarts + 1)
  case $at_attempt in '' | *[!0-9]*) at_attempt=0 ;; esac
  at_attempt=$((at_attempt + 1))
  recorded
  if [ -n "$ours" ] && [ "$status" != running ]; then
    case $slurm_was in
      SUSPENDED | STOPPED) ;;
      *) # its wrapper has recorded a stop and is ending: waited for (it brings completed_at
        # up to date)
        wait_for_slurm
        echo "was=$status"
        show 0
        ;;
    esac
  fi
  said=$(sp_bounded "$sp_slurm_bound" scancel "$sid" 2>&1)
  case $? in
    0) ;;
    124) echo "error=scancel got no answer within $sp_slurm_bound s: the job may still be cancelled; see status"; exit "$E_SCANCEL_REFUSED" ;;
    *) echo "error=${said:-scancel failed}"; exit "$E_SCANCEL_REFUSED" ;;
  esac
  wait_for_slurm
  recorded
  if [ -n "$ours" ] && [ "$status" != running ]; then show 0; fi # the wrapper recorded it
  if [ -n "$ours" ]; then
    case $slurm_was in
      SUSPENDED | STOPPED) record_end 137 KILL "Slurm killed the suspended job; its stopped wrapper could not record it" ended ;;
      *) record_end 143 TERM "its wrapper was gone; Slurm ended the job" ended ;;
    esac
    show 0
  fi
  [ -z "$status" ] || keep_end
  if [ "$at_attempt" -gt 1 ]; then
    record_end 143 TERM "attempt $at_attempt never started (Slurm had requeued the job)" yes
  else
    record_end 143 TERM "the job never started" yes
  fi
  show 0
fi
# not_started: no state yet. While run is starting the job (its claim, run/ID, is there),
# cancel either decides that it never runs, or waits for its wrapper's state
not_started() {
  claim=$sp_server/run/$id
  [ -d "$claim" ] || sp_no_job "$id"
  if mkdir -- "$claim/decided" 2>/dev/null; then # the launcher will not run the wrapper
    record_end 143 TERM "cancelled before it started" yes
    show 0
  fi
  sp_deadline "$wait"
  until [ -f "$state" ]; do # the wrapper is starting
    if [ ! -d "$claim" ] || [ -f "$claim/rc" ]; then # it refused, or the start failed
      [ -f "$state" ] || exit "$E_NO_JOB"
      break
    fi
    sp_in_time || exit "$E_STILL_STARTING"
    sleep 0.1
  done
}
[ -f "$state" ] || not_started
# advance: the queues go on (a slot, or a job others wait for, has ended)
advance() {
  "$HOME/.solverpilot/bin/job_wrapper.sh" --advance >/dev/null 2>&1 </dev/null 3>&-
}
# cancel_queued: a queued job never starts (cancel decides first), or is starting: waited for
cancel_queued() {
  claim=$sp_server/run/$id
  if mkdir -- "$claim/decided" 2>/dev/null || [ ! -d "$claim" ]; then
    record_end 143 TERM "cancelled while queued: it never started" queued "cancelled while queued"
    for e in "$sp_server"/queues/*/wait/*.* "$sp_server"/queues/*/active/*.*; do
      n=${e##*/} # SEQ.ID
      case ${n%%.*} in '' | *[!0-9]*) continue ;; esac
      [ "${n#*.}" != "$id" ] || rm -f -- "$e"
    done
    rm -rf -- "$claim"
    advance
    show 0
  fi
  sp_deadline "$wait"
  while [ "$(field status)" = queued ]; do # its launcher decided first: the wrapper is starting
    if [ -f "$claim/rc" ] || [ ! -d "$claim" ]; then # it refused: the queue records that
      advance
      echo "was=$(field status)"
      show 0
    fi
    sp_in_time || exit "$E_STILL_STARTING"
    sleep 0.1
  done
}
[ "$(field status)" != queued ] || cancel_queued
status=$(field status) pid=$(field pid) ticks=$(field start_ticks)
wrapper_is_there() { sp_alive "$pid" "$ticks"; }
wait_for_the_wrapper() { # the job's whole tree is gone once the wrapper has exited
  sp_deadline "$wait"
  while wrapper_is_there; do
    sp_in_time || show "$E_STILL_RUNNING"
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
      show "$E_LOCK_HELD_AFTER_KILL"
    fi
  fi
  [ "$(field status)" = running ] || show 0 # (another cancel recorded it meanwhile)
  record_end "$rc" "$sig" "--force: its wrapper was gone; what was left got $sig" ended
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
  show "$E_LOCK_HELD"
fi
case $pid in '' | *[!0-9]*) show "$E_LOST" ;; esac
# without its start time (an older wrapper), a pid cannot be told from a later process's
case $ticks in '' | *[!0-9]*) echo "pid=$pid"; show "$E_NO_START_TIME" ;; esac
if ! wrapper_is_there; then # lost: what is left of it is stopped only when forced
  holders
  [ -n "$hold" ] || show "$E_LOST"
  [ -n "$force" ] && force_stop
  for p in $hold; do echo "held=$(named "$p")"; done
  show "$E_LOCK_HELD"
fi
kill -TERM "$pid" 2>/dev/null
wait_for_the_wrapper
if [ "$(field status)" = running ]; then # stopped, but its wrapper could not record it (a full
  echo stopped=yes # disk): this step tries, and says it stopped the job whatever comes of that
  record_end 143 TERM "its wrapper was stopped and could not record it" ended
fi
show 0

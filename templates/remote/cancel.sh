# cancel.sh JOB_ID WAIT_SECONDS: stop a running job the way the wrapper promises (TERM to the
# wrapper: the job's tree gets TERM, KILL when the grace runs out), then wait until the state
# is final. Only a wrapper that is still the process it recorded (pid and start ticks) is
# signalled: a pid since given to another process is never touched.
# A Slurm job (one with a Slurm job id) is cancelled with scancel: Slurm sends TERM to the
# wrapper (it records it) and ends the job; the step waits until Slurm says it has. A job whose
# wrapper never ran (it was pending) gets its record here: failed, 143, TERM, no pid
# ("wrote=yes"). One that Slurm had already ended without a final record is lost (11,
# slurm_state= says how Slurm ended it).
# Answer: state= (the state file as it is at the end); was=STATUS when it was not running;
#   wrote=yes when this step wrote the record; error= with 14 and 15.
# Exit: 0 stopped, the wrapper and the job's tree gone (or already ended: was= says so); 10 no
#   such job; 11 lost (its wrapper is gone, nothing signalled); 12 still running after
#   WAIT_SECONDS; 13 the state has no start time (an older wrapper): nothing signalled (pid=);
#   14 a Slurm job, and Slurm cannot be asked here (no scancel or squeue, or squeue failed);
#   15 scancel refused.
id=$1 wait=$2
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
  # one line of at most 64 KiB: a newline in the file (not the wrapper's: it writes one line)
  # cannot forge a key, nor a huge file make the answer huge
  if [ -f "$state" ]; then printf 'state='; head -c 65536 -- "$state" | tr '\n' ' '; echo; fi
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
[ -f "$state" ] || exit 10
status=$(field status) pid=$(field pid) ticks=$(field start_ticks)
# wrapper_is_there: the recorded pid still runs the recorded wrapper (same start, no zombie)
wrapper_is_there() {
  case $pid$ticks in *[!0-9]* | '') return 1 ;; esac
  now=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1,20)
  if [ -z "$now" ] || [ "${now%% *}" = Z ]; then return 1; fi
  [ "${now#* }" = "$ticks" ]
}
wait_for_the_wrapper() { # the job's whole tree is gone once the wrapper has exited
  end=$(($(date +%s) + wait))
  while wrapper_is_there; do
    [ "$(date +%s)" -lt "$end" ] || show 12
    sleep 0.1
  done
}
if [ "$status" != running ]; then
  # the wrapper records a stop at once, then stops the job: a stop still under way is waited for
  if wrapper_is_there; then
    wait_for_the_wrapper
    show 0
  fi
  echo "was=$status"
  show 0
fi
case $pid in '' | *[!0-9]*) show 11 ;; esac
# without its start time (an older wrapper), a pid cannot be told from a later process's
case $ticks in '' | *[!0-9]*) echo "pid=$pid"; show 13 ;; esac
wrapper_is_there || show 11
kill -TERM "$pid" 2>/dev/null
wait_for_the_wrapper
[ "$(field status)" != running ] || show 11
show 0

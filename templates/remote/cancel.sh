# cancel.sh JOB_ID WAIT_SECONDS: stop a running job the way the wrapper promises (TERM to the
# wrapper: the job's tree gets TERM, KILL when the grace runs out), then wait until the state
# is final. Only a wrapper that is still the process it recorded (pid and start ticks) is
# signalled: a pid since given to another process is never touched.
# A Slurm job (one with a Slurm job id) is cancelled with scancel in whatever state Slurm holds
# it (pending, held, requeued, running, suspended): Slurm sends TERM to a running wrapper (it
# records it) and ends the job; the step waits until Slurm says it has. When the wrapper could
# not record that end, this step writes it (failed, no signal the wrapper could take:
# "wrote=ended"): a suspended job, which Slurm KILLs (137, KILL), or one whose wrapper was gone
# (143, TERM). The attempt Slurm is at that never ran its wrapper (pending, or requeued: its
# earlier attempt's end is kept in slurm/ID.ends first) gets its record too: failed, 143, TERM,
# no pid ("wrote=yes"). A wrapper that recorded its end while Slurm still runs that attempt is
# stopping: waited for, never signalled twice. One that Slurm had already ended without a final
# record is lost (11, slurm_state= says how Slurm ended it).
# Answer: state= (the state file as it is at the end); was=STATUS when it was not running;
#   wrote=yes|ended when this step wrote the record; error= with 14 and 15.
# Exit: 0 stopped, the wrapper and the job's tree gone (or already ended: was= says so); 10 no
#   such job; 11 lost (its wrapper is gone, nothing signalled); 12 still running after
#   WAIT_SECONDS; 13 the state has no start time (an older wrapper): nothing signalled (pid=);
#   14 a Slurm job, and Slurm cannot be asked here (no scancel or squeue, or squeue failed or
#   did not answer within 5 s);
#   15 scancel refused (or did not answer within 5 s).
id=$1 wait=$2
state=$sp_server/jobs/$id.status
field() { sed -n "s/.*\"$1\": *\"*\([^\",}]*\).*/\1/p" "$state" | head -n 1; }
# keep_end: the end an earlier attempt left in the state file, kept as a line of slurm/ID.ends
# (as the batch script keeps it when Slurm runs the job again)
keep_end() {
  ends=$sp_server/slurm/$id.ends
  last=$(head -n 1 -- "$state" 2>/dev/null)
  if [ -n "$last" ] && ! grep -qxF -- "$last" "$ends" 2>/dev/null; then
    (umask 077 && printf '%s\n' "$last" >>"$ends") || exit 14
  fi
}
# record_end CODE SIGNAL WHY WROTE: the final record the wrapper could not write, with the DB
# row when the DB is there (its warning= when it cannot be written). From the running state of
# the attempt Slurm is at when there is one (its pid and start stay), else of an attempt that
# never started (no pid).
record_end() {
  at=$(date +%Y-%m-%dT%H:%M:%S%z | sed 's/\(..\)$/:\1/')
  who=$(printf '%s' "${USER:-$(id -un)}" | tr -c 'A-Za-z0-9._-' '?')
  more=$(printf '"exit_code":%s,"completed_at":"%s","signal":"%s","recorded_by":"sp-deploy cancel: %s"' "$1" "$at" "$2" "$3")
  mkdir -p -- "$sp_server/jobs" || exit 14
  rm -f -- "$state.$$.tmp"
  if [ "$4" = ended ]; then
    (umask 077 && set -C && sed 's/"status": *"running"/"status":"failed"/; s/}[[:space:]]*$/,'"$more"'}/' \
      "$state" >"$state.$$.tmp")
  else
    (umask 077 && set -C && printf '{"id":"%s","status":"failed","started_at":null,"user":"%s","pid":null,"host":null,"slurm_job_id":"%s","slurm_attempt":%s,%s}\n' \
      "$id" "$who" "$sid" "$at_attempt" "$more" >"$state.$$.tmp")
  fi && mv -f -- "$state.$$.tmp" "$state" || exit 14
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
  end=$(($(date +%s) + wait))
  while :; do # a squeue that fails (a busy controller) is asked again
    if q=$(sp_slurm_state "$sid"); then sp_slurm_active "$q" || return 0; fi
    [ "$(date +%s)" -lt "$end" ] || show 12
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
  if [ -f "$state" ]; then printf 'state='; cat -- "$state"; fi
  exit "$1"
}
sid=$(sp_slurm_id "$id")
if [ -n "$sid" ]; then
  command -v scancel >/dev/null 2>&1 || { echo "error=scancel not found on this host"; exit 14; }
  q=$(sp_slurm_state "$sid") || { echo "error=Slurm could not answer (squeue: $q)"; exit 14; }
  if ! sp_slurm_active "$q"; then # Slurm has ended it (or forgotten it)
    if [ -f "$state" ] && [ "$(field status)" != running ]; then
      echo "was=$(field status)"
      show 0
    fi
    echo "slurm_state=${q:-forgotten}" | sed 's/ .*//'
    show 11
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
    124) echo "error=scancel got no answer within $sp_slurm_bound s: the job may still be cancelled; see status"; exit 15 ;;
    *) echo "error=${said:-scancel failed}"; exit 15 ;;
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

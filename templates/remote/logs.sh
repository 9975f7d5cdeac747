# logs.sh JOB_ID OFFSET MAX_BYTES: the job's log (logs/JOB_ID.log, its tmux pane) from byte
# OFFSET, at most MAX_BYTES of it, as hex (od), so every byte arrives as it was.
# Answer: size= (the log's size now), status= (the job's state: running, completed, failed, or
#   empty without a state file), session=present while its tmux session runs,
#   wrapper=alive|gone for a tmux job whose state names its wrapper (pid and start ticks:
#   alive while it runs, whatever the record says: a stop's record comes before the job's
#   last words; gone with the record still running: lost, nothing more will come); for a Slurm
#   job, slurm=active while Slurm has not ended it (pending, running, suspended, requeued for
#   another attempt: more may come whatever its record says), slurm=unknown when Slurm could
#   not answer (slurm_error= its words), lost=yes when Slurm has ended it while its record
#   says running; then the bytes as lines of hex pairs.
# Exit (templates/remote/codes): ok; no_job: neither a log nor a state for this job
#   (db_only=STATUS: only a DB row); unsafe_server_dir (lib.sh).
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
id=$1 offset=$2 max=$3
log=$sp_server/logs/$id.log state=$sp_server/jobs/$id.status
# (a Slurm job has neither until it starts: its batch script says it was submitted)
[ -f "$log" ] || [ -f "$state" ] || [ -f "$sp_server/slurm/$id.sbatch" ] || sp_no_job "$id"
# what tells whether more may come first, then the state, then the log: a log read after a
# final state holds all the job wrote, and a wrapper seen gone before a state that still says
# running never wrote another.
# A Slurm job: Slurm says whether more will come (its next attempt after a requeue too)
sid=$(sp_slurm_id "$id") slurm_ended=''
if [ -n "$sid" ]; then
  if ! q=$(sp_slurm_state "$sid"); then
    echo slurm=unknown
    printf 'slurm_error=%s\n' "$q" | head -n 1
  elif sp_slurm_active "$q"; then
    echo slurm=active
  else
    slurm_ended=yes
  fi
fi
# without a state yet, a tmux job is on its way while its tmux session runs
name=$(sp_session_name "$id")
if tmux has-session -t "=$name" 2>/dev/null; then echo session=present; fi
if [ -f "$state" ] && [ -z "$sid" ]; then
  pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$state" 2>/dev/null | head -n 1)
  ticks=$(sed -n 's/.*"start_ticks": *\([0-9]*\).*/\1/p' "$state" 2>/dev/null | head -n 1)
  if sp_alive "$pid" "$ticks"; then
    echo wrapper=alive
  elif [ -n "$pid" ] && [ -n "$ticks" ]; then
    echo wrapper=gone
  fi
fi
status=$(sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p' "$state" 2>/dev/null | head -n 1)
[ -z "$slurm_ended" ] || [ "$status" != running ] || echo lost=yes
size=$(wc -c <"$log" 2>/dev/null | tr -d ' ')
echo "size=${size:-0}"
echo "status=$status"
[ "${size:-0}" -gt "$offset" ] || exit 0
tail -c +"$((offset + 1))" -- "$log" | head -c "$max" | od -An -v -tx1

# logs.sh JOB_ID OFFSET MAX_BYTES: the job's log (logs/JOB_ID.log, its tmux pane) from byte
# OFFSET, at most MAX_BYTES of it, as hex (od), so every byte arrives as it was.
# Answer: size= (the log's size now), status= (the job's state: running, completed, failed, or
#   empty without a state file), session=present while its tmux session runs (or Slurm has
#   not ended the job), lost=yes for a Slurm job Slurm has ended while its record says running,
#   then the bytes
#   as lines of hex pairs.
# Exit: 0; 10 neither a log nor a state for this job; 21 an unsafe server folder (lib.sh).
sp_server_safe || exit 21
id=$1 offset=$2 max=$3
log=$sp_server/logs/$id.log state=$sp_server/jobs/$id.status
# (a Slurm job has neither until it starts: its batch script says it was submitted)
[ -f "$log" ] || [ -f "$state" ] || [ -f "$sp_server/slurm/$id.sbatch" ] || exit 10
# the state first: a log read after a final state holds all the job wrote
status=$(sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p' "$state" 2>/dev/null | head -n 1)
size=$(wc -c <"$log" 2>/dev/null | tr -d ' ')
echo "size=${size:-0}"
echo "status=$status"
# without a state yet, the job is on its way while its tmux session runs
name=$(sp_session_name "$id")
if tmux has-session -t "=$name" 2>/dev/null; then echo session=present; fi
# or, for a Slurm job, while Slurm has not ended it (pending, running); one Slurm has ended
# while its record still says running is lost: nothing more will come
if [ "${status:-running}" = running ] && sid=$(sp_slurm_id "$id") && [ -n "$sid" ] &&
  q=$(sp_slurm_state "$sid"); then
  if sp_slurm_active "$q"; then
    [ -n "$status" ] || echo session=present
  elif [ -n "$status" ]; then
    echo lost=yes
  fi
fi
[ "${size:-0}" -gt "$offset" ] || exit 0
tail -c +"$((offset + 1))" -- "$log" | head -c "$max" | od -An -v -tx1

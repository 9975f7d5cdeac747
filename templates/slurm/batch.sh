#!/bin/sh
# A SolverPilot job for Slurm, written by `sp-deploy run --via slurm` and submitted by sbatch
# with the server folder as its one argument. It decodes the lines below (the job id, the
# working folder, then the command and each argument, every byte as a \NNN octal escape) and
# execs the wrapper, so that Slurm's signals (scancel, --signal, the time limit) reach the
# wrapper itself, which records them. A folder that cannot be entered on the node is still a
# recorded job: failed, exit 1, and the log says why.
# A requeue (scontrol requeue, preemption, a node failure under JobRequeue=1) runs this script
# again, as the next attempt of the same job (SLURM_RESTART_COUNT + 1): the end the earlier
# attempt left in the state file is first kept as a line of slurm/JOB_ID.ends (a line that
# still says "running": that attempt ended unrecorded), so that no attempt's end overwrites
# another's; the wrapper then records the new attempt (slurm_attempt).
SOLVERPILOT_SERVER_DIR=$1
# the wrapper records a Slurm job id only from here: SLURM_JOB_ID alone is in the environment
# of every shell inside an allocation, a tmux server's too, whose jobs are no Slurm jobs
restarts=${SLURM_RESTART_COUNT:-0}
case $restarts in '' | *[!0-9]*) restarts=0 ;; esac
SOLVERPILOT_SLURM_JOB_ID=${SLURM_JOB_ID-} SOLVERPILOT_SLURM_ATTEMPT=$((restarts + 1))
export SOLVERPILOT_SERVER_DIR SOLVERPILOT_SLURM_JOB_ID SOLVERPILOT_SLURM_ATTEMPT
n=0
set --
while IFS= read -r line; do
  # shellcheck disable=SC2059 # the line is octal escapes only, written by sp-deploy
  arg=$(printf "$line"; echo x)
  arg=${arg%x}
  case $n in
    0) id=$arg ;;
    1) cwd=$arg ;;
    *) set -- "$@" "$arg" ;;
  esac
  n=$((n + 1))
done <<'SP_ARGS'
SP_ARGS
wrapper=$HOME/.solverpilot/bin/job_wrapper.sh
state=$SOLVERPILOT_SERVER_DIR/jobs/$id.status ends=$SOLVERPILOT_SERVER_DIR/slurm/$id.ends
if [ "$restarts" -gt 0 ] && [ -f "$state" ]; then
  echo "sp-deploy: attempt $SOLVERPILOT_SLURM_ATTEMPT of job $id (Slurm requeued it)"
  end=$(head -n 1 -- "$state")
  if [ -n "$end" ] && ! grep -qxF -- "$end" "$ends" 2>/dev/null; then
    (umask 077 && printf '%s\n' "$end" >>"$ends")
  fi
fi
case $cwd in /*) ;; *) cwd=$HOME/$cwd ;; esac # relative to the home, as --cwd says
if ! cd -- "$cwd" 2>/dev/null; then
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
  exec "$wrapper" "$id" /bin/sh -c 'echo "sp-deploy run: cannot enter $1 on $2" >&2; exit 1' \
    sh "$cwd" "$(hostname)"
fi
exec "$wrapper" "$id" "$@"

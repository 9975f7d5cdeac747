#!/bin/sh
# A SolverPilot job for Slurm, written by `sp-deploy run --via slurm` and submitted by sbatch
# with the server folder as its one argument. It decodes the lines below (the job id, the
# working folder, then the command and each argument, every byte as a \NNN octal escape) and
# execs the wrapper, so that Slurm's signals (scancel, --signal, the time limit) reach the
# wrapper itself, which records them. A folder that cannot be entered on the node is still a
# recorded job: failed, exit 1, and the log says why.
SOLVERPILOT_SERVER_DIR=$1
export SOLVERPILOT_SERVER_DIR
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
case $cwd in /*) ;; *) cwd=$HOME/$cwd ;; esac # relative to the home, as --cwd says
if ! cd -- "$cwd" 2>/dev/null; then
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
  exec "$wrapper" "$id" /bin/sh -c 'echo "sp-deploy run: cannot enter $1 on $2" >&2; exit 1' \
    sh "$cwd" "$(hostname)"
fi
exec "$wrapper" "$id" "$@"

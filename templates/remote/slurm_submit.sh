# slurm_submit.sh JOB_ID [partition=NAME] [time=MINUTES:SECONDS] [mem=SIZE] [cpus=N]
# [save=SECONDS] [after=ID,ID...]: after= maps to --dependency=afterok on those jobs' Slurm ids:
# submit the batch script of the payload (templates/slurm/batch.sh with the job's lines) with
# sbatch, kept as slurm/JOB_ID.sbatch; the job's name is solverpilot_<USER>_<first 8 chars of
# JOB_ID>, its output appended to logs/JOB_ID.log; save=S asks Slurm for INT to the wrapper S
# seconds before the time limit (--signal=B:INT@S). Slurm's job id is appended to slurm/jobids
# ("JOB_ID SLURM_JOB_ID" lines: status, logs and cancel read it).
# Answer: slurm_job_id=N; error= (sbatch's last words) when it refused.
# Exit (templates/remote/codes): ok submitted; no_wrapper; no_sbatch; id_used; cannot_write
#   the files; sbatch_refused (error=); bad_server_path: the server folder's path has a
#   backslash or a newline; unsafe_server_dir (lib.sh's sp_server_safe); unknown_after: a job
#   after= names is no job run --via slurm here (unknown= names it).
id=$1
shift
[ -x "$HOME/.solverpilot/bin/job_wrapper.sh" ] || exit "$E_NO_WRAPPER"
command -v sbatch >/dev/null 2>&1 || exit "$E_NO_SBATCH"
[ ! -e "$sp_server/jobs/$id.status" ] || exit "$E_ID_USED"
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
mkdir -p -- "$sp_server/slurm" "$sp_server/logs" || exit "$E_CANNOT_WRITE"
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR" # again: what another made in between is refused too
# the folder's full name, a trailing newline kept ($( ) drops only pwd's own after "/slurm")
server=$(cd -- "$sp_server/slurm" && pwd) || exit "$E_CANNOT_WRITE"
server=${server%/slurm}
# sbatch's --output drops a backslash (and stops reading %% then): no log, no record; a newline
# would end the batch script's option line
case $server in *\\* | *"
"*)
  printf 'error=the server folder %s has a backslash or a newline, which Slurm cannot take in a log path\n' \
    "$(printf '%s' "$server" | tr '\n\r' '??')"
  exit "$E_BAD_SERVER_PATH"
  ;;
esac
script=$server/slurm/$id.sbatch
# the id is claimed by creating its batch script (set -C: only if it does not exist)
(set -C && : >"$script") 2>/dev/null || exit "$E_ID_USED"
sp_tmp=$script # removed at exit unless submitted
# nor by a run in tmux starting with that id (its run folder claims it), nor one that ended
if [ -e "$sp_server/run/$id" ] || [ -e "$sp_server/jobs/$id.status" ]; then exit "$E_ID_USED"; fi
cat >"$script" <<'SP_PAYLOAD' || exit "$E_CANNOT_WRITE"
SP_PAYLOAD
set -- --parsable --open-mode=append "--job-name=solverpilot_${USER:-$(id -un)}_$(printf '%.8s' "$id")" \
  "--output=$(printf '%s' "$server/logs/$id.log" | sed 's/%/%%/g')" "$@"
for opt; do
  shift
  case $opt in
    partition=*) set -- "$@" "--partition=${opt#*=}" ;;
    time=*) set -- "$@" "--time=${opt#*=}" ;;
    mem=*) set -- "$@" "--mem=${opt#*=}" ;;
    cpus=*) set -- "$@" "--cpus-per-task=${opt#*=}" ;;
    save=*) set -- "$@" "--signal=B:INT@${opt#*=}" ;;
    after=*)
      deps=''
      for dep in $(printf '%s' "${opt#*=}" | tr ',' ' '); do
        sid=$(sp_slurm_id "$dep")
        [ -n "$sid" ] || { echo "unknown=$dep"; exit "$E_UNKNOWN_AFTER"; }
        deps="$deps:$sid"
      done
      set -- "$@" "--dependency=afterok$deps" ;;
    *) set -- "$@" "$opt" ;;
  esac
done
# the log 0600 before Slurm appends to it (the job runs with the login's umask, as sbatch
# passes it on); sbatch's words to a file of the step's own (mktemp: 0600, a new name)
: >>"$server/logs/$id.log" || exit "$E_CANNOT_WRITE"
err=$(mktemp) || exit "$E_CANNOT_WRITE"
out=$(umask "$sp_umask" && exec sbatch "$@" "$script" "$server" 2>"$err" </dev/null)
rc=$?
said=$(tail -n 1 -- "$err")
rm -f -- "$err"
sid=${out%%;*} # "ID" or "ID;CLUSTER"
ok=$rc
case $sid in '' | *[!0-9]*) ok=no ;; esac
if [ "$ok" != 0 ]; then
  echo "error=${said:-sbatch exit $rc, no job id}"
  exit "$E_SBATCH_REFUSED"
fi
sp_tmp='' # submitted: the batch script stays with the job
echo "slurm_job_id=$sid"
printf '%s %s\n' "$id" "$sid" >>"$server/slurm/jobids" ||
  echo "warning=cannot note the job in $server/slurm/jobids: status will not see it pending"

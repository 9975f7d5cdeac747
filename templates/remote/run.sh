# run.sh JOB_ID WAIT_SECONDS [QUEUE AFTER LIMIT SAVE]: start ~/.solverpilot/bin/job_wrapper.sh
# JOB_ID COMMAND... in a detached tmux session named solverpilot_<USER>_<first 8 chars of JOB_ID>
# (tmux makes "." "_"), its pane appended to logs/JOB_ID.log, then wait until the wrapper's
# state exists. With a QUEUE or AFTER (ids, comma-separated; "-" for none of either), the job
# is submitted instead (the wrapper's --submit: README "Queues"): recorded queued, started by
# the queue when a slot is free and the jobs it waits for have completed; the answer is its
# state then. LIMIT and SAVE: the time limit and the INT before it, in seconds ("-": none).
# The payload: the job's description (one line of JSON without its closing brace, kept with
# submitted_at added as jobs/JOB_ID.spec), then the working folder ("" = home), then COMMAND
# and each ARG, one per line, every byte written as a \NNN octal escape, so any byte but NUL
# travels as it is.
# Answer: os_id=, os_like=, logout_kills=yes (see lib.sh), then state= (the state file) once
#   it exists, or rc= and log= lines (the wrapper's last words) when it ended without one.
# Start: the launcher runs the wrapper only if it is first to create run/JOB_ID/decided (a
#   cancel of the starting job may be first: cancel.sh); run reports a start only once the
#   wrapper's state exists. A tmux session that ends before the wrapper ran (a tmux.conf's
#   exit-unattached, a server killed) frees the id: the run folder is removed (session_ended).
# Exit (templates/remote/codes): ok started (or ended at once with a state); no_wrapper;
#   no_tmux; id_used (a state file, or another run of it starting); wrapper_refused (rc= says
#   how, log= its last lines); cannot_write the run files (error= when the wrapper's --submit
#   failed); still_starting: no state yet after WAIT_SECONDS; session_taken (session=): another
#   job whose id starts with the same 8 characters; no_cwd; cancelled_first (state= is cancel's
#   record); session_ended before the wrapper started (the id is free again);
#   unsafe_server_dir (lib.sh's sp_server_safe); unknown_after: a job AFTER names has no
#   record (unknown= names it); queues_busy: the queues' lock was held too long.
id=$1 wait=$2 queue=${3:--} after=${4:--} limit=${5:--} save=${6:--}
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-}"
echo "os_like=${ID_LIKE:-}"
wrapper=$HOME/.solverpilot/bin/job_wrapper.sh
[ -x "$wrapper" ] || exit "$E_NO_WRAPPER"
command -v tmux >/dev/null 2>&1 || exit "$E_NO_TMUX"
sp_logout_kills && echo logout_kills=yes
name=$(sp_session_name "$id")
jobs=$sp_server/jobs runs=$sp_server/run logs=$sp_server/logs
state=$jobs/$id.status
[ ! -e "$state" ] || exit "$E_ID_USED"
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
mkdir -p -- "$runs" "$logs" "$jobs" || exit "$E_CANNOT_WRITE"
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR" # again: what another made in between is refused too
# the id is claimed by creating its run folder: of two runs with one id, one alone goes on
mkdir -- "$runs/$id" 2>/dev/null || exit "$E_ID_USED"
# nor by a job run --via slurm submitted (its batch script claims the id), nor by one that
# ended while this step was getting here (its run folder is gone then, its state is not)
if [ -e "$sp_server/slurm/$id.sbatch" ] || [ -e "$state" ]; then
  rmdir -- "$runs/$id"
  exit "$E_ID_USED"
fi
sp_tmpdir=$runs/$id # removed at exit until the tmux session owns it
# (a queued job starts when its queue says: another session of that name may have ended then)
if [ "$queue$after" = -- ] && tmux has-session -t "=$name" 2>/dev/null; then
  echo "session=$name"
  exit "$E_SESSION_TAKEN"
fi
here=$(cd -- "$runs/$id" && pwd) || exit "$E_CANNOT_WRITE"
log=$(cd -- "$logs" && pwd)/$id.log || exit "$E_CANNOT_WRITE"
cat >"$here/payload" <<'SP_PAYLOAD' || exit "$E_CANNOT_WRITE"
SP_PAYLOAD
{ tail -n +2 -- "$here/payload" >"$here/args" && echo "$sp_umask" >"$here/umask"; } || exit "$E_CANNOT_WRITE"
# "LIMIT SAVE" (no --save-before: 0, never an empty word that read would drop)
if [ "$limit" != - ]; then echo "$limit $(echo "${save#-}" | sed 's/^$/0/')" >"$here/limits" || exit "$E_CANNOT_WRITE"; fi
at=$(date +%Y-%m-%dT%H:%M:%S%z | sed 's/\(..\)$/:\1/')
{ head -n 1 -- "$here/payload" | tr -d '\n' && printf ',"submitted_at":"%s"}\n' "$at"; } >"$here/spec" || exit "$E_CANNOT_WRITE"
rm -f -- "$here/payload"
# the launcher: tmux starts it in the run folder; it waits for the pipe to the log, decodes the
# arguments, runs the wrapper, notes how it ended when the wrapper wrote no state, and removes
# the run folder once it is no longer needed
cat >"$here/launch" <<'EOF' || exit "$E_CANNOT_WRITE"
id=$1 n=0
# no trap here: a stop of the session (its hangup ends this launcher first, and the kernel then
# hangs up the wrapper) reaches the wrapper, which records it and advances the queues itself
unset SOLVERPILOT_TIME_LIMIT SOLVERPILOT_SAVE_BEFORE # another job's, from a tmux server's env
umask 077 # what this launcher creates (decided, rc); the wrapper gets the login's (below)
if [ -e queued ]; then # started by the queue: its pane's output to the log, from here
  tmux pipe-pane -o -t "$TMUX_PANE" "cat >>../../logs/$id.log" 2>/dev/null
else # started by the run step, which pipes it and says go
  while [ ! -e go ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
fi
# the pane's terminal adds nothing to what the job writes to the log (README "Jobs"): no \r
# before each \n (-opost: its onlcr), no echo of what is typed into the pane; it stays a
# terminal, so the job's output stays line-buffered and logs -f shows it as it comes (undoing
# onlcr when reading instead would be wrong for a job that changes its terminal's modes)
stty -opost -echo 2>/dev/null
set --
first=1
while IFS= read -r line; do
  # shellcheck disable=SC2059 # the line is octal escapes only, written by sp-deploy
  arg=$(printf "$line"; echo x)
  arg=${arg%x}
  if [ -n "$first" ]; then cwd=$arg first=''; else set -- "$@" "$arg"; fi
done <args
here=$PWD queued='' mask=''
read -r mask <umask # the login's umask, whoever started the session: the wrapper's alone
limits=''
if [ -f limits ]; then read -r limits <limits; fi
if [ -e queued ]; then queued=1; fi
# a cancel while the job starts may have decided first, or the run step given the start up
# (either renames this folder away before removing it: a "decided" removed with it cannot be
# taken again here, this folder being no longer the claim), or a record of the id be there:
# then the job never runs
# (a queued job's record says queued until its wrapper runs)
if ! mkdir decided 2>/dev/null || [ ! . -ef "$here" ] ||
  { [ -e "${here%/run/*}/jobs/$id.status" ] && ! grep -q '"status":"queued"' "${here%/run/*}/jobs/$id.status"; }; then
  if [ . -ef "$here" ] && [ -z "$queued" ]; then cd / && rm -rf -- "$here"; fi
  exit 0
fi
rm -f -- args go launch # (a queued job's stay until here: the queue may start it again)
# the server folder this run step used, whatever the tmux server's environment says
SOLVERPILOT_SERVER_DIR=${here%/run/*}
export SOLVERPILOT_SERVER_DIR
case $cwd in /*) ;; *) cwd=$HOME/$cwd ;; esac # relative to the home, as --cwd says
if ! cd -- "$cwd"; then
  echo "sp-deploy run: cannot enter $cwd"
  rc=cwd
else
  # the pane gets the wrapper's stderr (fd 4 while it runs), never this shell's own: its
  # "Killed" for a wrapper that KILL ended would be bytes in the log the job never wrote
  # (dash and busybox print it past a { } group's redirection: exec, then)
  exec 4>&2 2>/dev/null
  if [ -n "$limits" ]; then # for the wrapper only (it unsets them before the job starts)
    (umask "$mask" && SOLVERPILOT_TIME_LIMIT=${limits% *} SOLVERPILOT_SAVE_BEFORE=${limits#* } \
      exec "$HOME/.solverpilot/bin/job_wrapper.sh" "$id" "$@" 2>&4 4>&-)
  else
    (umask "$mask" && exec "$HOME/.solverpilot/bin/job_wrapper.sh" "$id" "$@" 2>&4 4>&-)
  fi
  rc=$?
  exec 2>&4 4>&-
fi
# the run step (or, for a queued job, the queue) reads this only when the wrapper wrote no
# state of its own (it refused the job)
st=$SOLVERPILOT_SERVER_DIR/jobs/$id.status
# (whole or not at all: the run step may read it the moment it exists)
if [ -e "$st" ] && ! grep -q '"status":"queued"' "$st"; then
  rm -rf -- "$here"
else
  echo "$rc" >"$here/rc.new" && mv -f -- "$here/rc.new" "$here/rc"
fi
# a queued job the wrapper refused: the queue records it and goes on (a wrapper that ran
# advances the queues itself at its end)
if [ -n "$queued" ] && [ -f "$here/rc" ]; then
  # apart (setsid, not waited for): this session must end first, or a next job whose id starts
  # with the same 8 characters would find the session name taken (the queue waits for it)
  # (HUP ignored: the pane's hangup as this launcher exits must not end it before its setsid)
  cd / && (trap '' HUP && exec setsid "$HOME/.solverpilot/bin/job_wrapper.sh" --advance "$id") >/dev/null 2>&1 </dev/null &
fi
EOF
# the log exists before tmux appends to it, so it is 0600 whatever the tmux server's umask
: >>"$log" || exit "$E_CANNOT_WRITE"
mv -f -- "$here/spec" "$jobs/$id.spec" || exit "$E_CANNOT_WRITE"
if [ "$queue" != - ] || [ "$after" != - ]; then # the queue starts it (README "Queues")
  [ "$queue" != - ] || queue=_now
  : >"$here/queued" || exit "$E_CANNOT_WRITE"
  sp_tmpdir=''
  # shellcheck disable=SC2046 # the ids, split at commas on purpose: plain words
  out=$("$wrapper" --submit "$id" "$queue" $(printf '%s' "${after#-}" | tr ',' ' ') 2>&1 </dev/null 3>&-)
  rc=$?
  case $rc in
    0) ;;
    76) rm -rf -- "$here" "$jobs/$id.spec" "$log"; printf '%s\n' "$out" | sed -n 's/.*job \([A-Za-z0-9._-]*\) (--after).*/unknown=\1/p' | head -n 1; exit "$E_UNKNOWN_AFTER" ;;
    75) rm -rf -- "$here" "$jobs/$id.spec" "$log"; exit "$E_QUEUES_BUSY" ;;
    *)
      # (killed after its record and queue entry were written: submitted all the same)
      if ! grep -q '"status":"queued"' "$state" 2>/dev/null; then
        rm -rf -- "$here" "$jobs/$id.spec" "$log"
        echo "error=$(sp_wrapper_said "$out")"
        exit "$E_CANNOT_WRITE"
      fi
      ;;
  esac
  printf 'state='
  head -c 65536 -- "$state" | tr '\n' ' '
  echo
  exit 0
fi
# 3>&-: the tmux server outlives this step and must not hold the channel (end.sh) open; the
# login's umask: a tmux server started here passes it to the job (and to later sessions).
# tmux expands -c and pipe-pane's command as formats (#, %, #{...}), which no escaping keeps
# exact for every path ("##[" stays "##["): neither names the folder. A command client with
# no -c starts the session in its own folder, and pipe-pane runs its command there too, so
# both run in the run folder, and the log is named from it (an id has no # or %)
(cd -- "$here" && umask "$sp_umask" && exec tmux new-session -d -s "$name" "/bin/sh ./launch $id") 3>&- || exit "$E_CANNOT_WRITE"
sp_tmpdir='' # the launcher removes it now
# drop_claim: the run folder is renamed away, then removed: a launcher that has not decided yet
# finds its folder no longer the claim (never a "decided" removed under it that it could take)
drop_claim() {
  gone=$runs/.gone.$id.$$
  if mv -- "$here" "$gone" 2>/dev/null; then rm -rf -- "$gone"; else rm -rf -- "$here"; fi
}
(cd -- "$here" && exec tmux pipe-pane -t "=$name:" -o "cat >>../../logs/$id.log") 2>/dev/null 3>&-
: >"$here/go"
sp_deadline "$wait"
while :; do
  if [ -f "$state" ]; then
    printf 'state=' # one line of at most 64 KiB: a newline in the file cannot forge a key
    head -c 65536 -- "$state" | tr '\n' ' '
    echo
    # cancel's record of a job it stopped before the launcher ran it
    if grep -q -e '"recorded_by":"sp-deploy cancel: cancelled before it started"' "$state"; then
      drop_claim
      exit "$E_CANCELLED_FIRST"
    fi
    exit 0
  fi
  if [ -f "$here/rc" ]; then
    rc=$(cat -- "$here/rc")
    drop_claim
    rm -f -- "$jobs/$id.spec" # no job: what it was asked goes too
    echo "rc=$rc"
    tail -n 5 -- "$log" 2>/dev/null | sed 's/^/log=/'
    [ "$rc" != cwd ] || exit "$E_NO_CWD"
    exit "$E_WRAPPER_REFUSED"
  fi
  # the session ended with neither a state nor an rc: the wrapper never ran (or died at once,
  # unrecorded, with its pane); once it is sure that no launcher runs it, the id is freed
  if ! tmux has-session -t "=$name" 2>/dev/null && [ ! -f "$state" ] && [ ! -f "$here/rc" ] &&
    { mkdir -- "$here/decided" 2>/dev/null || ! sp_in_time; }; then
    drop_claim
    rm -f -- "$jobs/$id.spec"
    echo "error=the tmux session $name ended before the wrapper started"
    exit "$E_SESSION_ENDED"
  fi
  sp_in_time || exit "$E_STILL_STARTING"
  sleep 0.1
done

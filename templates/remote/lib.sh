# lib.sh: the start of every remote step. sp-deploy sends lib.sh, the step's own lines, then
# end.sh, as one script to `/bin/sh -s -- TOKEN ARG...` on stdin, whatever the login shell.
# lib.sh ends by opening the function sp_main, whose body is the step; end.sh closes it, runs
# it and passes every line it prints through sed, which puts the per-call TOKEN before it, and
# adds "TOKEN @end STATUS" last. So nothing a login banner, a start-up file or a process one
# left running prints can pass for part of the answer, and a script cut short (a start-up file
# that read some of stdin) does not parse, so no part of it runs. A file named in sp_tmp (a
# folder in sp_tmpdir) is removed at exit, however the step ends.
sp_token=$1
shift
sp_tmp='' sp_tmpdir=''
# shellcheck disable=SC2329 # invoked by the EXIT trap
sp_exit() {
  trap '' HUP INT TERM PIPE
  [ -z "$sp_tmp" ] || rm -f -- "$sp_tmp"
  [ -z "$sp_tmpdir" ] || rm -rf -- "$sp_tmpdir"
}

# sp_find_sha256: sp_sha becomes the first sha256 tool that hashes "abc" right, or stays empty
# shellcheck disable=SC2329 # not every step needs it
sp_find_sha256() {
  sp_sha=''
  for sp_c in sha256sum 'busybox sha256sum' 'shasum -a 256' 'openssl dgst -sha256 -r'; do
    # shellcheck disable=SC2086 # the tool's name and options, split on purpose
    if [ "$(printf abc | $sp_c 2>/dev/null | cut -d' ' -f1)" = \
      ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad ]; then
      sp_sha=$sp_c
      return 0
    fi
  done
  return 1
}

# sp_sha256 FILE: the file's sha256, in hex
# shellcheck disable=SC2329 # not every step needs it
sp_sha256() {
  # shellcheck disable=SC2086 # the tool's name and options, split on purpose
  $sp_sha "$1" 2>/dev/null | cut -d' ' -f1
}

# sp_logout_kills: true when systemd-logind kills this user's processes at logout (its
# KillUserProcesses: logind.conf, then the drop-ins of /usr/lib, /run and /etc, the last
# setting read wins; any case, spaces around) and linger is off for the user
# shellcheck disable=SC2329 # not every step needs it
sp_logout_kills() {
  sp_k=$(cat /etc/systemd/logind.conf /usr/lib/systemd/logind.conf.d/*.conf \
    /run/systemd/logind.conf.d/*.conf /etc/systemd/logind.conf.d/*.conf 2>/dev/null |
    sed -n 's/^[[:space:]]*KillUserProcesses[[:space:]]*=[[:space:]]*//p' | tail -n 1 |
    tr -d ' \t\r' | tr '[:upper:]' '[:lower:]')
  case $sp_k in yes | y | true | t | on | 1) ;; *) return 1 ;; esac
  [ ! -e "/var/lib/systemd/linger/${USER:-$(id -un)}" ]
}

# sp_session_name ID: the tmux session `run` gives job ID (tmux turns "." and ":" into "_")
# shellcheck disable=SC2329 # not every step needs it
sp_session_name() {
  printf 'solverpilot_%s_%.8s' "${USER:-$(id -un)}" "$1" | tr '.:' '__'
}

# sp_slurm_id ID: Slurm's job id for job ID (its state's slurm_job_id, else the last line of
# slurm/jobids naming it, which run --via slurm writes), or nothing
# shellcheck disable=SC2329 # not every step needs it
sp_slurm_id() {
  sp_s=$(sed -n 's/.*"slurm_job_id": *"\([0-9]*\)".*/\1/p' "$sp_server/jobs/$1.status" 2>/dev/null)
  [ -n "$sp_s" ] ||
    sp_s=$(awk -v id="$1" '$1 == id { s = $2 } END { print s }' "$sp_server/slurm/jobids" 2>/dev/null)
  printf '%s' "$sp_s"
}

# sp_slurm_state SID: prints Slurm's state of job SID (PENDING, RUNNING, CANCELLED...; nothing
# once Slurm has forgotten it); false, with squeue's words, when Slurm could not be asked
# shellcheck disable=SC2329 # not every step needs it
sp_slurm_state() {
  sp_q=$(squeue -h --states=all -j "$1" -o %T 2>&1) && { printf '%s' "$sp_q"; return 0; }
  case $sp_q in *"Invalid job id"*) return 0 ;; esac
  printf '%s' "$sp_q" | tail -n 1
  return 1
}

# sp_slurm_active STATE: true while Slurm has not ended a job in STATE (the wrapper may run)
# shellcheck disable=SC2329 # not every step needs it
sp_slurm_active() {
  case $1 in
    PENDING | CONFIGURING | RUNNING | COMPLETING | SUSPENDED | REQUEUED | REQUEUE_FED | \
      REQUEUE_HOLD | RESIZING | SIGNALING | STAGE_OUT | STOPPED | RESV_DEL_HOLD) return 0 ;;
  esac
  return 1
}

# sp_unsafe PATH: why another user could change PATH, one reason a line (a symbolic link, not
# owned by this user, writable by its group or others), or nothing
# shellcheck disable=SC2329 # not every step needs it
sp_unsafe() {
  if [ -L "$1" ]; then
    echo 'is a symbolic link'
    return 0
  fi
  [ -z "$(find "$1" -prune ! -user "$(id -u)" 2>/dev/null)" ] || echo 'is not owned by you'
  [ -z "$(find "$1" -prune \( -perm -020 -o -perm -002 \) 2>/dev/null)" ] ||
    echo 'is writable by group or others'
}

# the step: end.sh closes this function and runs it
sp_main() {
trap sp_exit EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 141' PIPE
cd || exit 20
# the server folder, as the wrapper finds it (the login shell's start-up files may set it);
# ./ keeps a relative one from reading as an option
sp_server=${SOLVERPILOT_SERVER_DIR:-.solverpilot-server}
case $sp_server in /*) ;; *) sp_server=./$sp_server ;; esac
# the step's own lines follow

# lib.sh: the start of every remote step. sp-deploy sends lib.sh, the step's own lines, then
# end.sh, as one script to `/bin/sh -s -- ARG...` on stdin, whatever the login shell; the
# script's first line (remote.py's with_token) puts the per-call TOKEN before the arguments:
# on the command line a start-up file or another user could read it.
# lib.sh ends by opening the function sp_main, whose body is the step; end.sh closes it, runs
# it and passes every line it prints through sed, which puts the per-call TOKEN before it, and
# adds "TOKEN @end STATUS" last. So nothing a login banner, a start-up file or a process one
# left running prints can pass for part of the answer, and a script cut short (a start-up file
# that read some of stdin) does not parse, so no part of it runs. A file named in sp_tmp (a
# folder in sp_tmpdir) is removed at exit, however the step ends. A step exits with the codes
# of templates/remote/codes, by name: remote.py's step_script puts their E_NAME=NUMBER lines
# in place of the "@codes" line below.
sp_token=$1
shift
# @codes
# (what later lines read before they set it: never the login environment's)
sp_tmp='' sp_tmpdir='' sp_uid='' sp_sha=''
# shellcheck disable=SC2329 # invoked by the EXIT trap
sp_exit() {
  trap '' HUP INT TERM PIPE
  [ -z "$sp_tmp" ] || rm -f -- "$sp_tmp"
  [ -z "$sp_tmpdir" ] || rm -rf -- "$sp_tmpdir"
}

# sp_find_sha256 [FILE]: sp_sha becomes the first sha256 tool that hashes "abc" and its line end
# right, or stays empty (each tool prints the hash, then a blank: no cut needed, one process
# less per hash; the text comes from a here-document: no process writes it). With FILE, the
# same run hashes it too where the tool takes "-" for its input (sha256sum, busybox, shasum):
# sp_hashed becomes FILE's sha256, else stays empty (sp_sha256 FILE then)
# shellcheck disable=SC2329,SC2034,SC2120 # not every step needs it, sp_hashed or FILE
sp_find_sha256() {
  sp_sha='' sp_hashed=''
  sp_abc=edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb
  for sp_c in sha256sum 'busybox sha256sum' 'shasum -a 256' 'openssl dgst -sha256 -r'; do
    if [ -n "${1-}" ]; then
      # shellcheck disable=SC2086 # the tool's name and options, split on purpose
      sp_h=$($sp_c - "$1" 2>/dev/null <<'SP_ABC'
abc
SP_ABC
)
      case $sp_h in
        "$sp_abc  -
"*)
          sp_sha=$sp_c sp_h=${sp_h#*"
"}
          case $sp_h in "${sp_h%% *}  $1") sp_hashed=${sp_h%% *} ;; esac
          return 0
          ;;
      esac
    fi
    # shellcheck disable=SC2086 # the tool's name and options, split on purpose
    sp_h=$($sp_c 2>/dev/null <<'SP_ABC'
abc
SP_ABC
)
    if [ "${sp_h%% *}" = "$sp_abc" ]; then
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
  sp_h=$($sp_sha "$1" 2>/dev/null) && printf '%s\n' "${sp_h%% *}"
}

# sp_logout_kills: true when systemd-logind kills this user's processes at logout (its
# KillUserProcesses: logind.conf, then the drop-ins of /usr/lib, /run and /etc, the last
# setting read wins; any case, blanks around) and linger is off for the user. Builtins only
# (every probe and run reads it).
# shellcheck disable=SC2329 # not every step needs it
sp_logout_kills() {
  sp_k=''
  for sp_f in /etc/systemd/logind.conf /usr/lib/systemd/logind.conf.d/*.conf \
    /run/systemd/logind.conf.d/*.conf /etc/systemd/logind.conf.d/*.conf; do
    [ -f "$sp_f" ] && [ -r "$sp_f" ] || continue
    while IFS= read -r sp_l || [ -n "$sp_l" ]; do
      sp_l=${sp_l#"${sp_l%%[![:space:]]*}"}
      case $sp_l in KillUserProcesses*) ;; *) continue ;; esac
      sp_l=${sp_l#KillUserProcesses}
      sp_l=${sp_l#"${sp_l%%[![:space:]]*}"}
      case $sp_l in =*) ;; *) continue ;; esac
      sp_l=${sp_l#=}
      sp_l=${sp_l#"${sp_l%%[![:space:]]*}"}
      sp_k=${sp_l%"${sp_l##*[![:space:]]}"}
    done <"$sp_f"
  done
  case $sp_k in
    [Yy] | [Yy][Ee][Ss] | [Tt] | [Tt][Rr][Uu][Ee] | [Oo][Nn] | 1) ;;
    *) return 1 ;;
  esac
  [ ! -e "/var/lib/systemd/linger/${USER:-$(id -un)}" ]
}

# sp_session_name ID: the tmux session `run` gives job ID (tmux turns "." and ":" into "_")
# shellcheck disable=SC2329 # not every step needs it
sp_session_name() {
  printf 'solverpilot_%s_%.8s' "${USER:-$(id -un)}" "$1" | tr '.:' '__'
}

# sp_slurm_id ID: Slurm's job id for job ID (its state's slurm_job_id, else the last line of
# slurm/jobids naming it, which run --via slurm writes), or nothing; only for a job whose batch
# script is here (run --via slurm claimed its id): no tmux job is a Slurm job, whatever an
# older wrapper recorded from the environment of a tmux server started inside an allocation
# shellcheck disable=SC2329 # not every step needs it
sp_slurm_id() {
  [ -f "$sp_server/slurm/$1.sbatch" ] || return 0
  sp_s=$(sed -n 's/.*"slurm_job_id": *"\([0-9]*\)".*/\1/p' "$sp_server/jobs/$1.status" 2>/dev/null)
  [ -n "$sp_s" ] ||
    sp_s=$(SP_ID=$1 awk '$1 == ENVIRON["SP_ID"] { s = $2 } END { print s }' "$sp_server/slurm/jobids" 2>/dev/null)
  printf '%s' "$sp_s"
}

# seconds a step waits for Slurm's answer: a controller that is down or hung makes squeue wait
# for its own timeouts (18 s and more), and every status, cancel and logs with it
sp_slurm_bound=5

# sp_bounded SECONDS COMMAND [ARG...]: COMMAND (its output and status), ended by TERM once it
# has run SECONDS: status 124 then. Not timeout(1), which busybox spells otherwise.
# shellcheck disable=SC2329 # not every step needs it
sp_bounded() {
  sp_b=$1
  shift
  "$@" &
  sp_bp=$!
  # the watcher holds neither the answer's pipe nor the channel (fd 3): a sleep it leaves
  # behind cannot keep the step's answer open
  (sleep "$sp_b" && kill -TERM "$sp_bp") >/dev/null 2>&1 3>&- &
  sp_bw=$!
  wait "$sp_bp"
  sp_brc=$?
  kill -TERM "$sp_bw" 2>/dev/null
  [ "$sp_brc" != 143 ] || sp_brc=124 # neither squeue nor scancel ends with 143 itself
  return "$sp_brc"
}

# sp_slurm_state SID: prints Slurm's state of job SID and its restart count (requeues), as
# "RUNNING 0" (PENDING, CANCELLED...; nothing once Slurm has forgotten the job); false, with
# squeue's last words, when Slurm could not answer within sp_slurm_bound seconds
# shellcheck disable=SC2329 # not every step needs it
sp_slurm_state() {
  sp_q=$(sp_bounded "$sp_slurm_bound" squeue -h --states=all -j "$1" -O 'State:0 ,RestartCnt:0' 2>&1)
  case $? in
    0) printf '%s\n' "$sp_q" | sed -n 's/^\([A-Z_][A-Z_]*\) \([0-9][0-9]*\) *$/\1 \2/p' | tail -n 1; return 0 ;;
    124) printf 'no answer within %s s' "$sp_slurm_bound"; return 1 ;;
  esac
  case $sp_q in *"Invalid job id"*) return 0 ;; esac
  printf '%s' "$sp_q" | tail -n 1
  return 1
}

# sp_slurm_active STATE: true while Slurm has not ended a job in STATE (the wrapper may run;
# STATE may be followed by the restart count)
# shellcheck disable=SC2329 # not every step needs it
sp_slurm_active() {
  case ${1%% *} in
    PENDING | CONFIGURING | RUNNING | COMPLETING | SUSPENDED | REQUEUED | REQUEUE_FED | \
      REQUEUE_HOLD | RESIZING | SIGNALING | STAGE_OUT | STOPPED | RESV_DEL_HOLD) return 0 ;;
  esac
  return 1
}

# sp_deadline SECONDS: from now on, sp_in_time is true until SECONDS have passed, counted in
# hundredths (the kernel's uptime; where /proc is missing, date's whole seconds and one more),
# so a wait of 3 s never ends at 2.5
# shellcheck disable=SC2329 # not every step needs it
sp_deadline() {
  sp_now
  sp_end=$((sp_t + $1 * 100))
  [ -z "$sp_coarse" ] || sp_end=$((sp_end + 100))
}
# shellcheck disable=SC2329 # not every step needs it
sp_in_time() {
  sp_now
  [ "$sp_t" -lt "$sp_end" ]
}
# sp_now: sp_t becomes the time in hundredths of a second since boot (sp_coarse empty), else
# since 1970, in whole seconds (sp_coarse=1)
# shellcheck disable=SC2329 # not every step needs it
sp_now() {
  sp_t='' sp_coarse=''
  { read -r sp_t _ </proc/uptime; } 2>/dev/null
  case $sp_t in
    [0-9]*.[0-9][0-9]) sp_t=${sp_t%.*}${sp_t#*.} ;;
    *) sp_t=$(($(date +%s) * 100)) sp_coarse=1 ;;
  esac
  sp_t=${sp_t#"${sp_t%%[!0]*}"} # no leading 0: sh reads 0NN as octal
  sp_t=$((${sp_t:-0} + 0))
}

# sp_alive PID TICKS: true while PID runs (not a zombie) and started TICKS clock ticks after
# boot (the start_ticks a wrapper records): a pid given to another process since is not it
# shellcheck disable=SC2329 # not every step needs it
sp_alive() {
  case $1$2 in *[!0-9]* | '') return 1 ;; esac
  sp_a=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1,20)
  if [ -z "$sp_a" ] || [ "${sp_a%% *}" = Z ] || [ "${sp_a%% *}" = X ]; then return 1; fi
  [ "${sp_a#* }" = "$2" ]
}

# sp_no_job ID: exit no_job, first saying db_only=STATUS when the DB still has a row
# for ID (a job whose state file is gone: status lists it, so cancel and logs name it too)
# shellcheck disable=SC2329 # not every step needs it
sp_no_job() {
  if [ -f "$sp_server/server.db" ] && sp_r=$(sqlite3 -init /dev/null -cmd '.timeout 3000' \
    "$sp_server/server.db" "SELECT ifnull(status, '') FROM jobs WHERE id = '$1' LIMIT 1" \
    2>/dev/null) && [ -n "$sp_r" ]; then
    printf 'db_only=%s\n' "$(printf '%s' "$sp_r" | sed 's/[^a-z]/?/g' | cut -c1-20)"
  fi
  exit "$E_NO_JOB"
}

# sp_server_safe [report|tighten]: true when the server folder and those of its subfolders that
# exist are the user's alone: owned by the user, not writable by group or others; the
# subfolders are no symbolic links (the server folder may be the user's own link to such a
# folder). Else prints error= naming the path and why, and is false: the step then exits
# unsafe_server_dir, as the wrapper exits 73. With report (probe), a folder the user owns that is not 0700 is
# only listed (server_open=PATH MODE) and the error key is server_unsafe=; with tighten
# (push's DB step) such a folder is made 0700 (tightened=PATH MODE, its mode before).
# shellcheck disable=SC2329 # not every step needs it
sp_server_safe() {
  sp_my_uid
  sp_how=${1-} sp_key=error
  [ "$sp_how" != report ] || sp_key=server_unsafe
  sp_server_stat sp_server_path
}
# sp_server_stat FUNC [PATH...]: sp_each_stat FUNC for the PATHs, then for the server folder and
# those of its subfolders that exist (sp_server_safe's paths), and for a server folder that is a
# link, each further link it leads through (each must be the user's too), all read by one
# process
# shellcheck disable=SC2329 # not every step needs it
sp_server_stat() {
  sp_sfn=$1 sp_unread='' && shift
  # a name through "..": refused (sp_server_judge) whether the folder exists or not
  case /$sp_server/ in */../*)
    sp_each_stat "$sp_sfn" "$@" "$sp_server"
    return
    ;;
  esac
  for sp_p in "$sp_server" "$sp_server/" "$sp_server/jobs" "$sp_server/locks" \
    "$sp_server/logs" "$sp_server/run" "$sp_server/slurm"; do
    if [ "$sp_p" = "$sp_server/" ]; then # the folder a link names (a link to none: refused)
      [ -L "$sp_server" ] || continue # else the same folder again
    elif [ ! -e "$sp_p" ] && [ ! -L "$sp_p" ]; then
      continue
    fi
    set -- "$@" "$sp_p"
  done
  sp_l=$sp_server sp_k=0
  while [ -L "$sp_l" ] && [ "$sp_k" -lt 40 ]; do # (40: the kernel's own bound, ELOOP)
    # (the x keeps a newline that ends the target's name)
    if ! sp_t=$(readlink -- "$sp_l" && echo x); then
      sp_unread=$sp_l
      [ "$sp_l" = "$sp_server" ] || set -- "$@" "$sp_l"
      break
    fi
    sp_trim "${sp_t%?x}" # (sp_server_judge refuses a name that ends in ..)
    case $sp_r in /*) sp_l=$sp_r ;; *) sp_l=${sp_l%/*}/$sp_r ;; esac
    [ ! -L "$sp_l" ] && [ "${sp_l##*/}" != .. ] || set -- "$@" "$sp_l"
    sp_k=$((sp_k + 1))
  done
  [ "$#" = 0 ] || sp_each_stat "$sp_sfn" "$@"
}
# sp_trim NAME: sp_r becomes NAME without a trailing / or /.: the same folder, but named so
# that a link at its end is read as a link (its own owner), not through
# shellcheck disable=SC2329 # not every step needs it
sp_trim() {
  sp_r=$1
  while :; do
    case $sp_r in
      */.) sp_r=${sp_r%/.} ;;
      ?*/) sp_r=${sp_r%/} ;;
      *) break ;;
    esac
  done
  [ -n "$sp_r" ] || sp_r=/
}
# sp_server_path: sp_server_safe's check of one path (sp_each_stat's sp_p, sp_m, sp_o); false
# when it said why the path is unsafe
# shellcheck disable=SC2329 # not every step needs it
sp_server_path() {
  ! sp_server_judge || return 0
  sp_n=$(printf '%s' "${sp_p%/}" | tr '\n\r' '??') # one line, whatever the path
  # shellcheck disable=SC2088 # a literal ~ for the reader: the step runs in the home
  case $sp_n in ./*) sp_n="~/${sp_n#./}" ;; esac
  case $sp_why in
    '')
      if [ "$sp_how" = report ]; then
        echo "server_open=$sp_n $sp_m"
      elif [ "$sp_how" = tighten ] && chmod 700 -- "$sp_p"; then
        echo "tightened=$sp_n $sp_m"
      else
        ! sp_others_write || sp_why="can be written by group or others (mode $sp_m)"
      fi
      ;;
  esac
  [ -n "$sp_why" ] || return 0
  echo "$sp_key=$sp_n $sp_why"
  return 1
}
# sp_server_judge: sp_why becomes why the server path sp_p (sp_each_stat's sp_p, sp_m, sp_o) is
# unsafe, or empty; true when it is as it should be: 0700 and the user's (or, the server folder
# or a link it leads through, the user's own link)
# shellcheck disable=SC2329 # not every step needs it
sp_server_judge() {
  sp_why=''
  if [ -z "$sp_m" ]; then
    sp_why='cannot be read'
    [ "$sp_p" != "$sp_server/" ] || sp_why='is a symbolic link to no folder'
  fi
  [ "$sp_p" != "$sp_unread" ] || sp_why='is a link that cannot be read (readlink)'
  case $sp_p in */..) sp_why='is a link to a name that ends in ".."' ;; esac
  case /$sp_server/ in */../*) sp_why='is named through "..": name it without' ;; esac
  case $sp_why:$sp_m in
    :l*) # the server folder, or a link it leads through: the subfolders are no links
      case $sp_p in "$sp_server"/jobs | "$sp_server"/locks | "$sp_server"/logs | "$sp_server"/run | \
        "$sp_server"/slurm) sp_why='is a symbolic link' ;;
      esac
      ;;
    :d*) ;;
    :*) sp_why='is not a folder' ;;
  esac
  [ -n "$sp_why" ] || [ "$sp_o" = "$sp_uid" ] || sp_why="is owned by uid $sp_o, not by uid $sp_uid"
  # 0700; a setuid or setgid bit without access (S) is what mkdir inherits and chmod 700 keeps
  case $sp_why:$sp_m in
    :l* | :drw[xs]--[-S]---*) return 0 ;;
  esac
  return 1
}

# sp_each_stat FUNC PATH...: FUNC once for each PATH in turn, with sp_p the path, sp_m its mode
# as ls shows it (drwx------...) and sp_o its owner's uid, both empty when PATH cannot be read;
# all read by one process (stat), each apart (sp_stat) only when that fails (a path gone
# meanwhile, a stat without -c) or answers other than one line a path (never trusted to pair
# its lines with the paths then). Stops at the first FUNC that is false, and is then false.
# FUNC must not use sp_each_stat, nor read its standard input (stat's lines).
# shellcheck disable=SC2329 # not every step needs it
sp_each_stat() {
  sp_fn=$1 && shift
  if sp_all=$(stat -c '%A %u' -- "$@" 2>/dev/null); then
    # (stat's lines: one a path, in their order, no path in them; counted first)
    sp_c=0
    while read -r sp_m sp_o; do [ -z "$sp_m" ] || sp_c=$((sp_c + 1)); done <<SP_STATS
$sp_all
SP_STATS
    if [ "$sp_c" = "$#" ]; then
      while read -r sp_m sp_o; do
        [ -n "$sp_m" ] || continue # (not counted either)
        sp_p=$1 && shift
        "$sp_fn" || return 1
      done <<SP_STATS
$sp_all
SP_STATS
      return 0
    fi
  fi
  for sp_p; do
    sp_stat "$sp_p" || :
    "$sp_fn" || return 1
  done
}

# sp_stat PATH: sp_m becomes PATH's mode as ls shows it (drwx------...) and sp_o its owner's
# uid, from `ls -ldn` ("MODE LINKS UID ...", GNU and busybox alike; nothing after the uid is
# read); false when PATH cannot be read
# shellcheck disable=SC2329 # not every step needs it
sp_stat() {
  sp_m='' sp_o=''
  sp_l=$(ls -ldn -- "$1" 2>/dev/null) || return 1
  sp_m=${sp_l%% *} sp_o=${sp_l#* }
  sp_o=${sp_o#"${sp_o%%[! ]*}"} sp_o=${sp_o#* } sp_o=${sp_o#"${sp_o%%[! ]*}"} sp_o=${sp_o%% *}
}
# sp_others_write: true when the mode sp_stat read lets group or others write
# shellcheck disable=SC2329 # not every step needs it
sp_others_write() {
  case $sp_m in ?????w* | ????????w*) return 0 ;; esac
  return 1
}

# sp_wrapper_said TEXT: the last line of what the wrapper printed (one of its --submit,
# --advance or --slots refusals), without its "job_wrapper: " and carriage returns
# shellcheck disable=SC2329 # not every step needs it
sp_wrapper_said() {
  printf '%s' "$1" | tr -d '\r' | tail -n 1 | sed 's/^job_wrapper: //'
}

# sp_my_uid: sp_uid becomes this user's (effective) uid, read from /proc by the shell itself
# (no process), else from id -u
# shellcheck disable=SC2329 # not every step needs it
sp_my_uid() {
  [ -z "$sp_uid" ] || return 0
  { while read -r sp_k _ sp_v _; do
    [ "$sp_k" != Uid: ] || { sp_uid=$sp_v && break; }
  done </proc/self/status; } 2>/dev/null
  case $sp_uid in '' | *[!0-9]*) sp_uid=$(id -u) ;; esac
}

# sp_unsafe PATH: sp_why becomes why another user could change PATH, one reason a line (a
# symbolic link, not owned by this user, writable by its group or others), or empty (set, not
# printed: no subshell to read it from)
# shellcheck disable=SC2329 # not every step needs it
sp_unsafe() {
  sp_p=$1
  sp_stat "$1" || :
  sp_unsafe_read
}
# sp_unsafe_read: sp_unsafe for sp_p, its mode and owner read already (sp_m, sp_o; sp_m empty:
# it could not be read, nothing to say)
# shellcheck disable=SC2329 # not every step needs it
sp_unsafe_read() {
  sp_why=''
  if [ -L "$sp_p" ]; then
    sp_why='is a symbolic link'
    return 0
  fi
  [ -n "$sp_m" ] || return 0
  sp_my_uid
  [ "$sp_o" = "$sp_uid" ] || sp_why='is not owned by you'
  ! sp_others_write || sp_why="${sp_why:+$sp_why
}is writable by group or others"
}

# the step: end.sh closes this function and runs it
sp_main() {
trap sp_exit EXIT
trap 'exit "$E_HANGUP"' HUP
trap 'exit "$E_INTERRUPTED"' INT
trap 'exit "$E_TERMINATED"' TERM
trap 'exit "$E_BROKEN_PIPE"' PIPE
cd || exit "$E_NO_HOME"
# what a step creates is the user's alone (folders 0700, files 0600); sp_umask, the login's,
# is what a job started by a step gets (tmux, sbatch)
# shellcheck disable=SC2034 # not every step starts a job
sp_umask=$(umask)
umask 077
# the server folder, as the wrapper finds it (the login shell's start-up files may set it);
# ./ keeps a relative one from reading as an option
sp_server=${SOLVERPILOT_SERVER_DIR:-.solverpilot-server}
case $sp_server in /*) ;; *) sp_server=./$sp_server ;; esac
sp_trim "$sp_server" # (the wrapper's server_dir does the same)
sp_server=$sp_r
# the step's own lines follow

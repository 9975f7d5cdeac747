# probing.sh: sp_probe, what the host is and what its tools can do, each tool checked by using
# it (probe.sh's answer; push.sh's first part). Functions only, no step: remote.py's STEP_NEEDS
# puts this file before the steps that use it.
# Answer: key=value lines. The host's facts first, each by sp_fact, in this order: os_id,
# os_like, bash, flock, setsid, sqlite3, sha256, server, fs_server (the server folder's filesystem
# as "MAGIC_HEX NAME"), server_relative, logout_kills; then its state: wrapper (its sha256), db,
# server_unsafe= and server_open= (see lib.sh's sp_server_safe), issue= (one line per thing
# about ~/.solverpilot, its bin or the wrapper that push must repair).
# sp_sha and sp_hashed found already (sp_current's) are used as they are. host_facts.py takes
# the facts' keys from this file's sp_fact lines, in the order they first come: sp_os_facts
# stays before sp_probe, sp_server_facts after it.
# After it: sp_facts holds the facts' lines (push.sh hashes them), sp_sha the sha256 tool,
# sp_wrapper the wrapper's sha256 (empty: none), and sp_plain is "yes" when nothing of the state
# needs more than an install (no server_unsafe, server_open or issue line).
# sp_os_facts: the facts os_id and os_like, ID and ID_LIKE of /etc/os-release (from the file
# alone: a login's environment may hold its own)
# shellcheck disable=SC2329 # not every step needs it
sp_os_facts() {
  ID='' ID_LIKE=''
  if [ -r /etc/os-release ]; then . /etc/os-release; fi
  sp_fact os_id "${ID:-}"
  sp_fact os_like "${ID_LIKE:-}"
}
# shellcheck disable=SC2329,SC2034 # not every step needs it; push.sh reads sp_plain, probe.sh not
sp_probe() {
  sp_facts='' sp_plain=yes sp_wrapper=''
  sp_os_facts
  # the wrapper runs as /bin/bash -p (its #! line). --norc: a `bash -c` that sees SSH_CLIENT
  # and SHLVL < 2 reads ~/.bashrc, whose words would land in this answer
  sp_fact bash "$(/bin/bash --norc -p -c 'echo "${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}"' 2>/dev/null)"
  # flock and setsid in one go: setsid runs flock, which locks its stdin, an empty
  # here-document: a pipe of its own (or the shell's private temporary file), so nothing another
  # user could plant first. A child of a shell without job control leads no process group:
  # setsid does not fork, and the status is flock's. Should it fail, each is tried alone, to say
  # which is missing.
  if setsid flock -n 0 2>/dev/null <<'SP_LOCK'
SP_LOCK
  then
    sp_fact flock ok
    sp_fact setsid ok
  else
    if : | flock -n 0 2>/dev/null; then sp_fact flock ok; else sp_fact flock ''; fi
    if setsid sh -c : </dev/null 2>/dev/null; then sp_fact setsid ok; else sp_fact setsid ''; fi
  fi
  # -init /dev/null: a ~/.sqliterc (.headers on, say) would change the answer; one query that
  # works gives the version (one process, not three)
  sp_v=$(sqlite3 -init /dev/null :memory: 'SELECT sqlite_version();' 2>/dev/null) &&
    case $sp_v in [0-9]*.[0-9]*) ;; *) sp_v='' ;; esac
  sp_fact sqlite3 "$sp_v"
  # (the wrapper's sha256 in the same run, where it is a file)
  sp_wpath=.solverpilot/bin/job_wrapper.sh
  if [ -n "$sp_sha" ]; then :; elif [ -f "$sp_wpath" ] && [ -r "$sp_wpath" ]; then sp_find_sha256 "$sp_wpath"; else
    sp_find_sha256
  fi
  sp_fact sha256 "$sp_sha"
  sp_server_facts
  # the host's state
  if [ -n "$sp_sha" ] && [ -f "$sp_wpath" ] && [ -r "$sp_wpath" ]; then
    sp_wrapper=${sp_hashed:-$(sp_sha256 "$sp_wpath")}
    echo "wrapper=$sp_wrapper"
  fi
  [ ! -e "$sp_server/server.db" ] || echo db=yes
  # what keeps the wrapper from running, or lets another user replace it: one issue= a line
  set --
  for sp_p in .solverpilot .solverpilot/bin "$sp_wpath"; do
    if [ -e "$sp_p" ] || [ -L "$sp_p" ]; then set -- "$@" "$sp_p"; fi
  done
  [ "$#" = 0 ] || sp_each_stat sp_issue "$@"
  if [ -e "$sp_wpath" ] && [ ! -f "$sp_wpath" ]; then
    sp_plain='' && echo "issue=~/$sp_wpath is not a regular file"
  elif [ -f "$sp_wpath" ] && [ ! -x "$sp_wpath" ]; then
    sp_plain='' && echo "issue=~/$sp_wpath is not executable"
  fi
  if [ -f "$sp_wpath" ] && [ ! -r "$sp_wpath" ]; then # (there, but its bytes cannot be hashed)
    sp_plain='' && echo "issue=~/$sp_wpath is not readable"
  fi
  # server_unsafe= (push stops), server_open= (push makes them 0700)
  sp_v=$(sp_server_safe report)
  [ -z "$sp_v" ] || { sp_plain='' && printf '%s\n' "$sp_v"; }
}

# sp_server_facts: the facts server (the server folder), fs_server (its filesystem, or its
# nearest existing parent's), server_relative (SOLVERPILOT_SERVER_DIR is a relative path) and
# logout_kills (lib.sh's sp_logout_kills), "yes" or empty
# shellcheck disable=SC2329 # not every step needs it
sp_server_facts() {
  sp_fact server "$sp_server"
  sp_d=$sp_server # the server folder may not exist yet: its nearest existing parent (no
  while [ ! -d "$sp_d" ]; do # dirname: a tool missing here would make this loop forever)
    case $sp_d in */*) sp_d=${sp_d%/*} && sp_d=${sp_d:-/} ;; *) sp_d=. ;; esac
  done
  sp_fact fs_server "$(stat -f -c '%t %T' -- "$sp_d" 2>/dev/null)"
  case ${SOLVERPILOT_SERVER_DIR:-/} in /*) sp_v='' ;; *) sp_v=yes ;; esac
  sp_fact server_relative "$sp_v"
  sp_v=''
  ! sp_logout_kills || sp_v=yes
  sp_fact logout_kills "$sp_v"
}
# sp_current DIGEST: true when the wrapper is DIGEST already, a regular file that runs, and
# nothing about it, its folders or the server folder needs push (sp_probe would say no issue=,
# server_open= or server_unsafe= line): then push has nothing to do, and this is its answer:
# current=yes, then the facts that pick the profile and give the host's warnings (os_id, os_like,
# sha256, server, fs_server, server_relative, logout_kills), wrapper=, and db=yes when the DB is
# there. The tools are not run: verify checks them, and so does a push that installs. Three
# processes: the sha256 tool (found in the same run), one stat for every path, one for the
# filesystem. False, having said nothing, otherwise; sp_sha and sp_hashed then spare sp_probe
# its search.
# shellcheck disable=SC2329 # not every step needs it
sp_current() {
  sp_wpath=.solverpilot/bin/job_wrapper.sh
  [ -f "$sp_wpath" ] && [ -x "$sp_wpath" ] && sp_find_sha256 "$sp_wpath" || return 1
  [ -n "$sp_hashed" ] || sp_hashed=$(sp_sha256 "$sp_wpath")
  [ "$sp_hashed" = "$1" ] || return 1
  sp_my_uid
  sp_i=0
  sp_server_stat sp_sound .solverpilot .solverpilot/bin "$sp_wpath" || return 1
  echo current=yes
  sp_os_facts
  sp_fact sha256 "$sp_sha"
  sp_server_facts
  echo "wrapper=$sp_hashed"
  [ ! -e "$sp_server/server.db" ] || echo db=yes
}
# sp_sound: sp_current's check of one path (sp_each_stat's): the wrapper's three first (sp_i
# counts them), then the server folder's
# shellcheck disable=SC2329 # not every step needs it
sp_sound() {
  sp_i=$((sp_i + 1))
  if [ "$sp_i" -gt 3 ]; then
    sp_server_judge
    return
  fi
  sp_unsafe_read
  [ -n "$sp_m" ] && [ -z "$sp_why" ] # (a path not read is not sound here)
}

# sp_issue: the issue= lines of sp_p, its mode and owner read (sp_each_stat)
# shellcheck disable=SC2329,SC2034 # not every step needs it; push.sh reads sp_plain
sp_issue() {
  sp_unsafe_read
  [ -z "$sp_why" ] || { sp_plain='' && printf '%s\n' "$sp_why" | sed "s|^|issue=~/$sp_p |"; }
}

# sp_fact KEY VALUE: the line KEY=VALUE of the answer, also added to sp_facts; VALUE on one
# line, whatever the host holds (an os-release whose ID has a newline would forge a key: a
# wrapper= or install=begun line of the answer), each line break as "?"
# shellcheck disable=SC2329 # not every step needs it
sp_fact() {
  sp_f=$2
  case $sp_f in *[![:print:]]*) sp_f=$(printf '%s' "$sp_f" | tr '\n\r' '??') ;; esac
  printf '%s=%s\n' "$1" "$sp_f"
  sp_facts="$sp_facts$1=$sp_f
"
}

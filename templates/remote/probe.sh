# probe.sh: what the host is and what its tools can do, each tool checked by using it.
# Answer: key=value lines (os_id, os_like, bash, flock, setsid, sqlite3, sha256, wrapper, db,
# server, fs_server: the server folder's filesystem as "MAGIC_HEX NAME", logout_kills;
# server_unsafe= and server_open=: see lib.sh's sp_server_safe; issue=: one line per thing about
# ~/.solverpilot, its bin or the wrapper that push must repair).
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-}"
echo "os_like=${ID_LIKE:-}"
# the wrapper runs as /bin/bash -p (its #! line). --norc: a `bash -c` that sees SSH_CLIENT
# and SHLVL < 2 reads ~/.bashrc, whose words would land in this answer
echo "bash=$(/bin/bash --norc -p -c 'echo "${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}"' 2>/dev/null)"
# a file of its own to try flock on (never a fixed name in /tmp, where another user may have
# put a link first): mktemp's in /tmp, else in the home; without mktemp, one created new (set -C)
t=$(mktemp 2>/dev/null) || t=$(mktemp ./.sp-probe.XXXXXX 2>/dev/null) ||
  { t=./.sp-probe.$$ && (set -C && : >"$t") 2>/dev/null; } || t=''
sp_tmp=$t
[ -n "$t" ] && (exec 9>"$t" && flock -n 9) 2>/dev/null && echo flock=ok
setsid sh -c : </dev/null 2>/dev/null && echo setsid=ok
# -init /dev/null: a ~/.sqliterc (.headers on, say) would change the answer; one query that
# works gives the version (one process, not three)
v=$(sqlite3 -init /dev/null :memory: 'SELECT sqlite_version();' 2>/dev/null) &&
  case $v in [0-9]*.[0-9]*) echo "sqlite3=$v" ;; esac
if sp_find_sha256; then
  echo "sha256=$sp_sha"
  [ -f .solverpilot/bin/job_wrapper.sh ] && echo "wrapper=$(sp_sha256 .solverpilot/bin/job_wrapper.sh)"
fi
# what keeps the wrapper from running, or lets another user replace it: one issue= a line
sp_uid=$(id -u) # (once, for every sp_unsafe and sp_server_safe)
for p in .solverpilot .solverpilot/bin .solverpilot/bin/job_wrapper.sh; do
  if [ -e "$p" ] || [ -L "$p" ]; then
    why=$(sp_unsafe "$p")
    [ -z "$why" ] || printf '%s\n' "$why" | sed "s|^|issue=~/$p |"
  fi
done
p=.solverpilot/bin/job_wrapper.sh
if [ -e "$p" ] && [ ! -f "$p" ]; then
  echo "issue=~/$p is not a regular file"
elif [ -f "$p" ] && [ ! -x "$p" ]; then
  echo "issue=~/$p is not executable"
fi
[ -e "$sp_server/server.db" ] && echo db=yes
# one line, whatever the folder's name holds: a newline in it would forge a key
case $sp_server in
  *[![:print:]]*) printf 'server=%s\n' "$(printf '%s' "$sp_server" | tr '\n\r' '??')" ;;
  *) printf 'server=%s\n' "$sp_server" ;;
esac
sp_server_safe report # server_unsafe= (push stops), server_open= (push makes them 0700)
case ${SOLVERPILOT_SERVER_DIR:-/} in /*) ;; *) echo server_relative=yes ;; esac
sp_logout_kills && echo logout_kills=yes
d=$sp_server # the server folder may not exist yet: its nearest existing parent (no dirname:
while [ ! -d "$d" ]; do # a tool missing here would make this loop forever)
  case $d in */*) d=${d%/*} && d=${d:-/} ;; *) d=. ;; esac
done
echo "fs_server=$(stat -f -c '%t %T' -- "$d" 2>/dev/null)"
exit 0

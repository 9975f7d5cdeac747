{## The DB brought in line with the state files (README: "Job states"): included at the end of
    job_wrapper.sh.j2 after the queues, run as job_wrapper.sh --sync [ID...]. ##}
# ---- the DB's sync (job_wrapper.sh --sync [ID...] | --migrate; README "Reconcile") ------------
# The DB's table gets the columns of schema.sql it lacks (then PRAGMA user_version), and the row
# of each named job (every job with a state file or a running row, when none is named) what its
# state file says, by the rule of sync.sql; a running record whose wrapper is gone is recorded
# "lost" with status's reason (lost_why: status.py's lost_reason; a test holds them equal). Slurm
# jobs' records are copied, never judged (Slurm's word is status's). Under the queues' lock,
# so that clean never loses a row to it. Prints sync.sql's lines. Exit codes: 0; 64 usage; 73
# unsafe server folder; 74 the DB could not be read or written (its last words; it is waited
# for SOLVERPILOT_DB_WAIT seconds, default 30); 75 the queues' lock was held over 60 s.
readonly COLUMNS=({% for c in columns %}{{ c | shquote }} {% endfor %}) SCHEMA_VERSION={{ schema_version }}
readonly SYNC_SQL={{ sync_sql | shquote }}
sql() { # sql SQL: run on the DB in one sqlite3; SQL_OUT its answer, or its last words
  SQL_OUT=$(printf '%s\n' "PRAGMA temp_store = MEMORY; $1" |
    sqlite3 -init /dev/null -bail -cmd ".timeout $((WAIT_S * 1000))" "$DB" 2>&1) && return 0
  SQL_OUT=${SQL_OUT##*$'\n'} && return 1
}
migrate() { # the columns the table lacks, then user_version; RUNNING: the ids of running rows
  local v line name have add col
  for _ in 1 2; do # twice: another migrator may add a column between the look and the change
    sql "$SCHEMA PRAGMA user_version; PRAGMA table_info(jobs); SELECT 'r|' || id FROM jobs WHERE status = 'running';" || return 1
    v='' have='|' add='' RUNNING=()
    while IFS='|' read -r line name _; do
      if [[ -z $v ]]; then v=$line; elif [[ $line == r ]]; then RUNNING+=("$name"); else have+="$name|"; fi
    done < <(printf '%s\n' "$SQL_OUT")
    for col in "${COLUMNS[@]}"; do [[ $have == *"|${col%% *}|"* ]] || add+="ALTER TABLE jobs ADD COLUMN $col; "; done
    [[ $v =~ ^[0-9]+$ ]] || v=0
    [[ -z $add ]] && ((v >= SCHEMA_VERSION)) && return 0
    sql "BEGIN IMMEDIATE; $add PRAGMA user_version = $((v > SCHEMA_VERSION ? v : SCHEMA_VERSION)); COMMIT;" && return 0
  done
  return 1
}
lost_why() { # lost_why ID: WHY, why its running record (Q_LINE) is lost, or '' while it runs
  local s pid=''
  WHY=''
  [[ $Q_LINE =~ \"boot_id\":\"([^\"]+)\" && -n $BOOT && ${BASH_REMATCH[1]} != "$BOOT" ]] && WHY='host rebooted' && return
  [[ $Q_LINE =~ \"pid\":([0-9]+) ]] && pid=${BASH_REMATCH[1]}
  { [[ -n $pid ]] && read -r s <"/proc/$pid/stat" && s=${s##*) } && [[ ${s:0:1} != [ZX] ]]; } 2>/dev/null || {
    WHY='wrapper gone, lock free'
    if q_held "$1"; then WHY='wrapper gone, its job still holds the lock'; fi
    return
  }
  # shellcheck disable=SC2206 # the fields after "pid (comm) ", split on spaces on purpose
  s=($s)
  if [[ $Q_LINE =~ \"start_ticks\":([0-9]+) ]]; then
    [[ ${BASH_REMATCH[1]} == "${s[19]}" ]] || WHY='pid reused'
  else # a wrapper too old to record its start
    q_held "$1" || WHY='wrapper gone, lock free'
  fi
}
sync_db() { # sync_db [ID...]: one transaction of sync.sql over the named jobs (or all)
  local id f st spec rows='' LC_ALL=C
  BOOT=''
  { read -r BOOT </proc/sys/kernel/random/boot_id; } 2>/dev/null
  migrate || return 1
  local ids=("$@") seen='|'
  if (($# == 0)); then
    for f in "$BASE"/jobs/*.status; do id=${f##*/} && ids+=("${id%.status}"); done
    ids+=(${RUNNING[@]+"${RUNNING[@]}"}) # (bash < 4.4: an empty array is unset under -u)
  fi
  for id in "${ids[@]}"; do
    valid_id "$id" && [[ $seen != *"|$id|"* ]] || continue
    seen+="$id|" f=$BASE/jobs/$id.status st='' spec='' WHY=''
    if [[ -f $f && ! -L $f ]]; then # (never a link, a fifo: only a regular file is opened)
      { read -r -d '' -n 65537 st <"$f"; } 2>/dev/null # (at most 64 KiB is read, as by status)
      [[ ! -f ${f%.status}.spec || -L ${f%.status}.spec ]] || { read -r -d '' -n 65537 spec <"${f%.status}.spec"; } 2>/dev/null
      ((${#st} <= 65536)) || continue
      ((${#spec} <= 65536)) || spec=''
      Q_LINE=$st
      [[ ! $st =~ \"status\":\"running\" || -f $BASE/slurm/$id.sbatch ]] || lost_why "$id"
      st="'${st//\'/\'\'}'"
    elif [[ ! -e $f && ! -L $f && " ${RUNNING[*]-} " == *" $id "* ]]; then # a running row alone
      [[ ! -f $BASE/slurm/$id.sbatch ]] && ! q_held "$id" && WHY='wrapper gone, lock free'
      st=NULL
    else
      continue
    fi
    [[ -n $spec ]] && spec="'${spec//\'/\'\'}'" || spec=NULL
    rows+="INSERT INTO s VALUES ('$id', $st, $spec, '$WHY');"$'\n'
  done
  [[ -n $rows ]] || return 0
  sql "BEGIN IMMEDIATE; $SCHEMA
CREATE TEMP TABLE s (id TEXT PRIMARY KEY, st TEXT, spec TEXT, lost TEXT NOT NULL);
$rows$SYNC_SQL
COMMIT;" || return 1
  [[ -z $SQL_OUT ]] || printf '%s\n' "$SQL_OUT"
}
sync_main() { # --sync [ID...] | --migrate (the table's columns only)
  local id mode=$1
  shift
  for id; do
    if [[ $mode != --sync ]] || ! valid_id "$id"; then die 64 'usage: job_wrapper.sh --sync [ID...] | --migrate'; fi
  done
  WAIT_S=${SOLVERPILOT_DB_WAIT:-30}
  [[ $WAIT_S =~ ^[0-9]{1,5}$ ]] || die 64 'SOLVERPILOT_DB_WAIT must be a whole number of seconds'
  q_lock
  DB=$BASE/server.db
  hash sqlite3 2>/dev/null || die 74 "sqlite3 not found; install it: $INSTALL_HINT"
  if [[ $mode == --migrate ]]; then BOOT='' && migrate; else sync_db "$@"; fi || die 74 "cannot bring $DB up to date: $SQL_OUT"
  exit 0
}
sync_later() { # sync_later ID: its row from its state file, now (under the queues' lock, which
  # advance holds) or, while the DB is busy, again and again for about 10 minutes without the lock
  local d
  WAIT_S=5 DB=$BASE/server.db
  hash sqlite3 2>/dev/null || return 0
  for d in 1 2 4 8 16 30 60 60 60 60 60 60 60 60 60 60; do
    [[ -f $DB ]] || return 0 # (never a DB of its own: the server folder may be going)
    sync_db "$1" >/dev/null 2>&1 && return 0
    [[ $SQL_OUT == *locked* || $SQL_OUT == *busy* ]] || return 1 # (a damaged DB stays as it is)
    flock -u 199
    sleep "$d"
    helper flock -w 60 199 || return 1
  done
  return 1
}

{## The queues (README: "Queues"): included at the end of job_wrapper.sh.j2, run as
    job_wrapper.sh --submit ... or --advance. Everything under the one lock locks/queues.lock. ##}
# ---- queues (job_wrapper.sh --submit | --advance | --slots; README "Queues") ----------------
# Under SERVER/queues: seq (the last submission number), NAME/slots (how many of NAME's jobs may
# run at once; 1 when missing), NAME/wait/SEQ.ID (a waiting job; its text: the ids it waits
# for), NAME/active/SEQ.ID (a job the queue started; gone once it has ended). _now holds the
# jobs that wait only for others (run --after without --queue): no slot limit. A job is
# started in a detached tmux session running run/ID/launch (run.sh wrote it); every wrapper
# reruns --advance as it ends (finish), a launcher for a job its wrapper refused. Exit codes: 0; 64 usage; 73 unsafe server folder; 75 the
# queues' lock was held over 60 s; 76 (--submit) a job named in --after has no record.
readonly QUEUE_NAME='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
ENDED=''
q_lock() { # the queues' lock on fd 199, for the rest of this process (and not its children)
  local LC_ALL=C
  RUN_USER=${USER-}
  [[ -n $RUN_USER ]] || RUN_USER=$(id -un 2>/dev/null)
  umask 077
  server_dir
  [[ ! -e $BASE && ! -L $BASE ]] || server_safe || die 73 "unsafe server folder: $WHY"
  Q=$BASE/queues # (created by the first submission or --slots: --sync needs only the lock)
  helper mkdir -p -- "$BASE/jobs" "$BASE/locks" || die 73 "cannot create $BASE/locks"
  server_safe || die 73 "unsafe server folder: $WHY"
  [[ ! -e $Q && ! -L $Q ]] || [[ ! -L $Q && -O $Q ]] || die 73 "unsafe queues folder $Q"
  { exec 199>>"$BASE/locks/queues.lock"; } 2>/dev/null || die 73 "cannot open $BASE/locks/queues.lock"
  helper flock -w 60 199 || die 75 'the queues are busy: locks/queues.lock was held over 60 s'
}
q_session() { Q_SESSION="solverpilot_${RUN_USER}_${1:0:8}" && Q_SESSION=${Q_SESSION//[.:]/_}; }
q_state() { # q_state ID: Q_ST the state's status ("" without a state file), Q_LINE its text
  Q_LINE='' Q_ST=''
  { read -r Q_LINE <"$BASE/jobs/$1.status"; } 2>/dev/null
  [[ $Q_LINE =~ \"status\":\"([a-z]+)\" ]] && Q_ST=${BASH_REMATCH[1]}
  return 0
}
q_alive() { # q_alive: the wrapper Q_LINE names (pid and start ticks) runs
  local s
  [[ $Q_LINE =~ \"pid\":([0-9]+),\"start_ticks\":([0-9]+) ]] || return 1
  { read -r s <"/proc/${BASH_REMATCH[1]}/stat"; } 2>/dev/null || return 1
  s=${s##*) }
  # shellcheck disable=SC2206 # the fields after "pid (comm) ", split on spaces on purpose
  s=($s)
  [[ ${s[0]} != [ZX] && ${s[19]} == "${BASH_REMATCH[2]}" ]]
}
q_held() { # q_held ID: a process (a lost job's, its wrapper gone) still holds the job's lock;
  # tried, not waited for: no wrapper of that id can be starting (its record is there)
  [[ -f $BASE/locks/$1.lock && ! -L $BASE/locks/$1.lock ]] || return 1
  ! (exec 198<"$BASE/locks/$1.lock" && flock -n 198) 2>/dev/null
}
q_record() { # q_record ID REASON: a job that never ran ends failed, in both stores, keeping
  # what its queued record said (only while it still says queued)
  local at tmp=$BASE/jobs/$1.status.$$.tmp line
  q_state "$1"
  [[ $Q_ST == queued ]] || return 0
  line=${Q_LINE/\"status\":\"queued\"/\"status\":\"failed\"}
  now at
  # the DB first: killed before the state file is written, the next advance records it again
  helper sqlite3 -init /dev/null -bail -cmd '.timeout 5000' "$BASE/server.db" "BEGIN IMMEDIATE; $SCHEMA
UPDATE jobs SET status = 'failed', completed_at = '$at' WHERE id = '$1' AND status = 'queued'; COMMIT;" >/dev/null
  [[ ! -e $tmp && ! -L $tmp ]] || rm -f -- "$tmp"
  if ! { (set -C && printf '%s,"exit_code":null,"completed_at":"%s","signal":null,"reason":"%s","recorded_by":"sp-deploy queue"}\n' \
    "${line%\}}" "$at" "$2" >"$tmp") 2>/dev/null && mv -f -- "$tmp" "$BASE/jobs/$1.status"; }; then
    rm -f -- "$tmp"
    return 1
  fi
  rm -rf -- "$BASE/run/$1" # its launcher never runs now: the id is the record's alone
}
q_dep() { # q_dep ID: Q_WHY says why a job waiting for ID never runs; false while ID may end well
  Q_WHY=''
  q_state "$1"
  case $Q_ST in
    completed) return 0 ;;
    queued) return 1 ;;
    running) q_alive && return 1; Q_WHY="job $1, which it waits for, was lost" ;;
    '') Q_WHY="job $1, which it waits for, has no record" ;;
    *) Q_WHY="job $1, which it waits for, ended $Q_ST" ;;
  esac
  [[ $Q_LINE =~ \"exit_code\":([0-9]+) ]] && Q_WHY+=" (exit ${BASH_REMATCH[1]})"
  return 0
}
q_start() { # q_start ID: its tmux session, running its launcher (which pipes its pane to the
  # log). 0 started; 1 its session name is taken (it waits); 2 it never can start: recorded
  local here=$BASE/run/$1 n=0 tries=0 ended_session='' err
  [[ -f $here/launch ]] || { q_record "$1" 'its run folder is gone: it never ran'; return 2; }
  [[ -z $ENDED ]] || { q_session "$ENDED" && ended_session=$Q_SESSION; }
  q_session "$1"
  # 199>&-: a tmux server started here must not hold the queues' lock (nor fd 3, a step's channel)
  until err=$(cd -- "$here" && exec tmux new-session -d -s "$Q_SESSION" "/bin/sh ./launch $1" 2>&1 3>&- 199>&-); do
    if ! tmux has-session -t "=$Q_SESSION" 2>/dev/null; then # not the name (a session that
      # just ended, looked at again): tmux cannot start it
      if ((++tries >= 3)); then
        shown err "${err//[\"\\]/?}"
        q_record "$1" "tmux could not start its session: ${err:0:200}"
        return 2
      fi
      sleep 0.1
      continue
    fi
    # the name is the ended job's (the same first 8 characters), whose session is closing
    [[ $Q_SESSION == "$ended_session" ]] && ((n++ < 50)) || return 1
    sleep 0.1
  done
}
q_release() { # q_release ENTRY ID: an active job with neither its session nor its wrapper
  q_state "$2"
  if [[ $Q_ST == queued && ! -d $BASE/run/$2/decided ]]; then # never started: waits again
    mv -f -- "$1" "${1%/active/*}/wait/${1##*/}"
    return
  fi
  if [[ $Q_ST == queued ]]; then # its launcher decided to run it and ended before its wrapper did
    local rc=''
    { read -r rc <"$BASE/run/$2/rc"; } 2>/dev/null
    if [[ $rc == cwd ]]; then
      q_record "$2" 'its working folder (--cwd) cannot be entered'
    elif [[ $rc =~ ^[0-9]+$ ]]; then
      q_record "$2" "the wrapper refused it (exit $rc)"
    else
      q_record "$2" 'its launcher ended before the job started'
    fi
    rm -rf -- "$BASE/run/$2"
  fi
  rm -f -- "$1"
}
advance() { # advance [ENDED_ID]: start, queue by queue, what its free slots allow, in
  # submission order (ENDED_ID: the job whose wrapper, or launcher, ran this as it ended: its
  # session and wrapper may still be there)
  local d e id name slots busy sessions ended=${1-}
  ENDED=$ended
  sessions=$'\n'$(tmux list-sessions -F '#{session_name}' 2>/dev/null)$'\n'
  for d in "$Q"/*/; do
    name=${d%/} name=${name##*/}
    [[ $name =~ $QUEUE_NAME || $name == _now ]] && [[ -d $d/wait && ! -L ${d%/} ]] || continue
    slots=1
    { read -r slots <"$d/slots"; } 2>/dev/null
    [[ $slots =~ ^[0-9]{1,6}$ ]] || slots=1
    [[ $name != _now ]] || slots=0 # no limit
    busy=0
    for e in "$d"active/*.*; do
      [[ -f $e ]] || continue
      id=${e##*/} id=${id#*.}
      q_session "$id"
      q_state "$id"
      # (the ended job's wrapper, which runs this, is still exiting: its slot is free)
      if [[ $id != "$ended" ]] && { [[ $sessions == *$'\n'"$Q_SESSION"$'\n'* ]] || q_alive || q_held "$id"; }; then
        busy=$((busy + 1))
      else
        q_release "$e" "$id"
      fi
    done
    local full='' deps dep blocked
    for e in "$d"wait/*.*; do
      [[ -f $e ]] || continue
      id=${e##*/} id=${id#*.} deps='' blocked=''
      { read -r deps <"$e"; } 2>/dev/null
      # once the slots are taken, only a job that waits for others may change: it never runs
      # when one of them ended otherwise
      [[ -z $full || -n $deps ]] || continue
      q_state "$id"
      [[ $Q_ST == queued ]] || { rm -f -- "$e" && continue; } # cancelled (or removed) meanwhile
      for dep in $deps; do
        q_dep "$dep" && [[ -z $Q_WHY ]] && continue
        [[ -z $Q_WHY ]] && blocked=1 && continue
        q_record "$id" "$Q_WHY" && rm -f -- "$e"
        continue 2
      done
      [[ -z $blocked && -z $full ]] || continue
      if ((slots > 0 && busy >= slots)); then full=1 && continue; fi
      mv -f -- "$e" "$d/active/${e##*/}" || { full=1 && continue; }
      q_start "$id"
      case $? in
        0) busy=$((busy + 1)) ;;
        2) rm -f -- "$d/active/${e##*/}" ;;
        *) # its session name is taken (an id with the same first 8 characters runs): it
          mv -f -- "$d/active/${e##*/}" "$e" # waits, and so do the later ones
          full=1
          ;;
      esac
    done
  done
}
submit() { # --submit ID QUEUE [AFTER_ID...]: record job ID queued (both stores), then advance
  local id=$1 queue=$2 seq=0 at dep deps='' user_json
  valid_id "$id" && [[ $queue =~ $QUEUE_NAME || $queue == _now ]] || die 64 'usage: job_wrapper.sh --submit ID QUEUE [AFTER_ID...]'
  shift 2
  q_lock
  for dep; do
    valid_id "$dep" || die 64 "not a job id: $dep"
    [[ -f $BASE/jobs/$dep.status ]] || die 76 "job $dep (--after) has no record on this host"
    deps+=" $dep"
  done
  { read -r seq <"$Q/seq"; } 2>/dev/null
  [[ $seq =~ ^[0-9]{1,12}$ ]] || seq=0
  seq=$((10#$seq + 1))
  helper mkdir -p -- "$Q/$queue/wait" "$Q/$queue/active" || die 73 "cannot create $Q/$queue"
  printf -v seq '%012d' "$seq"
  { printf '%s\n' "$seq" >|"$Q/seq.tmp" && mv -f -- "$Q/seq.tmp" "$Q/seq"; } || die 73 "cannot write $Q/seq"
  now at
  json_str user_json "$RUN_USER"
  JOB_ID=$id STATE=$BASE/jobs/$id.status COMMON="\"submitted_at\":\"$at\",\"started_at\":null,\"user\":$user_json,\"pid\":null,\"queue\":\"$queue\",\"seq\":$((10#$seq))"
  [[ ! -e $STATE ]] || die 64 "job $id has a record already"
  # the queue entry first: killed before the record, the next advance drops an entry with no
  # record; killed after it, the job is queued all the same
  printf '%s\n' "${deps# }" >|"$Q/$queue/wait/$seq.$id" || die 73 "cannot write $Q/$queue/wait/$seq.$id"
  set -C
  write_state queued || { rm -f -- "$Q/$queue/wait/$seq.$id"; die 73 "cannot write state file $STATE"; }
  set +C
  helper sqlite3 -init /dev/null -bail -cmd '.timeout 5000' "$BASE/server.db" "BEGIN IMMEDIATE; $SCHEMA
INSERT OR IGNORE INTO jobs (id, status) VALUES ('$id', 'queued'); COMMIT;" >/dev/null || warn "$DB_WARNING"
  advance
}
set_slots() { # --slots QUEUE N: QUEUE's number of slots (what runs goes on), then advance
  { [[ $1 =~ $QUEUE_NAME && $2 =~ ^[0-9]{1,6}$ ]] && ((10#$2 > 0)); } || die 64 'usage: job_wrapper.sh --slots QUEUE N (N >= 1)'
  q_lock
  helper mkdir -p -- "$Q/$1/wait" "$Q/$1/active" || die 73 "cannot create $Q/$1"
  { printf '%s\n' "$((10#$2))" >|"$Q/$1/slots.tmp" && mv -f -- "$Q/$1/slots.tmp" "$Q/$1/slots"; } || die 73 "cannot write $Q/$1/slots"
  advance
}
queue_main() { # the modes of the queues: --submit, --advance, --slots
  local mode=$1
  shift
  case $mode in
    --submit) (($# >= 2)) || die 64 'usage: job_wrapper.sh --submit ID QUEUE [AFTER_ID...]'; submit "$@" ;;
    --slots) (($# == 2)) || die 64 'usage: job_wrapper.sh --slots QUEUE N'; set_slots "$@" ;;
    *) # (an ended job's row gets what the state file has: its own write may have failed)
      { (($# < 2)) && valid_id "${1:-x}"; } || die 64 'usage: job_wrapper.sh --advance [ENDED_ID]'
      q_lock
      advance "$@"
      (($# == 0)) || sync_later "$1"
      ;;
  esac
  exit 0
}

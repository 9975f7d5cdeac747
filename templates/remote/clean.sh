# clean.sh SECONDS STATUSES [JOB_ID...]: remove the records of ended jobs (the state file, the
# spec, the lock, the log, a Slurm job's batch script, its kept ends and its slurm/jobids line,
# the DB row), so that the disk does not fill and their ids can be used again. Only jobs whose
# record is final (completed, failed) and whose status is one of STATUSES (comma-separated),
# whose record was written over SECONDS ago (0: any age), and only JOB_IDs when named. Never
# one that is queued or running, nor one whose wrapper still runs (stopping), nor one whose
# lock a process still holds (taken here with flock -n, so no wrapper can start on it while
# its files go), nor one a waiting job names in --after (README "Queues").
# Answer: "removed=ID STATUS" per job removed, "kept=ID WHY" per named job that was not;
#   warning= when the DB rows could not be deleted (the files are gone).
# All under the queues' lock (locks/queues.lock, as the wrapper's --submit takes it): a job
# submitted meanwhile --after one of them either came first (then it is kept) or finds it gone.
# Exit (templates/remote/codes): ok; unsafe_server_dir (lib.sh's sp_server_safe); queues_busy:
#   the queues' lock was held over 60 s.
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
age=$1 wanted=,$2,
shift 2
dir=$sp_server
[ -d "$dir/jobs" ] || exit 0
if [ -d "$dir/locks" ]; then
  exec 9>>"$dir/locks/queues.lock" && flock -w 60 9 || exit "$E_QUEUES_BUSY"
fi
now=$(date +%s)
# the ids waiting jobs name (one list, space-separated, each between spaces)
needed=' '
for e in "$dir"/queues/*/wait/*; do
  [ -f "$e" ] || continue
  needed="$needed$(tr '\n' ' ' <"$e") "
done
# named: the jobs asked about; else every state file's
if [ "$#" -eq 0 ]; then
  for f in "$dir"/jobs/*.status; do
    [ -f "$f" ] || continue
    n=${f##*/}
    set -- "$@" "${n%.status}"
  done
  named=''
else
  named=1
fi
removed='' said=''
# keep WHY: a named job stays, and the answer says why
keep() { [ -z "$named" ] || echo "kept=$id $1"; }
for id; do
  state=$dir/jobs/$id.status
  if [ ! -f "$state" ] || [ -L "$state" ]; then keep 'no record'; continue; fi
  case $id in *[!A-Za-z0-9._-]* | [._-]*) continue ;; esac
  line=$(head -c 65536 -- "$state" | head -n 1)
  st=$(printf '%s' "$line" | sed -n 's/^{"id":"[^"]*","status":"\([a-z]*\)".*/\1/p')
  case $st in
    completed | failed) ;;
    '') keep 'unreadable record'; continue ;;
    *) keep "$st"; continue ;;
  esac
  case $wanted in *",$st,"*) ;; *) keep "$st"; continue ;; esac
  case $needed in *" $id "*) keep 'a waiting job names it in --after'; continue ;; esac
  pid=$(printf '%s' "$line" | sed -n 's/.*"pid":\([0-9]*\),"start_ticks":\([0-9]*\).*/\1 \2/p')
  if [ -n "$pid" ] && sp_alive "${pid% *}" "${pid#* }"; then keep 'its wrapper is still stopping it'; continue; fi
  if [ "$age" -gt 0 ]; then
    t=$(stat -c %Y -- "$state" 2>/dev/null) || t=$now
    if [ $((now - t)) -lt "$age" ]; then keep 'newer than --older-than'; continue; fi
  fi
  lock=$dir/locks/$id.lock
  # the lock taken while the files go: held, a process of the job still lives
  if [ -f "$lock" ] && ! (exec 8<"$lock" && flock -n 8 && rm -f -- "$lock") 2>/dev/null; then
    keep 'a process of it still holds its lock'
    continue
  fi
  removed="$removed $id" said="${said}removed=$id $st
"
done
[ -n "$removed" ] || exit 0
# the DB rows first, while the state files still claim the ids (no run can take one yet), then
# the files: a run of a freed id never has its new row deleted
if [ -f "$dir/server.db" ]; then
  where=''
  for id in $removed; do where="$where${where:+,}'$id'"; done # plain words: no quote in them
  sqlite3 -init /dev/null -bail -cmd '.timeout 5000' "$dir/server.db" \
    "DELETE FROM jobs WHERE id IN ($where) AND status IN ('completed', 'failed');" >/dev/null 2>&1 ||
    echo 'warning=the database rows could not be deleted (locked or damaged); the files are gone'
fi
if [ -f "$dir/slurm/jobids" ]; then # their "ID SLURM_ID" lines go too
  SP_GONE=$removed awk 'BEGIN { n = split(ENVIRON["SP_GONE"], g, " "); for (i = 1; i <= n; i++) gone[g[i]] = 1 }
    !($1 in gone)' "$dir/slurm/jobids" >"$dir/slurm/jobids.$$" && mv -f -- "$dir/slurm/jobids.$$" "$dir/slurm/jobids"
fi
for id in $removed; do
  # (a lost launcher's run folder too: the id is free after this)
  rm -rf -- "$dir/jobs/$id.spec" "$dir/logs/$id.log" "$dir/slurm/$id.sbatch" "$dir/slurm/$id.ends" \
    "$dir/run/$id" "$dir/jobs/$id.status"
done
printf '%s' "$said" # each status as pass one read it, not read again
exit 0

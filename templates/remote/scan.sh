# scan.sh: sp_scan [JOB_ID...], the answer of status (status.sh says what it is) and of each look
# of watch (watch.sh). With SP_PIDS set, also "@pid PID TICKS" per wrapper it found alive (after
# its @job line), which watch looks at to learn of a wrapper gone without a word.
# shellcheck disable=SC2329,SC2120 # not every step needs it; watch names no job
sp_scan() {
dir=$sp_server
# what has ended frees its slot, and the next waiting jobs start: at the latest now
for q in "$dir"/queues/*/wait/* "$dir"/queues/*/active/*; do
  [ -e "$q" ] || continue
  if [ -x "$HOME/.solverpilot/bin/job_wrapper.sh" ]; then
    "$HOME/.solverpilot/bin/job_wrapper.sh" --advance >/dev/null 2>&1 </dev/null 3>&-
  fi
  break
done
# Slurm first: the jobs submitted here, then Slurm's view of this user's jobs, asked once and
# before any state file is read, so a job Slurm has ended has its final state written by then;
# asked only when a job asked about is a Slurm job, and for sp_slurm_bound seconds at most
slurm=''
if [ -f "$dir/slurm/jobids" ]; then
  sed -n 's/^\([A-Za-z0-9._-]*\) \([0-9][0-9]*\)$/@submitted \1 \2/p' "$dir/slurm/jobids"
  slurm=$(SP_WANT=$* awk 'BEGIN { want = ENVIRON["SP_WANT"]; n = split(want, w, " "); for (i = 1; i <= n; i++) wanted[w[i]] = 1 }
    /^[A-Za-z0-9._-]+ [0-9]+$/ && (want == "" || ($1 in wanted)) { print "yes"; exit }' "$dir/slurm/jobids")
fi
if [ -z "$slurm" ]; then
  :
elif command -v squeue >/dev/null 2>&1; then
  echo @slurm
  q=$(sp_bounded "$sp_slurm_bound" squeue -h --states=all -u "$(id -un)" \
    -O 'JobID:0 ,State:0 ,RestartCnt:0' 2>/dev/null)
  case $? in
    0) printf '%s\n' "$q" | sed -n 's/^\([0-9][0-9]*\) \([A-Z_][A-Z_]*\) \([0-9][0-9]*\) *$/@squeue \1 \2 \3/p' ;;
    124) echo "@squeueslow $sp_slurm_bound" ;;
    *) echo @squeueerror ;;
  esac
else
  echo @noslurm
fi
boot=''
{ read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null
printf '@boot %s\n' "$boot"
if command -v tmux >/dev/null 2>&1; then
  echo @tmux
  tmux list-sessions -F '@session #{session_name}' 2>/dev/null
fi
# R: the state files read (regular, at most 64 KiB: find -size counts 512-byte blocks), J: every
# entry named *.status (a fifo, a link or a huge file among them is shown as @big, never opened),
# D: the DB's rows (those of a job with a state file are left out here: the state file counts)
# shellcheck disable=SC2012 # ls, not find: inode numbers portably; a name with a newline in it
# splits into lines awk ignores, and no job id has one
{
  (cd -- "$dir/jobs" 2>/dev/null && find . -type f -name '*.status' ! -size +128) | sed 's/^/R /'
  dev=$(stat -c %d -- "$dir/locks" 2>/dev/null) && echo "S $dev" # the device of locks/, a number
  ls -i "$dir/locks" 2>/dev/null | sed 's/^ */L /'
  (cd -- "$dir/jobs" 2>/dev/null && find . -name '*.status') | sed 's/^/J /'
  (cd -- "$dir/queues" 2>/dev/null && find . -path './*/*/*' -type f) | sed 's/^/Q /'
  if [ -f "$dir/server.db" ] && command -v sqlite3 >/dev/null 2>&1; then
    echo 'D @db'
    where=''
    for id in "$@"; do where="$where${where:+,}'$id'"; done # plain words: no quote in them
    # each column with backslash, newline, carriage return and tab written \\ \n \r \t
    row="'='" sep=''
    for col in id status exit_code started_at completed_at; do
      e="ifnull($col, '')"
      for c in '92 92' '10 110' '13 114' '9 116'; do
        e="replace($e, char(${c% *}), char(92, ${c#* }))"
      done
      row="$row || $sep$e" sep='char(9) || '
    done
    # a writer holds the DB at most a few seconds: wait for it, and say when it could not be read
    {
      sqlite3 -init /dev/null -cmd '.timeout 3000' "$dir/server.db" "SELECT $row FROM jobs
        ${where:+WHERE id IN ($where)}" 2>/dev/null || echo '@dberror'
    } | sed 's/^/D /'
  fi
} | SP_JOBS=$dir/jobs SP_WANT=$* SP_LOCKS=$(cd -- "$dir/locks" 2>/dev/null && pwd -P) awk '
function safe(s) { gsub(/[^A-Za-z0-9._-]/, "?", s); return s }
BEGIN {
  dir = ENVIRON["SP_JOBS"]; want = ENVIRON["SP_WANT"]
  n = split(want, w, " "); for (i = 1; i <= n; i++) wanted[w[i]] = 1
  while ((getline line < "/proc/locks") > 0) {
    split(line, f, " ") # "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE ..." ("N: -> ..." waits)
    if (f[2] != "->") { k = split(f[6], d, ":"); held[tolower(f[6])] = 1; ino_held[d[k]] = 1 }
  }
  close("/proc/locks")
  # /proc/locks names the filesystem (its superblock), which stat does not on btrfs (a
  # subvolume has a device of its own): the mount that holds locks/, from mountinfo, counts too
  path = ENVIRON["SP_LOCKS"]; best = -1
  while (path != "" && (getline line < "/proc/self/mountinfo") > 0) {
    split(line, f, " "); mp = f[5]
    gsub(/\\040/, " ", mp); gsub(/\\011/, "\t", mp); gsub(/\\012/, "\n", mp); gsub(/\\134/, "\\", mp)
    if ((mp == "/" || path == mp || substr(path, 1, length(mp) + 1) == mp "/") && length(mp) > best) {
      best = length(mp); split(f[3], mm, ":"); mdev = sprintf("%02x:%02x:", mm[1], mm[2])
    }
  }
  close("/proc/self/mountinfo")
}
/^S [0-9]+$/ { # the device of the lock files, as /proc/locks writes it: major:minor in hex
  dev = sprintf("%02x:%02x:", int($2 / 256) % 4096, $2 % 256 + (int($2 / 1048576) % 4096) * 256)
  next
}
/^D / {
  row = substr($0, 3)
  if (row !~ /^=/) { print row; next } # @db, @dberror
  split(substr(row, 2), f, "\t")
  if (!(f[1] in stated)) print row
  next
}
/^R / { readable[substr($0, 3)] = 1; next }
/^Q \.\/[A-Za-z0-9_][A-Za-z0-9._-]*\/(wait|active)\/[0-9]+\.[A-Za-z0-9][A-Za-z0-9._-]*$/ {
  split(substr($0, 5), f, "/"); dot = index(f[3], ".")
  id = substr(f[3], dot + 1)
  print "@" f[2] " " f[1] " " substr(f[3], 1, dot - 1) " " id # every one: the places count them all
  next
}
/^L / {
  ino = $2; name = substr($0, length($1) + length($2) + 3)
  # the same inode on another device (another mount) is not this lock; without stat, inode alone
  if (name ~ /\.lock$/ && (dev == "" ? (ino in ino_held) : ((dev ino) in held || (mdev ino) in held))) {
    id = substr(name, 1, length(name) - 5)
    if (want == "" || (id in wanted)) print "@held " safe(id)
  }
  next
}
/^J / {
  name = substr($0, 5) # after "J ./"
  if (substr($0, 3, 2) != "./" || index(name, "/")) next # not in a folder below
  big = !(("./" name) in readable)
  id = substr(name, 1, length(name) - 7)
  if (want != "" && !(id in wanted)) next
  stated[id] = 1
  file = dir "/" name; text = ""; pid = ""; lines = 0
  if (!big) {
    while ((r = (getline line < file)) > 0) {
      text = text "|" line "\n"; lines++
      if (pid == "" && match(line, /"pid": *[0-9]+/)) {
        pid = substr(line, RSTART, RLENGTH); sub(/^"pid": */, "", pid)
      }
    }
    close(file)
  }
  alive = "no"; ticks = "-"
  # the pid of a stopped job too (its record names a signal): its wrapper may still be
  # stopping the job; the pid of a job that ended on its own is not looked at
  if (text !~ /"status": *"running"/ && text !~ /"signal": *"/) pid = ""
  if (pid != "" && (getline st < ("/proc/" pid "/stat")) > 0) {
    sub(/^.*\) /, "", st); split(st, s, " ")
    if (s[1] != "Z" && s[1] != "X") { alive = "yes"; ticks = s[20] }
  }
  if (pid != "") close("/proc/" pid "/stat")
  print "@job " safe(id) " " alive " " ticks
  if (alive == "yes" && ENVIRON["SP_PIDS"] != "") print "@pid " pid " " ticks
  if (big) print "@big"; else printf "%s", text
  file = dir "/" id ".spec"; size = 0
  if (!big && (getline line < file) > 0) { # (what run wrote: one line)
    print "@spec"
    do { size += length(line); if (size <= 65536) print "|" line } while ((getline line < file) > 0)
    close(file)
  }
}'
}

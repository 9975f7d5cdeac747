# status.sh [JOB_ID...]: the jobs' state files with what tells "running" from "lost", and the
# DB rows; only the named jobs when some are named. A constant number of processes, however
# many jobs: find (twice), ls, stat, sed (five times), awk, sqlite3, tmux, id (and ls, getconf,
# date when a wrapper runs); for Slurm jobs awk, sed,
# squeue (and a sleep that bounds it).
# Answer: "@submitted ID SLURM_JOB_ID" per job run --via slurm submitted; when one of them is
#   among the jobs asked about, "@slurm" if squeue is here (else "@noslurm"), then
#   "@squeue SLURM_JOB_ID STATE RESTARTS" per job of this user Slurm knows ("@squeueerror"
#   when it could not answer, "@squeueslow SECONDS" when it did not within that bound);
#   "@boot BOOT_ID"; "@tmux" when tmux is here, then "@session NAME"
#   per tmux session; "@held ID" per lock file held (listed in /proc/locks: read, never taken, so a wrapper
#   starting now is not refused); per state file "@job ID ALIVE TICKS" (ALIVE yes|no for the pid
#   it names, looked at for a running record and for a stop's, whose wrapper may be stopping
#   the job, TICKS that process's start in clock ticks since boot, or -; ID with anything
#   outside A-Z a-z 0-9 . _ - shown as ?) and its text, each line behind "|" ("@big" instead
#   when over 64 KiB or not a regular file); then "@db" and, per job that has no state file,
#   one line "=" ID, status, exit code, started_at, completed_at (tab-separated, each with
#   backslash, newline, carriage return and tab written \\ \n \r \t, so no value can start
#   a line of the answer), "@dberror" when the DB could not be read. After a state file's text,
#   "@spec" and the text of jobs/ID.spec (what run was asked: name, argv...; at most 64 KiB,
#   each line behind "|"). "@wait QUEUE SEQ ID" per job waiting in a queue, "@active QUEUE SEQ
#   ID" per job a queue has started, whichever jobs are asked about (README "Queues"); the
#   queues are advanced first.
#   For a running job whose wrapper is alive ("@pid PID TICKS" after its @job line), its
#   CPU so far: "@cpu PID USER SYS" (clock ticks of the processes of the job's session,
#   those they have reaped included; PID the wrapper's), with "@hz TICKS_PER_SECOND" and
#   "@now EPOCH_SECONDS" (the host's clock) at the end.
# Paths reach awk through its environment (ENVIRON), never -v, which rewrites backslashes.
# The lines below are scan.sh's sp_scan, which watch shares.
# Exit (templates/remote/codes): ok; unsafe_server_dir (lib.sh's sp_server_safe).
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
# the job is the wrapper's child that leads a session of its own (setsid; a setsid that forked
# leaves it a grandchild): /proc is read once, only when a wrapper runs
SP_PIDS=1 sp_scan "$@" | awk '
/^@pid [0-9]+ [0-9]+$/ { wrapper[$2] = 1; n++ }
{ print }
END {
  if (!n) exit
  while (("ls /proc" | getline d) > 0) {
    if (d !~ /^[0-9]+$/ || (getline st < ("/proc/" d "/stat")) <= 0) continue
    close("/proc/" d "/stat")
    sub(/^.*\) /, "", st); split(st, s, " ")
    parent[d] = s[2]; sid = s[4]; leads[d] = (sid == d)
    user[sid] += s[12] + s[14]; sys[sid] += s[13] + s[15]
  }
  close("ls /proc")
  for (d in leads) {
    if (!leads[d]) continue
    w = parent[d]
    if (!(w in wrapper) && (w in parent)) w = parent[w]
    if (w in wrapper) print "@cpu " w " " user[d] " " sys[d]
  }
  "getconf CLK_TCK" | getline hz; close("getconf CLK_TCK")
  "date +%s" | getline now; close("date +%s")
  print "@hz " hz; print "@now " now
}'
exit 0

# status.sh [JOB_ID...]: the jobs' state files with what tells "running" from "lost", and the
# DB rows; only the named jobs when some are named. A constant number of processes, however
# many jobs: find (twice), ls, stat, sed (five times), awk, sqlite3, tmux, id; for Slurm jobs awk, sed,
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
# Paths reach awk through its environment (ENVIRON), never -v, which rewrites backslashes.
# The lines below are scan.sh's sp_scan, which watch shares.
# Exit: 0; 21 an unsafe server folder (lib.sh's sp_server_safe).
sp_server_safe || exit 21
sp_scan "$@"
exit 0

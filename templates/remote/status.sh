# status.sh: every job's state file with its lock and pid liveness, then the DB rows.
# Answer: "@boot BOOT_ID"; per state file "@job LOCK ALIVE ID" (LOCK held|free, ALIVE yes|no;
# ID last, with anything outside A-Z a-z 0-9 . _ - shown as ?) and its text, each line behind
# "|" ("@big" instead when over 64 KiB); then "@db" and one tab-separated row per job.
dir=$sp_server
printf '@boot %s\n' "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
for f in "$dir"/jobs/*.status; do
  [ -f "$f" ] || continue
  id=${f##*/}
  id=${id%.status}
  # held = listed in /proc/locks; read, not taken, so a wrapper starting now is not refused
  lock=free
  ino=$(stat -c %i "$dir/locks/$id.lock" 2>/dev/null)
  [ -n "$ino" ] && grep -q ":$ino " /proc/locks 2>/dev/null && lock=held
  pid=$(head -c 65536 "$f" | sed -n 's/.*"pid":\([0-9][0-9]*\).*/\1/p' | head -n 1)
  alive=no
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && alive=yes
  printf '@job %s %s %s\n' "$lock" "$alive" "$(printf '%s' "$id" | tr -c 'A-Za-z0-9._-' '?')"
  if [ "$(head -c 65537 "$f" | wc -c)" -gt 65536 ]; then
    echo @big
  else
    tr -d '\000' <"$f" | sed 's/^/|/'
    echo # a last line without its newline ends here
  fi
done
if [ -f "$dir/server.db" ] && command -v sqlite3 >/dev/null 2>&1; then
  echo '@db'
  sqlite3 -init /dev/null "$dir/server.db" "SELECT replace(replace(id, char(10), '?'), char(9), '?')
    || char(9) || ifnull(status, '') || char(9) || ifnull(exit_code, '') || char(9) ||
    ifnull(started_at, '') || char(9) || ifnull(completed_at, '') FROM jobs" 2>/dev/null
fi
exit 0

# watch.sh BEAT: the jobs as status sees them (scan.sh's sp_scan: its answer between "@scan"
# and "@scanned"), at once and then each time they may have changed: a state file written or
# removed (inotifywait -m, watching the jobs folder from before the first look, wakes the loop
# at once; without it, or without a jobs folder yet, the folder's time of change is looked at
# every half second); a wrapper it saw alive gone (a SIGKILL writes nothing: its /proc entry is
# looked for each second; a pid given to another process since waits for the 60-s look); for
# 2 s after a change on a filesystem that counts whole seconds (NFS: a second change within
# the same second leaves the time as it was); and every 60 s whatever happened (Slurm's word,
# a lock let go). "@beat" when nothing was sent for BEAT seconds: the client tells a stalled
# connection from a quiet host. Lines go to the channel itself (fd 3, end.sh), each look as it
# is made. It ends when a line cannot be sent: the client has gone.
# Answer: "@watch inotify" or "@watch poll", then looks and beats, without end.
# Exit (templates/remote/codes): unsafe_server_dir; else only by a signal (a write to a client
# gone: broken_pipe).
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
beat=$1 dir=$sp_server
how=poll tick=0.5
if command -v inotifywait >/dev/null 2>&1 && [ -d "$dir/jobs" ]; then how=inotify tick=1; fi
printf '%s @watch %s\n' "$sp_token" "$how" >&3
export SP_PIDS=1 # sp_scan names the wrappers alive
{
  # the events (one line each) and a tick every TICK seconds, in one stream; when the loop
  # below has gone (the client has), the next tick fails and ends inotifywait too
  w=''
  if [ "$how" = inotify ]; then
    inotifywait -m -q -e create -e delete -e moved_to -e moved_from -e close_write -e attrib \
      --format x -- "$dir/jobs" 2>/dev/null </dev/null 3>&- &
    w=$!
  fi
  trap '[ -z "$w" ] || kill "$w" 2>/dev/null; exit 0' PIPE
  while echo tick; do sleep "$tick"; done
} 3>&- | {
  last=x pids='' settle=0 full=0 sent=0
  while read -r what; do
    sp_now
    now=$sp_t
    look=''
    if [ "$what" = tick ]; then
      for p in $pids; do # each wrapper alive at the last look (a pid given again since, or a
        [ -d "/proc/$p" ] || { look=1 && break; } # zombie not reaped, waits for the 60-s look:
      done # cheap, as a thousand running jobs need it)
    fi
    fp=$(stat -c '%y %s %i' -- "$dir/jobs" 2>/dev/null)
    if [ "$fp" != "$last" ]; then
      look=1
      case $fp in *.000000000*) settle=$((now + 200)) ;; esac # whole seconds: look for 2 s more
    fi
    if [ "$now" -lt "$settle" ] || [ "$now" -ge "$full" ]; then look=1; fi
    if [ -n "$look" ]; then
      # shellcheck disable=SC2119 # no job named: all of them
      out=$(sp_scan)
      printf '@scan\n%s\n@scanned\n' "$out" | sed "s/^/$sp_token /" >&3
      pids=$(printf '%s\n' "$out" | sed -n 's/^@pid \([0-9]*\) [0-9]*$/\1/p')
      last=$fp full=$((now + 6000)) sent=$now
    elif [ $((now - sent)) -ge $((beat * 100)) ]; then
      printf '%s @beat\n' "$sp_token" >&3
      sent=$now
    fi
  done
}

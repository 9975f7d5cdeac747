# cancel.sh JOB_ID WAIT_SECONDS: stop a running job the way the wrapper promises (TERM to the
# wrapper: the job's tree gets TERM, KILL when the grace runs out), then wait until the state
# is final. Only a wrapper that is still the process it recorded (pid and start ticks) is
# signalled: a pid since given to another process is never touched.
# Answer: state= (the state file as it is at the end); was=STATUS when it was not running.
# Exit: 0 stopped, the wrapper and the job's tree gone (or already ended: was= says so); 10 no
#   such job; 11 lost (its wrapper is gone, nothing signalled); 12 still running after
#   WAIT_SECONDS; 13 the state has no start time (an older wrapper): nothing signalled (pid=).
id=$1 wait=$2
state=$sp_server/jobs/$id.status
[ -f "$state" ] || exit 10
field() { sed -n "s/.*\"$1\": *\"*\([^\",}]*\).*/\1/p" "$state" | head -n 1; }
status=$(field status) pid=$(field pid) ticks=$(field start_ticks)
show() { printf 'state='; cat -- "$state"; exit "$1"; }
# wrapper_is_there: the recorded pid still runs the recorded wrapper (same start, no zombie)
wrapper_is_there() {
  case $pid$ticks in *[!0-9]* | '') return 1 ;; esac
  now=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1,20)
  if [ -z "$now" ] || [ "${now%% *}" = Z ]; then return 1; fi
  [ "${now#* }" = "$ticks" ]
}
wait_for_the_wrapper() { # the job's whole tree is gone once the wrapper has exited
  end=$(($(date +%s) + wait))
  while wrapper_is_there; do
    [ "$(date +%s)" -lt "$end" ] || show 12
    sleep 0.1
  done
}
if [ "$status" != running ]; then
  # the wrapper records a stop at once, then stops the job: a stop still under way is waited for
  if wrapper_is_there; then
    wait_for_the_wrapper
    show 0
  fi
  echo "was=$status"
  show 0
fi
case $pid in '' | *[!0-9]*) show 11 ;; esac
# without its start time (an older wrapper), a pid cannot be told from a later process's
case $ticks in '' | *[!0-9]*) echo "pid=$pid"; show 13 ;; esac
wrapper_is_there || show 11
kill -TERM "$pid" 2>/dev/null
wait_for_the_wrapper
[ "$(field status)" != running ] || show 11
show 0

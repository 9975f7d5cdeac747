# cancel.sh JOB_ID WAIT_SECONDS: stop a running job the way the wrapper promises (TERM to the
# wrapper: the job's tree gets TERM, KILL when the grace runs out), then wait until the state
# is final. Only a wrapper that is still the process it recorded (pid and start ticks) is
# signalled: a pid since given to another process is never touched.
# Answer: state= (the state file as it is at the end); was=STATUS when it was not running.
# Exit: 0 stopped, the wrapper and the job's tree gone (or already ended: was= says so); 10 no
#   such job; 11 lost (its wrapper is gone, nothing signalled); 12 still running after
#   WAIT_SECONDS.
id=$1 wait=$2
state=$sp_server/jobs/$id.status
[ -f "$state" ] || exit 10
field() { sed -n "s/.*\"$1\": *\"*\([^\",}]*\).*/\1/p" "$state" | head -n 1; }
status=$(field status)
show() { printf 'state='; cat -- "$state"; exit "$1"; }
if [ "$status" != running ]; then
  echo "was=$status"
  show 0
fi
pid=$(field pid) ticks=$(field start_ticks)
# wrapper_is_there: the recorded pid still runs the recorded wrapper (not a zombie)
wrapper_is_there() {
  now=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1,20)
  if [ -z "$now" ] || [ "${now%% *}" = Z ]; then return 1; fi
  [ -z "$ticks" ] || [ "$ticks" = null ] || [ "${now#* }" = "$ticks" ]
}
if [ -z "$pid" ] || ! wrapper_is_there; then show 11; fi
kill -TERM "$pid" 2>/dev/null
# the stop is recorded at once; the wrapper exits once the job's whole tree is gone
end=$(($(date +%s) + wait))
while wrapper_is_there; do
  [ "$(date +%s)" -lt "$end" ] || show 12
  sleep 0.1
done
[ "$(field status)" != running ] || show 11
show 0

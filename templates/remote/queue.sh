# queue.sh [NAME [SLOTS]]: the queues (README "Queues"); with SLOTS, NAME's number of slots is
# set first (the wrapper's --slots: what runs goes on; a raise starts waiting jobs at once).
# The queues are advanced first (what has ended frees its slot), then listed.
# Answer: "queue=NAME SLOTS RUNNING WAITING" per queue (NAME given: that one only; a queue
#   never set has 1 slot), sorted by name; error= with wrapper_refused.
# Exit (templates/remote/codes): ok; no_wrapper; wrapper_refused (error= says why);
#   unsafe_server_dir.
name=${1-} slots=${2-}
wrapper=$HOME/.solverpilot/bin/job_wrapper.sh
[ -x "$wrapper" ] || exit "$E_NO_WRAPPER"
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
if [ -n "$slots" ]; then
  out=$("$wrapper" --slots "$name" "$slots" 2>&1 </dev/null 3>&-) ||
    { echo "error=$(sp_wrapper_said "$out")"; exit "$E_WRAPPER_REFUSED"; }
elif [ -d "$sp_server/queues" ]; then
  out=$("$wrapper" --advance 2>&1 </dev/null 3>&-) ||
    { echo "error=$(sp_wrapper_said "$out")"; exit "$E_WRAPPER_REFUSED"; }
fi
[ -d "$sp_server/queues" ] || exit 0
for d in "$sp_server"/queues/*/; do
  q=${d%/} q=${q##*/}
  case $q in _now | *[!A-Za-z0-9._-]*) continue ;; esac
  [ -z "$name" ] || [ "$q" = "$name" ] || continue
  n=1
  if [ -f "$d/slots" ]; then read -r n <"$d/slots"; fi
  case $n in '' | *[!0-9]*) n=1 ;; esac
  running=$(find "$d/active" -type f 2>/dev/null | wc -l)
  waiting=$(find "$d/wait" -type f 2>/dev/null | wc -l)
  echo "queue=$q $n $((running + 0)) $((waiting + 0))"
done

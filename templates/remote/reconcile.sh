# reconcile.sh WAIT: the DB brought in line with the state files and with what status knows
# (the installed wrapper's --sync, README "Job states"): a row missing or behind its state file
# takes its record, a running record whose wrapper is gone is recorded lost with status's
# reason; it waits up to WAIT seconds for the DB's lock. The queues are advanced first, as by
# status.
# Answer: "changed=ID|FROM|TO|REASON" per row added (FROM "-") or changed, "filled=ID" per row
#   that only gained details (name, queue, submitted_at); error= with wrapper_refused and
#   old_wrapper.
# Exit (templates/remote/codes): ok; no_wrapper; wrapper_refused: the wrapper could not (the
# DB busy over WAIT s, damaged, or without JSON functions: its words); old_wrapper: it is
# older than --sync (push first); unsafe_server_dir (lib.sh's sp_server_safe).
wrapper=$HOME/.solverpilot/bin/job_wrapper.sh
[ -x "$wrapper" ] || exit "$E_NO_WRAPPER"
sp_server_safe || exit "$E_UNSAFE_SERVER_DIR"
if [ -d "$sp_server/queues" ]; then
  "$wrapper" --advance >/dev/null 2>&1 </dev/null 3>&-
fi
out=$(SOLVERPILOT_DB_WAIT=$1 "$wrapper" --sync 2>&1 </dev/null 3>&-)
case $? in
  0) ;;
  64) echo 'error=the installed wrapper has no --sync'; exit "$E_OLD_WRAPPER" ;;
  *) echo "error=$(sp_wrapper_said "$out")"; exit "$E_WRAPPER_REFUSED" ;;
esac
printf '%s\n' "$out" | sed -n 's/^changed|/changed=/p; s/^filled|/filled=/p'

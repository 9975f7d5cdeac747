# reconcile.sh WAIT: the DB brought in line with the state files and with what status knows
# (the installed wrapper's --sync, README "Job states"): a row missing or behind its state file
# takes its record, a running record whose wrapper is gone is recorded lost with status's
# reason; it waits up to WAIT seconds for the DB's lock. The queues are advanced first, as by
# status.
# Answer: "changed=ID|FROM|TO|REASON" per row added (FROM "-") or changed, "filled=ID" per row
#   that only gained details (name, queue, submitted_at); error= with 12 and 13.
# Exit: 0; 10 no wrapper; 12 the wrapper could not (the DB busy over WAIT s, damaged, or
# without JSON functions: its words); 13 the wrapper is older than --sync (push first); 21 an
# unsafe server folder (lib.sh's sp_server_safe).
wrapper=$HOME/.solverpilot/bin/job_wrapper.sh
[ -x "$wrapper" ] || exit 10
sp_server_safe || exit 21
if [ -d "$sp_server/queues" ]; then
  "$wrapper" --advance >/dev/null 2>&1 </dev/null 3>&-
fi
out=$(SOLVERPILOT_DB_WAIT=$1 "$wrapper" --sync 2>&1 </dev/null 3>&-)
case $? in
  0) ;;
  64) echo 'error=the installed wrapper has no --sync'; exit 13 ;;
  *) echo "error=$(sp_wrapper_said "$out")"; exit 12 ;;
esac
printf '%s\n' "$out" | sed -n 's/^changed|/changed=/p; s/^filled|/filled=/p'

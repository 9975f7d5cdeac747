# init_db.sh: create server.db in the server folder (~/.solverpilot-server unless
# SOLVERPILOT_SERVER_DIR says otherwise) with the schema carried below (and its version), in one
# transaction that waits up to 10 s for another writer (several pushes into one home at once);
# the DB is 0600, the folder 0700. First, the folders of the server folder the user owns are
# made 0700 (tightened=PATH MODE_BEFORE: older versions made them 0755, or the user's umask
# 0775). A DB already there gets the columns it lacks (the installed wrapper's --migrate;
# warning= with its last words when it could not).
# Exit: 0; 1 the DB cannot be created; 21 an unsafe server folder (lib.sh's sp_server_safe).
mkdir -p -- "$sp_server" || exit 1
sp_server_safe tighten || exit 21
if [ -e "$sp_server/server.db" ]; then # the columns it lacks, by the wrapper just installed
  w=$HOME/.solverpilot/bin/job_wrapper.sh
  [ ! -x "$w" ] || out=$("$w" --migrate 2>&1 </dev/null 3>&-) || echo "warning=$(sp_wrapper_said "$out")"
  exit 0
fi
{
  echo 'BEGIN IMMEDIATE;'
  cat
  echo 'COMMIT;'
} <<'SP_PAYLOAD' | sqlite3 -init /dev/null -bail -cmd '.timeout 10000' "$sp_server/server.db"
SP_PAYLOAD

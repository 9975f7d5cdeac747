# init_db.sh: create server.db in the server folder (~/.solverpilot-server unless
# SOLVERPILOT_SERVER_DIR says otherwise) with the schema carried below, in one transaction
# that waits up to 10 s for another writer (several pushes into one home at once).
mkdir -p -- "$sp_server" || exit 1
{
  echo 'BEGIN IMMEDIATE;'
  cat
  echo 'COMMIT;'
} <<'SP_PAYLOAD' | sqlite3 -init /dev/null -bail -cmd '.timeout 10000' "$sp_server/server.db"
SP_PAYLOAD

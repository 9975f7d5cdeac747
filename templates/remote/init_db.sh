# init_db.sh: create ~/.solverpilot-server/server.db with the schema carried below, in one
# transaction that waits up to 10 s for another writer (several pushes into one home at once).
mkdir -p .solverpilot-server || exit 1
{
  echo 'BEGIN IMMEDIATE;'
  cat
  echo 'COMMIT;'
} <<'SP_PAYLOAD' | sqlite3 -init /dev/null -bail -cmd '.timeout 10000' .solverpilot-server/server.db
SP_PAYLOAD

-- version 1
-- The server database's one table. A column added after the first version goes at the end and
-- arrives in an existing DB by migration (job_wrapper.sh --sync adds the columns its table
-- lacks, then sets PRAGMA user_version to the version above); none is ever removed or renamed.
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  started_at TEXT,
  completed_at TEXT,
  exit_code INTEGER,
  tmux_session_name TEXT,
  signal TEXT,
  reason TEXT,
  name TEXT,
  queue TEXT,
  submitted_at TEXT
);

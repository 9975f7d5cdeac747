-- sync.sql: the DB's rows brought in line with the state files (job_wrapper.sh --sync; README
-- "Job states"). Table s holds, per job: id, st (its state file's text; NULL for a DB row
-- without one), spec (jobs/ID.spec, what run was asked, or NULL) and lost (why the wrapper judged
-- a running record lost, as status judges it, or ''). The rule: a row takes the state file's
-- record when it has none, when the record is further on (queued, running, lost, then final),
-- or when a final record is the same end brought up to date (a later completed_at, a signal or
-- reason the row lacks); a final row never takes another end. Prints "changed|ID|FROM|TO|REASON"
-- per row added or changed (FROM "-" for a row added), "filled|ID" per row that only gained
-- details (name, queue, submitted_at).
DELETE FROM s WHERE st IS NOT NULL AND NOT json_valid(st);
UPDATE s SET spec = NULL WHERE spec IS NOT NULL AND NOT json_valid(spec);
CREATE TEMP TABLE n AS SELECT id,
  CASE WHEN lost <> '' THEN 'lost' WHEN json_type(st, '$.status') = 'text'
    THEN json_extract(st, '$.status') END AS status,
  CASE json_type(st, '$.started_at') WHEN 'text' THEN json_extract(st, '$.started_at') END AS started_at,
  CASE WHEN lost = '' AND json_type(st, '$.completed_at') = 'text'
    THEN json_extract(st, '$.completed_at') END AS completed_at,
  CASE WHEN lost = '' AND json_type(st, '$.exit_code') = 'integer'
    THEN json_extract(st, '$.exit_code') END AS exit_code,
  CASE WHEN lost = '' AND json_type(st, '$.signal') = 'text' THEN json_extract(st, '$.signal') END AS signal,
  CASE WHEN lost <> '' THEN lost WHEN json_type(st, '$.reason') = 'text'
    THEN json_extract(st, '$.reason') END AS reason,
  CASE json_type(spec, '$.name') WHEN 'text' THEN json_extract(spec, '$.name') END AS name,
  nullif(coalesce(CASE json_type(st, '$.queue') WHEN 'text' THEN json_extract(st, '$.queue') END,
    CASE json_type(spec, '$.queue') WHEN 'text' THEN json_extract(spec, '$.queue') END), '_now') AS queue,
  coalesce(CASE json_type(st, '$.submitted_at') WHEN 'text' THEN json_extract(st, '$.submitted_at') END,
    CASE json_type(spec, '$.submitted_at') WHEN 'text' THEN json_extract(spec, '$.submitted_at') END)
    AS submitted_at
FROM s;
CREATE TEMP TABLE c AS SELECT n.id AS id, j.status AS was, n.status AS status,
  coalesce(n.started_at, j.started_at) AS started_at, n.completed_at AS completed_at,
  n.exit_code AS exit_code, n.signal AS signal, n.reason AS reason,
  (j.id IS NULL) AS new
FROM n LEFT JOIN jobs AS j ON j.id = n.id
WHERE n.status IN ('queued', 'running', 'lost', 'completed', 'failed') AND (
  j.id IS NULL
  OR (j.status IN ('completed', 'failed') AND n.status = j.status AND n.exit_code IS j.exit_code
    AND (n.completed_at > j.completed_at OR (j.completed_at IS NULL AND n.completed_at IS NOT NULL)
      OR (j.signal IS NULL AND n.signal IS NOT NULL) OR (j.reason IS NULL AND n.reason IS NOT NULL)))
  OR (j.status NOT IN ('completed', 'failed') AND (
    n.status IN ('completed', 'failed')
    OR (n.status = 'lost' AND j.status IN ('queued', 'running'))
    OR (n.status = 'running' AND j.status IN ('queued', 'lost'))
    OR (n.status = j.status AND n.status <> 'queued'
      AND (coalesce(n.started_at, j.started_at) IS NOT j.started_at OR n.reason IS NOT j.reason))
    OR j.status NOT IN ('queued', 'running', 'lost'))));
-- (a line each: a line end in a row's words, which the host's files may hold, is shown as ?)
SELECT 'changed|' || id || '|' || replace(replace(ifnull(was, '-') || '|' || status || '|' ||
  ifnull(reason, ''), char(10), '?'), char(13), '?') FROM c;
INSERT INTO jobs (id, status) SELECT id, status FROM c WHERE new;
UPDATE jobs SET (status, started_at, completed_at, exit_code, signal, reason) =
  (SELECT status, started_at, completed_at, exit_code, signal, reason FROM c WHERE c.id = jobs.id)
  WHERE id IN (SELECT id FROM c);
CREATE TEMP TABLE d AS SELECT n.id AS id, n.name AS name, n.queue AS queue, n.submitted_at AS submitted_at
FROM n JOIN jobs AS j ON j.id = n.id
WHERE (j.name IS NULL AND n.name IS NOT NULL) OR (j.queue IS NULL AND n.queue IS NOT NULL)
  OR (j.submitted_at IS NULL AND n.submitted_at IS NOT NULL);
SELECT 'filled|' || id FROM d WHERE id NOT IN (SELECT id FROM c);
UPDATE jobs SET name = coalesce(name, (SELECT name FROM d WHERE d.id = jobs.id)),
  queue = coalesce(queue, (SELECT queue FROM d WHERE d.id = jobs.id)),
  submitted_at = coalesce(submitted_at, (SELECT submitted_at FROM d WHERE d.id = jobs.id))
  WHERE id IN (SELECT id FROM d);

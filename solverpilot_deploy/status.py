"""Read back job states from a host and tell "running" from "lost".

A job whose state says "running" is "lost" when its wrapper is gone: its lock is free (no
process of the job holds it), its wrapper pid is dead, or the host has rebooted since (the
boot id differs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from solverpilot_deploy.deploy import SERVER_DIR
from solverpilot_deploy.errors import RemoteCommandError
from solverpilot_deploy.ssh import Session

JOB_KEYS = ("id", "status", "exit_code", "signal", "started_at", "completed_at")

# One round trip: the boot id, then per state file its text, its lock and its pid's liveness,
# then the DB rows (for jobs that have no state file).
STATUS_SCRIPT = f"""
cd || exit 1
dir={SERVER_DIR}
printf '@boot %s\\n' "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
for f in "$dir"/jobs/*.status; do
  [ -f "$f" ] || continue
  id=${{f##*/}}; id=${{id%.status}}
  # held = listed in /proc/locks; read, not taken, so a wrapper starting now is not refused
  lock=free
  ino=$(stat -c %i "$dir/locks/$id.lock" 2>/dev/null)
  [ -n "$ino" ] && grep -q ":$ino " /proc/locks 2>/dev/null && lock=held
  pid=$(sed -n 's/.*"pid":\\([0-9][0-9]*\\).*/\\1/p' "$f")
  alive=no
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && alive=yes
  printf '@job %s %s %s\\n' "$id" "$lock" "$alive"
  cat "$f"
  echo
done
if [ -f "$dir/server.db" ] && command -v sqlite3 >/dev/null 2>&1; then
  echo '@db'
  sqlite3 -init /dev/null "$dir/server.db" "SELECT id || char(9) || ifnull(status, '') ||
    char(9) || ifnull(exit_code, '') || char(9) || ifnull(started_at, '') || char(9) ||
    ifnull(completed_at, '') FROM jobs" 2>/dev/null
fi
exit 0
"""


@dataclass(frozen=True)
class JobState:
    id: str
    status: str
    exit_code: int | None
    signal: str | None
    started_at: str | None
    completed_at: str | None

    def as_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in JOB_KEYS}


def judge(state: dict[str, Any], lock_held: bool, pid_alive: bool, boot_id: str) -> str:
    """The status to report for one state file."""
    status = str(state.get("status", "unknown"))
    if status != "running":
        return status
    rebooted = bool(state.get("boot_id")) and bool(boot_id) and state["boot_id"] != boot_id
    return "lost" if (not lock_held or not pid_alive or rebooted) else "running"


def parse_status_output(text: str) -> list[JobState]:
    boot_id, section = "", ""
    jobs: dict[str, JobState] = {}
    db_rows: dict[str, list[str]] = {}
    current: tuple[str, str, str] | None = None
    buffer: list[str] = []

    def flush() -> None:
        if current is None:
            return
        job_id, lock, alive = current
        try:
            state = json.loads("\n".join(buffer))
        except ValueError:
            state = {"status": "unreadable"}
        jobs[job_id] = JobState(
            id=job_id,
            status=judge(state, lock == "held", alive == "yes", boot_id),
            exit_code=state.get("exit_code"),
            signal=state.get("signal"),
            started_at=state.get("started_at"),
            completed_at=state.get("completed_at"),
        )

    for line in text.splitlines():
        if line.startswith("@boot "):
            boot_id = line[6:].strip()
        elif line.startswith("@job "):
            flush()
            parts = line.split()
            current, buffer, section = (parts[1], parts[2], parts[3]), [], "job"
        elif line == "@db":
            flush()
            current, section = None, "db"
        elif section == "job":
            buffer.append(line)
        elif section == "db" and line:
            fields = (line.split("\t") + [""] * 5)[:5]
            db_rows[fields[0]] = fields
    flush()
    for job_id, (_, status, exit_code, started, completed) in db_rows.items():
        if job_id not in jobs:  # DB only: no state file to judge liveness by
            jobs[job_id] = JobState(
                job_id,
                status or "unknown",
                int(exit_code) if exit_code.lstrip("-").isdigit() else None,
                None,
                started or None,
                completed or None,
            )
    return [jobs[key] for key in sorted(jobs)]


def read_status(session: Session, timeout: float) -> list[JobState]:
    status, out, err = session.run("sh -s", stdin=STATUS_SCRIPT.encode(), timeout=timeout)
    if status != 0:
        raise RemoteCommandError(f"cannot read job states: {err.strip() or status}")
    return parse_status_output(out)

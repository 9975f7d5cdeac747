"""Read back job states from a host and tell "running" from "lost".

A job whose state says "running" is "lost" when its wrapper is gone: its lock is free (no
process of the job holds it), its wrapper pid is dead, or the host has rebooted since (the
boot id differs). A state file that is not a JSON object of the wrapper's shape (truncated,
binary, huge, ``null``, a list, a number) is listed as "unreadable"; the others are not
affected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from solverpilot_deploy.errors import RemoteCommandError
from solverpilot_deploy.remote import run_step
from solverpilot_deploy.ssh import Session

JOB_KEYS = ("id", "status", "exit_code", "signal", "started_at", "completed_at")
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the wrapper's rule
INTEGER = re.compile(r"^-?[0-9]{1,18}$")  # ASCII digits only: "²".isdigit() is true


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
    status = state.get("status")
    if not isinstance(status, str) or not status:
        return "unreadable"
    if status != "running":
        return status
    rebooted = bool(state.get("boot_id")) and bool(boot_id) and state["boot_id"] != boot_id
    return "lost" if (not lock_held or not pid_alive or rebooted) else "running"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _code(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def job_from_state(job_id: str, text: str | None, lock: str, alive: str, boot: str) -> JobState:
    """One state file's JobState; "unreadable" when it is not a JSON object."""
    try:
        state = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
        state = None
    if not isinstance(state, dict) or not JOB_ID.match(job_id):  # no job has such a name
        return JobState(job_id, "unreadable", None, None, None, None)
    return JobState(
        id=job_id,
        status=judge(state, lock == "held", alive == "yes", boot),
        exit_code=_code(state.get("exit_code")),
        signal=_text(state.get("signal")),
        started_at=_text(state.get("started_at")),
        completed_at=_text(state.get("completed_at")),
    )


def parse_status_output(lines: tuple[str, ...] | list[str]) -> list[JobState]:
    """The answer of templates/remote/status.sh, as one JobState per job, sorted by id."""
    boot_id, section = "", ""
    jobs: dict[str, JobState] = {}
    db_rows: dict[str, list[str]] = {}
    current: tuple[str, str, str] | None = None
    buffer: list[str] | None = []

    def flush() -> None:
        if current is not None:
            job_id, lock, alive = current
            text = None if buffer is None else "\n".join(buffer)
            jobs[job_id] = job_from_state(job_id, text, lock, alive, boot_id)

    for line in lines:
        if line.startswith("@boot "):
            boot_id = line[6:].strip()
        elif line.startswith("@job "):
            flush()
            parts = line.split(" ", 3)
            if len(parts) < 4:
                current, section = None, ""
                continue
            current, buffer, section = (parts[3], parts[1], parts[2]), [], "job"
        elif line == "@big" and section == "job":
            buffer = None
        elif line == "@db":
            flush()
            current, section = None, "db"
        elif section == "job" and line.startswith("|") and buffer is not None:
            buffer.append(line[1:])
        elif section == "db" and line:
            fields = (line.split("\t") + [""] * 5)[:5]
            db_rows[fields[0]] = fields
    flush()
    for job_id, (_, status, exit_code, started, completed) in db_rows.items():
        if job_id not in jobs:  # DB only: no state file to judge liveness by
            jobs[job_id] = JobState(
                job_id,
                status or "unknown",
                int(exit_code) if INTEGER.match(exit_code) else None,
                None,
                started or None,
                completed or None,
            )
    return [jobs[key] for key in sorted(jobs)]


def read_status(session: Session, timeout: float) -> list[JobState]:
    result = run_step(session, "status", timeout=timeout)
    if result.status != 0:
        raise RemoteCommandError(f"cannot read job states: {result.error()}")
    return parse_status_output(result.lines)

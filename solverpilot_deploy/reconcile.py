"""Bring a host's DB in line with its state files and with what status knows (the wrapper's
``--sync``, templates/sync.bash and sync.sql; README "Job states").

A row that is missing, or behind its state file (queued, running, lost, then final), takes the
state file's record; a running record whose wrapper is gone is recorded "lost" with the reason
status gives; a final row never takes another end. Changes only what differs: a second run
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from solverpilot_deploy.errors import HostError, NoWrapperError, RemoteCommandError
from solverpilot_deploy.jobs import NO_WRAPPER
from solverpilot_deploy.remote import run_step
from solverpilot_deploy.safe import printable
from solverpilot_deploy.status import JOB_ID, NOT_ID_CHARS
from solverpilot_deploy.transport import Session

OLD_WRAPPER = "the installed wrapper is older than this sp-deploy (no --sync): run sp-deploy push"


class ReconcileError(HostError):
    code = "reconcile"
    kind = "reconcile"


@dataclass(frozen=True)
class Change:
    """One DB row the host changed. ``kind`` "changed": its status (or its end's details) now
    that of the state file, ``was`` None for a row added; "filled": it only gained details
    (name, queue, submitted_at)."""

    id: str
    kind: str
    was: str | None = None
    status: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "from": self.was, "to": self.status,
                "reason": self.reason}  # fmt: skip

    def words(self) -> str:
        if self.kind == "filled":
            said = "name, queue and submission time filled in"
        elif self.was == self.status:
            said = f"{self.status}, its end brought up to date"
        else:
            said = f"{self.was or 'no row'} -> {self.status}"
        return printable(f"{self.id}: {said}" + (f" ({self.reason})" if self.reason else ""))


def parse_changes(lines: tuple[str, ...] | list[str]) -> list[Change]:
    """reconcile.sh's changed= and filled= lines as Changes (an id that breaks the id rule is
    shown with "?", never trusted)."""
    found = []
    for line in lines:
        key, _, value = line.partition("=")
        if key == "changed":
            job_id, was, status, reason = [*value.split("|", 3), "", "", ""][:4]
            found.append(
                Change(_shown(job_id), key, None if was == "-" else was, status, reason or None)
            )
        elif key == "filled":
            found.append(Change(_shown(value), key))
    return found


def _shown(job_id: str) -> str:
    return job_id if JOB_ID.match(job_id) else NOT_ID_CHARS.sub("?", job_id)


def reconcile(session: Session, timeout: float, db_wait: int) -> list[Change]:
    """Run templates/remote/reconcile.sh: the changes the host made, in the order made."""
    result = run_step(session, "reconcile", str(db_wait), timeout=timeout)
    if result.code == "no_wrapper":  # (the kind run and queue give it: no_wrapper)
        raise NoWrapperError(NO_WRAPPER)
    if result.code == "old_wrapper":
        raise ReconcileError(OLD_WRAPPER)
    if result.code == "wrapper_refused":
        raise ReconcileError(result.error())  # the wrapper's words: why, and the DB's own
    if result.code != "ok":
        raise RemoteCommandError(f"cannot reconcile: {result.error()}")
    return parse_changes(result.lines)

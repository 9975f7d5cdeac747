"""A job's life on a host through the deployed wrapper: run it in tmux, read its log, cancel it.

Each verb is one remote step (templates/remote/run.sh, logs.sh, cancel.sh). The command and its
arguments travel in the run step's payload, every byte as an octal escape, so quotes, spaces,
newlines, ``$`` and ``;`` arrive exactly as given; no shell on the way parses them.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

from solverpilot_deploy.deploy import LOGOUT_WARNING, profile_for_os
from solverpilot_deploy.errors import (
    HostError,
    NoJobError,
    NoWrapperError,
    RemoteCommandError,
    RequirementError,
    UsageError,
)
from solverpilot_deploy.remote import run_step
from solverpilot_deploy.safe import host_object, printable
from solverpilot_deploy.status import JOB_ID
from solverpilot_deploy.transport import Session

STATE_WAIT = 30  # seconds the run step waits for the wrapper's first state
NO_WRAPPER = (
    "no wrapper here (~/.solverpilot/bin/job_wrapper.sh is missing or not executable): run "
    "sp-deploy push first (it also repairs one)"
)


class JobError(HostError):
    """The job could not be started, found or stopped; the message says which. ``maybe_done``:
    the host had begun what was asked (a stop sent, say) when it failed, so it may yet be done;
    otherwise the host's answer says it was not."""

    code = "job"
    kind = "job"

    def __init__(self, message: str, maybe_done: bool = False) -> None:
        super().__init__(message)
        self.maybe_done = maybe_done


@dataclass(frozen=True)
class Started:
    job_id: str
    state: dict[str, Any]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Cancelled:
    state: dict[str, Any]
    was: str | None  # the status of a job that had already ended, else None
    wrote: bool = False  # sp-deploy wrote the record: the job never started, its wrapper
    # could not record a Slurm end, or it was lost (--force)
    warnings: tuple[str, ...] = ()
    signalled: tuple[str, ...] = ()  # --force: "PID COMM" of each process signalled
    never_started: bool = False  # wrote: the job (its attempt Slurm was at) never started


def new_job_id() -> str:
    return str(uuid.uuid4())


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r} (1-128 of A-Z a-z 0-9 . _ -)")
    return job_id


def encode_line(value: str | bytes) -> str:
    """One argument as a line of \\NNN octal escapes (no NUL: no program can take one)."""
    data = os.fsencode(value) if isinstance(value, str) else value
    if b"\0" in data:
        raise ValueError("an argument cannot contain a NUL byte")
    return "".join(f"\\{byte:03o}" for byte in data)


def run_payload(cwd: str, argv: list[str]) -> str:
    return "".join(encode_line(value) + "\n" for value in (cwd, *argv))


QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # the wrapper's QUEUE_NAME


@dataclass(frozen=True)
class JobSpec:
    """What run was asked: kept on the host as jobs/ID.spec (restart runs it again)."""

    argv: tuple[str, ...]
    cwd: str = ""
    name: str | None = None
    queue: str | None = None
    after: tuple[str, ...] = ()
    time_limit_s: int | None = None
    save_before_s: int | None = None
    restart_of: str | None = None

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("no command to run")
        if self.queue is not None and not QUEUE_NAME.match(self.queue):
            raise ValueError(f"not a queue name: {self.queue!r} (1-64 of A-Z a-z 0-9 . _ -)")
        for job_id in self.after:
            check_job_id(job_id)
        if self.save_before_s is not None and self.time_limit_s is None:
            raise ValueError("--save-before needs --time")
        if self.save_before_s is not None and self.save_before_s >= (self.time_limit_s or 0):
            raise ValueError("--save-before must be shorter than --time")

    def json_head(self) -> str:
        """The spec as one line of ASCII JSON without its closing brace (the host adds
        submitted_at): argv bytes that are not UTF-8 travel as JSON's \\udcXX escapes."""
        text = json.dumps(
            {
                "argv": list(self.argv),
                "cwd": self.cwd,
                "name": self.name,
                "queue": self.queue,
                "after": list(self.after),
                "time_limit_s": self.time_limit_s,
                "save_before_s": self.save_before_s,
                "restart_of": self.restart_of,
            },
            ensure_ascii=True,
            separators=(",", ":"),
        )
        return text[:-1]


def _state(lines: tuple[str, ...]) -> dict[str, Any]:
    for line in lines:
        if line.startswith("state="):
            return host_object(line[6:]) or {}
    return {}


def run_job(
    session: Session, job_id: str, cwd: str, argv: list[str], timeout: float,
    spec: JobSpec | None = None,
) -> Started:  # fmt: skip
    """Start ``argv`` under the wrapper in a detached tmux session; return its first state.
    With a queue or jobs to wait for (``spec``), submit it: its first state is "queued"."""
    spec = spec or JobSpec(tuple(argv), cwd)
    wait = max(1, min(STATE_WAIT, int(timeout) - 2))
    words = (
        spec.queue or "-",
        ",".join(spec.after) or "-",
        "-" if spec.time_limit_s is None else str(spec.time_limit_s),
        "-" if spec.save_before_s is None else str(spec.save_before_s),
    )
    result = run_step(
        session, "run", check_job_id(job_id), str(wait), *words, timeout=timeout,
        payload=spec.json_head() + "\n" + run_payload(spec.cwd, list(spec.argv)),
    )  # fmt: skip
    found = result.values()
    warnings = (LOGOUT_WARNING,) if found.get("logout_kills") == "yes" else ()
    if result.code == "ok":
        return Started(job_id, _state(result.lines), warnings)
    if result.code == "no_wrapper":
        raise NoWrapperError(NO_WRAPPER)
    if result.code == "no_tmux":
        try:
            hint = profile_for_os(
                found.get("os_id", ""), tuple(found.get("os_like", "").split())
            ).tmux_hint
        except RequirementError:
            hint = "install tmux with the host's package manager"
        raise RequirementError(f"tmux is not installed; install: {hint}")
    if result.code == "id_used":
        raise JobError(f"job id {job_id} is already used on this host")
    if result.code == "wrapper_refused":
        said = [line[4:] for line in result.lines if line.startswith("log=")]
        last = said[-1] if said else ""
        raise JobError(f"the wrapper refused the job (exit {found.get('rc', '?')}): {last}")
    if result.code == "still_starting":  # its tmux session runs, and no state yet: not a start
        raise JobError(
            f"job {job_id} is still starting: no state after {wait} s (its tmux session runs); "
            f"status and logs show when it starts, cancel {job_id} stops it"
        )
    if result.code == "session_taken":
        raise JobError(
            f"tmux session {found.get('session', '?')} runs already: another job whose id "
            "starts with the same 8 characters (ids must differ in those while both run)"
        )
    if result.code == "no_cwd":
        raise JobError(f"cannot enter the folder {cwd or '~'} on the host")
    if result.code == "cancelled_first":
        raise JobError(f"job {job_id} was cancelled before it started: it never ran")
    if result.code == "session_ended":
        raise JobError(
            f"the job never started: {printable(found.get('error', 'its tmux session ended'))} (a "
            "tmux.conf with exit-unattached on, or a tmux server that died); the id is free"
        )
    if result.code == "unknown_after":
        raise UsageError(
            f"--after {printable(found.get('unknown', '?'))}: no such job on this host; "
            "nothing was submitted"
        )
    if result.code == "queues_busy":
        raise JobError("the queues are busy (their lock was held over 60 s); nothing was submitted")

    raise RemoteCommandError(f"cannot start the job: {result.error()}")


def _no_job(job_id: str, found: dict[str, str], what: str = "") -> str:
    """The words for a job the host has no state file of: none at all, or only a DB row
    (db_only=STATUS), which status lists too (a "running" one as lost)."""
    if "db_only" in found:
        return (
            f"job {job_id} has no state file on this host, only a database row saying "
            f"{found['db_only']!r}: nothing to signal or show"
        )
    return f"no job {job_id} on this host{what}"


def cancel_job(
    session: Session, job_id: str, wait: int, timeout: float, force: bool = False
) -> Cancelled:
    """TERM to the job's wrapper; returns once it and the job's tree are gone. ``force``: a
    lost job's processes that still hold its lock are stopped through their process groups."""
    args = (check_job_id(job_id), str(wait), *(("force",) if force else ()))
    result = run_step(session, "cancel", *args, timeout=timeout)
    state = _state(result.lines)
    found = result.values()
    if result.code == "ok":
        wrote = found.get("wrote")
        return Cancelled(
            state,
            found.get("was"),
            wrote in ("yes", "ended", "queued"),
            result.all_of("warning"),
            tuple(printable(text) for text in result.all_of("signalled")),
            never_started=wrote in ("yes", "queued"),
        )
    if result.code == "no_job":
        raise NoJobError(_no_job(job_id, found))
    if result.code == "lost" and "slurm_state" in found:
        raise JobError(
            f"job {job_id} is lost: Slurm ended it ({found['slurm_state']}) without its final "
            "record; nothing was signalled"
        )
    if result.code == "lost":
        raise JobError(f"job {job_id} is lost: its wrapper is gone; nothing was signalled")
    if result.code in ("slurm_unreachable", "scancel_refused"):
        raise JobError(f"job {job_id} runs under Slurm: {found.get('error', '?')}")
    if result.code == "still_running":
        raise JobError(f"job {job_id} still runs {wait} s after TERM", maybe_done=True)
    held = printable(", ".join(result.all_of("held")) or "?")
    if result.code == "lock_held" and "was" in found:
        raise JobError(
            f"job {job_id} has ended ({found['was']}), but processes it left still hold its "
            f"lock ({held}); nothing was signalled: cancel --force {job_id} stops them"
        )
    if result.code == "lock_held":
        raise JobError(
            f"job {job_id} is lost: its wrapper is gone, but processes of it still run ({held}); "
            f"nothing was signalled: cancel --force {job_id} stops them"
        )
    if result.code == "cannot_write" and found.get("stopped") == "yes":
        raise JobError(
            f"job {job_id} was stopped (TERM sent; its wrapper and the job are gone), but neither "
            "its wrapper nor sp-deploy could write its end (disk full or folder not writable?): "
            "its record still says running"
        )
    if result.code == "cannot_write":
        raise JobError(
            f"job {job_id}: cannot write its record (disk full or folder not writable?)",
            maybe_done=True,
        )
    if result.code == "still_starting":
        raise JobError(
            f"job {job_id} is still starting {wait} s later: no state yet", maybe_done=True
        )
    if result.code == "lock_held_after_kill":
        raise JobError(
            f"job {job_id}: processes of it still hold its lock after KILL ({held})",
            maybe_done=True,
        )
    if result.code == "no_start_time":
        pid = result.values().get("pid", "?")
        raise JobError(
            f"job {job_id} was started by an older wrapper that did not record its start time: "
            f"pid {pid} cannot be told from a later process; nothing was signalled"
        )
    raise RemoteCommandError(f"cannot cancel the job: {result.error()}")


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    size: int  # the log's size when read
    status: str  # the job's status then ("" without a state file)
    session: bool = False  # its tmux session was running
    lost: bool = False  # a Slurm job Slurm has ended while its record says running
    wrapper: bool | None = None  # a tmux job's wrapper runs (None: the state does not say)
    slurm: str = ""  # a Slurm job: "active" (Slurm has not ended it), "unknown" (no answer)
    slurm_error: str = ""  # why Slurm could not answer (made printable)

    @property
    def more_to_come(self) -> bool:
        """The job runs, or has no state yet while its tmux session runs, or Slurm has not
        ended it (pending, or requeued after an attempt's end), or may not have: Slurm could
        not answer about a job that has no final record. For a tmux job, until its wrapper
        has exited (a stop is recorded before the job's last words), and while its record
        says running, until its session has ended (then it is lost)."""
        if self.lost:
            return False
        if self.status == "queued":  # its queue starts it
            return True
        if self.slurm == "active" or (self.slurm == "unknown" and self.status in ("", "running")):
            return True
        if self.wrapper is not None:
            return self.wrapper or (self.session and self.status == "running")
        return self.status == "running" or (self.status == "" and self.session)

    @property
    def tmux_lost(self) -> bool:
        """A tmux job recorded running whose wrapper and session are gone: nothing more comes."""
        return self.status == "running" and self.wrapper is False and not self.session


def read_log(session: Session, job_id: str, offset: int, most: int, timeout: float) -> LogChunk:
    """The log's bytes from ``offset`` (at most ``most``), and the job's status when read."""
    result = run_step(
        session, "logs", check_job_id(job_id), str(offset), str(most), timeout=timeout
    )
    if result.code == "no_job":
        raise NoJobError(_no_job(job_id, result.values(), " (no log, no state)"))
    if result.code != "ok":
        raise RemoteCommandError(f"cannot read the log: {result.error()}")
    found = result.values()
    hexdump = "".join(line for line in result.lines if "=" not in line)
    try:
        data = bytes.fromhex(hexdump)
        size = int(found.get("size", "0"))
    except ValueError as exc:
        raise RemoteCommandError(f"a log chunk that is not hex: {exc}") from exc
    return LogChunk(
        data,
        size,
        found.get("status", ""),
        found.get("session") == "present",
        found.get("lost") == "yes",
        {"alive": True, "gone": False}.get(found.get("wrapper", "")),
        found.get("slurm", ""),
        printable(found.get("slurm_error", ""))[:200],
    )


@dataclass(frozen=True)
class Queue:
    name: str
    slots: int
    running: int  # jobs the queue has started that have not ended
    waiting: int

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "slots": self.slots, "running": self.running,
                "waiting": self.waiting}  # fmt: skip


def queues(
    session: Session, timeout: float, name: str | None = None, slots: int | None = None
) -> list[Queue]:
    """The host's queues (``name``'s only when given), after setting its ``slots``."""
    if name is not None and not QUEUE_NAME.match(name):
        raise UsageError(f"not a queue name: {name!r} (1-64 of A-Z a-z 0-9 . _ -)")
    args = (*((name,) if name else ()), *((str(slots),) if slots is not None else ()))
    result = run_step(session, "queue", *args, timeout=timeout)
    if result.code == "no_wrapper":
        raise NoWrapperError(NO_WRAPPER)
    if result.code == "wrapper_refused":
        raise JobError(f"the wrapper refused: {printable(result.error())}")
    if result.code != "ok":
        raise RemoteCommandError(f"cannot read the queues: {result.error()}")
    found = []
    for line in result.all_of("queue"):
        parts = line.split(" ")
        if len(parts) == 4 and QUEUE_NAME.match(parts[0]) and all(p.isdigit() for p in parts[1:]):
            found.append(Queue(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return found


@dataclass(frozen=True)
class Cleaned:
    removed: tuple[tuple[str, str], ...]  # (id, status) of each job whose records went
    kept: tuple[tuple[str, str], ...]  # (id, why) of each named job that stays
    warnings: tuple[str, ...]


CLEANABLE = ("completed", "failed")


def clean_jobs(
    session: Session,
    timeout: float,
    job_ids: tuple[str, ...] = (),
    older_than_s: int = 0,
    statuses: tuple[str, ...] = CLEANABLE,
) -> Cleaned:
    """Remove ended jobs' records (templates/remote/clean.sh says which, and never what)."""
    for status in statuses:
        if status not in CLEANABLE:
            raise UsageError(f"--status {status!r}: clean removes {' and '.join(CLEANABLE)} jobs")
    ids = tuple(check_job_id(job_id) for job_id in job_ids)
    result = run_step(
        session, "clean", str(older_than_s), ",".join(statuses), *ids, timeout=timeout
    )
    if result.code == "queues_busy":
        raise JobError("the queues are busy (their lock was held over 60 s); nothing was removed")
    if result.code != "ok":
        raise RemoteCommandError(f"cannot clean: {result.error()}")

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        found = (line.partition(" ") for line in result.all_of(key))
        return tuple((NOT_ID.sub("?", i), printable(why)) for i, _, why in found)

    return Cleaned(pairs("removed"), pairs("kept"), result.all_of("warning"))


NOT_ID = re.compile(r"[^A-Za-z0-9._-]")

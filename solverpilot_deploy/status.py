"""Read back job states from a host and tell "running" from "lost", and why.

A final record whose wrapper (pid and start ticks) still runs is "stopping": the wrapper
records a stop at once, then stops the job. A job recorded "running" is "lost" when its
wrapper is gone, with the reason: "host rebooted" (the boot id differs), "wrapper gone, lock
free", "wrapper gone, its job still holds the lock" (the wrapper was SIGKILLed; a process of
the job lives on), "pid reused" (the pid is alive but started at another time than the wrapper
recorded). A DB row "running" with no state file is
judged by its lock alone. A state file that is not a JSON object of the wrapper's shape
(truncated, binary, huge, ``null``, a list, a number) is listed as "unreadable"; the others
are not affected. The tmux session named for a job is reported present or absent (None when
the host has no tmux).

A Slurm job (its state names a slurm_job_id, or run --via slurm submitted it) runs on a compute
node, so the host's pids say nothing about it: Slurm is asked instead (one squeue on the host,
before the state files are read, bounded, and only when a job asked about is a Slurm job). A
job Slurm runs keeps its state's word ("pending" before its wrapper ran); one Slurm holds
suspended is "suspended"; one Slurm has requeued (it holds it pending, held or about to run
it again, after an attempt's end, recorded or not) is "requeued"; one Slurm has ended (or
forgotten) while its state still says "running", or that never got a state, is "lost". Each
run of the batch script is an attempt (slurm_attempt, 1 and up, Slurm's restart count + 1).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from solverpilot_deploy.errors import RemoteCommandError
from solverpilot_deploy.remote import run_step
from solverpilot_deploy.safe import host_object
from solverpilot_deploy.transport import Session

JOB_KEYS = (
    "id",
    "status",
    "exit_code",
    "signal",
    "started_at",
    "completed_at",
    "cpu_user_s",
    "cpu_sys_s",
    "wall_s",
    "lost_reason",
    "tmux",
    "slurm_job_id",
    "slurm_state",
    "slurm_attempt",
    "name",
    "argv",
    "cwd",
    "queue",
    "position",
    "after",
    "time_limit_s",
    "save_before_s",
    "submitted_at",
    "reason",
    "restart_of",
)
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the wrapper's rule
NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")  # shown as "?" (status.sh's safe())
INTEGER = re.compile(r"^-?[0-9]{1,18}$")  # ASCII digits only: "²".isdigit() is true
REBOOTED = "host rebooted"
LOCK_FREE = "wrapper gone, lock free"
JOB_HOLDS_LOCK = "wrapper gone, its job still holds the lock"
PID_REUSED = "pid reused"
STOPPING = "stopping"  # a final record whose wrapper (its pid and start ticks) still runs
# Slurm's states of a job it has not ended: not started yet, or under way (its wrapper may run);
# templates/remote/lib.sh (sp_slurm_active) lists the same for cancel and logs
SLURM_WAITING = frozenset(
    ["PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"]
)
SLURM_ACTIVE = SLURM_WAITING | frozenset(
    ["RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"]
)
SLURM_SUSPENDED = frozenset(["SUSPENDED", "STOPPED"])
SLURM_DIGITS = re.compile(r"^[0-9]{1,18}$")
REQUEUED = "requeued"  # Slurm will run the job again (a new attempt)
SUSPENDED = "suspended"


@dataclass(frozen=True)
class JobState:
    id: str
    status: str
    exit_code: int | None = None
    signal: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    wall_s: float | None = None
    lost_reason: str | None = None
    tmux: str | None = None
    slurm_job_id: str | None = None
    slurm_state: str | None = None  # Slurm's word for the job when it was asked
    slurm_attempt: int | None = None  # the attempt the record is about (a requeue: 2, ...)
    # what run was asked (jobs/ID.spec), and where the job is in its queue
    name: str | None = None
    argv: tuple[str, ...] | None = None
    cwd: str | None = None
    queue: str | None = None
    position: int | None = None  # 1 = next to start, among the queue's waiting jobs
    after: tuple[str, ...] = ()
    time_limit_s: int | None = None
    save_before_s: int | None = None
    submitted_at: str | None = None
    reason: str | None = None  # why it ended so: "time limit (...)", a job it waited for...
    restart_of: str | None = None
    seq: int | None = None  # the queue's submission number: the order of submission

    def as_json(self) -> dict[str, Any]:
        found = {key: getattr(self, key) for key in JOB_KEYS}
        found["argv"] = None if self.argv is None else list(self.argv)
        found["after"] = list(self.after)
        return found

    def order(self) -> tuple[str, int, str]:
        """Submission order: the time it was submitted (else started), then the queue's number."""
        return (self.submitted_at or self.started_at or "", self.seq or 0, self.id)


@dataclass
class HostView:
    """What status.sh saw on the host, besides the state files."""

    boot_id: str = ""
    has_tmux: bool = False
    sessions: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    submitted: dict[str, str] = field(default_factory=dict)  # job id -> Slurm's job id
    slurm: dict[str, str] | None = None  # Slurm's job id -> state; None: Slurm not asked
    restarts: dict[str, int] = field(default_factory=dict)  # Slurm's job id -> requeues
    slurm_error: bool = False  # squeue was there but could not answer (in time)
    waiting: dict[str, int] = field(default_factory=dict)  # job id -> place in its queue, from 1
    active: set[str] = field(default_factory=set)  # jobs a queue has started
    cpu: dict[str, tuple[int, int]] = field(default_factory=dict)  # wrapper pid -> job's ticks
    hz: int = 0  # clock ticks per second (@hz)
    now: int = 0  # the host's clock (@now), epoch seconds

    def live_times(self, state: dict[str, Any]) -> dict[str, float | None]:
        """A running job's CPU (its session's processes) and wall time so far, read on the
        host; {} when the host did not say (its wrapper not alive, or an old status step)."""
        pid = state.get("pid")
        ticks = self.cpu.get(str(pid)) if isinstance(pid, int) else None
        if ticks is None or self.hz <= 0:
            return {}
        started = _text(state.get("started_at"))
        try:
            began = datetime.fromisoformat(started).timestamp() if started else None
        except ValueError:
            began = None
        wall = None if began is None or not self.now else max(0.0, self.now - began)
        return {"cpu_user_s": ticks[0] / self.hz, "cpu_sys_s": ticks[1] / self.hz, "wall_s": wall}

    def slurm_state(self, slurm_job_id: str) -> str | None:
        """Slurm's state of the job, or None when Slurm was not asked or could not answer."""
        if self.slurm is None or self.slurm_error:
            return None
        return self.slurm.get(slurm_job_id, "")

    def slurm_status(self, slurm_job_id: str, status: str, attempt: int) -> tuple[str, str | None]:
        """A Slurm job's status and lost reason, from its record's ``status`` (that of its
        attempt ``attempt``) and Slurm's word."""
        state = self.slurm_state(slurm_job_id)
        if state is None:  # Slurm could not say: the record as it is (with a warning)
            return status, None
        if state not in SLURM_ACTIVE:
            reason = self.slurm_reason(slurm_job_id) if status == "running" else None
            return ("lost", reason) if reason else (status, None)
        now = self.restarts.get(slurm_job_id, 0) + 1  # the attempt Slurm is at
        if state in SLURM_WAITING and (status == "running" or attempt < now):
            return REQUEUED, None  # the recorded attempt has ended; Slurm runs the job again
        if state in SLURM_SUSPENDED and status == "running":
            return SUSPENDED, None
        if attempt < now:  # the next attempt is starting: its wrapper records it any moment
            return "running", None
        return status, None  # running, or a final record while its wrapper ends

    def slurm_reason(self, slurm_job_id: str) -> str | None:
        """Why a Slurm job whose record says "running" (or has none yet) is lost, or None
        while Slurm has not ended it, or cannot be asked."""
        if self.slurm is None or self.slurm_error:
            return None
        state = self.slurm.get(slurm_job_id)
        if state in SLURM_ACTIVE:
            return None
        if state is None:
            return f"Slurm no longer knows job {slurm_job_id}"
        return f"Slurm ended job {slurm_job_id} ({state})"


_TMUX_NAME = str.maketrans(".:", "__")


def tmux_session_name(user: str, job_id: str) -> str:
    """The session `run` starts for a job; tmux turns "." and ":" in a name into "_"."""
    return f"solverpilot_{user}_{job_id[:8]}".translate(_TMUX_NAME)


def lost_reason(
    state: dict[str, Any], lock_held: bool, alive: bool, ticks: str, boot_id: str
) -> str | None:
    """Why a job whose state says "running" is lost, or None when it runs."""
    recorded_boot = state.get("boot_id")
    if isinstance(recorded_boot, str) and recorded_boot and boot_id and recorded_boot != boot_id:
        return REBOOTED
    if not alive:
        return JOB_HOLDS_LOCK if lock_held else LOCK_FREE
    recorded_ticks = state.get("start_ticks")
    if _code(recorded_ticks) is not None:
        return None if str(recorded_ticks) == ticks else PID_REUSED
    return None if lock_held else LOCK_FREE  # a wrapper too old to record its start


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _code(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and 0 <= value < 1e12 else None


def _spec_fields(spec: dict[str, Any] | None, state: dict[str, Any]) -> dict[str, Any]:
    """The JobState fields of what run was asked (jobs/ID.spec) and of the queue."""
    spec = spec or {}
    argv = spec.get("argv")
    after = spec.get("after")
    queue = _text(state.get("queue")) or _text(spec.get("queue"))
    return {
        "name": _text(spec.get("name")),
        "argv": tuple(argv) if isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        else None,
        "cwd": _text(spec.get("cwd")),
        "queue": None if queue == "_now" else queue,
        "after": tuple(a for a in after if isinstance(a, str) and JOB_ID.match(a))
        if isinstance(after, list) else (),
        "time_limit_s": _code(spec.get("time_limit_s")),
        "save_before_s": _code(spec.get("save_before_s")),
        "submitted_at": _text(state.get("submitted_at")) or _text(spec.get("submitted_at")),
        "reason": _text(state.get("reason")),
        "restart_of": _text(spec.get("restart_of")),
        "seq": _code(state.get("seq")),
    }  # fmt: skip


def job_from_state(
    job_id: str, text: str | None, alive: bool, ticks: str, view: HostView,
    spec: str | None = None,
) -> JobState:  # fmt: skip
    """One state file's JobState; "unreadable" when it is not a JSON object."""
    state = host_object(text) if text is not None else None
    status = state.get("status") if state is not None else None
    if not isinstance(status, str) or not status or not JOB_ID.match(job_id):
        return JobState(job_id, "unreadable")
    assert isinstance(state, dict)
    recorded = state.get("slurm_job_id")
    slurm_id = recorded if isinstance(recorded, str) and SLURM_DIGITS.match(recorded) else None
    slurm_id = slurm_id or view.submitted.get(job_id)  # a wrapper too old to say, or a batch
    # script written before it, which did not pass the id on
    attempt = _code(state.get("slurm_attempt"))
    reason = None
    shown = status
    if slurm_id:  # on a compute node: Slurm knows, not the pids here
        shown, reason = view.slurm_status(slurm_id, status, attempt or 1)
    elif status == "running":
        reason = lost_reason(state, job_id in view.held, alive, ticks, view.boot_id)
        shown = "lost" if reason else status
    elif (
        alive
        and str(state.get("start_ticks")) == ticks
        and (not view.boot_id or state.get("boot_id") in (None, view.boot_id))
    ):
        shown = STOPPING  # a stop recorded, its wrapper still stopping the job
    user = state.get("user")
    tmux = None
    if view.has_tmux and isinstance(user, str) and not slurm_id:  # Slurm's jobs have none
        tmux = "present" if tmux_session_name(user, job_id) in view.sessions else "absent"
    extra = _spec_fields(host_object(spec) if spec is not None else None, state)
    live = view.live_times(state) if shown in ("running", STOPPING) else {}
    position = None
    if status == "queued":
        position = view.waiting.get(job_id)
        if job_id in view.active:  # its queue has started it: its wrapper starts any moment
            shown = "starting"
    return JobState(
        id=job_id,
        status=shown,
        exit_code=_code(state.get("exit_code")),
        signal=_text(state.get("signal")),
        started_at=_text(state.get("started_at")),
        completed_at=_text(state.get("completed_at")),
        cpu_user_s=live.get("cpu_user_s", _seconds(state.get("cpu_user_s"))),
        cpu_sys_s=live.get("cpu_sys_s", _seconds(state.get("cpu_sys_s"))),
        wall_s=live.get("wall_s", _seconds(state.get("wall_s"))),
        lost_reason=reason,
        tmux=tmux,
        slurm_job_id=slurm_id,
        slurm_state=(view.slurm_state(slurm_id) or None) if slurm_id else None,
        slurm_attempt=(attempt or 1) if slurm_id else None,
        position=position,
        **extra,
    )


def recorded_job(job_id: str, state: dict[str, Any], spec: str | None = None) -> JobState:
    """The job a record a step has just written or read says (run's first state, cancel's
    last), as status shows it but without judging it against the host's processes."""
    ticks = str(state.get("start_ticks", "-"))
    running = state.get("status") == "running"
    view = HostView(held={job_id})  # (its record, as written: not judged)
    return job_from_state(job_id, json.dumps(state), running, ticks, view, spec)


def job_from_db_row(fields: list[str], view: HostView) -> JobState:
    """A DB row with no state file: a "running" one is judged by its lock alone. Its id follows
    the rule of every id (JOB_ID): one that does not is "unreadable", shown with each character
    outside the rule as "?", as status.sh shows a state file's name."""
    job_id, status, exit_code, started, completed = fields
    if not JOB_ID.match(job_id):
        return JobState(NOT_ID_CHARS.sub("?", job_id), "unreadable")
    slurm_id = view.submitted.get(job_id)
    reason = None
    shown = status
    if slurm_id:
        shown, reason = view.slurm_status(slurm_id, status, 1)
    elif status == "running" and job_id not in view.held:
        reason = LOCK_FREE
        shown = "lost"
    return JobState(
        job_id,
        shown or "unknown",
        int(exit_code) if INTEGER.match(exit_code) else None,
        started_at=started or None,
        completed_at=completed or None,
        lost_reason=reason,
        slurm_job_id=slurm_id,
    )


def job_submitted(job_id: str, slurm_id: str, view: HostView) -> JobState:
    """A job run --via slurm submitted that has no record yet: its wrapper has not run."""
    if view.slurm is None or view.slurm_error:
        return JobState(job_id, "submitted", slurm_job_id=slurm_id)
    state = view.slurm.get(slurm_id)
    if state in SLURM_WAITING:
        return JobState(job_id, "pending", slurm_job_id=slurm_id)
    if state in SLURM_ACTIVE:  # started: its wrapper writes the running state any moment
        return JobState(job_id, "running", slurm_job_id=slurm_id)
    reason = view.slurm_reason(slurm_id)
    return JobState(
        job_id, "lost", lost_reason=f"{reason}; its wrapper never ran", slurm_job_id=slurm_id
    )


_DB_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_DB_ESCAPE = re.compile(r"\\(.)")


def db_field(text: str) -> str:
    """A DB column as status.sh writes it: backslash, newline, CR and tab as \\\\ \\n \\r \\t."""
    if "\\" not in text:
        return text
    return _DB_ESCAPE.sub(lambda m: _DB_ESCAPES.get(m[1], m[0]), text)


def parse_status_output(
    lines: tuple[str, ...] | list[str], wanted: tuple[str, ...] = ()
) -> list[JobState]:
    """The answer of templates/remote/status.sh, as one JobState per job, in submission order (only
    ``wanted`` of the submitted jobs that have no record yet, when given)."""
    view = HostView()
    found: list[tuple[str, bool, str, list[str] | None]] = []  # id, alive, ticks, text lines
    specs: dict[str, list[str]] = {}
    waits: dict[str, list[tuple[int, str]]] = {}  # queue -> (seq, id) of its waiting jobs
    db_rows: dict[str, list[str]] = {}
    section = ""
    for line in lines:
        if line.startswith("|"):  # a state file's line (the most common line by far)
            if section == "job":
                text = found[-1][3]
                if text is not None:
                    text.append(line[1:])
            elif section == "spec":
                specs[found[-1][0]].append(line[1:])
        elif line == "@spec" and section == "job":
            specs[found[-1][0]] = []
            section = "spec"
        elif line.startswith(("@wait ", "@active ")):
            parts = line.split(" ")
            if len(parts) == 4 and INTEGER.match(parts[2]) and JOB_ID.match(parts[3]):
                if parts[0] == "@wait":
                    waits.setdefault(parts[1], []).append((int(parts[2]), parts[3]))
                else:
                    view.active.add(parts[3])
        elif line.startswith("="):  # a DB row (status.sh sends those of jobs without state)
            if section == "db":
                fields = ([db_field(f) for f in line[1:].split("\t")] + [""] * 5)[:5]
                db_rows.setdefault(fields[0], fields)
        elif line.startswith("@submitted "):
            parts = line.split(" ")
            if len(parts) == 3 and JOB_ID.match(parts[1]) and SLURM_DIGITS.match(parts[2]):
                view.submitted[parts[1]] = parts[2]
        elif line == "@slurm":
            view.slurm = {}
        elif line.startswith("@squeue ") and view.slurm is not None:
            parts = line.split(" ")
            if len(parts) == 4 and SLURM_DIGITS.match(parts[1]) and INTEGER.match(parts[3]):
                view.slurm[parts[1]] = parts[2]
                view.restarts[parts[1]] = int(parts[3])
        elif line == "@squeueerror" or line.startswith("@squeueslow "):
            view.slurm_error = True
        elif line.startswith("@cpu "):
            parts = line.split(" ")
            if len(parts) == 4 and all(INTEGER.match(part) for part in parts[1:]):
                view.cpu[parts[1]] = (int(parts[2]), int(parts[3]))
        elif line.startswith(("@hz ", "@now ")) and INTEGER.match(line.split(" ", 1)[1]):
            setattr(view, line[1 : line.index(" ")], int(line.split(" ", 1)[1]))
        elif line.startswith("@boot "):
            view.boot_id = line[6:].strip()
        elif line == "@tmux":
            view.has_tmux = True
        elif line.startswith("@session "):
            view.sessions.add(line[9:])
        elif line.startswith("@held "):
            view.held.add(line[6:])
        elif line.startswith("@job "):
            parts = line.split(" ")
            if len(parts) != 4:
                section = ""
                continue
            found.append((parts[1], parts[2] == "yes", parts[3], []))
            section = "job"
        elif line == "@big" and section == "job":
            found[-1] = (*found[-1][:3], None)
        elif line == "@db":
            section = "db"
    for entries in waits.values():
        for place, (_, job_id) in enumerate(sorted(entries), 1):
            view.waiting[job_id] = place
    jobs: dict[str, JobState] = {}
    for job_id, alive, ticks, text in found:
        body = None if text is None else "\n".join(text)
        spec = "\n".join(specs[job_id]) if job_id in specs else None
        jobs[job_id] = job_from_state(job_id, body, alive, ticks, view, spec)
    for fields in db_rows.values():
        job = job_from_db_row(fields, view)
        if job.id not in jobs:
            jobs[job.id] = job
    for job_id, slurm_id in view.submitted.items():
        if job_id not in jobs and (not wanted or job_id in wanted):
            jobs[job_id] = job_submitted(job_id, slurm_id, view)
    return sorted(jobs.values(), key=JobState.order)


DB_UNREADABLE = (
    "the database could not be read (locked over 3 s, or damaged): jobs recorded only there are "
    "not listed"
)


SLURM_UNASKED = (
    "{}: Slurm jobs are shown as their records say (a lost one may show as running, a "
    "pending one as submitted)"
)


def read_status(
    session: Session, timeout: float, job_ids: tuple[str, ...] = ()
) -> tuple[list[JobState], tuple[str, ...]]:
    """The host's jobs (only ``job_ids`` when given: the host filters), and warnings."""
    bad = [job_id for job_id in job_ids if not JOB_ID.match(job_id)]
    if bad:
        raise ValueError(f"not a job id: {bad[0]!r}")
    result = run_step(session, "status", *job_ids, timeout=timeout)
    if result.code != "ok":
        raise RemoteCommandError(f"cannot read job states: {result.error()}")
    jobs = parse_status_output(result.lines, job_ids)
    warnings = [DB_UNREADABLE] if "@dberror" in result.lines else []
    slow = [line for line in result.lines if line.startswith("@squeueslow ")]
    if any(job.slurm_job_id for job in jobs):
        if "@squeueerror" in result.lines:
            warnings.append(SLURM_UNASKED.format("Slurm could not answer (squeue failed)"))
        elif slow:
            bound = slow[0].split(" ")[1]
            bound = bound if INTEGER.match(bound) else "?"
            warnings.append(SLURM_UNASKED.format(f"Slurm did not answer within {bound} s"))
        elif "@noslurm" in result.lines:
            warnings.append(SLURM_UNASKED.format("squeue is not on this host"))
        elif "@slurm" not in result.lines:
            warnings.append(SLURM_UNASKED.format("Slurm was not asked (slurm/jobids lacks it)"))
    return jobs, tuple(warnings)

"""Watch hosts' jobs as events: one connection per host for as long as it runs (the step
templates/remote/watch.sh looks again only when something may have changed), first the jobs
as they are, then one event per change.

Each host has its own thread. Its events are numbered from 1 (``seq``, the host's own count,
connection events included), so a reader that sees a number twice knows it read a line twice,
and one that misses a number knows it lost one. What this watch knows of each job lives here,
across connections: after a reconnection the host's jobs are compared with it, so an end that
came while the connection was down is told once, never twice, and none is lost (unless its
record was removed by ``clean`` meanwhile).

An event names the job's status as ``status`` shows it: "submitted" (a job seen for the first
time; its status event follows when it is not waiting), "queued", "starting", "pending",
"started" (running), "stopping" (a stop is recorded, its wrapper still stops the job), "ended"
(completed or failed, its wrapper gone: once per end), "lost", "requeued", "suspended",
"unreadable",
"removed" (its records are gone); and "now" for each job at the first look. Connection events:
"disconnected" (with the error; the watch tries again after 1, 2, 4... up to 60 s),
"reconnected", and "failed" (a host key refused, authentication failed, a server folder
refused, an ssh config or host name ssh refuses, a missing ssh client: trying again would not
help; that host's watch ends, and once every host's has, watch exits 1).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from solverpilot_deploy.errors import (
    AuthenticationError,
    DeployError,
    HostKeyError,
    ToolMissingError,
    UnsafeServerDirError,
    UsageError,
)
from solverpilot_deploy.inventory import HostTarget
from solverpilot_deploy.remote import stream_step
from solverpilot_deploy.shapes import error_object, line
from solverpilot_deploy.status import JobState, parse_status_output
from solverpilot_deploy.transport import Session, connect

FINAL = ("completed", "failed")
EVENTS = {
    "queued": "queued",
    "starting": "starting",
    "pending": "pending",
    "submitted": "pending",
    "running": "started",
    "completed": "ended",
    "failed": "ended",
    "stopping": "stopping",
    "lost": "lost",
    "requeued": "requeued",
    "suspended": "suspended",
    "unreadable": "unreadable",
}
WAITING = ("queued", "pending", "submitted", "starting")
ENDS = ("ended", "lost")  # the events --on-end acts on
BEAT = 5  # seconds between the host's beats when nothing changes
MOST_BACKOFF = 60.0


@dataclass(frozen=True)
class Event:
    host: str
    seq: int
    event: str
    time: str
    job: JobState | None = None
    error: str | None = None
    error_kind: str = "failed"  # the error's kind (shapes.ERROR_KINDS)

    def as_json(self) -> dict[str, Any]:
        """One line of watch --json (README "JSON output": an event)."""
        found = line(seq=self.seq, host=self.host, event=self.event, time=self.time)
        if self.job is not None:
            found.update(id=self.job.id, status=self.job.status, exit_code=self.job.exit_code,
                         signal=self.job.signal, job=self.job.as_json())  # fmt: skip
        if self.error is not None:
            found["error"] = error_object(self.error_kind, self.error)
        return found


def event_for(old: JobState | None, new: JobState) -> list[str]:
    """The events of a job's change from ``old`` (None: not seen before) to ``new``."""
    if old is None:
        now = [] if new.status in WAITING else [EVENTS.get(new.status, "changed")]
        return ["submitted", *now]
    if new.started_at != old.started_at and new.started_at and old.started_at:
        # another run of the same id (a Slurm requeue's attempt, an id used again)
        return ["started"] + (["ended"] if new.status in FINAL else [])
    if new.status == old.status:
        return []
    return [EVENTS.get(new.status, "changed")]


@dataclass
class HostWatch:
    """One host's watch: its thread runs ``run`` until ``stop`` is set."""

    target: HostTarget
    emit: Callable[[Event], None]
    stop: threading.Event
    beat: int = BEAT
    seq: int = 0
    known: dict[str, JobState] | None = None
    session: Session | None = None
    block: list[str] | None = None
    how: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tell(
        self, event: str, job: JobState | None = None, error: str | None = None,
        error_kind: str = "failed",
    ) -> None:  # fmt: skip
        self.seq += 1
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        self.emit(Event(self.target.name, self.seq, event, now, job, error, error_kind))

    def feed(self, line: str) -> None:
        """One line of watch.sh's answer."""
        if line == "@scan":
            self.block = []
        elif line == "@scanned" and self.block is not None:
            jobs = parse_status_output(self.block)
            self.block = None
            self.compare({job.id: job for job in jobs})
        elif self.block is not None:
            self.block.append(line)
        elif line.startswith("@watch "):
            self.how = line[7:]

    def compare(self, now: dict[str, JobState]) -> None:
        if self.known is None:
            for job in now.values():
                self.tell("now", job)
        else:
            for job_id, job in now.items():
                for event in event_for(self.known.get(job_id), job):
                    self.tell(event, job)
            for job_id, job in self.known.items():
                if job_id not in now:
                    self.tell("removed", job)
        self.known = now

    def started(self, session: Session) -> None:
        with self.lock:
            self.session = session
            if self.stop.is_set():
                session.abort()

    def abort(self) -> None:
        with self.lock:
            if self.session is not None:
                self.session.abort()

    def run(self) -> None:
        backoff, began = 1.0, 0.0
        connected = False
        while not self.stop.is_set():
            options = self.target.options
            try:
                deadline = time.monotonic() + options.timeout
                with connect(self.target.spec, options, deadline, self.started) as session:
                    if connected:
                        self.tell("reconnected")
                    connected, began = True, time.monotonic()
                    self.block = None
                    stream_step(
                        session, "watch", str(self.beat), on_line=self.feed,
                        quiet=3 * self.beat + 5,
                    )  # fmt: skip
                    raise DeployError("the watch ended on the host")
            except (
                UnsafeServerDirError, HostKeyError, AuthenticationError, UsageError,
                ToolMissingError,
            ) as exc:  # fmt: skip
                # what trying again cannot change: this host's watch ends ("failed")
                self.tell("failed", error=str(exc), error_kind=exc.code)
                return
            except DeployError as exc:
                if self.stop.is_set():
                    return
                backoff = fresh(backoff, began)
                self.tell(
                    "disconnected", error=f"{exc}; trying again in {backoff:g} s",
                    error_kind=exc.code,
                )  # fmt: skip
                connected = True  # (the next connection is a reconnection)
            except Exception as exc:  # paramiko's own errors on a connection cut
                if self.stop.is_set():
                    return
                backoff = fresh(backoff, began)
                self.tell("disconnected", error=f"{type(exc).__name__}: {exc}; trying again "
                          f"in {backoff:g} s", error_kind="unreachable")  # fmt: skip
                connected = True
            began = 0.0  # (an attempt that never connects doubles the wait)
            self.stop.wait(backoff)
            backoff = min(backoff * 2, MOST_BACKOFF)


def fresh(backoff: float, began: float) -> float:
    """The wait before the next connection: from 1 s again after one that held a while; one
    that broke at once (a host that logs in, then fails) does not reset it: never a login a
    second."""
    return 1.0 if began and time.monotonic() - began > MOST_BACKOFF else backoff


class OnEnd:
    """Runs ``command`` (with /bin/sh) for each end, one at a time and in order, apart from the
    watch: SP_HOST, SP_JOB_ID, SP_STATUS, SP_EXIT_CODE, SP_SIGNAL in its environment (empty
    when the job has none). A failure is reported by ``report``, never raised."""

    def __init__(self, command: str, report: Callable[[str], None], to_stderr: bool) -> None:
        self.command = command
        self.report = report
        self.to_stderr = to_stderr
        self.work: queue.Queue[tuple[str, JobState] | None] = queue.Queue()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.running: subprocess.Popen[bytes] | None = None
        self.thread = threading.Thread(target=self._run, name="on-end", daemon=True)
        self.thread.start()

    def __call__(self, host: str, job: JobState) -> None:
        self.work.put((host, job))

    def close(self, wait: bool) -> None:
        """No more ends; ``wait``: until those given have run, else the one running is ended
        (TERM to its process group) and the others never start."""
        self.work.put(None)
        if wait:
            self.thread.join()
            return
        self.stopped.set()
        with self.lock:
            if self.running is not None and self.running.poll() is None:
                self.report(f"interrupted: TERM to the --on-end command (pid {self.running.pid})")
                with contextlib.suppress(OSError):
                    os.killpg(self.running.pid, signal.SIGTERM)
        self.thread.join(5)

    def _run(self) -> None:
        while (item := self.work.get()) is not None and not self.stopped.is_set():
            failure = run_on_end(self.command, *item, self.to_stderr, self._started)
            if failure and not self.stopped.is_set():
                self.report(failure)

    def _started(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.running = proc
            if self.stopped.is_set():
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGTERM)


def run_on_end(
    command: str, host: str, job: JobState, to_stderr: bool,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> str | None:  # fmt: skip
    """Run --on-end's ``command`` for ``job``'s end (watch and wait), in a session of its own
    (``started`` is told of it, to end it); why it failed, or None. ``to_stderr``: its output
    goes to stderr (stdout holds JSON)."""
    env = dict(os.environ, SP_HOST=host, SP_JOB_ID=job.id, SP_STATUS=job.status,
               SP_EXIT_CODE="" if job.exit_code is None else str(job.exit_code),
               SP_SIGNAL=job.signal or "")  # fmt: skip
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
            stdout=sys.stderr if to_stderr else None, start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        return f"--on-end for {host} {job.id} could not run: {exc}"
    if started is not None:
        started(proc)
    code = proc.wait()
    return f"--on-end for {host} {job.id} exited {code}" if code else None

"""Run one operation on many hosts in parallel, each with its own deadline.

One failing host never stops the others: every failure becomes that host's HostResult.
Ctrl-C (or TERM, see signals.py) stops the fleet in order: hosts not started are "skipped"
and never touched; hosts that have not begun to change anything (still logging in, or
probing) are given up at once ("skipped"); hosts in flight start no new step (push's install
step, with the DB set-up and smoke run in it, ends whole); a second Ctrl-C aborts their
connections. Every connection aborted says why: a timeout, the first Ctrl-C, the second.
``max_fail`` stops the starting of new hosts once that many have failed (those are
"skipped"); hosts in flight finish; ``canary`` runs the first hosts alone first.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from solverpilot_deploy import signals
from solverpilot_deploy.deploy import HostResult, one_line
from solverpilot_deploy.errors import DeployError, HostTimeoutError, StepInterrupted
from solverpilot_deploy.inventory import HostTarget
from solverpilot_deploy.transport import Session, connect

# operation(session, host, deadline, stop) -> HostResult
Operation = Callable[[Session, str, float, threading.Event], HostResult]


# why a connection was aborted (Session.abort_reason): the host's report names it
NOTHING_CHANGED = "interrupted before any change"
SECOND_CTRL_C = "interrupted: connection aborted by a second Ctrl-C"


def abort(session: Session, reason: str) -> None:
    """End ``session`` from another thread; the first reason given is the one reported."""
    if not session.aborted.is_set() and not session.abort_reason:
        session.abort_reason = reason
    session.abort()


@dataclass
class FleetRun:
    """What run_fleet returns: a result per host, in the order given."""

    results: list[HostResult]
    interrupted: bool = False


@dataclass
class _Shared:
    good: frozenset[str] = frozenset()  # the statuses that are not failures
    max_fail: int | None = None
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    sessions: set[Session] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    aborting: bool = False  # a second Ctrl-C came: sessions that start now start aborted
    on_start: Callable[[str], None] | None = None  # told of each host as its login begins

    def count(self, result: HostResult) -> HostResult:
        if result.status not in self.good and result.status != "skipped":
            with self.lock:
                self.failed += 1
        return result

    def too_many_failed(self) -> bool:
        with self.lock:
            return self.max_fail is not None and self.failed >= self.max_fail

    def abort_all(self) -> None:
        with self.lock:
            self.aborting = True
            sessions = list(self.sessions)
        for session in sessions:
            abort(session, SECOND_CTRL_C)

    def give_up_unchanged(self) -> None:
        """The first Ctrl-C: end at once the connections of hosts that have not begun to
        change anything (a login or a start-up file that hangs would hold the fleet until
        its timeout); the others end their step."""
        with self.lock:
            sessions = [session for session in self.sessions if not session.changing]
        for session in sessions:
            abort(session, NOTHING_CHANGED)


def run_on_host(target: HostTarget, operation: Operation, shared: _Shared) -> HostResult:
    """Connect, run ``operation``, and turn any failure into a failed HostResult."""
    host = target.name
    if shared.stop.is_set():
        return HostResult(host, "skipped", error=NOTHING_CHANGED)
    if shared.too_many_failed():
        return HostResult(
            host, "skipped", error=f"not started: {shared.failed} hosts failed (--max-fail)"
        )
    if shared.on_start is not None:
        shared.on_start(host)
    return shared.count(_connect_and_run(target, operation, shared))


def _connect_and_run(target: HostTarget, operation: Operation, shared: _Shared) -> HostResult:
    host, options = target.name, target.options
    deadline = time.monotonic() + options.timeout
    holder: list[Session] = []

    def time_is_up() -> None:
        for session in holder:
            abort(session, str(HostTimeoutError(f"not done within {options.timeout:g} s")))

    def started(session: Session) -> None:  # before it connects: a login can be aborted
        holder.append(session)
        with shared.lock:
            shared.sessions.add(session)
            if shared.aborting or shared.stop.is_set():
                session.abort_reason = SECOND_CTRL_C if shared.aborting else NOTHING_CHANGED
                session.aborted.set()

    def steps() -> tuple[tuple[str, float], ...]:
        """The login's time ("connect"), then each remote step's (Session.steps)."""
        took = (connected or time.monotonic()) - began
        return (("connect", took), *(holder[0].steps if holder else ()))

    timer = threading.Timer(options.timeout, time_is_up)
    timer.daemon = True
    timer.start()
    began, connected = time.monotonic(), 0.0
    try:
        with connect(target.spec, options, deadline, started) as session:
            connected = time.monotonic()
            if connected >= deadline:
                time_is_up()
            result = operation(session, host, deadline, shared.stop)
            return dataclasses.replace(
                result, warnings=(*session.warnings, *result.warnings), steps=steps()
            )
    except StepInterrupted as exc:
        return HostResult(host, "skipped", error=str(exc), error_kind="interrupted", steps=steps())
    except Exception as exc:
        said = tuple(holder[0].warnings) if holder else ()
        reason = holder[0].abort_reason if holder and holder[0].aborted.is_set() else ""
        if reason == NOTHING_CHANGED:
            return HostResult(host, "skipped", error=NOTHING_CHANGED, warnings=said, steps=steps())
        kind = "interrupted"
        if reason:
            message = reason
            if reason != SECOND_CTRL_C:
                kind = HostTimeoutError.code
        elif holder and holder[0].aborted.is_set():
            message = "the connection was aborted"
        elif isinstance(exc, DeployError):
            message, kind = str(exc), exc.code
        else:
            message, kind = f"error: {type(exc).__name__}: {exc}", "internal"
        return HostResult(
            host, "failed", error=one_line(message), warnings=said, error_kind=kind, steps=steps()
        )
    finally:
        timer.cancel()
        with shared.lock:
            for session in holder:
                shared.sessions.discard(session)


def all_skipped(targets: Sequence[HostTarget], why: str, interrupted: bool = False) -> FleetRun:
    return FleetRun([HostResult(t.name, "skipped", error=why) for t in targets], interrupted)


def run_fleet(
    targets: Sequence[HostTarget],
    operation: Operation,
    jobs: int,
    on_done: Callable[[HostResult], None] | None = None,
    good: frozenset[str] = frozenset(),
    max_fail: int | None = None,
    canary: int | None = None,
    on_interrupt: Callable[[int], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> FleetRun:
    """``operation`` on every host, at most ``jobs`` at once; Ctrl-C and ``max_fail`` as the
    module says (a status outside ``good`` is a failure). With ``canary`` K, the first K hosts
    alone first, and the rest only if every one of them succeeded. ``on_interrupt(N)`` is told
    of the first and the second interrupt as the fleet takes them; ``on_start(host)`` of each
    host as its login begins."""
    count = min(canary or 0, len(targets))
    start = signals.received()
    if not count:
        return _run_hosts(targets, operation, jobs, on_done, good, max_fail, on_interrupt, on_start)
    first = _run_hosts(
        targets[:count], operation, jobs, on_done, good, None, on_interrupt, on_start
    )
    failed = sum(r.status not in good for r in first.results)
    if first.interrupted or signals.received() != start:
        first.interrupted = True
        rest = all_skipped(targets[count:], "interrupted before any change")
    elif failed:
        why = f"not started: {failed} of the {count} canary hosts did not succeed"
        rest = all_skipped(targets[count:], why)
    else:
        try:
            rest = _run_hosts(
                targets[count:], operation, jobs, on_done, good, max_fail, on_interrupt, on_start
            )
        except KeyboardInterrupt:  # between the canaries and the rest: the canaries stand
            rest = all_skipped(targets[count:], "interrupted before any change", True)
    return FleetRun(first.results + rest.results, first.interrupted or rest.interrupted)


def _run_hosts(
    targets: Sequence[HostTarget],
    operation: Operation,
    jobs: int,
    on_done: Callable[[HostResult], None] | None,
    good: frozenset[str],
    max_fail: int | None,
    on_interrupt: Callable[[int], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> FleetRun:
    shared = _Shared(good, max_fail, on_start=on_start)
    hosts = [target.name for target in targets]

    def outcome(index: int, future: Future[HostResult]) -> HostResult:
        if future.cancelled():
            return HostResult(hosts[index], "skipped", error="interrupted before any change")
        return future.result()

    def report(index: int, future: Future[HostResult]) -> None:
        if on_done is not None:
            on_done(outcome(index, future))

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    futures: list[Future[HostResult]] = []
    interrupts = 0

    def interrupted(count: int) -> None:
        nonlocal interrupts
        for _ in range(count):
            interrupts += 1
            shared.stop.set()
            for future in futures:
                future.cancel()  # not started yet: never will be
            if interrupts == 1:
                shared.give_up_unchanged()
            elif interrupts == 2:
                shared.abort_all()
            if interrupts <= 2 and on_interrupt is not None:
                on_interrupt(interrupts)

    # INT and TERM are counted here, never raised at an arbitrary line (see signals.py)
    seen = signals.received()
    try:
        try:
            for index, target in enumerate(targets):
                if signals.received() != seen:
                    break
                future = pool.submit(run_on_host, target, operation, shared)
                future.add_done_callback(functools.partial(report, index))
                futures.append(future)
        except KeyboardInterrupt:  # before every host was queued: the rest are skipped
            interrupted(1)
        while True:
            try:
                done = not wait(futures, timeout=0.1).not_done
            except KeyboardInterrupt:
                interrupted(1)
                done = False
            now = signals.received()
            interrupted(now - seen)
            seen = now
            if done:
                break
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return FleetRun(
        [
            outcome(i, futures[i])
            if i < len(futures)
            else HostResult(host, "skipped", error=NOTHING_CHANGED)
            for i, host in enumerate(hosts)
        ],
        interrupted=interrupts > 0,
    )

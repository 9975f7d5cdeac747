"""Run one operation on many hosts in parallel, each with its own deadline.

One failing host never stops the others: every failure becomes that host's HostResult.
Ctrl-C stops the fleet in order: hosts not started are "skipped" and never touched; hosts in
flight start no new step (a host not yet changed is "skipped", one whose wrapper was
installed is "deployed" with a warning); a second Ctrl-C aborts their connections, and the
remote install step then leaves the old wrapper in place. ``max_fail`` stops the starting of
new hosts once that many have failed (those are "skipped"); hosts in flight finish; ``canary``
runs the first hosts alone first.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from solverpilot_deploy.deploy import HostResult
from solverpilot_deploy.errors import DeployError, HostTimeoutError, StepInterrupted
from solverpilot_deploy.inventory import HostTarget
from solverpilot_deploy.transport import Session, connect

# operation(session, host, deadline, stop) -> HostResult
Operation = Callable[[Session, str, float, threading.Event], HostResult]


def one_line(text: str) -> str:
    return " ".join(text.split())


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
            session.abort()


def run_on_host(target: HostTarget, operation: Operation, shared: _Shared) -> HostResult:
    """Connect, run ``operation``, and turn any failure into a failed HostResult."""
    host = target.name
    if shared.stop.is_set():
        return HostResult(host, "skipped", error="interrupted before any change")
    if shared.too_many_failed():
        return HostResult(
            host, "skipped", error=f"not started: {shared.failed} hosts failed (--max-fail)"
        )
    return shared.count(_connect_and_run(target, operation, shared))


def _connect_and_run(target: HostTarget, operation: Operation, shared: _Shared) -> HostResult:
    host, options = target.name, target.options
    deadline = time.monotonic() + options.timeout
    holder: list[Session] = []

    def abort_all() -> None:
        for session in holder:
            session.abort()

    def started(session: Session) -> None:  # before it connects: a login can be aborted
        holder.append(session)
        with shared.lock:
            shared.sessions.add(session)
            if shared.aborting:
                session.aborted.set()

    timer = threading.Timer(options.timeout, abort_all)
    timer.daemon = True
    timer.start()
    try:
        with connect(target.spec, options, deadline, started) as session:
            if time.monotonic() >= deadline:
                session.abort()
            result = operation(session, host, deadline, shared.stop)
            return dataclasses.replace(result, warnings=(*session.warnings, *result.warnings))
    except StepInterrupted as exc:
        return HostResult(host, "skipped", error=str(exc))
    except Exception as exc:
        if holder and holder[0].aborted.is_set() and shared.stop.is_set():
            message = "interrupted: connection aborted by a second Ctrl-C"
        elif holder and holder[0].aborted.is_set():
            message = str(HostTimeoutError(f"not done within {options.timeout:g} s"))
        elif isinstance(exc, DeployError):
            message = str(exc)
        else:
            message = f"error: {type(exc).__name__}: {exc}"
        said = tuple(holder[0].warnings) if holder else ()
        return HostResult(host, "failed", error=one_line(message), warnings=said)
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
) -> FleetRun:
    """``operation`` on every host, at most ``jobs`` at once; Ctrl-C and ``max_fail`` as the
    module says (a status outside ``good`` is a failure). With ``canary`` K, the first K hosts
    alone first, and the rest only if every one of them succeeded."""
    count = min(canary or 0, len(targets))
    if not count:
        return _run_hosts(targets, operation, jobs, on_done, good, max_fail)
    first = _run_hosts(targets[:count], operation, jobs, on_done, good, None)
    failed = sum(r.status not in good for r in first.results)
    if first.interrupted:
        rest = all_skipped(targets[count:], "interrupted before any change")
    elif failed:
        why = f"not started: {failed} of the {count} canary hosts did not succeed"
        rest = all_skipped(targets[count:], why)
    else:
        try:
            rest = _run_hosts(targets[count:], operation, jobs, on_done, good, max_fail)
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
) -> FleetRun:
    shared = _Shared(good, max_fail)
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
    try:
        try:
            for index, target in enumerate(targets):
                future = pool.submit(run_on_host, target, operation, shared)
                future.add_done_callback(functools.partial(report, index))
                futures.append(future)
        except KeyboardInterrupt:  # before every host was queued: the rest are skipped
            interrupts = 1
            shared.stop.set()
            for future in futures:
                future.cancel()
        while True:
            try:
                if not wait(futures, timeout=0.1).not_done:
                    break
            except KeyboardInterrupt:
                interrupts += 1
                shared.stop.set()
                for future in futures:
                    future.cancel()  # not started yet: never will be
                if interrupts > 1:
                    shared.abort_all()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return FleetRun(
        [
            outcome(i, futures[i])
            if i < len(futures)
            else HostResult(host, "skipped", error="interrupted before any change")
            for i, host in enumerate(hosts)
        ],
        interrupted=interrupts > 0,
    )

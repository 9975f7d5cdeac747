"""Run one operation on many hosts in parallel, each with its own deadline.

One failing host never stops the others: every failure becomes that host's HostResult.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from solverpilot_deploy.deploy import HostResult
from solverpilot_deploy.errors import DeployError, HostTimeoutError
from solverpilot_deploy.ssh import ConnectOptions, Session, connect

# operation(session, host, deadline) -> HostResult
Operation = Callable[[Session, str, float], HostResult]


def one_line(text: str) -> str:
    return " ".join(text.split())


def run_on_host(host: str, options: ConnectOptions, operation: Operation) -> HostResult:
    """Connect, run ``operation``, and turn any failure into a failed HostResult."""
    deadline = time.monotonic() + options.timeout
    holder: list[Session] = []

    def abort_all() -> None:
        for session in holder:
            session.abort()

    timer = threading.Timer(options.timeout, abort_all)
    timer.daemon = True
    timer.start()
    try:
        with connect(host, options, deadline) as session:
            holder.append(session)
            if time.monotonic() >= deadline:
                session.abort()
            return operation(session, host, deadline)
    except Exception as exc:
        if holder and holder[0].aborted.is_set():
            message = str(HostTimeoutError(f"not done within {options.timeout:g} s"))
        elif isinstance(exc, DeployError):
            message = str(exc)
        else:
            message = f"error: {type(exc).__name__}: {exc}"
        return HostResult(host, "failed", error=one_line(message))
    finally:
        timer.cancel()


def run_fleet(
    hosts: Sequence[str],
    options: ConnectOptions,
    operation: Operation,
    jobs: int,
    on_done: Callable[[HostResult], None] | None = None,
) -> list[HostResult]:
    """``operation`` on every host, at most ``jobs`` at once; results in the order given."""
    results: dict[int, HostResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            pool.submit(run_on_host, host, options, operation): index
            for index, host in enumerate(hosts)
        }
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            if on_done is not None:
                on_done(result)
    return [results[index] for index in range(len(hosts))]

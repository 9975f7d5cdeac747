"""How sp-deploy takes Ctrl-C (INT) and TERM (systemd, ``timeout``, ``kill``).

The sp-deploy process (entry.run) takes both with ``handler``: the first raises
KeyboardInterrupt (every command turns it into "interrupted", exit 130); every later one is
only counted. Inside ``counted()`` (a fleet command: its hosts, then its report) none is
raised, all are counted, and the fleet reads ``received()`` to act on them (the first stops
the fleet in order, the second aborts the connections). So no signal, however many and
whenever they come, cuts a report short or ends sp-deploy by the signal itself: once one came,
the exit status is 130.

The first signal is never raised inside the import system (importlib's frames): CPython
takes its import lock there where an exception at the next line would leave it held (in a
weakref callback, which then swallows the exception), so every later import in another thread
would wait forever and the Ctrl-C would be lost. There the raise is owed: SIGALRM comes back
every ``RETRY`` seconds and raises it once the main thread is out of the import system. A
KeyboardInterrupt that Python swallowed anyway (raised in a ``__del__`` or a weakref callback)
is owed the same way.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY = 0.01  # seconds between two tries of an owed raise
_count = 0
_raising = True
_owed = False
_counting = False  # within counted()


def received() -> int:
    """How many INT and TERM this process has taken (with ``handler`` or in ``counted``)."""
    return _count


def install(numbers: tuple[int, ...] = SIGNALS) -> None:
    """Take the signals ``numbers`` with ``handler``, and owed raises with SIGALRM."""
    for number in numbers:
        signal.signal(number, handler)
    signal.signal(signal.SIGALRM, _retry)
    sys.unraisablehook = _swallowed


def handler(signum: int, frame: FrameType | None) -> None:
    """The process's handler: the first signal raises KeyboardInterrupt, later ones count."""
    global _count
    _count += 1
    if _count == 1 and _raising:
        _raise(frame)


def _in_import(frame: FrameType | None) -> bool:
    while frame is not None:
        if "importlib._bootstrap" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _raise(frame: FrameType | None) -> None:
    global _owed
    if _in_import(frame):
        _owed = True
        signal.setitimer(signal.ITIMER_REAL, RETRY)
        return
    _owed = False
    raise KeyboardInterrupt


def _retry(signum: int, frame: FrameType | None) -> None:
    # a fleet's hosts (counted) read the count themselves: an owed raise is for the rest
    if _owed and _raising and not _counting:
        _raise(frame)


def _swallowed(unraisable: Any) -> None:
    global _owed
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and _raising:
        _owed = True  # ours, raised where Python ignores exceptions: raised again soon
        signal.setitimer(signal.ITIMER_REAL, RETRY)
        return
    sys.__unraisablehook__(unraisable)


def stop_raising() -> None:
    """From now on ``handler`` only counts (the command has ended: nothing left to stop)."""
    global _raising, _owed
    _raising = _owed = False
    signal.setitimer(signal.ITIMER_REAL, 0)


def _count_only(signum: int, frame: FrameType | None) -> None:
    global _count
    _count += 1


class counted:  # used as a with-statement, like a function
    """Within: INT and TERM are counted, never raised (in the main thread; elsewhere Python
    takes signals in the main thread anyway); one ignored stays ignored. The previous handlers
    come back after. A raise still owed when it begins is raised first (the fleet would not
    see it in the count)."""

    def __enter__(self) -> None:
        import threading  # not at import: render starts fast

        global _owed
        self.before: dict[int, object] = {}
        self.main = threading.current_thread() is threading.main_thread()
        if not self.main:
            return
        global _counting
        if _owed and _raising:
            _owed = False
            raise KeyboardInterrupt
        for number in SIGNALS:
            if signal.getsignal(number) is signal.SIG_IGN:  # (a background job's INT) stays so
                continue
            self.before[number] = signal.getsignal(number)
            signal.signal(number, _count_only)
        _counting = True

    def __exit__(self, *exc: object) -> None:
        global _counting
        for number, previous in self.before.items():
            if previous is not None:
                signal.signal(number, previous)  # type: ignore[arg-type]
        if self.main:
            _counting = False

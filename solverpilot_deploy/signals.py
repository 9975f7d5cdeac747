"""How sp-deploy takes Ctrl-C (INT) and TERM (systemd, ``timeout``, ``kill``).

The sp-deploy process (entry.run) takes both with ``handler``: the first raises
KeyboardInterrupt (every command turns it into "interrupted", exit 130); every later one is
only counted. Inside ``counted()`` (a fleet command: its hosts, then its report) none is
raised, all are counted, and the fleet reads ``received()`` to act on them (the first stops
the fleet in order, the second aborts the connections). So no signal, however many and
whenever they come, cuts a report short or ends sp-deploy by the signal itself: once one came,
the exit status is 130.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_count = 0
_raising = True


def received() -> int:
    """How many INT and TERM this process has taken (with ``handler`` or in ``counted``)."""
    return _count


def handler(signum: int, frame: FrameType | None) -> None:
    """The process's handler: the first signal raises KeyboardInterrupt, later ones count."""
    global _count
    _count += 1
    if _count == 1 and _raising:
        raise KeyboardInterrupt


def stop_raising() -> None:
    """From now on ``handler`` only counts (the command has ended: nothing left to stop)."""
    global _raising
    _raising = False


def _count_only(signum: int, frame: FrameType | None) -> None:
    global _count
    _count += 1


class counted:  # used as a with-statement, like a function
    """Within: INT and TERM are counted, never raised (in the main thread; elsewhere Python
    takes signals in the main thread anyway). The previous handlers come back after."""

    def __enter__(self) -> None:
        import threading  # not at import: render starts fast

        self.before: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for number in SIGNALS:
            self.before[number] = signal.getsignal(number)
            signal.signal(number, _count_only)

    def __exit__(self, *exc: object) -> None:
        for number, previous in self.before.items():
            if previous is not None:
                signal.signal(number, previous)  # type: ignore[arg-type]

"""The sp-deploy command's entry point: a Ctrl-C (or TERM) while the CLI is still being
imported is reported like any other ("sp-deploy: interrupted", exit 130), not as a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType


def _interrupted_early(signum: int, frame: FrameType | None) -> None:
    for number in (signal.SIGINT, signal.SIGTERM):  # one message, whatever comes during it
        signal.signal(number, signal.SIG_IGN)
    os.write(2, b"sp-deploy: interrupted\n")
    os._exit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_early)
if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _interrupted_early)

from solverpilot_deploy import signals  # noqa: E402
from solverpilot_deploy.cli import main  # noqa: E402


def run() -> int:
    """main(), with Ctrl-C and TERM (systemd, timeout, kill) taken as signals.py says: the
    first is a Ctrl-C (hosts in flight end their step, their connections are closed, the
    results are printed; in a fleet a second aborts them), every later one is absorbed, and
    once one came the exit status is 130, never death by the signal."""
    told = False  # main said "interrupted" itself
    try:
        try:
            signals.install(
                tuple(n for n in signals.SIGNALS if signal.getsignal(n) is _interrupted_early)
            )
            code = main(sys.argv[1:])
            told = code == 130
        finally:
            signals.stop_raising()
    except KeyboardInterrupt:  # the first signal, as main returned or while it reported
        code = 130
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    # the interpreter's own exit puts a Python handler back to the default (death by the
    # signal, 143): from here every signal is ignored
    for number in signals.SIGNALS:
        if signal.getsignal(number) is signals.handler:
            signal.signal(number, signal.SIG_IGN)
    if not signals.received():
        return code
    if not told:
        os.write(2, b"sp-deploy: interrupted\n")
    # CPython ends itself by SIGINT at exit once a KeyboardInterrupt has passed through a
    # nested evaluation (its flag stays set though main caught it): 4 exits in 150 died by INT
    # instead of 130. So the streams are flushed here and the process exits at once.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
    os._exit(130)

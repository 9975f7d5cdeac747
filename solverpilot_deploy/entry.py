"""The sp-deploy command's entry point: a Ctrl-C while the CLI is still being imported is
reported like any other ("sp-deploy: interrupted", exit 130), not as a traceback."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted_early(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"sp-deploy: interrupted\n")
    os._exit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_early)

from solverpilot_deploy.cli import main  # noqa: E402


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run() -> int:
    """main(), with Ctrl-C raising KeyboardInterrupt again (main turns it into exit 130), and
    TERM (systemd, timeout, kill) taken as a Ctrl-C: hosts in flight end their step, their
    connections are closed, the results are printed; a second one aborts them."""
    if signal.getsignal(signal.SIGINT) is _interrupted_early:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    return main(sys.argv[1:])

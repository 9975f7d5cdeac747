"""A fleet's live progress line on a terminal: done, failed, in flight, elapsed; after a few
seconds, the hosts still in flight. Redrawn in place (carriage return, erase line) at most
every ``every`` seconds from a thread of its own, erased before anything else is printed and
at the end. Without a terminal nothing is drawn."""

from __future__ import annotations

import os
import threading
import time
from typing import TextIO

from solverpilot_deploy.safe import printable
from solverpilot_deploy.tables import cut

SLOW = 3.0  # seconds: from then on the line names the hosts still in flight


class Progress:
    def __init__(self, stream: TextIO, total: int, good: set[str], every: float = 0.2) -> None:
        self.stream = stream
        self.total = total
        self.good = good
        self.every = every
        self.began = time.monotonic()
        self.flying: dict[str, float] = {}  # host -> when it started
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.lock = threading.Lock()
        self.drawn = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()
        with self.lock:
            self._draw()  # the last count, however quick the fleet was; then the table
            self._erase()

    def started(self, host: str) -> None:
        with self.lock:
            self.flying[host] = time.monotonic()
            if not self.drawn:
                self._draw()

    def finished(self, host: str, status: str) -> None:
        with self.lock:
            self.flying.pop(host, None)
            self.done += 1
            if status == "skipped":
                self.skipped += 1
            elif status not in self.good:
                self.failed += 1

    def say(self, text: str) -> None:
        """A line of its own above the progress line (a host's warning or result)."""
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            self.stream.flush()

    def line(self) -> str:
        now = time.monotonic()
        ok = self.done - self.failed - self.skipped
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        words = (
            f"[{self.done}/{self.total}] {ok} ok, {self.failed} failed{skipped}, "
            f"{len(self.flying)} in flight, {now - self.began:.1f}s"
        )
        slow = sorted((began, host) for host, began in self.flying.items() if now - began > SLOW)
        if slow:
            names = ", ".join(printable(host) for _, host in slow[:3])
            more = f" +{len(slow) - 3}" if len(slow) > 3 else ""
            words += f"; waiting on {names}{more}"
        return cut(words, self.width() - 1)  # (a wrapped line is not redrawn: it must fit)

    def width(self) -> int:
        """The columns of the terminal the line is drawn on (its own stream's, which need not
        be stdout's: `push ... > report` draws on stderr), COLUMNS first as shutil's; else 80."""
        try:
            given = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            given = 0
        if given > 0:
            return given
        try:
            found = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):  # (no fd, or not a terminal)
            found = 0
        return found if found > 0 else 80

    def _erase(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def _draw(self) -> None:
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()
        self.drawn = True

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            with self.lock:
                self._draw()

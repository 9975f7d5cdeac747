"""One interface to a host, whichever client makes the connection.

A Session runs one command line with stdin and returns (exit status, stdout, stderr); the
remote steps need nothing else (an upload is a step whose payload rides on stdin). Each
transport classifies its own failures into the shared error kinds of errors.py, so commands
never know which transport they use:

- paramiko (the default): the connection is made in this process, from the ssh config as
  ``ssh -G`` resolves it; key and agent authentication, ProxyJump.
- openssh: the system ``ssh``, so everything the user's ssh does applies (ProxyCommand,
  ControlMaster, certificates, FIDO keys, GSSAPI, 2FA prompts on a terminal).
- auto: openssh for a host whose resolved config uses what paramiko cannot do, else paramiko.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from solverpilot_deploy.errors import HostTimeoutError, RemoteCommandError
from solverpilot_deploy.ssh import (
    MAX_ANSWER,
    ConnectOptions,
    paramiko_cannot,
    paramiko_cannot_check,
    ssh_config,
)


class Answer:
    """A command's stdout as it arrives (``data``). The lines that begin with ``framed`` (a
    step's per-call token: remote.py) are its answer and are kept however many there are (status
    of a million jobs); the others (a banner, what a start-up file prints) may not pass
    MAX_ANSWER bytes in all, nor any one line, so a start-up file that prints without end
    stops the command instead of filling the memory. Without ``framed`` every byte counts.

    The command has ``timeout`` seconds; once lines of its answer come, it has ``timeout``
    seconds from the last of them (status of a million jobs answers for minutes): only a host
    whose answer stalls (or never begins) that long times out."""

    def __init__(
        self,
        framed: bytes = b"",
        timeout: float = 60.0,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        # on_line (a step that runs without end: watch): each line of the answer, without its
        # token, as it comes; nothing is kept (data stays empty)
        self.on_line = on_line
        self.data = bytearray()
        self.framed = framed
        self.other = 0  # bytes of the ended lines without the token
        self.head = b""  # the start of the line not ended yet (as long as the token)
        self.open = 0  # that line's length so far
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.answering = False  # a line of the answer has come

    def left(self) -> float:
        """Seconds left before the command times out."""
        return self.deadline - time.monotonic()

    def timed_out(self) -> HostTimeoutError:
        """The error of a command that timed out, with what it sent so far."""
        if self.answering:
            said = f"the host's answer stopped for {self.timeout:.0f} s (a stalled connection?)"
        else:
            said = (
                f"no answer to a command within {self.timeout:.0f} s (is a start-up file of "
                "the login shell stuck?)"
            )
        error = HostTimeoutError(said)
        error.partial = self.data.decode("utf-8", "replace")
        return error

    def add(self, chunk: bytes) -> None:
        if self.on_line is not None:
            self._deliver(chunk)
            return
        self.data += chunk
        framed, size = self.framed, len(self.framed)
        first, *ended = chunk.split(b"\n")
        head = (self.head + first[:size])[:size]
        if ended:  # the open line ends in this chunk, and every line but the last
            answered = False
            if not framed or head != framed:
                self.other += self.open + len(first) + 1
            else:
                answered = True
            for line in ended[:-1]:
                if not framed or not line.startswith(framed):
                    self.other += len(line) + 1
                else:
                    answered = True
            if answered and framed:
                self.answering = True
                self.deadline = time.monotonic() + self.timeout
            head, self.open = ended[-1][:size], len(ended[-1])
        else:
            self.open += len(first)
        self.head = head
        mine = bool(framed) and (framed.startswith(head) if len(head) < size else head == framed)
        if mine and self.open > MAX_ANSWER:  # status sends a state file of 64 KiB at most
            raise RemoteCommandError(
                f"the host sent a line of more than {MAX_ANSWER >> 20} MiB in its answer"
            )
        if self.other + (0 if mine else self.open) > MAX_ANSWER:
            raise RemoteCommandError(
                f"the host sent more than {MAX_ANSWER >> 20} MiB for one command besides its "
                "answer (does a start-up file of the login shell print without end?)"
            )

    def _deliver(self, chunk: bytes) -> None:
        """on_line's share of ``add``: the ended lines of the answer go to on_line at once."""
        self.head += chunk  # (here: the line not ended yet, whole)
        *ended, self.head = self.head.split(b"\n")
        for line in ended:
            if line.startswith(self.framed):
                self.answering = True
                self.deadline = time.monotonic() + self.timeout
                assert self.on_line is not None
                self.on_line(line[len(self.framed) :].decode("utf-8", "replace"))
            else:
                self.other += len(line) + 1
        if len(self.head) > MAX_ANSWER or self.other > MAX_ANSWER:
            raise RemoteCommandError(
                f"the host sent more than {MAX_ANSWER >> 20} MiB in one line, or besides its answer"
            )


class Session(ABC):
    """One live connection to a host; ``abort`` ends it from another thread."""

    def __init__(self) -> None:
        self.aborted = threading.Event()
        self.warnings: list[str] = []  # about the connection itself, reported with the host
        self.abort_reason = ""  # why abort() was called, set by its caller for the report
        self.changing = False  # set by an operation before its first step that may change the host
        self.steps: list[tuple[str, float]] = []  # each remote step run and its seconds (run_step)
        # the login's seconds (connect): a bound on the link's one-way delay, which a step takes
        # to reach the host (a login is several round trips), unless the login may have waited
        # for a person (may_prompt: a password or Duo prompt on the terminal)
        self.login_seconds = 0.0
        self.may_prompt = False

    @abstractmethod
    def run(
        self,
        command: str,
        stdin: bytes = b"",
        timeout: float = 60.0,
        framed: bytes = b"",
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[int, str, str]:
        """Run ``command`` on the host; returns (exit status, stdout, stderr). ``framed``: the
        start of the answer's lines; ``on_line``: told each of them as it comes, and then
        stdout is not kept (see Answer)."""

    def abort(self) -> None:
        self.aborted.set()
        self.close()

    @abstractmethod
    def close(self) -> None:
        """End the connection; calling it again does nothing."""


Started = Callable[[Session], None]  # told of a session before it connects, to abort it


@contextmanager
def connect(
    spec: str, options: ConnectOptions, deadline: float, started: Started | None = None
) -> Iterator[Session]:
    """A Session to ``spec`` by the transport ``options`` names; closed on exit. ``started``
    gets it before the connection is made, so that a login in progress can be aborted."""
    values = None
    transport = options.transport
    warning = ""
    if transport == "auto":
        values = ssh_config(spec, options)
        reasons = paramiko_cannot(values) + paramiko_cannot_check(spec, values, options)
        transport = "openssh" if reasons else "paramiko"
        if reasons:
            warning = (
                f"transport openssh: the ssh config of this host uses {', '.join(reasons)}, "
                "which paramiko cannot do"
            )
    if transport == "openssh":
        from solverpilot_deploy.transport.openssh import connect_openssh as opener
    else:
        from solverpilot_deploy.transport.paramiko_ssh import connect_paramiko as opener

    def told(session: Session) -> None:  # the warning is the host's also when it fails
        if warning:
            session.warnings.append(warning)
        if started is not None:
            started(session)

    began = time.monotonic()
    with opener(spec, options, deadline, values, told) as session:
        session.login_seconds = time.monotonic() - began
        yield session

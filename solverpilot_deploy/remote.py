"""Run the remote steps (templates/remote/*.sh) on a host, whatever its login shell.

Each step is a POSIX sh script, sent on stdin to one command line that every login shell
(sh, bash, dash, zsh, csh, tcsh, fish) parses the same way: ``exec /bin/sh -s -- TOKEN ARG...``
with plain words only. ``lib.sh`` goes before every step: it frames the answer between marker
lines that carry the per-call TOKEN, so whatever a banner or a start-up file prints is never
read. Data a step needs (the wrapper, the schema) travels inside the script, as the body of
its here-document ending in a ``SP_PAYLOAD`` line, because ``sh -s`` may read stdin ahead.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass

from solverpilot_deploy.errors import RemoteCommandError
from solverpilot_deploy.resources import templates_dir
from solverpilot_deploy.ssh import Session

PAYLOAD_END = "SP_PAYLOAD\n"
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9._/:,+-][A-Za-z0-9._/:=,+-]*$")


@dataclass(frozen=True)
class StepResult:
    """What a step answered: its exit status and the lines between the markers."""

    status: int
    lines: tuple[str, ...]
    stderr: str

    def values(self) -> dict[str, str]:
        """The ``key=value`` lines of the answer."""
        return dict(line.split("=", 1) for line in self.lines if "=" in line)

    def error(self) -> str:
        """The step's ``error=`` line, else its stderr, else its status."""
        return self.values().get("error") or self.stderr.strip() or f"exit {self.status}"


@functools.cache
def step_script(name: str) -> str:
    """lib.sh followed by the step's own lines: the whole script as the host runs it."""
    folder = templates_dir() / "remote"
    lib = (folder / "lib.sh").read_text(encoding="utf-8")
    return lib + (folder / f"{name}.sh").read_text(encoding="utf-8")


def step_names() -> list[str]:
    return sorted(p.stem for p in (templates_dir() / "remote").glob("*.sh") if p.stem != "lib")


def with_payload(script: str, payload: str) -> str:
    """``script`` with ``payload`` as the body of its SP_PAYLOAD here-document."""
    if not payload.endswith("\n") or f"\n{PAYLOAD_END}" in f"\n{payload}" or "\0" in payload:
        raise ValueError("a payload must be text ending in a newline, without a SP_PAYLOAD line")
    head, sep, tail = script.partition(f"\n{PAYLOAD_END}")
    if not sep:
        raise ValueError("this step takes no payload")
    return f"{head}\n{payload}{PAYLOAD_END}{tail}"


def command_line(token: str, args: tuple[str, ...]) -> str:
    for arg in args:
        if not _PLAIN_WORD.match(arg):
            raise ValueError(f"not a plain word for a remote command line: {arg!r}")
    return " ".join(("exec", "/bin/sh", "-s", "--", token, *args))


def parse_framed(token: str, stdout: str) -> tuple[int, tuple[str, ...]] | None:
    """(status, lines) between this call's markers, or None when the answer is not complete."""
    lines = stdout.split("\n")  # not splitlines(): \r, \f or \x1c in a file are no line ends
    begin = f"@@SP-BEGIN {token}"
    end = re.compile(rf"^@@SP-END {re.escape(token)} (\d+)$")
    try:
        start = lines.index(begin)
    except ValueError:
        return None
    for index in range(start + 1, len(lines)):
        match = end.match(lines[index])
        if match:
            body = lines[start + 1 : index]
            if body and body[-1] == "":
                body = body[:-1]  # the newline lib.sh writes before the end marker
            return int(match[1]), tuple(body)
    return None


def run_step(
    session: Session,
    name: str,
    *args: str,
    timeout: float,
    payload: str | None = None,
) -> StepResult:
    """Run step ``name`` with ``args``; RemoteCommandError when no framed answer came."""
    token = secrets.token_hex(12)
    script = step_script(name)
    if payload is not None:
        script = with_payload(script, payload)
    status, out, err = session.run(
        command_line(token, args), stdin=script.encode(), timeout=timeout
    )
    framed = parse_framed(token, out)
    if framed is None:
        last = err.strip().splitlines()[-1:]
        said = f"; its last words: {last[0][:200]}" if last else ""
        raise RemoteCommandError(
            f"{name}: no answer from /bin/sh on the host: the login shell or one of its "
            f"start-up files ended the command (exit {status}{said})"
        )
    return StepResult(framed[0], framed[1], err)

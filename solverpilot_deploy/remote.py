"""Run the remote steps (templates/remote/*.sh) on a host, whatever its login shell.

Each step is a POSIX sh script, sent on stdin to one command line that every login shell
(sh, bash, dash, zsh, csh, tcsh, fish) parses the same way: ``exec /bin/sh -s -- ARG...``
with plain words only. ``lib.sh`` goes before every step and ``end.sh`` after it: every line of
the answer then begins with the per-call TOKEN and the last says the step's exit status, so
whatever a banner, a start-up file or a process it left behind prints is never read. The
TOKEN travels in the script itself (its first line puts it before the arguments), never on
the command line, where a start-up file (bash's BASH_EXECUTION_STRING) or another user (ps)
could read it and forge lines of the answer. A step exits with the codes of one table,
``templates/remote/codes``: ``step_script`` defines ``E_NAME=NUMBER`` for each in place of
lib.sh's ``# @codes`` line, and ``StepResult.code`` names the status a step ended with. Data a
step needs (the wrapper, the schema) travels inside the script, as the body of its
here-document ending in a ``SP_PAYLOAD`` line, because ``sh -s`` may read stdin ahead.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from solverpilot_deploy.errors import HostTimeoutError, RemoteCommandError, UnsafeServerDirError
from solverpilot_deploy.resources import templates_dir
from solverpilot_deploy.transport import Session

PAYLOAD_END = "SP_PAYLOAD\n"
# lib.sh's line that step_script replaces with the steps' exit codes as shell variables
CODES_MARK = "# @codes\n"
# steps that still exit with numbers of their own, not the codes file's (deploy.py maps them)
OWN_CODES = frozenset({"probe", "install", "push", "init_db"})
_CODE_LINE = re.compile(r"^([a-z][a-z0-9_]*) ([0-9]{1,3}) (\S.*)$")


@dataclass(frozen=True)
class StepCode:
    """One line of templates/remote/codes: a step's exit status, its name and meaning."""

    name: str
    number: int
    meaning: str

    @property
    def shell_name(self) -> str:
        return f"E_{self.name.upper()}"


@functools.cache
def step_codes() -> tuple[StepCode, ...]:
    """templates/remote/codes, the one table of the steps' exit codes; ValueError when a line
    is malformed or a name or number comes twice."""
    codes: list[StepCode] = []
    text = (templates_dir() / "remote" / "codes").read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = _CODE_LINE.match(line)
        if match is None or int(match[2]) > 255:
            raise ValueError(f"templates/remote/codes line {n}: not NAME NUMBER MEANING: {line!r}")
        code = StepCode(match[1], int(match[2]), match[3])
        if any(c.name == code.name or c.number == code.number for c in codes):
            raise ValueError(f"templates/remote/codes line {n}: {code.name} or {code.number} again")
        codes.append(code)
    return tuple(codes)


def code_number(name: str) -> int:
    """The exit status the codes file gives ``name``; KeyError for a name it lacks."""
    for code in step_codes():
        if code.name == name:
            return code.number
    raise KeyError(f"no step code {name!r} in templates/remote/codes")


def code_name(status: int) -> str:
    """The codes file's name of exit status ``status``, else "exit STATUS"."""
    return next((c.name for c in step_codes() if c.number == status), f"exit {status}")


def codes_shell() -> str:
    """The codes as the lines of sh that define them (E_NAME=NUMBER), for step_script."""
    words = " \\\n  ".join(f"{c.shell_name}={c.number}" for c in step_codes())
    return (
        "# the steps' exit codes (templates/remote/codes)\n"
        "# shellcheck disable=SC2034 # a step exits with some of them only\n"
        f"{words}\n"
    )


# the exit status of every step that refuses the server folder (lib.sh's sp_server_safe)
UNSAFE_SERVER_DIR = code_number("unsafe_server_dir")
UNSAFE_HINT = (
    "another user could read or rewrite its jobs' records and logs; it must be owned by you and "
    "writable by you alone (sp-deploy push makes the folders you own 0700), or set "
    "SOLVERPILOT_SERVER_DIR to a folder you create yourself with mkdir -m 700"
)
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9._/:,+-][A-Za-z0-9._/:=,+-]*$")


@dataclass(frozen=True)
class StepResult:
    """What a step answered: its exit status and the lines between the markers."""

    status: int
    lines: tuple[str, ...]
    stderr: str

    def values(self) -> dict[str, str]:
        """The ``key=value`` lines of the answer; the first of a key counts."""
        pairs = [line.split("=", 1) for line in self.lines if "=" in line]
        return dict(reversed(pairs))

    def all_of(self, key: str) -> tuple[str, ...]:
        """Every ``key=`` line's value, in order (``values`` keeps only the first)."""
        return tuple(line[len(key) + 1 :] for line in self.lines if line.startswith(f"{key}="))

    @property
    def code(self) -> str:
        """The name templates/remote/codes gives the exit status ("ok", "no_wrapper"...), or
        "exit N" for a status it does not name (a step in OWN_CODES has numbers of its own)."""
        return code_name(self.status)

    def error(self) -> str:
        """The step's ``error=`` line, else its stderr, else its status."""
        return self.values().get("error") or self.stderr.strip() or f"exit {self.status}"


# the functions a step needs besides lib.sh's (a file of templates/remote that is no step)
STEP_NEEDS = {
    "status": ("scan",),
    "watch": ("scan",),
    "probe": ("probing",),
    "install": ("server_db", "installing"),
    "push": ("probing", "server_db", "installing"),
    "init_db": ("server_db",),
}
# (and codes, which is no .sh)
NOT_STEPS = ("lib", "end", "scan", "server_db", "probing", "installing")


@functools.cache
def step_script(name: str) -> str:
    """lib.sh (its codes line replaced by the exit codes' variables), the functions it needs,
    the step's own lines, end.sh: the whole script as the host runs it."""
    folder = templates_dir() / "remote"
    needs = tuple(f"{part}.sh" for part in STEP_NEEDS.get(name, ()))
    parts = ("lib.sh", *needs, f"{name}.sh", "end.sh")
    text = "".join((folder / part).read_text(encoding="utf-8") for part in parts)
    head, mark, tail = text.partition(f"\n{CODES_MARK}")
    if not mark:
        raise ValueError(f"lib.sh has no {CODES_MARK.strip()!r} line")
    return f"{head}\n{codes_shell()}{tail}"


def step_names() -> list[str]:
    steps = (templates_dir() / "remote").glob("*.sh")
    return sorted(p.stem for p in steps if p.stem not in NOT_STEPS)


def with_payload(script: str, payload: str) -> str:
    """``script`` with ``payload`` as the body of its SP_PAYLOAD here-document."""
    if not payload.endswith("\n") or f"\n{PAYLOAD_END}" in f"\n{payload}" or "\0" in payload:
        raise ValueError("a payload must be text ending in a newline, without a SP_PAYLOAD line")
    head, sep, tail = script.partition(f"\n{PAYLOAD_END}")
    if not sep:
        raise ValueError("this step takes no payload")
    return f"{head}\n{payload}{PAYLOAD_END}{tail}"


def command_line(args: tuple[str, ...]) -> str:
    for arg in args:
        if not _PLAIN_WORD.match(arg):
            raise ValueError(f"not a plain word for a remote command line: {arg!r}")
    return " ".join(("exec", "/bin/sh", "-s", "--", *args))


def with_token(script: str, token: str) -> str:
    """``script`` whose first line puts ``token`` before its arguments, as lib.sh reads it."""
    return f'set -- {token} "$@"\n{script}'


def parse_framed(token: str, stdout: str) -> tuple[int, tuple[str, ...]] | None:
    """(status, lines) of this call's answer: the lines that begin with its token, the last
    of them "@end STATUS"; None when the answer is not complete."""
    prefix = f"{token} "
    # not splitlines(): \r, \f or \x1c inside a line are no line ends
    mine = [line[len(prefix) :] for line in stdout.split("\n") if line.startswith(prefix)]
    match = re.match(r"^@end (\d+)$", mine[-1]) if mine else None
    if match is None:
        return None
    body = mine[:-1]
    if body and body[-1] == "":
        body = body[:-1]  # the newline end.sh writes before "@end"
    return int(match[1]), tuple(body)


def run_step(
    session: Session,
    name: str,
    *args: str,
    timeout: float,
    payload: str | None = None,
) -> StepResult:
    """Run step ``name`` with ``args``; RemoteCommandError when no framed answer came,
    UnsafeServerDirError when the step refused the server folder (unsafe_server_dir)."""
    token = secrets.token_hex(12)
    script = step_script(name)
    if payload is not None:
        script = with_payload(script, payload)
    began = time.monotonic()
    try:
        status, out, err = session.run(
            command_line(args), stdin=with_token(script, token).encode(), timeout=timeout,
            framed=f"{token} ".encode(),
        )  # fmt: skip
    except HostTimeoutError as exc:  # the lines of its answer that had come: the step's own
        prefix = f"{token} "
        exc.answered = tuple(
            line[len(prefix) :] for line in exc.partial.split("\n") if line.startswith(prefix)
        )
        raise
    finally:
        session.steps.append((name, time.monotonic() - began))
    framed = parse_framed(token, out)
    if framed is None:
        last = err.strip().splitlines()[-1:]
        said = f"; its last words: {last[0][:200]}" if last else ""
        raise RemoteCommandError(
            f"{name}: no answer from /bin/sh on the host: the login shell or one of its "
            f"start-up files ended the command (exit {status}{said})"
        )
    if framed[0] == UNSAFE_SERVER_DIR:
        raise unsafe_server_dir(StepResult(framed[0], framed[1], err).error())
    return StepResult(framed[0], framed[1], err)


def stream_step(
    session: Session, name: str, *args: str, on_line: Callable[[str], None], quiet: float
) -> int:
    """Run step ``name``, a step without end (watch), telling ``on_line`` each line of its
    answer as it comes; its exit status once it ends. HostTimeoutError when no line came for
    ``quiet`` seconds (the step sends one at least that often: a stalled connection)."""
    token = secrets.token_hex(12)
    ended: list[int] = []
    said: list[str] = []

    def line(text: str) -> None:
        found = re.match(r"^@end (\d+)$", text)
        if found:
            ended.append(int(found[1]))
        elif text.startswith("error="):
            said.append(text[6:])
        elif text:  # (end.sh's empty line before @end)
            on_line(text)

    _, _, err = session.run(
        command_line(args), stdin=with_token(step_script(name), token).encode(), timeout=quiet,
        framed=f"{token} ".encode(), on_line=line,
    )  # fmt: skip
    if not ended:
        last = err.strip().splitlines()[-1:]
        raise RemoteCommandError(
            f"{name}: the connection ended" + (f"; its last words: {last[0][:200]}" if last else "")
        )
    if ended[0] == UNSAFE_SERVER_DIR:
        raise unsafe_server_dir(said[0] if said else "the server folder")
    return ended[0]


def unsafe_server_dir(said: str) -> UnsafeServerDirError:
    """The one error for a server folder a step (or the probe) refused; ``said`` names the
    path and why, as the host wrote it."""
    return UnsafeServerDirError(f"{said}: {UNSAFE_HINT}")

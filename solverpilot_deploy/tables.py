"""Tables for people: columns fitted to a terminal, ids shortened as git shortens hashes,
times relative, colours on a terminal only. What a cell holds from a host is made safe for a
terminal (safe.printable) before any colour is added."""

from __future__ import annotations

import itertools
import os
import shlex
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from solverpilot_deploy.safe import printable

SHORT_ID = 8  # a shortened id keeps at least this many characters (tmux's session names too)
WHOLE_ID = 12  # an id no longer than this is shown whole
COLOURS = {  # SGR codes per status (the first word of a status cell)
    "completed": "32",
    "ok": "32",
    "deployed": "32",
    "unchanged": "32",
    "running": "36",
    "starting": "36",
    "stopping": "33",
    "queued": "33",
    "submitted": "33",
    "requeued": "33",
    "suspended": "33",
    "would-deploy": "33",
    "skipped": "33",
    "failed": "31",
    "lost": "1;31",
    "unreadable": "1;31",
    "missing": "31",
    "mismatch": "31",
    "needs-repair": "31",
}


def use_colour(stream: Any) -> bool:
    """Colours only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    isatty = getattr(stream, "isatty", None)
    return bool(
        isatty is not None
        and isatty()
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )


def unique_prefixes(ids: Sequence[str], least: int = SHORT_ID) -> dict[str, str]:
    """Each id's shortest prefix of at least ``least`` characters that no other id shares; an
    id at most WHOLE_ID long whole (a name someone chose: cutting it saves little). Commands
    take such a prefix for the id (resolve_prefix). In sorted order, the ids an id shares
    most of its start with are its neighbours: n log n, not n squared (100,000 jobs)."""
    shared = shared_starts(ids)
    return {
        job_id: job_id
        if len(job_id) <= WHOLE_ID
        else job_id[: min(len(job_id), max(least, shared[job_id] + 1))]
        for job_id in ids
    }


def shared_starts(texts: Sequence[str]) -> dict[str, int]:
    """Each text's longest common start with another (in characters): beyond it, it reads
    apart from all the others."""
    ordered = sorted(set(texts))
    shared = dict.fromkeys(ordered, 0)
    for before, after in itertools.pairwise(ordered):
        common = len(os.path.commonprefix((before, after)))  # noqa: RUF071 (by character)
        shared[before] = max(shared[before], common)
        shared[after] = max(shared[after], common)
    return shared


def duration(seconds: float | None) -> str:
    """45s, 12m03s, 3h02m, 2d04h."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def when(iso: str | None, now: datetime) -> str:
    """A recorded time, short: "5m ago" within a day, else "11-30 14:03" (host's local time)."""
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        return iso[5:16].replace("T", " ")
    age = (now - moment).total_seconds()
    if age <= -1:  # the host's clock is ahead of this one's: shown, not hidden
        return (
            f"in {duration(float(int(-age)))}" if age > -86400 else moment.strftime("%m-%d %H:%M")
        )
    if -1 < age < 86400:
        if age < 1:
            return "now"
        return f"{duration(float(int(age))) if age >= 10 else f'{int(age)}s'} ago"
    return moment.strftime("%m-%d %H:%M")


def shorter(text: str, most: int) -> str:
    return text if len(text) <= most else text[: max(most - 3, 1)] + "..."


def status_words(job: Any) -> str:
    """A job's status: why it is lost or ended so, where it waits in its queue."""
    words = str(job.status)
    if job.status == "queued" and job.queue:
        words += f" ({job.queue} #{job.position})" if job.position else f" ({job.queue})"
    elif job.status == "queued" and job.after:
        words += f" (after {','.join(job.after)})"
    why = job.lost_reason or job.reason
    return f"{words} ({why})" if why else words


def _exit(job: Any) -> str:
    code = "-" if job.exit_code is None else str(job.exit_code)
    return f"{code}/{job.signal}" if job.signal else code


def _cpu(job: Any) -> float | None:
    if job.cpu_user_s is None or job.cpu_sys_s is None:
        return None
    return float(job.cpu_user_s + job.cpu_sys_s)


def job_rows(jobs: Sequence[Any], wide: bool, now: datetime | None = None) -> list[list[str]]:
    """The status table's rows, heading first, in the order given (submission order)."""
    now = now or datetime.now(UTC)
    if wide:
        head = "ID NAME STATUS EXIT SIGNAL STARTED_AT COMPLETED_AT CPU_S WALL_S TMUX COMMAND"
        rows = [head.split()]
        for job in jobs:
            cpu = _cpu(job)
            values = (
                job.id, job.name, status_words(job), job.exit_code, job.signal,
                job.started_at, job.completed_at, None if cpu is None else f"{cpu:.2f}",
                None if job.wall_s is None else f"{job.wall_s:.2f}", job.tmux,
                None if job.argv is None else shlex.join(job.argv),
            )  # fmt: skip
            rows.append(["-" if v is None else str(v) for v in values])
        return rows
    short = unique_prefixes([job.id for job in jobs])
    rows = [["ID", "NAME", "STATUS", "EXIT", "STARTED", "WALL", "CPU", "COMMAND"]]
    for job in jobs:
        started = job.started_at or job.submitted_at
        rows.append(
            [
                short[job.id],
                shorter(job.name, 12) if job.name else "-",
                shorter(status_words(job), 32),
                _exit(job),
                when(started, now),
                duration(job.wall_s),
                duration(_cpu(job)),
                "-" if job.argv is None else shlex.join(job.argv),
            ]
        )
    return rows


def columns(text: str) -> int:
    """How many terminal columns ``text`` takes, as a terminal (glibc's wcwidth) draws it: East
    Asian wide and full-width characters two; nonspacing and enclosing marks (Devanagari and
    Thai vowel signs too, whose combining class is 0) and Hangul's medial and final jamo none
    (printable text: no control or format characters)."""
    if text.isascii():  # the usual case, at C speed
        return len(text)
    return sum(_char_columns(c) for c in text)


def _char_columns(c: str) -> int:
    if unicodedata.category(c) in ("Mn", "Me") or "\u1160" <= c <= "\u11ff":
        return 0
    return 2 if unicodedata.east_asian_width(c) in "WF" else 1


def wrap_columns(text: str, most: int) -> list[str]:
    """``text`` in lines of at most ``most`` terminal columns (at least one character each),
    broken at spaces where it can, inside a word where it must; textwrap counts characters,
    and a line of wide ones took twice its room."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        joined = f"{line} {word}" if line else word
        if columns(joined) <= most:
            line = joined
            continue
        if line:
            lines.append(line)
        line = ""
        for c in word:  # a word wider than a line: cut where the columns run out
            if line and columns(line + c) > most:
                lines.append(line)
                line = ""
            line += c
    return [*lines, line] if line or not lines else lines


def cut(text: str, most: int) -> str:
    """``text`` within ``most`` columns: cut short with "..." when it is wider."""
    if columns(text) <= most:
        return text
    kept, used = [], 0
    for c in text:
        used += columns(c)
        if used > max(most - 3, 1):
            break
        kept.append(c)
    return "".join(kept) + "..."


def pad(text: str, size: int) -> str:
    return text + " " * max(size - columns(text), 0)


# the columns a table gives up room from when it is wider than the terminal, in this order,
# each down to its least (an ID is never cut: it must work as typed; nor EXIT and times; a
# STATUS keeps its first word; a HOST, at least so far that each still reads apart from the
# others, node-01 from node-02: render raises its least)
SHRINK = (("COMMAND", 12), ("ERROR", 20), ("NAME", 6), ("STATUS", 12), ("HOST", 12))
DROP = ("CPU", "WALL", "STARTED", "NAME")  # then these go, in this order, while it is too wide
WRAPPED_LEAST = 20  # a wrapped last column narrower than this goes below each row instead


def fit(
    widths: list[int], head: Sequence[str], width: int, leasts: dict[str, int] | None = None
) -> list[int]:
    """Column widths within ``width`` terminal columns, taking room from SHRINK's columns, each
    down to its least there (or in ``leasts``)."""
    widths = list(widths)
    over = sum(widths) + 2 * (len(widths) - 1) - width
    for name, least in SHRINK:
        if over <= 0:
            break
        if name in head:
            at = list(head).index(name)
            least = (leasts or {}).get(name, least)
            give = min(over, max(widths[at] - least, 0))
            widths[at] -= give
            over -= give
    return widths


def render(
    rows: Sequence[Sequence[str]], width: int | None = None, colour: bool = False,
    wrap: bool = False,
) -> str:  # fmt: skip
    """Columns padded to their widest cell, two spaces apart, no trailing blanks; fitted to
    ``width`` terminal columns (when given: SHRINK's columns cut short, the last one with
    ``wrap`` wrapped onto lines of its own instead); each row's STATUS cell coloured by its
    first word when ``colour``."""
    table: list[list[str]] = [[printable(str(cell)) for cell in row] for row in rows]
    leasts = {}
    if "HOST" in table[0]:  # cut short, each host still reads apart: its own start and "..."
        at = table[0].index("HOST")
        hosts = [row[at] for row in table[1:]]
        shared = shared_starts(hosts)
        leasts["HOST"] = max([12, *(columns(host[: shared[host] + 1]) + 3 for host in hosts)])
    while True:
        widths = [max(columns(row[i]) for row in table) for i in range(len(table[0]))]
        if width is None:
            break
        widths = fit(widths, table[0], width, leasts)
        gone = [name for name in DROP if name in table[0]]
        if sum(widths) + 2 * (len(widths) - 1) <= width or not gone:
            break
        at = table[0].index(gone[0])  # still too wide (long ids): a column less
        table = [[*row[:at], *row[at + 1 :]] for row in table]
    status_at = table[0].index("STATUS") if "STATUS" in table[0] else None
    # wrapped, the last column gets the room the others leave; when that is too little, each
    # row's last cell goes on lines of its own below the row, named ("  ERROR: ...")
    room = widths[-1]
    if wrap and width is not None:
        room = width - sum(widths[:-1]) - 2 * (len(widths) - 1)
    below = wrap and width is not None and room < WRAPPED_LEAST
    lines = []
    for number, row in enumerate(table):
        cells = [pad(cut(cell, w), w) for cell, w in zip(row[:-1], widths, strict=False)]
        last, more = row[-1], []
        if below:
            label = f"  {table[0][-1]}: "
            most = (width or 0) - columns(label)
            parts = wrap_columns(last, max(most, 1)) if number and last else []
            last = ""
            more = [(label if not at else " " * columns(label)) + p for at, p in enumerate(parts)]
        elif wrap and width is not None and columns(last) > room:
            used = sum(columns(cell) + 2 for cell in cells)
            first, *more = wrap_columns(last, max(room, 1))
            last, more = first, [" " * used + part for part in more]
        else:
            last = cut(last, room)
        if colour and number and status_at is not None:
            code = COLOURS.get(row[status_at].split(" ", 1)[0])
            if code:
                cells[status_at] = f"\x1b[{code}m{cells[status_at]}\x1b[0m"
        lines.append("  ".join([*cells, last]).rstrip())
        lines.extend(more)
    return "\n".join(lines) + "\n"

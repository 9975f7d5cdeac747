"""Where the templates, the schema and the profile data live, installed or in a checkout."""

from __future__ import annotations

import functools
import re
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def templates_dir() -> Path:
    """The templates folder: inside the installed wheel, else the checkout's top-level one."""
    for candidate in (_PACKAGE_DIR / "templates", _PACKAGE_DIR.parent / "templates"):
        if (candidate / "job_wrapper.sh.j2").is_file():
            return candidate
    raise FileNotFoundError(f"no templates folder next to {_PACKAGE_DIR}")


@functools.cache
def _schema_lines() -> tuple[str, ...]:
    return tuple((templates_dir() / "schema.sql").read_text(encoding="utf-8").splitlines())


def schema_sql() -> str:
    """The server database schema as one line, without its comments: one source for the
    wrapper and the deployer."""
    return " ".join(" ".join(ln for ln in _schema_lines() if not ln.startswith("--")).split())


def schema_version() -> int:
    """The schema's version (its first line, ``-- version N``): the DB's PRAGMA user_version
    once migrated."""
    found = re.match(r"^-- version ([0-9]+)$", _schema_lines()[0])
    assert found, "schema.sql begins with -- version N"
    return int(found[1])


def schema_columns() -> list[str]:
    """The table's columns as ``NAME TYPE``, in order (a migration adds those a table lacks)."""
    return [
        " ".join(ln.strip().rstrip(",").split()[:2])
        for ln in _schema_lines()
        if re.match(r"^  [a-z_]+ [A-Z]+", ln)
    ]


def sync_sql() -> str:
    """templates/sync.sql without its comment lines: the rule by which the wrapper's --sync
    brings the DB's rows in line with the state files."""
    text = (templates_dir() / "sync.sql").read_text(encoding="utf-8")
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("--"))

"""Where the templates, the schema and the profile data live, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """The templates folder: inside the installed wheel, else the checkout's top-level one."""
    for candidate in (_PACKAGE_DIR / "templates", _PACKAGE_DIR.parent / "templates"):
        if (candidate / "job_wrapper.sh.j2").is_file():
            return candidate
    raise FileNotFoundError(f"no templates folder next to {_PACKAGE_DIR}")


def schema_sql() -> str:
    """The server database schema as one line: one source for the wrapper and the deployer."""
    return " ".join((templates_dir() / "schema.sql").read_text(encoding="utf-8").split())

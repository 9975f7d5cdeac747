"""Render the job wrapper for one profile; output is byte-stable for a version and profile."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from solverpilot_deploy import __version__
from solverpilot_deploy.errors import OutputError
from solverpilot_deploy.resources import schema_sql, templates_dir

if TYPE_CHECKING:
    import jinja2

    from solverpilot_deploy.profiles import Profile

WRAPPER_TEMPLATE = "job_wrapper.sh.j2"


def shell_quote(text: str) -> str:
    """One bash word that expands to exactly ``text`` (single quotes, ' spelled '\\'')."""
    return "'" + text.replace("'", "'\\''") + "'"


def make_environment() -> jinja2.Environment:
    import jinja2  # here, not at the top: a cached render (render_cache.py) never needs it

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        # bash's ${#var} would open a Jinja comment; templates comment with {## ... ##}
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["shquote"] = shell_quote
    return env


def render_wrapper(profile: Profile) -> str:
    template = make_environment().get_template(WRAPPER_TEMPLATE)
    return template.render(version=__version__, profile=profile, schema=schema_sql())


def write_atomically(path: Path, text: str, mode: int = 0o755) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: all or nothing."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        # a short name: the output's own name may already be near the 255-byte limit
        fd, tmp = tempfile.mkstemp(prefix=".sp-render.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_output(path: Path, text: str) -> None:
    """``render -o``: a regular file (or a new one) atomically, through a symlink to its target;
    a device, fifo or socket is written directly, never renamed over; a folder is an error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"cannot write {path}: it is a folder")
    if mode is not None and not stat.S_ISREG(mode):
        try:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return
    write_atomically(path.resolve() if path.is_symlink() else path, text)

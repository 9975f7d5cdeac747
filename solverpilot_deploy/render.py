"""Render the job wrapper for one profile; output is byte-stable for a version and profile."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from solverpilot_deploy import __version__
from solverpilot_deploy.localfiles import write_file
from solverpilot_deploy.resources import (
    schema_columns,
    schema_sql,
    schema_version,
    sync_sql,
    templates_dir,
)

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
    return template.render(
        version=__version__,
        profile=profile,
        schema=schema_sql(),
        columns=schema_columns(),
        schema_version=schema_version(),
        sync_sql=sync_sql(),
    )


def write_atomically(path: Path, text: str, mode: int = 0o777) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: all or nothing
    (mode ``mode`` less the umask: an executable wrapper, 0755 under umask 022)."""
    write_file(str(path), text.encode("utf-8"), mode)


def write_output(path: Path, text: str) -> None:
    """``render -o``: a regular file (or a new one) atomically, through the user's own
    symlinks, executable as the umask allows; a device, fifo or socket is written directly,
    never renamed over; a folder is an error. A symlink, fifo or file another user planted
    in a folder every user can write (/tmp) is refused, whatever the kernel's
    protected_symlinks/protected_fifos say (localfiles.py)."""
    write_atomically(path, text)

"""A cache of rendered wrappers, so that ``sp-deploy render`` starts without Jinja2.

Importing Jinja2 costs most of ``render``'s start (about 100 ms of 145 on a 2-core VM). A
render is a pure function of its inputs, so its output is kept under a key that hashes all of
them: the tool version, this package's rendering code, and every file in the templates folder.
Any change to any of them is a new key. A cached file is named after the sha256 of its
content and checked against it when read, so a damaged entry is never served; it is just
rendered again. Any failure of the cache (read-only home, an entry another user wrote and we
cannot read, a folder where a file should be) only costs speed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from solverpilot_deploy import __version__
from solverpilot_deploy.resources import templates_dir

_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_RENDER_CODE = (
    Path(__file__).with_name("render.py"),
    Path(__file__).with_name("profiles.py"),
    Path(__file__).with_name("resources.py"),
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # unset, empty or relative: the XDG default
        base = os.path.expanduser("~/.cache")
    return Path(base) / "solverpilot-deploy"


def render_key(name: str) -> str:
    """Hash of everything the render of profile ``name`` depends on."""
    digest = hashlib.sha256(f"{__version__}\0{name}\0".encode())
    root = templates_dir()
    inputs = [*_RENDER_CODE, *sorted(p for p in root.rglob("*") if p.is_file())]
    for path in inputs:
        digest.update(str(path.relative_to(path.parents[1])).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _read_entry(folder: Path, key: str) -> str | None:
    """A sound cached render for ``key``, or None: any failure only costs a render."""
    try:
        entries = list(folder.glob(f"{key}-*.sh"))
    except OSError:
        return None
    for entry in entries:
        try:
            data = entry.read_bytes()
        except OSError:
            continue  # unreadable (another user's, a folder, a dead link): render instead
        if entry.name == f"{key}-{hashlib.sha256(data).hexdigest()}.sh":
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return None


def _render(name: str) -> str:
    from solverpilot_deploy.profiles import load_profile
    from solverpilot_deploy.render import render_wrapper

    return render_wrapper(load_profile(name))


def cached_render(name: str) -> str:
    """The wrapper for profile ``name``: from the cache when it holds a sound copy."""
    if (
        not _PROFILE_NAME.match(name)
        or not (templates_dir() / "profiles" / f"{name}.toml").is_file()
    ):
        return _render(name)  # raises the UsageError that names the known profiles
    key = render_key(name)
    folder = cache_dir()
    cached = _read_entry(folder, key)
    if cached is not None:
        return cached
    text = _render(name)
    data = text.encode("utf-8")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    except (OSError, ValueError):
        return text  # no cache, no harm: the next render renders again
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, folder / f"{key}-{hashlib.sha256(data).hexdigest()}.sh")
    except OSError:
        Path(tmp).unlink(missing_ok=True)
    return text

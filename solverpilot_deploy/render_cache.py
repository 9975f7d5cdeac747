"""A cache of rendered wrappers, so that ``sp-deploy render`` starts without Jinja2.

Importing Jinja2 costs most of ``render``'s start (about 100 ms of 145 on a 2-core VM). A
render is a pure function of its inputs, so its output is kept under a key that hashes all of
them: the tool version, this package's rendering code, and every file in the templates folder.
Any change to any of them is a new key. A cached file is named after the sha256 of its
content and checked against it when read, so a damaged entry is never served; it is just
rendered again. Any failure of the cache (read-only home, an entry another user wrote and we
cannot read, a folder where a file should be) only costs speed. A cache folder that is not
the user's, or that others can write, is neither read nor written: another user could have
put a wrapper of theirs in it under the right name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
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


def open_folder(folder: Path, create: bool) -> int | None:
    """An fd of the cache folder when it is this user's and no one else can write it (else
    another user could have put a wrapper of theirs there under the right name); None when
    it is not, or missing. Checked on the open folder itself: nothing can be swapped in."""
    try:
        if create:  # each folder made is the user's alone (XDG: 0700), whatever the umask
            missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
            for path in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    path.mkdir(mode=0o700)
                    os.chmod(path, 0o700, follow_symlinks=False)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    found = os.fstat(fd)
    if found.st_uid != os.geteuid() or found.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


def _read_entry(folder: int, key: str) -> str | None:
    """A sound cached render for ``key``, or None: any failure only costs a render."""
    try:
        entries = [n for n in os.listdir(folder) if n.startswith(f"{key}-") and n.endswith(".sh")]
    except OSError:
        return None
    for name in entries:
        data = read_entry(folder, name)
        if data is None:
            continue  # unreadable (another user's, a folder, a link): render instead
        if name == f"{key}-{hashlib.sha256(data).hexdigest()}.sh":
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return None


def read_entry(folder: int, name: str, limit: int | None = None) -> bytes | None:
    """The bytes of entry ``name`` of the open cache folder, or None: not a regular file of
    this user's (a link is not followed, a fifo not waited on), unreadable, or over ``limit``
    bytes."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder
        )
    except OSError:
        return None
    try:
        entry = os.fstat(fd)
        if not stat.S_ISREG(entry.st_mode) or entry.st_uid != os.geteuid():
            return None  # a folder (fdopen would refuse it), a device, another user's file
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if limit is None or len(data) <= limit else None


def _write_entry(folder: int, key: str, data: bytes) -> None:
    """Keep ``data`` under ``key`` (write_entry)."""
    write_entry(folder, f"{key}-{hashlib.sha256(data).hexdigest()}.sh", data)


def write_entry(folder: int, name: str, data: bytes) -> None:
    """``data`` as ``name`` in the open cache folder: a temporary file created exclusively
    (0600), then renamed; any failure leaves nothing behind (and only costs speed)."""
    tmp = f".{os.urandom(8).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=folder)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)


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
    folder = open_folder(cache_dir(), create=False)
    if folder is not None:
        try:
            cached = _read_entry(folder, key)
        finally:
            os.close(folder)
        if cached is not None:
            return cached
    text = _render(name)
    folder = open_folder(cache_dir(), create=True)
    if folder is not None:  # no cache, no harm: the next render renders again
        try:
            _write_entry(folder, key, text.encode("utf-8"))
        finally:
            os.close(folder)
    return text

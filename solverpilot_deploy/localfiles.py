"""This user's local files, written through nothing another user planted.

The kernel's protected_symlinks / protected_fifos / protected_regular rule, applied by the tool
itself whatever the machine's sysctl says: in a folder every user can write (sticky like /tmp,
or not), a symlink, fifo, device or file owned by neither this user nor root is never
followed, written into or replaced. Every symlink on the way to a path is checked so
(a path is walked one component at a time, each opened relative to its folder with O_NOFOLLOW,
so nothing can be swapped between the check and the use). A file is written to a temporary
file created exclusively (0600) beside its target, then renamed over it: a reader sees the old
file or the new one, never half of one. Errors are OutputError, one line each.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import stat

from solverpilot_deploy.errors import OutputError

_MAX_LINKS = 40  # as the kernel: more links on one path is ELOOP
_MAGIC_LINK = re.compile(r"^[a-z_]+:\[.*\]$")  # /proc/PID/fd/N of a pipe or socket
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISREG(mode):
        return "file"
    return "special file"


def check_planted(
    folder_fd: int, entry: os.stat_result, shown: str, name: str, doing: str = "write"
) -> None:
    """Refuse ``entry`` (named ``name`` in the folder ``folder_fd``) when the folder is
    writable by every user and the entry is owned by neither this user nor root: another
    user may have planted it there (the kernel's protected_* rule, a little stricter)."""
    folder = os.fstat(folder_fd)
    if not folder.st_mode & stat.S_IWOTH:
        return
    # the kernel also allows the folder owner's: here only when that is root or the user
    # (the owner of a world-writable folder of theirs could have planted it)
    if entry.st_uid in (os.geteuid(), 0):
        return
    raise OutputError(
        f"refusing to {doing} {shown}: {name} is a {_kind(entry.st_mode)} owned by "
        f"{_owner(entry.st_uid)} in a folder every user can write (it may have been planted "
        "there); remove it or choose another path"
    )


def walk(path: str, doing: str = "write") -> tuple[int, str, bool]:
    """An open fd of the folder that holds ``path``'s last component once every symlink on
    the way is followed (each checked by check_planted), that component's name, and whether
    it is a /proc "magic" link (a pipe or socket: only opening it reaches it). The caller
    closes the fd."""
    shown = path
    fd = os.open("/" if path.startswith("/") else ".", _DIR_FLAGS & ~os.O_NOFOLLOW)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    links = 0
    try:
        if not parts:
            raise OutputError(f"cannot write {shown}: it is a folder")
        while True:
            name = parts.pop(0)
            try:
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not parts:
                    return fd, name, False
                raise
            if stat.S_ISLNK(entry.st_mode):
                check_planted(fd, entry, shown, name, doing)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(name, dir_fd=fd)
                again = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if (again.st_ino, again.st_dev) != (entry.st_ino, entry.st_dev):
                    raise OutputError(f"cannot write {shown}: {name} changed while it was read")
                if not parts and _MAGIC_LINK.match(target):
                    return fd, name, True
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                if not parts:  # a link to "/" or "."
                    raise OutputError(f"cannot write {shown}: it is a folder")
                continue
            if not parts:
                return fd, name, False
            inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path``: a regular file (or a new one) atomically, mode ``mode``
    less the umask, through the user's own symlinks; a device, fifo or socket is written
    into, never renamed over; a folder is an error; what another user planted is refused."""
    try:
        fd, name, magic = walk(path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        try:
            entry: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            entry = None
        if entry is not None:
            check_planted(fd, entry, path, name)
            if stat.S_ISDIR(entry.st_mode):
                raise OutputError(f"cannot write {path}: it is a folder")
        if magic or (entry is not None and not stat.S_ISREG(entry.st_mode)):
            flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | (0 if magic else os.O_NOFOLLOW)
            out = os.open(name, flags, dir_fd=fd)
            try:
                _write_all(out, data)
            finally:
                os.close(out)
            return
        _replace(fd, name, data, mode & ~_umask())
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _replace(fd: int, name: str, data: bytes, mode: int) -> None:
    """A temporary file created exclusively in folder ``fd``, renamed over ``name``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        # a short name: the target's own name may already be near the 255-byte limit
        tmp = f".sp-{os.urandom(8).hex()}.tmp"
        try:
            out = os.open(tmp, flags, 0o600, dir_fd=fd)
            break
        except FileExistsError:
            continue
    try:
        try:
            _write_all(out, data)
            os.fsync(out)
            os.fchmod(out, mode)
        finally:
            os.close(out)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` to a regular file (created 0600, its missing folders 0700), as ssh
    adds to known_hosts; a link, fifo or file another user planted is refused."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    try:
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        fd, name, magic = walk(path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        if magic:
            raise OutputError(f"cannot write {path}: not a regular file")
        flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        try:
            out = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
        except FileExistsError:
            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            check_planted(fd, entry, path, name)
            if not stat.S_ISREG(entry.st_mode):
                raise OutputError(f"cannot write {path}: not a regular file") from None
            out = os.open(name, flags | os.O_NONBLOCK, dir_fd=fd)
        try:
            size = os.fstat(out).st_size
            if size and os.pread(out, 1, size - 1) != b"\n":
                line = "\n" + line
            _write_all(out, line.encode())
        finally:
            os.close(out)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def check_trusted(path: str | os.PathLike[str]) -> None:
    """Refuse to trust ``path`` (a file read as this user's word, e.g. known_hosts) when it
    or a symlink on the way to it was planted by another user in a folder every user can
    write, or when every user can write it. A missing file passes."""
    path = os.fspath(path)
    try:
        fd, name, magic = walk(path, "trust")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        try:
            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        check_planted(fd, entry, path, name, doing="trust")
        if not magic and entry.st_mode & stat.S_IWOTH and not stat.S_ISCHR(entry.st_mode):
            raise OutputError(f"refusing to trust {path}: every user can write it")
    finally:
        os.close(fd)


def read_start(path: str | os.PathLike[str], most: int, whole: bool = False) -> bytes:
    """The first ``most`` bytes of the file at ``path`` (links followed), never waiting on it:
    a fifo, socket or folder is refused (opened without blocking), a device read only so far
    (/dev/null is empty, /dev/zero endless). OSError (FileNotFoundError, ...), also EINVAL for
    a file of none of these kinds and, with ``whole``, EFBIG for one larger than ``most``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= most:
            chunk = os.read(fd, min(1 << 20, most + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > most and whole:
            raise OSError(errno.EFBIG, f"larger than {most} bytes")
        return b"".join(chunks)[:most]
    finally:
        os.close(fd)

"""``render -o`` and the render cache with another local user as the adversary (issue 16
item 2): in a folder every user can write, a symlink, fifo or file another user planted is
refused by sp-deploy itself, whatever the kernel's protected_symlinks/protected_fifos say
(the refusal is sp-deploy's own words, not the kernel's "Permission denied").

sp-deploy runs as root here (this venv's interpreter lives under /root, which other users
cannot enter): the planted things are the other user's, the folder's owner is root, so the
rule applies to root as to anyone; the file a link aims at is a third user's .bashrc."""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require
from sshlab import ensure_test_user, lab_user_name, run_as

SP_DEPLOY = str(Path(sys.executable).parent / "sp-deploy")
REFUSED = "a folder every user can write (it may have been planted there)"
BASHRC = "# the victim's own .bashrc\n"


@pytest.fixture(scope="module")
def users() -> tuple[pwd.struct_passwd, pwd.struct_passwd]:
    require(os.geteuid() == 0, "needs root (two local test users)")
    return ensure_test_user(lab_user_name("spvictim_")), ensure_test_user(lab_user_name("spevil_"))


@pytest.fixture
def victim(users: tuple[pwd.struct_passwd, pwd.struct_passwd]) -> Iterator[pwd.struct_passwd]:
    """The user whose .bashrc a planted link aims at."""
    user = users[0]
    home = Path(user.pw_dir)
    bashrc = home / ".bashrc"
    bashrc.write_text(BASHRC)
    os.chown(bashrc, user.pw_uid, user.pw_gid)
    yield user


@pytest.fixture
def evil(users: tuple[pwd.struct_passwd, pwd.struct_passwd]) -> pwd.struct_passwd:
    return users[1]


@pytest.fixture
def sticky() -> Iterator[Path]:
    """A folder like /tmp: sticky and writable by every user."""
    folder = Path(tempfile.mkdtemp(prefix="sp-sticky-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=True)


def as_user(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = run_as(user, *argv, timeout=60)
    return result


def render(out: Path | str, umask: str = "022") -> subprocess.CompletedProcess[str]:
    """``sp-deploy render -o OUT`` under ``umask``."""
    argv = ["sh", "-c", f'umask {umask}; exec "$@"', "sh", SP_DEPLOY]
    argv += ["render", "--distro", "debian", "-o", str(out)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def genuine() -> bytes:
    return subprocess.run(
        [SP_DEPLOY, "render", "--distro", "debian"], capture_output=True, check=True
    ).stdout


def refused(proc: subprocess.CompletedProcess[str], name: str) -> None:
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()  # one line, no traceback
    assert REFUSED in line and f"{name} is a " in line, line


def test_a_planted_symlink_is_refused(
    victim: pwd.struct_passwd, evil: pwd.struct_passwd, sticky: Path
) -> None:
    bashrc = Path(victim.pw_dir) / ".bashrc"
    mode = bashrc.stat().st_mode
    link = sticky / "wrapper.sh"
    assert as_user(evil, "ln", "-s", str(bashrc), str(link)).returncode == 0
    proc = render(link)
    refused(proc, "wrapper.sh")
    assert "symlink owned by " + evil.pw_name in proc.stderr
    assert bashrc.read_text() == BASHRC and bashrc.stat().st_mode == mode
    assert os.readlink(link) == str(bashrc)
    assert sorted(os.listdir(sticky)) == ["wrapper.sh"]  # no temporary file left


def test_a_planted_symlink_to_a_folder_on_the_way_is_refused(
    victim: pwd.struct_passwd, evil: pwd.struct_passwd, sticky: Path
) -> None:
    bashrc = Path(victim.pw_dir) / ".bashrc"
    assert as_user(evil, "ln", "-s", victim.pw_dir, str(sticky / "out")).returncode == 0
    refused(render(sticky / "out" / ".bashrc"), "out")
    assert bashrc.read_text() == BASHRC


def test_a_planted_fifo_is_refused_and_never_written(evil: pwd.struct_passwd, sticky: Path) -> None:
    fifo = sticky / "wrapper.sh"
    assert as_user(evil, "mkfifo", "-m", "666", str(fifo)).returncode == 0
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that a writer would not block
    try:
        refused(render(fifo), "wrapper.sh")
        assert os.read(reader, 65536) == b""  # nothing was written into it
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_planted_file_is_refused(evil: pwd.struct_passwd, sticky: Path) -> None:
    planted = sticky / "wrapper.sh"
    assert as_user(evil, "sh", "-c", f"echo evil > {planted}; chmod 666 {planted}").returncode == 0
    refused(render(planted), "wrapper.sh")
    assert planted.read_text() == "evil\n"


def test_the_users_own_link_is_followed_and_the_mode_follows_the_umask(
    sticky: Path, tmp_path: Path
) -> None:
    target = tmp_path / "bin" / "job_wrapper.sh"
    target.parent.mkdir()
    link = sticky / "mine.sh"
    link.symlink_to(target)
    proc = render(link)
    assert proc.returncode == 0, proc
    assert target.read_bytes() == genuine()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # a wrapper is executable
    assert link.is_symlink()  # replaced behind the link, not the link itself
    assert sorted(os.listdir(target.parent)) == ["job_wrapper.sh"]
    before = target.stat().st_ino
    proc = render(link, umask="077")
    assert proc.returncode == 0, proc
    assert stat.S_IMODE(target.stat().st_mode) == 0o700  # no wider than the umask allows
    assert target.stat().st_ino != before  # a new file renamed over: never half a file


def test_a_new_file_in_a_sticky_folder(sticky: Path) -> None:
    out = sticky / "new.sh"
    proc = render(out)
    assert proc.returncode == 0, proc
    assert out.read_bytes() == genuine()
    assert sorted(os.listdir(sticky)) == ["new.sh"]


def test_a_cache_folder_another_user_can_write_is_not_trusted(
    evil: pwd.struct_passwd, sticky: Path
) -> None:
    """XDG_CACHE_HOME under /tmp: another user made the cache folder first and put a wrapper
    of theirs in it, named as the cache names the genuine one."""
    from solverpilot_deploy.render_cache import render_key

    folder = sticky / "cache" / "solverpilot-deploy"
    fake = b"#!/bin/bash\necho evil\n"
    name = f"{render_key('debian')}-{hashlib.sha256(fake).hexdigest()}.sh"
    script = f"mkdir -p -m 777 {folder} && chmod 777 {folder.parent} && cat > {folder / name}"
    assert run_as(evil, "sh", "-c", script, input=fake.decode()).returncode == 0
    env = {**os.environ, "XDG_CACHE_HOME": str(sticky / "cache")}
    argv = [SP_DEPLOY, "render", "--distro", "debian"]
    proc = subprocess.run(argv, capture_output=True, env=env, check=False)
    assert proc.returncode == 0 and proc.stdout == genuine(), proc.stdout[:80]
    assert os.listdir(folder) == [name]  # nor written into


def test_a_link_in_a_world_writable_folder_of_another_user_is_refused(
    victim: pwd.struct_passwd, evil: pwd.struct_passwd
) -> None:
    """Not sticky, and owned by the other user: the kernel would follow the owner's link."""
    folder = Path(tempfile.mkdtemp(prefix="sp-open-", dir="/tmp"))
    try:
        os.chown(folder, evil.pw_uid, evil.pw_gid)
        folder.chmod(0o777)
        bashrc = Path(victim.pw_dir) / ".bashrc"
        assert as_user(evil, "ln", "-s", str(bashrc), str(folder / "w.sh")).returncode == 0
        refused(render(folder / "w.sh"), "w.sh")
        assert bashrc.read_text() == BASHRC
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=True)

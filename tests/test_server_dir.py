"""The server folder is the user's alone (issue 16, item 1), through real sshd, tmux and a
second local user: every command refuses a folder another user owns or can write, push makes
the user's own folders 0700, and what a run creates is 0700 (folders) or 0600 (files)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, error_text, poll, require, sp, sp_json
from sshlab import USER_SUFFIX, ensure_test_user, run_as

from solverpilot_deploy.filesystems import server_dir_warning
from solverpilot_deploy.remote import parse_framed, step_script

SERVER = ".solverpilot-server"
EVIL = f"spevil_{USER_SUFFIX}" if USER_SUFFIX else "spevil"


def connect(lab: Lab, trusted: Path) -> tuple[str, ...]:
    return ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "60")


@pytest.fixture(scope="module")
def evil(lab: Lab) -> pwd.struct_passwd:
    """The other local user: the adversary."""
    return ensure_test_user(EVIL, "/usr/sbin/nologin")


@pytest.fixture
def pushed(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> Iterator[Path]:
    """Host a with the wrapper pushed, and no tmux server of its user (a run starts one)."""
    require(bool(shutil.which("tmux")), "needs tmux (Debian package tmux)")
    run_as(lab.user, "tmux", "kill-server")
    code, results = sp_json(capsys, "push", lab.a.spec, *connect(lab, trusted))
    assert code == 0, results
    yield home
    run_as(lab.user, "tmux", "kill-server")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_every_command_refuses_a_server_folder_another_user_made_first(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    pushed: Path,
    trusted: Path,
    evil: pwd.struct_passwd,
) -> None:
    server = pushed / SERVER
    shutil.rmtree(server)
    server.mkdir()
    os.chown(server, evil.pw_uid, evil.pw_gid)
    server.chmod(0o777)
    said = f"~/{SERVER} is owned by uid {evil.pw_uid}, not by uid {lab.user.pw_uid}"
    ran = server / "ran"
    for argv in (
        ("status",),
        ("run", "--id", "job-squat"),
        ("cancel", "job-squat"),
        ("logs", "job-squat"),
    ):
        extra = ("--", "touch", str(ran)) if argv[0] == "run" else ()
        code, out, err = sp(capsys, argv[0], lab.a.spec, *argv[1:], *connect(lab, trusted), *extra)
        assert code == 1, (argv, out, err)
        assert "unsafe server folder: " in err and said in err, (argv, err)
        assert "mkdir -m 700" in err
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in server.iterdir()) == []  # nothing written, nothing ran
    # push refuses it before installing anything: the wrapper would refuse every job
    code, results = sp_json(capsys, "push", lab.a.spec, *connect(lab, trusted))
    assert code == 1
    error = str(error_text(results[0]))
    assert error.startswith("unsafe server folder: ") and said in error, error
    assert list(server.iterdir()) == []


def test_a_subfolder_another_user_owns_or_a_symlinked_one_is_refused(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    pushed: Path,
    trusted: Path,
    evil: pwd.struct_passwd,
) -> None:
    logs = pushed / SERVER / "logs"
    logs.mkdir(exist_ok=True)
    os.chown(logs, evil.pw_uid, evil.pw_gid)
    code, _, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted))
    assert code == 1
    assert f"unsafe server folder: ~/{SERVER}/logs is owned by uid {evil.pw_uid}" in err, err
    logs.rmdir()
    elsewhere = pushed / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    shutil.chown(elsewhere, lab.user.pw_uid, lab.user.pw_gid)
    logs.symlink_to(elsewhere)
    os.lchown(logs, lab.user.pw_uid, lab.user.pw_gid)
    code, _, err = sp(capsys, "logs", lab.a.spec, "job-x", *connect(lab, trusted))
    assert code == 1
    assert f"unsafe server folder: ~/{SERVER}/logs is a symbolic link" in err, err
    shutil.rmtree(elsewhere)


def test_own_folders_others_can_write_are_refused_until_push_makes_them_0700(
    capsys: pytest.CaptureFixture[str], lab: Lab, pushed: Path, trusted: Path
) -> None:
    server = pushed / SERVER
    jobs = server / "jobs"
    jobs.mkdir(exist_ok=True)
    shutil.chown(jobs, lab.user.pw_uid, lab.user.pw_gid)
    server.chmod(0o775)  # an older version under umask 002
    jobs.chmod(0o777)
    code, _, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted))
    assert code == 1
    assert f"unsafe server folder: ~/{SERVER} can be written by group or others" in err, err
    code, results = sp_json(capsys, "push", lab.a.spec, *connect(lab, trusted))
    assert code == 0, results
    assert results[0]["status"] == "unchanged"
    warnings = "\n".join(results[0]["warnings"])  # type: ignore[arg-type]
    assert f"made ~/{SERVER} 0700 (it was drwxrwxr-x" in warnings, warnings
    assert f"made ~/{SERVER}/jobs 0700 (it was drwxrwxrwx" in warnings, warnings
    assert (mode(server), mode(jobs)) == (0o700, 0o700)
    code, _, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted))
    assert code == 0, err
    # verify only says so
    server.chmod(0o755)
    code, results = sp_json(capsys, "verify", lab.a.spec, *connect(lab, trusted))
    assert code == 0, results
    assert any("push makes them 0700" in str(w) for w in results[0]["warnings"])  # type: ignore[union-attr]
    assert mode(server) == 0o755


def test_what_push_and_a_run_create_is_the_users_alone_and_the_job_keeps_the_login_umask(
    capsys: pytest.CaptureFixture[str], lab: Lab, pushed: Path, trusted: Path
) -> None:
    server = pushed / SERVER
    assert (mode(server), mode(server / "server.db")) == (0o700, 0o600)
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "job-modes", *connect(lab, trusted),
        "--", "sh", "-c", "umask",
    )  # fmt: skip
    assert code == 0, err
    state = server / "jobs" / "job-modes.status"
    poll(lambda: '"completed"' in state.read_text(), 20, "the job's end")
    poll(lambda: not (server / "run" / "job-modes").exists(), 20, "the run folder's removal")
    # the wrapper's last act (--advance ID: its row's name and queue, from the spec) is done
    done = ("pgrep", "-u", lab.user.pw_name, "-f", "job_wrapper.sh --advance")
    poll(
        lambda: (server / "locks/queues.lock").exists() and run_as(lab.user, *done).returncode == 1,
        20,
        "--advance",
    )
    log = server / "logs" / "job-modes.log"
    found = {
        p.relative_to(server).as_posix(): oct(mode(p))
        for p in (server, *server.rglob("*"))
        if p.name not in ("scratch",)
    }
    assert found == {
        ".": oct(0o700),
        "server.db": oct(0o600),
        "jobs": oct(0o700),
        "jobs/job-modes.status": oct(0o600),
        "jobs/job-modes.spec": oct(0o600),
        "locks": oct(0o700),
        "locks/job-modes.lock": oct(0o600),
        "locks/queues.lock": oct(0o600),
        "logs": oct(0o700),
        "logs/job-modes.log": oct(0o600),
        "run": oct(0o700),
    }
    # the login's umask (sshd's, 022 here), not the steps' own 077
    login = run_as(lab.user, "sh", "-c", "umask").stdout.strip()
    assert login == "0022"
    poll(lambda: "0022" in log.read_text(), 10, "the job's umask in its log")


def test_the_shared_filesystem_warning_recommends_no_folder_another_user_can_take_first() -> None:
    warning = server_dir_warning("/home/u/.solverpilot-server", "6969 nfs")
    assert warning is not None
    assert "/var/tmp/$USER/" not in warning and "mkdir -p" not in warning
    assert "mkdir -m 700" in warning and "without -p" in warning
    assert "refuses a folder another user owns or can write" in warning


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A private folder outside /tmp (the test hides /tmp)."""
    folder = Path(tempfile.mkdtemp(prefix="sp-test-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_probe_never_uses_a_fixed_name_in_tmp(outside_tmp: Path) -> None:
    """Without mktemp, the probe's flock check used /tmp/.sp-probe.PID, a name another user can
    plant a link at first; now it creates its file anew in the home. Shown with a /tmp no one
    can write (an empty read-only tmpfs over it): the check still works, nothing is left."""
    require(os.geteuid() == 0 and bool(shutil.which("unshare")), "needs root and unshare")
    tools = outside_tmp / "bin"  # the probe's tools, mktemp left out
    tools.mkdir()
    for tool in ("sh", "sed", "tr", "cat", "cut", "ls", "id", "rm", "flock", "setsid", "stat",
                 "tail", "sqlite3", "sha256sum"):  # fmt: skip
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    home = outside_tmp / "home"
    home.mkdir()
    result = subprocess.run(
        [str(shutil.which("unshare")), "--mount", "/bin/sh", "-c",
         f'{shutil.which("mount")} -t tmpfs -o ro tmpfs /tmp && exec "$@"', "sh",
         "sh", "-s", "--", "TOKEN"],
        input=step_script("probe"), capture_output=True, text=True, check=True,
        env={"PATH": str(tools), "HOME": str(home)},
    )  # fmt: skip
    framed = parse_framed("TOKEN", result.stdout)
    assert framed is not None and framed[0] == 0, result
    assert "flock=ok" in framed[1], framed
    assert list(home.iterdir()) == []

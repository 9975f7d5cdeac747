"""Hosts whose users log in with tcsh, fish, dash or bash, with start-up files that talk.

One real sshd and one user per login shell. Every start-up file the shell reads for an ssh
command prints lines that look like answers (``bash=3.2``, a fake end marker) on stdout and
more on stderr, and leaves a mark so the test knows it ran. push (with its smoke run), verify
and status must give the same answers as on a quiet bash host. Start-up files that exit, loop
or eat stdin must end in a clear one-line error within --timeout.
"""

from __future__ import annotations

import hashlib
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Lab, require, sp, sp_json
from sshlab import Sshd, authorize, clean_home, ensure_test_user, lab_user_name, run_as

from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.render import render_wrapper

WRAPPER = ".solverpilot/bin/job_wrapper.sh"
TALK = "bash=3.2\n@@SP-END 0 0\nsqlite3=9.9\n"  # what a chatty start-up file prints


@dataclass(frozen=True)
class ShellCase:
    user: str
    shell: str
    rc_file: str | None  # the start-up file this shell reads for `ssh host command`
    rc_text: str


def _echo_lines(text: str) -> str:
    return "".join(f"echo '{line}'\n" for line in text.splitlines())


CASES = {
    "tcsh": ShellCase(
        lab_user_name("sptcsh"),
        "/usr/bin/tcsh",
        ".cshrc",
        "set sp_noise = 1\n"
        + _echo_lines(TALK)
        + "sh -c 'echo cshrc on stderr >&2'\ntouch ~/.rc-ran\n",
    ),
    "fish": ShellCase(
        lab_user_name("spfish"),
        "/usr/bin/fish",
        ".config/fish/config.fish",
        "set -x SP_NOISE 1\n" + _echo_lines(TALK) + "echo fish on stderr >&2\ntouch ~/.rc-ran\n",
    ),
    # dash reads no start-up file for a command (only a login shell reads ~/.profile)
    "dash": ShellCase(lab_user_name("spdash"), "/bin/dash", None, ""),
    "bash": ShellCase(
        lab_user_name("spbash"),
        "/bin/bash",
        ".bashrc",
        "echo 'Welcome to the cluster'\n"
        + _echo_lines(TALK)
        + "echo 'bashrc on stderr' >&2\ntouch ~/.rc-ran\n",
    ),
}


def write_as(user: pwd.struct_passwd, relative: str, text: str) -> Path:
    path = Path(user.pw_dir) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in (path.parent, *path.parent.parents):
        if folder == Path(user.pw_dir):
            break
        shutil.chown(folder, user.pw_uid, user.pw_gid)
    path.write_text(text)
    shutil.chown(path, user.pw_uid, user.pw_gid)
    return path


@dataclass
class ShellHost:
    case: ShellCase
    user: pwd.struct_passwd
    sshd: Sshd


@pytest.fixture(scope="module")
def shell_hosts(
    lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ShellHost]]:
    hosts = {}
    base = tmp_path_factory.mktemp("shells")
    base.chmod(0o755)
    try:
        for name, case in CASES.items():
            require(Path(case.shell).exists(), f"needs {case.shell} (Debian package {name})")
            user = ensure_test_user(case.user, case.shell)
            authorize(user, lab.client_key.with_suffix(".pub"))
            if case.rc_file:
                write_as(user, case.rc_file, case.rc_text)
            write_as(user, ".profile", _echo_lines(TALK))
            # sqlite3 reads it for every command not started with -init
            write_as(user, ".sqliterc", ".headers on\n.mode line\n")
            hosts[name] = ShellHost(case, user, Sshd(base / name, case.user).start())
        yield hosts
    finally:
        for host in hosts.values():
            host.sshd.stop()
            clean_home(host.user)


def connect(lab: Lab, trusted: Path) -> tuple[str, ...]:
    return ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "30")


@pytest.mark.parametrize("shell", list(CASES))
def test_push_verify_status_and_smoke_through_each_login_shell(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    shell_hosts: dict[str, ShellHost],
    known_hosts: Path,
    shell: str,
) -> None:
    host = shell_hosts[shell]
    home = Path(host.user.pw_dir)
    assert pwd.getpwnam(host.user.pw_name).pw_shell == host.case.shell
    clean_home(host.user)
    (home / ".rc-ran").unlink(missing_ok=True)
    known_hosts.write_text(host.sshd.known_hosts_line)
    code, results = sp_json(capsys, "push", host.sshd.spec, *connect(lab, known_hosts))
    assert code == 0, results[0]["error"]
    assert results[0]["status"] == "deployed"  # and so its smoke run completed
    assert results[0]["distro"] == "debian"
    assert results[0]["warnings"] == []  # sqlite3=9.9 from the rc file was not read
    assert (home / WRAPPER).is_file()
    # the start-up file really ran, and really talked, on both streams
    assert (home / ".rc-ran").exists() == (host.case.rc_file is not None)
    if host.case.rc_file:
        talk = subprocess.run(
            ["ssh", "-i", str(lab.client_key), "-o", f"UserKnownHostsFile={known_hosts}",
             "-o", "BatchMode=yes", "-p", str(host.sshd.port), f"{host.user.pw_name}@127.0.0.1",
             "true"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "bash=3.2" in talk.stdout and "on stderr" in talk.stderr
    code, results = sp_json(capsys, "verify", host.sshd.spec, *connect(lab, known_hosts))
    assert code == 0 and results[0]["status"] == "ok", results
    assert run_as(host.user, str(home / WRAPPER), "job-a", "sh", "-c", "exit 4").returncode == 4
    assert run_as(host.user, str(home / WRAPPER), "job-b", "true").returncode == 0
    code, jobs = sp_json(capsys, "status", host.sshd.spec, *connect(lab, known_hosts))
    assert code == 0
    assert sorted((j["id"], j["status"], j["exit_code"]) for j in jobs) == [
        ("job-a", "failed", 4),
        ("job-b", "completed", 0),
    ]


HOSTILE = {
    "exits": "exit 7\n",
    "eats stdin": "cat >/dev/null\n",
    "loops": "while :; do :; done\n",
    "floods": "yes 'wrapper=0000'\n",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_start_up_file_that_exits_loops_or_eats_stdin_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    shell_hosts: dict[str, ShellHost],
    known_hosts: Path,
    kind: str,
) -> None:
    host = shell_hosts["bash"]
    home = Path(host.user.pw_dir)
    clean_home(host.user)
    known_hosts.write_text(host.sshd.known_hosts_line)
    args = ("-i", str(lab.client_key), "--known-hosts", str(known_hosts), "--timeout", "4")
    write_as(host.user, ".bashrc", HOSTILE[kind])
    try:
        # the command may end before or after sp-deploy has sent the script: try both, often
        tries = 1 if kind in ("loops", "floods") else 8
        for command in ("push", "status") * tries:
            start = time.monotonic()
            code, out, err = sp(capsys, command, host.sshd.spec, *args)
            took = time.monotonic() - start
            assert code == 1, (command, out, err)
            assert "Traceback" not in err
            expected = {
                "loops": ("timeout: ",),
                "floods": ("timeout: ", "remote command failed: "),  # time or size runs out
            }.get(kind, ("remote command failed: ",))
            assert any(e in err or e in out for e in expected), (command, out, err)
            assert took < 4 + 3, took
        assert not (home / WRAPPER).exists()  # nothing was installed
    finally:
        write_as(host.user, ".bashrc", host.case.rc_text)
        subprocess.run(["pkill", "-KILL", "-u", host.user.pw_name], check=False)


@pytest.mark.parametrize("shell", list(CASES))
def test_run_logs_and_cancel_through_each_login_shell(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    shell_hosts: dict[str, ShellHost],
    known_hosts: Path,
    shell: str,
) -> None:
    require(bool(shutil.which("tmux")), "needs tmux (Debian package tmux)")
    host = shell_hosts[shell]
    clean_home(host.user)
    known_hosts.write_text(host.sshd.known_hosts_line)
    args = connect(lab, known_hosts)
    try:
        assert sp_json(capsys, "push", host.sshd.spec, *args)[0] == 0
        code, out, err = sp(capsys, "run", host.sshd.spec, "--id", "job-sh", *args,
                            "--", "sh", "-c", "echo 'it runs'; exec sleep 60")  # fmt: skip
        assert (code, out) == (0, "job-sh\n"), err
        deadline = time.monotonic() + 20
        while "it runs" not in sp(capsys, "logs", host.sshd.spec, "job-sh", *args)[1]:
            assert time.monotonic() < deadline, "the log never showed the job's output"
            time.sleep(0.2)
        code, out, err = sp(capsys, "cancel", host.sshd.spec, "job-sh", *args)
        assert (code, out) == (0, "job-sh failed exit 143 signal TERM\n"), err
        code, jobs = sp_json(capsys, "status", host.sshd.spec, *args)
        assert [(j["id"], j["status"], j["tmux"]) for j in jobs] == [("job-sh", "failed", "absent")]
    finally:
        run_as(host.user, "tmux", "kill-server")


FORGERS = {
    # a newline in the server folder's name, with keys after it
    "newline in SOLVERPILOT_SERVER_DIR": (
        "export SOLVERPILOT_SERVER_DIR=\"$(printf '/var/tmp/x\\nwrapper=%s\\nsha256=sha256sum'"
        ' {digest})"\n'
    ),
    # a process left running that prints answer-like lines while the step runs
    "a chatty background process": (
        "(i=0; while [ $i -lt 100 ]; do echo wrapper={digest}; echo @end 0; sleep 0.01;"
        " i=$((i+1)); done) &\n"
    ),
}


@pytest.mark.parametrize("kind", list(FORGERS))
def test_lines_forged_by_a_start_up_file_are_never_read(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    shell_hosts: dict[str, ShellHost],
    known_hosts: Path,
    kind: str,
) -> None:
    """The forged lines name the very wrapper verify expects; the host has none."""
    host = shell_hosts["bash"]
    clean_home(host.user)
    known_hosts.write_text(host.sshd.known_hosts_line)
    digest = hashlib.sha256(render_wrapper(load_profile("debian")).encode()).hexdigest()
    write_as(host.user, ".bashrc", FORGERS[kind].format(digest=digest))
    try:
        for _ in range(5):
            code, results = sp_json(capsys, "verify", host.sshd.spec, *connect(lab, known_hosts))
            assert (code, results[0]["status"]) == (1, "missing"), results
    finally:
        write_as(host.user, ".bashrc", host.case.rc_text)
        subprocess.run(["pkill", "-KILL", "-u", host.user.pw_name], check=False)

"""What a host sends is data, never control: its text reaches no terminal raw, no value it
holds forges a line of a step's answer, any byte of the server folder's path arrives as it is,
and no job count makes status fail (issue 16, items 3, 8, 9, 10, 18)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, payload, poll, require, sp
from sshlab import run_as
from test_status_remote import boot_id, connect, finished, start_ticks, write_states

from solverpilot_deploy.deploy import _schema_line
from solverpilot_deploy.errors import RemoteCommandError
from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.remote import parse_framed, step_script, with_payload, with_token
from solverpilot_deploy.render import render_wrapper
from solverpilot_deploy.safe import printable
from solverpilot_deploy.ssh import MAX_ANSWER
from solverpilot_deploy.status import JOB_ID, NOT_ID_CHARS
from solverpilot_deploy.transport import Answer

SERVER = ".solverpilot-server"
DEBIAN_TEXT = render_wrapper(load_profile("debian"))
DEBIAN_SHA = hashlib.sha256(DEBIAN_TEXT.encode()).hexdigest()
# what a hostile host would print: a clipboard write (OSC 52), a title, a screen clear, a C1
# CSI (one byte, U+009B), a bidi override that reorders what follows on the screen
OSC52 = "\x1b]52;c;cHduZWQ=\x07"
NASTY = f"{OSC52}\x1b]0;title\x07\x1b[2J\x9b31m\u202e"
# a terminal acts on these; none may reach it from a host
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def no_raw_control(text: str) -> bool:
    return RAW_CONTROL.search(text) is None


@pytest.fixture
def live(lab: Lab) -> Iterator[dict[str, object]]:
    """The state of a job that runs: a live process of the user, its start ticks, this boot."""
    user = lab.user
    sleeper = subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "sleep", "120"]
    )  # fmt: skip
    try:
        yield {
            "status": "running",
            "started_at": "2026-01-01T00:00:00+00:00",
            "user": user.pw_name,
            "pid": sleeper.pid,
            "start_ticks": start_ticks(sleeper.pid),
            "boot_id": boot_id(),
        }
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- item 3: host text is made safe before a table or message prints it ----


def test_printable_shows_every_control_as_a_visible_escape() -> None:
    assert printable("plain text, é, 日本, a\u00a0b") == "plain text, é, 日本, a\u00a0b"
    shown = printable(NASTY + "\t\n\x7f\x00\u2028\U000e0001")
    assert no_raw_control(shown) and shown.isprintable()
    assert shown == (
        "\\x1b]52;c;cHduZWQ=\\x07\\x1b]0;title\\x07\\x1b[2J\\x9b31m\\u202e"
        "\\x09\\x0a\\x7f\\x00\\u2028\\U000e0001"
    )
    # JSON output escapes them itself: C1 and DEL too (ensure_ascii, the default)
    assert json.dumps(NASTY + "\x7f").isascii()
    assert json.loads(json.dumps(NASTY)) == NASTY


def test_status_prints_a_hostile_state_and_db_row_safely(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    server = home / SERVER
    evil = {
        **finished("evil", lab.user.pw_name),
        "status": f"failed{NASTY}",
        "signal": NASTY,
        "started_at": NASTY,
        "completed_at": NASTY,
    }
    write_states(server, {"evil": evil, "fine": finished("fine", lab.user.pw_name)}, None)
    with sqlite3.connect(server / "server.db") as db:  # DB-only rows, every column hostile
        db.execute(
            "INSERT INTO jobs (id, status, started_at, completed_at, exit_code) "
            "VALUES (?, ?, ?, ?, ?)",
            ("dbonly", f"failed{NASTY}", NASTY, NASTY, NASTY),
        )
        db.execute("INSERT INTO jobs (id, status) VALUES (?, 'completed')", (f"x{OSC52}",))
    subprocess.run(["chown", "-R", f"{lab.user.pw_uid}:{lab.user.pw_gid}", server], check=True)

    code, out, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted))
    assert code == 0 and no_raw_control(out) and no_raw_control(err), repr(out)
    code, out, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted), "--wide")
    assert code == 0, err
    assert no_raw_control(out) and no_raw_control(err), repr(out)
    assert "\\x1b]52;c;cHduZWQ=\\x07" in out  # shown, visibly
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    # a DB id outside the id rule: "unreadable", like a state file's name, its bytes as "?"
    assert rows["x??52?c?cHduZWQ??"].split()[2] == "unreadable"  # (ID NAME STATUS...)
    assert rows["fine"].split()[2] == "completed"

    code, out, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted), "--json")
    assert code == 0 and out.isascii() and no_raw_control(out)
    jobs = {job["id"]: job for job in payload(out)}
    assert (jobs["evil"]["signal"], jobs["evil"]["started_at"]) == (NASTY, NASTY)
    assert jobs["dbonly"]["status"] == f"failed{NASTY}"
    assert jobs["dbonly"]["started_at"] == NASTY
    assert jobs["x??52?c?cHduZWQ??"]["status"] == "unreadable"


def test_cancel_of_a_hostile_ended_job_prints_it_safely(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    state = {**finished("ended", lab.user.pw_name), "status": f"completed{NASTY}"}
    state["signal"] = NASTY
    write_states(home / SERVER, {"ended": state}, lab.user.pw_uid)
    code, out, err = sp(capsys, "cancel", lab.a.spec, "ended", *connect(lab, trusted))
    assert code == 0, err
    assert "had already ended" in out
    assert no_raw_control(out) and no_raw_control(err), repr(out)
    assert "signal \\x1b]52;c;" in out


@pytest.mark.parametrize(
    "text",
    ['{"status":"completed","exit_code":NaN,"wall_s":1e999}', "[" * 30000, '{"status":-Infinity}'],
    ids=["nan-and-huge", "nested-too-deep", "infinity"],
)
def test_cancel_of_a_state_file_python_cannot_print_as_json_is_unreadable_not_a_crash(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, text: str
) -> None:
    """NaN, 1e999 and -Infinity are no JSON (Python reads them and prints them back bare), and a
    state nested 30,000 deep ends Python's parser: cancel --json prints valid JSON, never a
    traceback, and status and cancel agree that such a state is no record."""
    write_states(home / SERVER, {"odd": finished("odd", lab.user.pw_name)}, lab.user.pw_uid)
    (home / SERVER / "jobs" / "odd.status").write_text(text + "\n")
    _, out, err = sp(capsys, "cancel", lab.a.spec, "odd", "--json", *connect(lab, trusted))
    assert "Traceback" not in err and "internal error" not in err, err
    if out:
        json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in {out!r}"))
    _, out, _ = sp(capsys, "status", lab.a.spec, "odd", "--json", *connect(lab, trusted))
    (job,) = payload(out)
    assert job["status"] == "unreadable", out


def test_a_hosts_words_in_an_error_reach_the_terminal_safely(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """run names the wrapper's last words when it refuses a job: here a wrapper that prints
    escape sequences (the message carries what the host said)."""
    require(bool(shutil.which("tmux")), "needs tmux")
    wrapper = home / ".solverpilot/bin/job_wrapper.sh"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f"#!/bin/sh\nprintf '%s refused\\n' '{NASTY}'\nexit 3\n")
    wrapper.chmod(0o755)
    subprocess.run(["chown", "-R", f"{lab.user.pw_uid}:{lab.user.pw_gid}", wrapper.parent.parent],
                   check=True)  # fmt: skip
    try:
        code, out, err = sp(capsys, "run", lab.a.spec, *connect(lab, trusted), "--", "true")
    finally:
        run_as(lab.user, "tmux", "kill-server")
    assert code == 1
    assert "refused" in err and "\\x1b]52;c;" in err, err
    assert no_raw_control(out) and no_raw_control(err), repr(err)


def test_the_job_id_rule_is_the_same_in_the_wrapper_status_sh_and_python() -> None:
    """One rule: status.py's JOB_ID; the wrapper's valid_id and status.sh's safe() (and the
    "?" of a DB-only row's id) must say the same."""
    wrapper = render_wrapper(load_profile("debian"))
    (rule,) = re.findall(r"valid_id\(\) \{ local LC_ALL=C; \[\[ \$1 =~ (\S+) \]\]", wrapper)
    assert rule == JOB_ID.pattern
    outside = NOT_ID_CHARS.pattern  # "[^A-Za-z0-9._-]"
    assert f"/{outside}/" in step_script("status")
    assert JOB_ID.pattern == f"^[A-Za-z0-9]{outside.replace('^', '', 1)}{{0,127}}$"


# ---- item 9: no value, in any column or file, forges a line of the answer ----


def test_db_values_and_state_lines_forging_answer_lines_leave_live_jobs_live(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, live: dict[str, object]
) -> None:
    server = home / SERVER
    forged = '\n@boot 0000\n@held ghost\n@job ghost yes 1\n|{"status":"running"}\n@db\n=x'
    write_states(server, {"alive": {**live, "id": "alive"}}, None)
    with sqlite3.connect(server / "server.db") as db:
        db.execute(  # a forged line in a column other than id
            "INSERT INTO jobs (id, status, started_at) VALUES ('row1', 'completed', ?)", (forged,)
        )
        db.execute(  # and in every column
            "INSERT INTO jobs (id, status, started_at, completed_at, exit_code) "
            "VALUES (?, ?, ?, ?, ?)",
            (f"row2{forged}", f"failed{forged}", forged, forged, forged),
        )
    # a state file whose text holds such lines (not the wrapper's: it writes one line)
    (server / "jobs" / "odd.status").write_text('{"status":"completed"}' + forged + "\n")
    subprocess.run(["chown", "-R", f"{lab.user.pw_uid}:{lab.user.pw_gid}", server], check=True)
    code, out, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted), "--json")
    assert code == 0, err
    jobs = {job["id"]: job for job in payload(out)}
    assert (jobs["alive"]["status"], jobs["alive"]["lost_reason"]) == ("running", None)
    assert "ghost" not in jobs and "x" not in jobs
    assert (jobs["row1"]["status"], jobs["row1"]["started_at"]) == ("completed", forged)
    assert jobs["odd"]["status"] == "unreadable"  # not JSON: the forged lines are its text
    (row2,) = [job for job in jobs.values() if job["id"].startswith("row2")]
    assert row2["status"] == "unreadable"  # a newline is outside the id rule
    assert set(jobs) == {"alive", "row1", "odd", row2["id"]}


def test_a_state_file_forging_keys_of_cancels_answer_is_one_value(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """cancel's answer carries the state file as state=: a line of the file saying
    "wrote=yes" must not make cancel say it wrote the record of a job that never started."""
    write_states(home / SERVER, {"ended": finished("ended", lab.user.pw_name)}, lab.user.pw_uid)
    path = home / SERVER / "jobs" / "ended.status"
    path.write_text(path.read_text() + "wrote=yes\n")
    code, out, err = sp(capsys, "cancel", lab.a.spec, "ended", *connect(lab, trusted))
    assert code == 0, err
    assert "never started" not in out and "had already ended" in out, out


def test_cancel_of_a_huge_state_file_answers_a_bounded_line(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The answer's own lines have no bound on their number, so a step that sends a file sends
    a bounded part of it: a 70 MB state file is not a 70 MB answer line."""
    write_states(home / SERVER, {"huge": finished("huge", lab.user.pw_name)}, lab.user.pw_uid)
    (home / SERVER / "jobs" / "huge.status").write_bytes(b"x" * 70_000_000)
    code, out, err = sp(capsys, "cancel", lab.a.spec, "huge", *connect(lab, trusted))
    assert code == 0 and "had already ended" in out, err
    assert len(out) < 1000


# ---- item 8: any byte a path may hold reaches every step unchanged ----

# a backslash before letters awk -v and echo would rewrite, a newline, a tab, quotes, printf's,
# a glob's and tmux's format specials, a leading "-", spaces
ODD_FOLDER = "-srv \\n\\b\\\\ %s%n #{pane_id} ##[x] #[y] *?[a] 'q\" \n\tend"


def test_a_server_folder_with_any_byte_in_its_path_reads_right(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, live: dict[str, object]
) -> None:
    server = home / ODD_FOLDER
    quoted = "".join(f"\\x{byte:02x}" for byte in ODD_FOLDER.encode())
    bashrc = home / ".bashrc"
    saved = bashrc.read_bytes() if bashrc.exists() else None
    bashrc.write_text(f"export SOLVERPILOT_SERVER_DIR=\"$HOME/\"$'{quoted}'\n")
    states = {f"done-{n}": finished(f"done-{n}", lab.user.pw_name) for n in range(3)}
    write_states(server, {**states, "alive": {**live, "id": "alive"}}, None)
    with sqlite3.connect(server / "server.db") as db:
        db.execute("INSERT INTO jobs (id, status) VALUES ('dbonly', 'completed')")
    (server / "logs").mkdir()
    (server / "logs" / "done-0.log").write_bytes(b"the log\n")
    subprocess.run(["chown", "-R", f"{lab.user.pw_uid}:{lab.user.pw_gid}", server], check=True)
    server.chmod(0o700)
    try:
        code, out, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted), "--json")
        assert code == 0, err
        assert {j["id"]: j["status"] for j in payload(out)} == {
            **{job_id: "completed" for job_id in states},
            "alive": "running",
            "dbonly": "completed",
        }
        code, out, err = sp(capsys, "logs", lab.a.spec, "done-0", *connect(lab, trusted))
        assert (code, out) == (0, "the log\n"), err
        code, out, err = sp(capsys, "cancel", lab.a.spec, "done-1", *connect(lab, trusted))
        assert code == 0 and "had already ended" in out, err
        if shutil.which("tmux"):  # and a job run there: its state, DB row and log land there
            code, out, err = sp(capsys, "push", lab.a.spec, *connect(lab, trusted))
            assert code == 0, out + err
            code, out, err = sp(capsys, "run", lab.a.spec, "--id", "new", *connect(lab, trusted),
                                "--", "sh", "-c", "echo ran here")  # fmt: skip
            assert code == 0, err
            poll(lambda: json.loads((server / "jobs/new.status").read_text())["status"]
                 == "completed", 30, "the job's end")  # fmt: skip
            code, out, err = sp(capsys, "logs", lab.a.spec, "new", *connect(lab, trusted))
            assert code == 0 and "ran here" in out, err
            with sqlite3.connect(server / "server.db") as db:
                assert db.execute("SELECT status FROM jobs WHERE id = 'new'").fetchone() == (
                    "completed",
                )
    finally:
        run_as(lab.user, "tmux", "kill-server")
        if saved is None:
            bashrc.unlink()
        else:
            bashrc.write_bytes(saved)
        shutil.rmtree(server, ignore_errors=True)


def test_probe_names_a_server_folder_with_backslashes_as_it_is(tmp_path: Path) -> None:
    """dash's echo rewrites \\c (ends the line), \\n, \\b...: the probe's server= line is printed
    with printf %s, so the warnings that name the folder name the right one."""
    server = tmp_path / "a\\cb\\n\\x"
    result = subprocess.run(
        ["sh", "-s", "--", "TOKEN"], input=step_script("probe"), capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SOLVERPILOT_SERVER_DIR": str(server)},
        check=True,
    )  # fmt: skip
    framed = parse_framed("TOKEN", result.stdout)
    assert framed is not None and framed[0] == 0
    assert f"server={server}" in framed[1]


def probe_here(
    home: Path, path: str, step: str = "probe", *args: str, server: str | None = None
) -> tuple[str, ...]:
    """probe.sh's answer lines (or ``step``'s, with ``args`` and, for push.sh, the debian
    wrapper as its payload), run here under sh in ``home`` with ``path`` for its PATH (and
    ``server`` for SOLVERPILOT_SERVER_DIR)."""
    script = step_script(step)
    if step == "push":
        script = with_payload(script, _schema_line() + DEBIAN_TEXT)
    env = {"PATH": path, "HOME": str(home)}
    if server is not None:
        env["SOLVERPILOT_SERVER_DIR"] = server
    result = subprocess.run(
        ["sh", "-s", "--", "TOKEN", *args], input=script, capture_output=True, text=True,
        env=env, cwd=home, check=True,
    )  # fmt: skip
    framed = parse_framed("TOKEN", result.stdout)
    assert framed is not None and framed[0] == 0, result
    return framed[1]


def shims(folder: Path, scripts: dict[str, str]) -> str:
    """A PATH whose first folder holds ``scripts`` (name: sh body), before the system's."""
    folder.mkdir()
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return f"{folder}:/usr/bin:/bin"


def test_the_probe_reads_the_same_whatever_the_hosts_stat_and_sha256_tool(
    tmp_path: Path,
) -> None:
    """The probe reads every mode and owner in one stat, and the wrapper's hash in the sha256
    tool's own test run: a host whose stat takes no -c (each path then read by ls), or whose
    only sha256 tool is openssl (the wrapper then hashed apart), answers the same lines; so
    does a path another user's folder could not show, a wrapper whose bytes are "abc"."""
    home = tmp_path / "home"
    (home / ".solverpilot" / "bin").mkdir(parents=True)
    (home / ".solverpilot" / "bin").chmod(0o777)  # an issue= line
    wrapper = home / ".solverpilot" / "bin" / "job_wrapper.sh"
    wrapper.write_text("abc\n")  # the bytes of the tool's test: its hash must still be its own
    wrapper.chmod(0o755)
    server = home / SERVER
    for sub, mode in (("", 0o700), ("jobs", 0o700), ("locks", 0o755), ("logs", 0o700)):
        (server / sub).mkdir(exist_ok=True)
        (server / sub).chmod(mode)  # locks: a server_open= line
    (server / "run").symlink_to(tmp_path)  # a link: server_unsafe= (the probe stops there)
    plain = probe_here(home, "/usr/bin:/bin")
    abc = hashlib.sha256(b"abc\n").hexdigest()
    assert f"wrapper={abc}" in plain and "sha256=sha256sum" in plain
    assert "issue=~/.solverpilot/bin is writable by group or others" in plain
    assert f"server_open=~/{SERVER}/locks drwxr-xr-x" in plain
    assert f"server_unsafe=~/{SERVER}/run is a symbolic link" in plain
    # one process reads the modes of the paths it checks (one for the wrapper's folders, one for
    # the server's), the tool's test hashes the wrapper: no ls, one sha256sum
    log = tmp_path / "calls"
    logged = shims(
        tmp_path / "logged",
        {
            tool: f'echo {tool} >>{log}\nexec /usr/bin/{tool} "$@"'
            for tool in ("stat", "ls", "sha256sum")
        },
    )
    assert probe_here(home, logged) == plain
    assert sorted(log.read_text().split()) == ["sha256sum", "stat", "stat", "stat"]  # (stat -f too)
    # stat without -c (an old busybox): it fails, ls reads each path
    no_format = shims(
        tmp_path / "nostat", {"stat": 'case $1 in -f) exec /usr/bin/stat "$@";; esac\nexit 1'}
    )
    assert probe_here(home, no_format) == plain
    # openssl alone: sha256sum, busybox and shasum fail
    require(shutil.which("openssl") is not None, "openssl is not installed")
    only_openssl = shims(
        tmp_path / "openssl-only", {tool: "exit 127" for tool in ("sha256sum", "busybox", "shasum")}
    )
    with_openssl = probe_here(home, only_openssl)
    assert "sha256=openssl dgst -sha256 -r" in with_openssl
    assert [line for line in with_openssl if not line.startswith("sha256=")] == [
        line for line in plain if not line.startswith("sha256=")
    ]


def home_with_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A home in ``tmp_path`` with the debian wrapper installed as push leaves it (folders
    0700, the wrapper 0755): the home and the wrapper's path."""
    home = tmp_path / "home"
    wrapper = home / ".solverpilot" / "bin" / "job_wrapper.sh"
    wrapper.parent.mkdir(parents=True)
    for folder in (home / ".solverpilot", wrapper.parent):
        folder.chmod(0o700)
    wrapper.write_text(DEBIAN_TEXT)
    wrapper.chmod(0o755)
    return home, wrapper


def test_a_push_to_a_host_that_has_the_wrapper_runs_only_the_hash_and_stat(
    tmp_path: Path,
) -> None:
    """push.sh (a host seen before) with the wrapper in place, sound, and nothing to repair
    answers current=yes from the wrapper's hash and one stat of every path (and the server
    folder's filesystem): no bash, flock, setsid or sqlite3 is run, nothing changes. Anything
    push would repair, a link, other bytes: the probe's whole answer instead, as before. The
    answer is the same with a stat without -c and with openssl as the only sha256 tool."""
    home, wrapper = home_with_wrapper(tmp_path)
    for sub in ("", "jobs", "locks"):
        (home / SERVER / sub).mkdir(mode=0o700, exist_ok=True)
    (home / SERVER / "server.db").write_bytes(b"")
    args = (DEBIAN_SHA, "60", "db", "sp-smoke-x", "0" * 64)  # (facts no host has: no install)
    log = tmp_path / "calls"
    tools = ("stat", "ls", "sha256sum", "flock", "setsid", "sqlite3", "mv", "mkdir", "cat")
    logged = shims(
        tmp_path / "logged",
        {tool: f'echo {tool} >>{log}\nexec /usr/bin/{tool} "$@"' for tool in tools},
    )
    before = wrapper.stat()
    quick = probe_here(home, logged, "push", *args)
    assert quick[0] == "current=yes", quick
    assert f"wrapper={DEBIAN_SHA}" in quick and "db=yes" in quick and "sha256=sha256sum" in quick
    assert [line.partition("=")[0] for line in quick[1:8]] == [
        "os_id", "os_like", "sha256", "server", "fs_server", "server_relative", "logout_kills"
    ]  # fmt: skip
    assert not any(
        line.startswith(("bash=", "install=", "issue=", "server_open=", "server_unsafe="))
        for line in quick
    )
    assert sorted(log.read_text().split()) == ["sha256sum", "stat", "stat"]  # (stat -f too)
    assert (wrapper.stat().st_ino, wrapper.stat().st_mtime_ns) == (
        before.st_ino, before.st_mtime_ns
    )  # fmt: skip
    no_format = shims(
        tmp_path / "nostat", {"stat": 'case $1 in -f) exec /usr/bin/stat "$@";; esac\nexit 1'}
    )
    assert probe_here(home, no_format, "push", *args) == quick
    require(shutil.which("openssl") is not None, "openssl is not installed")
    only_openssl = shims(
        tmp_path / "openssl-only", {tool: "exit 127" for tool in ("sha256sum", "busybox", "shasum")}
    )
    with_openssl = probe_here(home, only_openssl, "push", *args)
    assert "sha256=openssl dgst -sha256 -r" in with_openssl
    assert [line for line in with_openssl if not line.startswith("sha256=")] == [
        line for line in quick if not line.startswith("sha256=")
    ]

    # what push would repair or change: the probe's whole answer, and the tools run
    def whole(digest: str = DEBIAN_SHA) -> tuple[str, ...]:
        log.unlink()
        said = probe_here(home, logged, "push", digest, *args[1:])
        assert "current=yes" not in said and said[0].startswith("os_id="), said
        assert {"flock", "setsid", "sqlite3"} <= set(log.read_text().split()), said
        return said

    whole("1" * 64)  # other bytes
    for path, mode, says in (
        (wrapper.parent, 0o770, "issue=~/.solverpilot/bin is writable by group or others"),
        (wrapper, 0o644, "issue=~/.solverpilot/bin/job_wrapper.sh is not executable"),
        (home / SERVER / "locks", 0o755, f"server_open=~/{SERVER}/locks drwxr-xr-x"),
        (home / SERVER, 0o711, f"server_open=~/{SERVER} drwx--x--x"),
    ):
        path.chmod(mode)
        assert says in whole(), says
        path.chmod(0o755 if path == wrapper else 0o700)
    (home / SERVER / "logs").symlink_to(tmp_path)
    assert f"server_unsafe=~/{SERVER}/logs is a symbolic link" in whole()
    (home / SERVER / "logs").unlink()
    real = tmp_path / "real.sh"
    wrapper.rename(real)
    wrapper.symlink_to(real)  # the same bytes, behind a link another could change
    assert "issue=~/.solverpilot/bin/job_wrapper.sh is a symbolic link" in whole()
    wrapper.unlink()
    real.rename(wrapper)
    log.unlink()
    assert probe_here(home, logged, "push", *args) == quick  # all repaired: current again


def test_the_server_folders_check_is_not_fooled_by_a_slash_a_short_stat_or_a_dead_link(
    tmp_path: Path,
) -> None:
    """The check of the server folder, in the probe and in push's quick path alike (adversary
    findings): a link another user owns, named with a trailing / or /., is still read as a
    link (stat went through it to the user's own folder: "current=yes"); a stat that answers a
    line short is not paired with the paths (the last, a link, went unchecked); the user's own
    link to no folder or to a file is refused, as the wrapper refuses it; a setgid folder
    (drwx--S---, as mkdir makes it in a setgid parent and chmod 700 keeps it) is 0700, and a
    setuid one; every link the server folder's link leads through must be the user's, its
    target's text trimmed of a trailing / or /. and kept with a newline at its end, one that
    ends in ".." refused, a subfolder link never taken for one of them; a name with ".." in it
    is refused, its folder there or not; without readlink a link is refused; a stat that adds
    a blank line is read right."""
    home, wrapper = home_with_wrapper(tmp_path)
    real = home / SERVER
    real.mkdir(mode=0o700)
    args = (DEBIAN_SHA, "60", "db", "sp-smoke-x", "0" * 64)
    system = "/usr/bin:/bin"
    assert probe_here(home, system, "push", *args)[0] == "current=yes"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    link = shared / "srv"
    link.symlink_to(real)
    os.lchown(link, 4343, 4343)  # another user's link, to the user's own folder
    unsafe = f"server_unsafe={link} is owned by uid 4343, not by uid {os.getuid()}"
    for named in (str(link), f"{link}/", f"{link}/.", f"{link}//./"):
        for step in ("push", "probe"):
            said = probe_here(home, system, step, *args, server=named)
            assert unsafe in said and "current=yes" not in said, (named, step, said)
    # a stat that says a line less than it was asked: never paired with the paths
    (real / "jobs").symlink_to(tmp_path)  # the last path: a link
    short = shims(
        tmp_path / "short", {"stat": 'case $1 in -f) exec /usr/bin/stat "$@";; esac\n'
                             '/usr/bin/stat "$@" | sed \'$d\''}
    )  # fmt: skip
    for step in ("push", "probe"):
        said = probe_here(home, short, step, *args)
        assert f"server_unsafe=~/{SERVER}/jobs is a symbolic link" in said, said
        assert said == probe_here(home, system, step, *args)
    # a blank line first: not counted, not paired (it ended the step: "can't shift")
    blank = shims(
        tmp_path / "blank", {"stat": 'case $1 in -f) exec /usr/bin/stat "$@";; esac\n'
                             'echo; /usr/bin/stat "$@"'}
    )  # fmt: skip
    for step in ("push", "probe"):
        assert probe_here(home, blank, step, *args) == probe_here(home, system, step, *args)
    (real / "jobs").unlink()
    # the user's own link, leading through another user's link to the user's own folder; or a
    # name with "..", through another user's link (srv/jobs/.. is the folder srv names)
    mine = home / "mine"
    mine.symlink_to(link)
    (real / "jobs").mkdir(mode=0o700)
    for named, says in (
        (str(mine), unsafe),
        (f"{link}/jobs/..", f'server_unsafe={link}/jobs/.. is named through "..": name it without'),
    ):
        for step in ("push", "probe"):
            said = probe_here(home, system, step, *args, server=named)
            assert says in said and "current=yes" not in said, (named, step, said)
    # the user's link whose target names that link with a trailing / or /. (the walk read the
    # text, not a link, and stopped), or its subfolder and ".."; another user's link named with
    # a newline at its end ($( ) dropped it); a name through ".." whose folder does not exist
    newline = shared / "srv\n"
    newline.symlink_to(real)
    os.lchown(newline, 4343, 4343)
    for target, says in (
        (f"{link}/", unsafe),
        (f"{link}/.", unsafe),
        (f"{link}//", unsafe),
        (f"{link}/jobs/..", f'server_unsafe={link}/jobs/.. is a link to a name that ends in ".."'),
        (str(newline), f"server_unsafe={shared}/srv? is owned by uid 4343"),
    ):
        mine.unlink()
        mine.symlink_to(target)
        for step in ("push", "probe"):
            said = probe_here(home, system, step, *args, server=str(mine))
            assert any(line.startswith(says) for line in said), (target, step, said)
            assert "current=yes" not in said
    absent = f"{home}/x/../absent"
    said = probe_here(home, system, "push", *args, server=absent)
    assert f'server_unsafe={absent} is named through "..": name it without' in said, said
    mine.unlink()
    mine.symlink_to(link)
    os.lchown(link, 0, 0)  # every link on the way the user's own: sound
    assert probe_here(home, system, "push", *args, server=str(mine))[0] == "current=yes"
    # a subfolder link whose path is text inside the target of a link on the way (a test of
    # text took it for that link)
    mine.unlink()
    chain = Path(f"{home}/x{mine}/jobs")
    chain.parent.mkdir(parents=True)
    chain.symlink_to(real)
    mine.symlink_to(f"{home}/x/{mine}/jobs")
    assert probe_here(home, system, "push", *args, server=str(mine))[0] == "current=yes"
    (real / "jobs").rmdir()
    (real / "jobs").symlink_to(tmp_path)
    said = probe_here(home, system, "push", *args, server=str(mine))
    assert f"server_unsafe={mine}/jobs is a symbolic link" in said, said
    (real / "jobs").unlink()
    # without readlink the chain cannot be walked: refused, not taken as sound
    no_readlink = shims(tmp_path / "noreadlink", {"readlink": "exit 127"})
    said = probe_here(home, no_readlink, "push", *args, server=str(mine))
    assert f"server_unsafe={mine} is a link that cannot be read (readlink)" in said, said
    # the user's own link to no folder, or to a file
    real.rename(tmp_path / "moved")
    for target in (tmp_path / "none", wrapper):
        real.symlink_to(target)
        for step in ("push", "probe"):
            said = probe_here(home, system, step, *args)
            assert f"server_unsafe=~/{SERVER} is a symbolic link to no folder" in said, said
        real.unlink()
    (tmp_path / "moved").rename(real)
    # setgid or setuid, 0700 otherwise: as sound as 0700 (reported open, tightened in vain)
    (real / "jobs").mkdir()
    for mode in (0o2700, 0o4700, 0o6700):
        for folder in (real, real / "jobs"):
            folder.chmod(mode)
        assert probe_here(home, system, "push", *args)[0] == "current=yes", oct(mode)
        said = probe_here(home, system)
        assert not [line for line in said if line.startswith(("server_open=", "server_unsafe="))]
    (real / "jobs").chmod(0o2710)  # the group may enter: open, as before
    assert f"server_open=~/{SERVER}/jobs drwx--s---" in probe_here(home, system)


def test_an_os_release_with_line_breaks_forges_no_line_of_the_probes_answer(
    tmp_path: Path,
) -> None:
    """/etc/os-release is the host's to write: an ID or ID_LIKE with a newline in it would print
    a line of its own, a wrapper= naming the render (push would say "unchanged") or push.sh's
    install=begun (push would call a probe an install). Each fact is one line: shown with an
    os-release mounted over the real one (a mount namespace of this test's own)."""
    require(os.geteuid() == 0 and bool(shutil.which("unshare")), "needs root and unshare")
    forged = tmp_path / "os-release"
    forged.write_text('ID="debian\nwrapper=' + "a" * 64 + '\ninstall=begun"\nID_LIKE="x\rdb=yes"\n')
    script = with_token(step_script("probe"), "TOKEN")
    inner = f"mount --bind {forged} /etc/os-release && exec /bin/sh -s"
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
        input=script, capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    framed = parse_framed("TOKEN", result.stdout)
    assert framed is not None and framed[0] == 0, result
    lines = framed[1]
    assert lines[0] == "os_id=debian?wrapper=" + "a" * 64 + "?install=begun", lines
    assert lines[1] == "os_like=x?db=yes", lines
    assert not [line for line in lines if line.startswith(("wrapper=", "install=", "db="))]
    # an os-release without ID_LIKE (Debian's): the login's environment does not fill it in
    forged.write_text("ID=debian\n")
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
        input=script, capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ID": "evil",
             "ID_LIKE": "debian\ninstall=begun"},
    )  # fmt: skip
    framed = parse_framed("TOKEN", result.stdout)
    assert framed is not None and framed[1][:2] == ("os_id=debian", "os_like="), result


def test_a_login_that_exports_the_steps_own_variables_changes_no_check(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """A start-up file exporting sp_uid=0 (the uid the checks compare owners with) and sp_sha (the
    sha256 tool): the steps set both themselves, so a server folder root owns is still refused,
    and the push installs nothing."""
    rc = home / ".bashrc"
    saved = rc.read_bytes() if rc.exists() else None
    rc.write_text("export sp_uid=0 sp_sha='echo ok'\n")
    (home / SERVER).mkdir(mode=0o700)  # root's, in the user's home
    try:
        code, out, _ = sp(capsys, "push", lab.a.spec, "--json", *connect(lab, trusted))
        # status reads the server folder with no probe before it: refused too
        listed = sp(capsys, "status", lab.a.spec, *connect(lab, trusted))
    finally:
        shutil.rmtree(home / SERVER)
        if saved is None:
            rc.unlink()
        else:
            rc.write_bytes(saved)
    (result,) = payload(out)
    assert code == 1 and result["outcome"] == "old", result
    assert f"~/{SERVER} is owned by uid 0, not by uid {lab.user.pw_uid}" in str(result["error"])
    assert not (home / ".solverpilot").exists()
    assert listed[0] != 0 and f"~/{SERVER} is owned by uid 0" in listed[2], listed


# ---- item 18: status of a job that is not there, or of two hosts ----


def test_status_of_a_missing_job_or_of_two_hosts_says_so(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    write_states(home / SERVER, {"here": finished("here", lab.user.pw_name)}, lab.user.pw_uid)
    code, out, err = sp(capsys, "status", lab.a.spec, "nosuch", *connect(lab, trusted))
    assert (code, out) == (1, "")
    assert f"no job nosuch on {lab.a.spec}" in err
    code, out, err = sp(capsys, "status", lab.a.spec, "here", "gone", *connect(lab, trusted))
    assert code == 1 and f"no job gone on {lab.a.spec}" in err
    assert [line.split()[0] for line in out.splitlines()] == ["ID", "here"]
    code, out, err = sp(capsys, "status", lab.a.spec, "here", *connect(lab, trusted))
    assert code == 0 and not err
    # a second host where a job id goes: a usage error naming the mistake, before any connection
    code, out, err = sp(capsys, "status", lab.a.spec, lab.b.spec, *connect(lab, trusted))
    assert (
        code == 2
        and f"status takes its hosts comma-separated (status {lab.a.spec},{lab.b.spec})" in err
    ), err
    code, out, err = sp(capsys, "status", lab.a.spec, "user@node2", *connect(lab, trusted))
    assert code == 2 and "'user@node2' is not a job id" in err, err


# ---- item 10: no job count makes status fail ----


def write_many(server: Path, count: int, db_only: int) -> None:
    """``count`` state files as the wrapper writes them and their DB rows, and ``db_only`` DB
    rows without a state file; quicker than write_states for this many."""
    (server / "jobs").mkdir(parents=True)
    (server / "locks").mkdir()
    base = {**finished("x"), "host": "node-01.example.org", "slurm_job_id": None}
    for n in range(count):
        job_id = f"{n:08d}-0000-4000-8000-000000000000"
        text = json.dumps({**base, "id": job_id}, separators=(",", ":"))
        fd = os.open(server / "jobs" / f"{job_id}.status", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, text.encode() + b"\n")
        os.close(fd)
    with sqlite3.connect(server / "server.db") as db:
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT, started_at TEXT,"
            " completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT)"
        )
        db.executemany(
            "INSERT INTO jobs VALUES (?, 'completed', ?, ?, 0, NULL)",
            (
                (f"{n:08d}-0000-4000-8000-000000000000", base["started_at"], base["completed_at"])
                for n in range(count + db_only)
            ),
        )


def test_status_of_200000_jobs_lists_them_all(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """200,000 state files (and their DB rows) plus 50,000 DB-only rows: more than the 64 MiB
    that once capped any answer; listed whole, within a minute."""
    server = home / SERVER
    write_many(server, 200_000, 50_000)
    subprocess.run(["chown", "-R", f"{lab.user.pw_uid}:{lab.user.pw_gid}", server], check=True)
    start = time.monotonic()
    code, out, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted), "--json")
    took = time.monotonic() - start
    assert code == 0, err[-2000:]
    jobs = payload(out)
    assert len(jobs) == 250_000
    assert all(job["status"] == "completed" and job["exit_code"] == 0 for job in jobs)
    assert jobs[-1]["id"] == "00249999-0000-4000-8000-000000000000"
    assert took < 60, took


def test_an_answer_over_64_mib_arrives_whole_with_either_transport(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, transport: str
) -> None:
    """16,000 state files of 5 KB: 80 MiB of answer, which the transports once refused."""
    states = {f"j{n:05d}": {**finished(f"j{n:05d}"), "pad": "x" * 5000} for n in range(16_000)}
    write_states(home / SERVER, states, lab.user.pw_uid)
    code, out, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted), "--json")
    assert code == 0, err[-2000:]
    assert [(j["id"], j["status"]) for j in payload(out)] == [
        (job_id, "completed") for job_id in sorted(states)
    ]


def feed(answer: Answer, data: bytes, size: int) -> None:
    for at in range(0, len(data), size):
        answer.add(data[at : at + size])


@pytest.mark.parametrize("size", [1000, 65536, 7])
def test_the_bound_counts_only_what_is_not_the_answer(size: int) -> None:
    token = b"0123456789abcdef01234567 "
    line = token + b"|" + b"x" * 400 + b"\n"
    if size == 7:  # byte by byte is slow: a token split at every place, on a few lines
        answer = Answer(token)
        feed(answer, b"banner\n" + line * 30, size)
        assert (answer.other, bytes(answer.data)) == (7, b"banner\n" + line * 30)
        return
    answer = Answer(token)
    feed(answer, b"motd\n" * 1000 + line * (MAX_ANSWER // len(line) + 1000), size)
    assert answer.other == 5000 and len(answer.data) > MAX_ANSWER
    for noise in (b"y\n", b"no newline, ever "):  # a start-up file without end, either way
        with pytest.raises(RemoteCommandError, match="besides its answer"):
            feed(Answer(token), line + noise * (MAX_ANSWER // len(noise) + 2), size)
    with pytest.raises(RemoteCommandError):  # without a token every byte counts, as before
        feed(Answer(), line * (MAX_ANSWER // len(line) + 2), size)
    with pytest.raises(RemoteCommandError):  # nor is one line of the answer without end
        feed(Answer(token), token + b"x" * (MAX_ANSWER + 1), size)


def test_a_start_up_file_that_prints_without_end_still_stops_the_command(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, transport: str
) -> None:
    """The bound on what is not the answer stays: ~/.bashrc running `yes` is stopped."""
    bashrc = home / ".bashrc"
    saved = bashrc.read_bytes() if bashrc.exists() else None
    bashrc.write_text("yes 'start-up noise'\n")
    try:
        code, _, err = sp(capsys, "status", lab.a.spec, *connect(lab, trusted))
    finally:
        if saved is None:
            bashrc.unlink()
        else:
            bashrc.write_bytes(saved)
    assert code == 1
    assert "more than 64 MiB for one command besides its answer" in err, err


def test_a_start_up_file_cannot_read_the_token_to_forge_an_answer(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The per-call token is not on the command line: a ~/.bashrc that takes it from bash's
    BASH_EXECUTION_STRING (or from ps) and prints "TOKEN wrapper=<the right sha256>" cannot
    make verify say ok for a wrapper that was replaced."""
    code, _, err = sp(capsys, "push", lab.a.spec, "--no-smoke", *connect(lab, trusted))
    assert code == 0, err
    wrapper = home / ".solverpilot" / "bin" / "job_wrapper.sh"
    good = hashlib.sha256(wrapper.read_bytes()).hexdigest()
    wrapper.write_text("#!/bin/bash\necho tampered\n")
    bashrc = home / ".bashrc"
    saved = bashrc.read_bytes() if bashrc.exists() else None
    forged = home / "forged"
    # every word of the command line that could be the token, and every such word ps shows
    bashrc.write_text(
        f'for w in ${{BASH_EXECUTION_STRING-}} $(ps -o args= -u "$USER" 2>/dev/null); do\n'
        f'  echo "$w wrapper={good}"; echo "$w @end 0"; echo "$w" >> {forged}\n'
        "done\n"
    )
    try:
        code, out, err = sp(capsys, "verify", lab.a.spec, "--json", *connect(lab, trusted))
    finally:
        if saved is None:
            bashrc.unlink()
        else:
            bashrc.write_bytes(saved)
    assert forged.exists() and "exec" in forged.read_text()  # the start-up file did run
    (result,) = payload(out)
    assert (code, result["status"]) == (1, "mismatch"), (out, err)


def test_a_job_with_only_a_db_row_is_named_alike_by_status_cancel_and_logs(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """A DB row "running" whose state file is gone: status lists it (lost); cancel and logs
    said "no job" of it. They now name it for what it is, and signal nothing."""
    write_states(home / SERVER, {"dbonly1": finished("dbonly1", lab.user.pw_name)}, lab.user.pw_uid)
    (home / SERVER / "jobs" / "dbonly1.status").unlink()
    with sqlite3.connect(home / SERVER / "server.db") as db:
        db.execute("UPDATE jobs SET status = 'running', exit_code = NULL WHERE id = 'dbonly1'")
    shutil.chown(home / SERVER / "server.db", lab.user.pw_uid, lab.user.pw_gid)
    code, out, _ = sp(capsys, "status", lab.a.spec, "dbonly1", "--json", *connect(lab, trusted))
    (job,) = payload(out)
    assert (code, job["status"]) == (0, "lost"), out
    for command in ("cancel", "logs"):
        code, _, err = sp(capsys, command, lab.a.spec, "dbonly1", *connect(lab, trusted))
        assert code == 1, err
        assert "has no state file on this host, only a database row saying 'running'" in err

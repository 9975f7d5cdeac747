"""run, logs and cancel against a real sshd with real tmux and the deployed wrapper."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, poll, require, sp, sp_json
from conftest import job_state as state
from sshlab import TEST_USERS, run_as

SERVER = ".solverpilot-server"


def connect(lab: Lab, trusted: Path) -> tuple[str, ...]:
    return ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "60")


@pytest.fixture
def deployed(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> Iterator[Path]:
    """Host a with the wrapper pushed; its tmux server is killed afterwards."""
    require(bool(shutil.which("tmux")), "needs tmux (Debian package tmux)")
    code, results = sp_json(capsys, "push", lab.a.spec, *connect(lab, trusted))
    assert code == 0, results
    scratch = home / SERVER / "scratch"  # what the jobs write; cleared with the server folder
    scratch.mkdir()
    shutil.chown(scratch, lab.user.pw_uid, lab.user.pw_gid)
    yield home
    run_as(lab.user, "tmux", "kill-server")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][0] not in "ZX"


def wait_for(check: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_run_a_job_that_prints_and_exits_3_then_its_logs(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    code, out, err = sp(
        capsys, "run", lab.a.spec, "--id", "job-print", *connect(lab, trusted),
        "--", "sh", "-c", "echo line one; echo 'line two' >&2; sleep 1; echo done; exit 3",
    )  # fmt: skip
    assert (code, out) == (0, "job-print\n"), err
    # it returned once the running state existed
    assert state(deployed, "job-print")["status"] in ("running", "failed")
    code, out, err = sp(capsys, "logs", lab.a.spec, "job-print", "-f", *connect(lab, trusted))
    assert code == 3, err  # logs -f exits as the job did
    lines = out.replace("\r\n", "\n").splitlines()
    assert lines[:3] == ["line one", "line two", "done"]
    final = state(deployed, "job-print")
    assert (final["status"], final["exit_code"]) == ("failed", 3)
    code, jobs = sp_json(capsys, "status", lab.a.spec, "job-print", *connect(lab, trusted))
    assert [(j["status"], j["exit_code"], j["tmux"]) for j in jobs] == [("failed", 3, "absent")]
    # the id is used now
    code, out, err = sp(capsys, "run", lab.a.spec, "--id", "job-print", *connect(lab, trusted),
                        "--", "true")  # fmt: skip
    assert code == 1 and "job id job-print is already used on this host" in err
    assert "may have started" not in err  # the host said no: nothing started (helper-24)


ODD_ARGS = [
    "plain",
    "two words",
    "",
    "'single' \"double\"",
    "$HOME `id` $(id) ${x}",
    "a;b|c&d>e<f",
    "new\nline\n",
    "back\\slash \\n",
    "*?[glob]",
    "-n",
    "%s %d %%",
    "tab\there",
    "ünïcødé ✓",
    "\x01\x7f",
]


def test_every_kind_of_argument_arrives_exactly(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    dump = deployed / SERVER / "scratch" / "args.json"
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "job-args", *connect(lab, trusted),
        "--", "python3", "-c",
        "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))", str(dump), *ODD_ARGS,
    )  # fmt: skip
    assert code == 0, err
    wait_for(lambda: state(deployed, "job-args")["status"] != "running")
    assert state(deployed, "job-args")["exit_code"] == 0
    assert json.loads(dump.read_text()) == [str(dump), *ODD_ARGS]


def test_the_working_folder_and_a_new_uuid(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    folder = deployed / SERVER / "scratch" / "work dir 'x'"
    folder.mkdir()
    shutil.chown(folder, lab.user.pw_uid, lab.user.pw_gid)
    code, out, err = sp(capsys, "run", lab.a.spec, "--cwd", str(folder), *connect(lab, trusted),
                        "--", "sh", "-c", "pwd > where")  # fmt: skip
    assert code == 0, err
    job_id = out.strip()
    assert len(job_id) == 36 and job_id.count("-") == 4  # a UUID
    wait_for(lambda: (folder / "where").exists() and state(deployed, job_id)["status"] != "running")
    assert (folder / "where").read_text().strip() == str(folder)


def test_cancel_a_running_job_with_a_grandchild(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    pids = deployed / SERVER / "scratch" / "pids"
    code, out, err = sp(
        capsys, "run", lab.a.spec, "--id", "job-stop", *connect(lab, trusted),
        "--", "sh", "-c", f'sleep 300 & echo "$$ $!" > {pids}; wait',
    )  # fmt: skip
    assert code == 0, err
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    job_pids = [int(p) for p in pids.read_text().split()]
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-stop", *connect(lab, trusted))
    assert (code, out) == (0, "job-stop failed exit 143 signal TERM\n"), err
    final = state(deployed, "job-stop")
    assert (final["status"], final["exit_code"], final["signal"]) == ("failed", 143, "TERM")
    for pid in (*job_pids, int(str(final["pid"]))):  # the job, its grandchild, the wrapper
        assert not alive(pid), pid
    # cancelling it again changes nothing and says so
    before = (deployed / SERVER / "jobs" / "job-stop.status").read_bytes()
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-stop", *connect(lab, trusted))
    assert (
        code == 0
        and out == "job-stop failed exit 143 signal TERM (it had already ended: nothing changed)\n"
    )
    assert (deployed / SERVER / "jobs" / "job-stop.status").read_bytes() == before
    code, out, err = sp(capsys, "cancel", lab.a.spec, "no-such-job", *connect(lab, trusted))
    assert code == 1 and "no job no-such-job on this host" in err


def test_cancel_never_signals_a_pid_given_to_another_process(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    user = lab.user
    other = subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "sleep", "60"]
    )  # fmt: skip
    try:
        jobs = deployed / SERVER / "jobs"
        jobs.mkdir(parents=True, exist_ok=True)
        shutil.chown(jobs, user.pw_uid, user.pw_gid)
        (jobs / "job-reused.status").write_text(
            json.dumps(
                {"id": "job-reused", "status": "running", "pid": other.pid, "start_ticks": 1},
                separators=(",", ":"),
            )
        )
        code, _, err = sp(capsys, "cancel", lab.a.spec, "job-reused", *connect(lab, trusted))
        assert code == 1 and "is lost: its wrapper is gone; nothing was signalled" in err
        assert "may have been stopped" not in err  # (it said so after "nothing was signalled")
        assert other.poll() is None  # still alive: not signalled
        # a state of an older wrapper (no start ticks) naming that live pid: never signalled
        (jobs / "job-old.status").write_text(
            json.dumps({"id": "job-old", "status": "running", "pid": other.pid})
        )
        code, _, err = sp(capsys, "cancel", lab.a.spec, "job-old", *connect(lab, trusted))
        assert code == 1 and "older wrapper" in err and "nothing was signalled" in err
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_run_without_the_wrapper_or_without_tmux(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    code, out, err = sp(capsys, "run", lab.a.spec, *connect(lab, trusted), "--", "true")
    assert code == 1 and "no wrapper here" in err and "sp-deploy push" in err
    assert out == ""
    # one that lost its x bit (a copy by hand, a umask): the same, and push repairs it
    wrapper = home / ".solverpilot/bin/job_wrapper.sh"
    assert sp(capsys, "push", lab.a.spec, "--no-smoke", *connect(lab, trusted))[0] == 0
    wrapper.chmod(0o600)
    code, out, err = sp(capsys, "run", lab.a.spec, *connect(lab, trusted), "--", "true")
    assert code == 1 and "missing or not executable" in err and out == "", err
    assert sp(capsys, "push", lab.a.spec, "--no-smoke", *connect(lab, trusted))[0] == 0
    assert wrapper.stat().st_mode & 0o100
    # the limited host has no tmux on its PATH; give it a wrapper by hand
    target = Path(lab.users[TEST_USERS[2]].pw_dir) / ".solverpilot/bin/job_wrapper.sh"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/bash\n")
    target.chmod(0o755)
    code, out, err = sp(capsys, "run", lab.limited.spec, *connect(lab, trusted), "--", "true")
    assert code == 1
    assert "missing requirement: tmux is not installed; install: sudo apt-get install tmux" in err


def test_usage_errors_before_any_connection(capsys: pytest.CaptureFixture[str]) -> None:
    assert sp(capsys, "run", "nobody@127.0.0.1:1")[0] == 2  # no command
    assert sp(capsys, "run", "nobody@127.0.0.1:1", "--id", "bad id", "--", "true")[0] == 2
    assert sp(capsys, "cancel", "nobody@127.0.0.1:1", "../x")[0] == 2
    assert sp(capsys, "logs", "nobody@127.0.0.1:1", "x;y")[0] == 2
    code, _, err = sp(capsys, "status", "nobody@127.0.0.1:1", "--", "x")
    assert code == 2 and "is for run only" in err
    assert err.startswith("usage: sp-deploy status "), err  # the command's own usage


def test_a_host_that_kills_tmux_at_logout_is_named_until_linger_is_on(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """logind's KillUserProcesses=yes with linger off: push and run warn, naming the fix."""
    dropin = Path("/etc/systemd/logind.conf.d/zz-sptest.conf")
    linger = Path("/var/lib/systemd/linger") / lab.user.pw_name
    require(not dropin.exists() and not linger.exists(), "a logind set-up of this machine's own")
    made = [p for p in (dropin.parent, linger.parent) if not p.exists()]
    dropin.parent.mkdir(parents=True, exist_ok=True)
    linger.parent.mkdir(parents=True, exist_ok=True)
    try:
        dropin.write_text("[Login]\n KillUserProcesses = Yes \n")  # as logind reads it
        code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-l1", *connect(lab, trusted),
                            "--", "true")  # fmt: skip
        assert code == 0
        assert "warning: systemd-logind kills this user's processes at logout" in err
        assert "loginctl enable-linger" in err
        code, results = sp_json(capsys, "verify", lab.a.spec, *connect(lab, trusted))
        assert any("loginctl enable-linger" in w for w in results[0]["warnings"])  # type: ignore[attr-defined]
        linger.touch()
        code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-l2", *connect(lab, trusted),
                            "--", "true")  # fmt: skip
        assert code == 0 and "warning" not in err
    finally:
        dropin.unlink(missing_ok=True)
        linger.unlink(missing_ok=True)
        for folder in reversed(made):
            folder.rmdir()


def test_two_runs_of_one_id_at_once_one_wins_and_runs_its_own_command(
    lab: Lab, deployed: Path, trusted: Path
) -> None:
    scratch = deployed / SERVER / "scratch"
    procs = [
        subprocess.Popen(
            ["sp-deploy", "run", lab.a.spec, "--id", "same-id", *connect(lab, trusted), "--",
             "sh", "-c", f"echo {who} > {scratch}/ran-{who}", ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for who in ("A", "B")
    ]  # fmt: skip
    outcomes = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    winners = [i for i, (code, _, _) in enumerate(outcomes) if code == 0]
    assert len(winners) == 1, outcomes
    loser = outcomes[1 - winners[0]]
    assert loser[0] == 1 and "already used" in loser[2], loser
    who = "AB"[winners[0]]
    wait_for(lambda: (scratch / f"ran-{who}").exists())
    assert not (scratch / f"ran-{'AB'[1 - winners[0]]}").exists()


def test_cwd_relative_to_the_home_and_one_that_cannot_be_entered(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-rel", "--cwd", f"{SERVER}/scratch",
                      *connect(lab, trusted), "--", "sh", "-c", "pwd > where")  # fmt: skip
    assert code == 0, err
    where = deployed / SERVER / "scratch" / "where"
    wait_for(where.exists)
    wait_for(lambda: where.read_text().strip() == str(deployed / SERVER / "scratch"))
    code, out, err = sp(capsys, "run", lab.a.spec, "--id", "job-nocwd", "--cwd", "/nonexistent",
                        *connect(lab, trusted), "--", "true")  # fmt: skip
    assert code == 1 and "cannot enter the folder /nonexistent on the host" in err
    assert "may have started" not in err
    start = time.monotonic()
    code, out, err = sp(capsys, "logs", lab.a.spec, "job-nocwd", "-f", *connect(lab, trusted))
    assert code == 1 and "cannot enter /nonexistent" in out  # and -f did not wait for ever
    assert time.monotonic() - start < 10


def test_a_second_cancel_during_the_stop_waits_for_it(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """The stop is recorded at once; a second cancel must not call the job ended while its
    tree still runs (here: a job that ignores TERM, killed at the grace)."""
    (deployed / ".bashrc").write_text("export SOLVERPILOT_KILL_GRACE=3\n")
    try:
        deaf = "trap '' TERM; while :; do sleep 0.1; done"
        code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-deaf", *connect(lab, trusted),
                          "--", "sh", "-c", deaf)  # fmt: skip
        assert code == 0, err
        first = subprocess.Popen(
            ["sp-deploy", "cancel", lab.a.spec, "job-deaf", *connect(lab, trusted)],
            stdout=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: state(deployed, "job-deaf")["status"] == "failed")
        start = time.monotonic()
        code, out, err = sp(capsys, "cancel", lab.a.spec, "job-deaf", *connect(lab, trusted))
        assert (code, out) == (0, "job-deaf failed exit 143 signal TERM\n"), err
        assert time.monotonic() - start > 1  # it waited for the KILL at the grace
        wrapper_pid = int(str(state(deployed, "job-deaf")["pid"]))
        assert not alive(wrapper_pid)
        assert first.wait(timeout=30) == 0
    finally:
        (deployed / ".bashrc").unlink(missing_ok=True)


def test_ids_alike_in_their_first_8_characters_are_told_apart(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "solver01-a", *connect(lab, trusted),
                      "--", "sleep", "30")  # fmt: skip
    assert code == 0, err
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "solver01-b", *connect(lab, trusted),
                      "--", "true")  # fmt: skip
    assert code == 1
    assert f"tmux session solverpilot_{lab.user.pw_name}_solver01 runs already" in err
    assert "same 8 characters" in err


def test_a_job_the_wrapper_refuses_is_an_error_with_its_words(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """A folder where the job's lock file goes: the wrapper exits 73 and says why."""
    locks = deployed / SERVER / "locks"
    (locks / "job-refused.lock").mkdir(parents=True)
    for folder in (locks, locks / "job-refused.lock"):  # the user's: the folders are checked
        shutil.chown(folder, lab.user.pw_uid, lab.user.pw_gid)
    code, out, err = sp(capsys, "run", lab.a.spec, "--id", "job-refused", *connect(lab, trusted),
                        "--", "true")  # fmt: skip
    assert (code, out) == (1, "")
    assert "the wrapper refused the job (exit 73): job_wrapper: lock file" in err
    assert "is not a regular file" in err


# what a job prints: line ends, its own \r (a progress bar) and \r\n, a colour escape, bytes
# 0x80-0xff that are no UTF-8, a tab, and a last line without its newline
OWN_BYTES = (
    b"a\nb\r\nprogress 10%\rprogress 100%\n\x1b[31mred\x1b[0m\n\x80\xff\xe9\xc3\xa9\ttab\n"
    b"typed: hello\nno newline"
)
# the same as the octal escapes of a printf format (dash's printf knows no \x)
OWN_FORMAT = "".join(
    "%%" if b == ord("%") else chr(b) if 32 <= b < 127 and b != ord("\\") else f"\\{b:03o}"
    for b in OWN_BYTES
).replace("typed: hello", "typed: %s")


def logs_bytes(lab: Lab, trusted: Path, job_id: str) -> tuple[int, bytes, str]:
    """``sp-deploy logs -f`` in a process of its own: its status, its stdout's bytes, stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "solverpilot_deploy", "logs", lab.a.spec, job_id, "-f",
         *connect(lab, trusted)],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


@pytest.mark.parametrize("queued", [False, True], ids=["started", "queued"])
def test_logs_prints_the_jobs_own_bytes_whatever_its_pane_would_add(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path, queued: bool
) -> None:
    """The pane's terminal writes a line end as \\r\\n and echoes what is typed into it: the
    log holds what the job wrote, byte for byte, started at once or by its queue (issue 19);
    the job still has a terminal, and its pane still shows its output."""
    job_id = "job-bytes-q" if queued else "job-bytes"
    marker = deployed / SERVER / "scratch" / f"{job_id}.reading"
    gate = marker.with_suffix(".gate")
    script = (
        f'[ -t 1 ] || exit 9; : > {marker}; IFS= read -r line; printf "$1" "$line"; '
        f"until [ -e {gate} ]; do sleep 0.1; done"
    )
    where = ("--queue", "bytes") if queued else ()
    code, out, err = sp(capsys, "run", lab.a.spec, "--id", job_id, *where, *connect(lab, trusted),
                        "--", "sh", "-c", script, "sh", OWN_FORMAT)  # fmt: skip
    assert (code, out) == (0, f"{job_id}\n"), err
    poll(marker.exists, 20, "the job reads its terminal")
    session = f"solverpilot_{lab.user.pw_name}_{job_id[:8]}"
    run_as(lab.user, "tmux", "send-keys", "-t", f"={session}:", "hello", "Enter")
    # the log holds the job's bytes, nothing typed, no \r before each \n
    log = deployed / SERVER / "logs" / f"{job_id}.log"
    poll(lambda: log.read_bytes() == OWN_BYTES, 20, "the job's output in its log")
    # and the pane (what tmux attach shows) shows it
    shown = run_as(lab.user, "tmux", "capture-pane", "-p", "-t", f"={session}:")
    assert "progress 100%" in shown.stdout, shown
    gate.touch()
    code, data, err = logs_bytes(lab, trusted, job_id)
    assert code == 0, err  # the job had a terminal (else exit 9)
    assert data == OWN_BYTES

"""run, cancel, logs and status say what happened, whatever moment a cancel comes at (issue 16:
5, 6, 7, 11, 17): against a real sshd, real tmux and the deployed wrapper."""

# ruff: noqa: F811 (deployed: a fixture of test_jobs_remote, imported, then asked for by name)

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Lab, poll, sp, sp_json
from conftest import job_state as state
from sshlab import run_as
from test_jobs_remote import SERVER, alive, connect, deployed  # noqa: F401 (a fixture)

from solverpilot_deploy.remote import code_name, code_number, parse_framed, step_script


def sp_process(lab: Lab, trusted: Path, *argv: str) -> subprocess.Popen[str]:
    """sp-deploy in its own process (for what runs while another command runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "solverpilot_deploy", *argv[:2], *connect(lab, trusted), *argv[2:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], seconds: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=seconds)
    return process.returncode, out, err


def db_row(home: Path, job_id: str) -> tuple[object, ...] | None:
    with sqlite3.connect(home / SERVER / "server.db") as db:
        row: tuple[object, ...] | None = db.execute(
            "SELECT status, exit_code FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return row


def user_file(lab: Lab, path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    shutil.chown(path, lab.user.pw_uid, lab.user.pw_gid)


def user_processes_running(lab: Lab, needle: str) -> list[int]:
    """The test user's live processes whose command line holds ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != lab.user.pw_uid:
                continue
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in line and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def fresh_tmux(lab: Lab, deployed: Path) -> Path:
    """The test user's tmux server is not running: the next run starts one (and reads
    ~/.tmux.conf); `deployed` kills it at teardown."""
    run_as(lab.user, "tmux", "kill-server")
    return deployed


# ---- item 5: cancel while run is still starting the job ----


def test_cancel_before_the_launcher_runs_the_wrapper_records_it_and_the_job_never_runs(
    capsys: pytest.CaptureFixture[str], lab: Lab, fresh_tmux: Path, trusted: Path
) -> None:
    """run's tmux is held in its start-up (a ~/.tmux.conf whose run-shell waits for a file the
    test removes): the id is claimed, no state yet. cancel decides first: its record, in both
    stores; the launcher then never runs the wrapper, and run says so."""
    home = fresh_tmux
    hold = home / "hold-tmux"
    hold.touch()
    conf = home / ".tmux.conf"
    user_file(lab, conf, f'run-shell "while [ -e {hold} ]; do sleep 0.05; done"\n')
    marker = home / SERVER / "scratch" / "ran"
    try:
        run = sp_process(lab, trusted, "run", lab.a.spec, "--id", "job-early", "--",
                         "sh", "-c", f"touch {marker}; sleep 300")  # fmt: skip
        poll(lambda: (home / SERVER / "run" / "job-early").is_dir(), 30, "run claims the id")
        code, out, err = sp(capsys, "cancel", lab.a.spec, "job-early", *connect(lab, trusted))
        assert (code, out) == (
            0,
            "job-early failed exit 143 signal TERM (it never started: sp-deploy wrote this "
            "record)\n",
        ), err
        final = state(home, "job-early")
        assert (final["status"], final["exit_code"], final["signal"], final["pid"]) == (
            "failed", 143, "TERM", None
        )  # fmt: skip
        assert "cancelled before it started" in str(final["recorded_by"])
        hold.unlink()
        code, out, err = finish(run)
        assert (code, out) == (1, ""), err
        assert "job-early was cancelled before it started: it never ran" in err
        poll(lambda: not (home / SERVER / "run" / "job-early").exists(), 20, "claim removed")
        poll(lambda: "solverpilot" not in run_as(lab.user, "tmux", "ls").stdout, 20, "no session")
        assert not marker.exists()  # the job never ran
        assert state(home, "job-early")["recorded_by"] == final["recorded_by"]
        if (home / SERVER / "server.db").exists():
            assert db_row(home, "job-early") == ("failed", 143)
    finally:
        hold.unlink(missing_ok=True)
        conf.unlink(missing_ok=True)


def test_cancel_while_the_wrapper_starts_waits_for_it_and_stops_it(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    deployed: Path,
    trusted: Path,
) -> None:
    """The launcher has decided to run the wrapper, which is slow to start (a shim in its place
    waits for a file): cancel waits for its state, then stops the job as usual."""
    bin_dir = deployed / ".solverpilot" / "bin"
    real = bin_dir / "real_wrapper.sh"
    shutil.copy2(bin_dir / "job_wrapper.sh", real)
    shutil.chown(real, lab.user.pw_uid, lab.user.pw_gid)
    hold = deployed / "hold-wrapper"
    hold.touch()
    user_file(
        lab,
        bin_dir / "job_wrapper.sh",
        f'#!/bin/sh\nwhile [ -e {hold} ]; do sleep 0.05; done\nexec {real} "$@"\n',
        0o755,
    )
    pids = deployed / SERVER / "scratch" / "pids"
    run = sp_process(lab, trusted, "run", lab.a.spec, "--id", "job-slow", "--",
                     "sh", "-c", f'sleep 300 & echo "$$ $!" > {pids}; wait')  # fmt: skip
    claim = deployed / SERVER / "run" / "job-slow"
    poll(lambda: (claim / "decided").is_dir(), 30, "the launcher decides to run the wrapper")
    cancel = sp_process(lab, trusted, "cancel", lab.a.spec, "job-slow")
    hold.unlink()
    code, out, err = finish(cancel)
    assert (code, out) == (0, "job-slow failed exit 143 signal TERM\n"), err
    code, out, err = finish(run)
    assert (code, out) == (0, "job-slow\n"), err  # it did start
    final = state(deployed, "job-slow")
    assert (final["status"], final["exit_code"], final["signal"]) == ("failed", 143, "TERM")
    assert isinstance(final["pid"], int) and not alive(final["pid"])
    if pids.exists():  # the job may have been stopped before it wrote them
        for pid in pids.read_text().split():
            assert not alive(int(pid))


def test_cancel_at_random_moments_of_a_start_always_ends_in_one_final_record(
    lab: Lab,
    deployed: Path,
    trusted: Path,
) -> None:
    """N runs (SP_STRESS_RUNS / 15, at least 5), each cancelled at a random moment after
    run was started: every job ends with a final record (failed 143 TERM, by its wrapper or
    by cancel) in both stores, run says what happened, and no process of any job is left."""
    runs = max(5, int(os.environ.get("SP_STRESS_RUNS", "300")) // 15)
    scratch = deployed / SERVER / "scratch"
    rng = random.Random(os.environ.get("SP_SEED", secrets.token_hex(4)))
    outcomes: dict[str, int] = {}
    for n in range(runs):
        job_id = f"s{n:03d}-stress"  # tmux names a session by the first 8 characters
        run = sp_process(lab, trusted, "run", lab.a.spec, "--id", job_id, "--",
                         "sh", "-c", f"touch {scratch}/{job_id}; exec sleep 300")  # fmt: skip
        time.sleep(rng.uniform(0, 1.5))  # a random moment, not a synchronisation
        # once the id is claimed (the claim goes only once a state is there), cancel finds it
        claimed = (deployed / SERVER / "run" / job_id).exists() or (
            deployed / SERVER / "jobs" / f"{job_id}.status"
        ).exists()
        code, out, err = finish(sp_process(lab, trusted, "cancel", lab.a.spec, job_id))
        run_code, run_out, run_err = finish(run)
        if code == 1 and "no job" in err:  # before run had claimed the id: once it has run
            assert not claimed, (job_id, err)
            assert run_code == 0, run_err
            code, out, err = finish(sp_process(lab, trusted, "cancel", lab.a.spec, job_id))
        assert code == 0, (job_id, out, err)
        assert out.startswith(f"{job_id} failed exit 143 signal TERM"), out
        if run_code == 1:
            assert "cancelled before it started" in run_err, run_err
            assert not (scratch / job_id).exists()
        else:
            assert (run_code, run_out) == (0, f"{job_id}\n"), run_err
        final = state(deployed, job_id)
        assert (final["status"], final["exit_code"], final["signal"]) == ("failed", 143, "TERM")
        assert db_row(deployed, job_id) == ("failed", 143)
        key = "claimed" if claimed else "not yet claimed"
        outcomes[key] = outcomes.get(key, 0) + 1
    poll(lambda: not user_processes_running(lab, "sleep 300"), 20, "no job process is left")
    assert not list((deployed / SERVER / "run").iterdir())  # no claim left behind
    print(outcomes)


# ---- item 11: a tmux server that exits at once ----


def test_a_tmux_that_exits_unattached_is_no_start_and_frees_the_id(
    capsys: pytest.CaptureFixture[str], lab: Lab, fresh_tmux: Path, trusted: Path
) -> None:
    home = fresh_tmux
    conf = home / ".tmux.conf"
    user_file(lab, conf, "set -g exit-unattached on\n")
    try:
        code, out, err = sp(capsys, "run", lab.a.spec, "--id", "job-unatt",
                            *connect(lab, trusted), "--", "true")  # fmt: skip
        assert (code, out) == (1, ""), err
        assert "the job never started" in err and "exit-unattached" in err
        assert "the id is free" in err
        assert not (home / SERVER / "run" / "job-unatt").exists()
        assert not (home / SERVER / "jobs" / "job-unatt.status").exists()
    finally:
        conf.unlink()
    run_as(lab.user, "tmux", "kill-server")
    code, out, err = sp(capsys, "run", lab.a.spec, "--id", "job-unatt", *connect(lab, trusted),
                        "--", "true")  # fmt: skip
    assert (code, out) == (0, "job-unatt\n"), err  # the id was free


# ---- items 6 and 7: logs -f follows to the end, and no further ----


def test_logs_follow_of_a_lost_job_returns(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    deployed: Path,
    trusted: Path,
    pids: Path,
) -> None:
    job = f'echo hello; echo "$$" > {pids}; exec sleep 300'
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-lost", *connect(lab, trusted),
                      "--", "sh", "-c", job)  # fmt: skip
    assert code == 0, err
    poll(lambda: pids.exists() and pids.read_text().strip(), 20, "the job runs")
    wrapper = state(deployed, "job-lost")["pid"]
    assert isinstance(wrapper, int)
    os.kill(wrapper, signal.SIGKILL)
    os.kill(int(pids.read_text()), signal.SIGKILL)
    poll(lambda: not alive(wrapper), 10, "the wrapper is gone")
    logs = sp_process(lab, trusted, "logs", lab.a.spec, "job-lost", "-f")
    try:
        code, out, err = finish(logs, 30)
    except subprocess.TimeoutExpired:
        logs.kill()
        pytest.fail("logs -f of a lost job did not return")
    # the job's bytes alone: not the launcher shell's "Killed" for its wrapper (helper-24's
    # finding 11: the log said "hello\nKilled\n")
    assert code == 1 and out == "hello\n", out
    assert (deployed / SERVER / "logs" / "job-lost.log").read_bytes() == b"hello\n"
    assert "job job-lost is lost: its wrapper is gone" in err
    code, jobs = sp_json(capsys, "status", lab.a.spec, "job-lost", *connect(lab, trusted))
    assert jobs[0]["status"] == "lost"


def test_logs_follow_shows_the_last_words_of_a_term_handler_and_status_says_stopping(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    deployed: Path,
    trusted: Path,
) -> None:
    """A solver that saves on TERM: the wrapper records the stop at once, the handler runs on
    (until the test removes a file) and prints "saved". Meanwhile status says "stopping";
    logs -f, started before the cancel, follows until the wrapper has exited."""
    (deployed / ".bashrc").write_text("export SOLVERPILOT_KILL_GRACE=120\n")  # the test's pace
    hold = deployed / SERVER / "scratch" / "hold"
    hold.touch()
    ready = deployed / SERVER / "scratch" / "ready"
    handler = f"trap 'while [ -e {hold} ]; do sleep 0.05; done; echo saved; exit 0' TERM"
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "job-save", *connect(lab, trusted), "--",
        "sh", "-c", f"{handler}; echo working; touch {ready}; while :; do sleep 0.1; done",
    )  # fmt: skip
    assert code == 0, err
    poll(ready.exists, 20, "the job runs")
    logs = sp_process(lab, trusted, "logs", lab.a.spec, "job-save", "-f")
    cancel = sp_process(lab, trusted, "cancel", lab.a.spec, "job-save")
    poll(lambda: state(deployed, "job-save")["status"] == "failed", 20, "the stop is recorded")
    code, jobs = sp_json(capsys, "status", lab.a.spec, "job-save", *connect(lab, trusted))
    assert [(j["status"], j["exit_code"], j["signal"]) for j in jobs] == [("stopping", 143, "TERM")]
    code, out, err = sp(capsys, "status", lab.a.spec, "job-save", *connect(lab, trusted))
    assert "stopping" in out
    hold.unlink()
    code, out, err = finish(logs)
    assert code == 143, err  # as the job's record says it ended
    lines = out.replace("\r\n", "\n").splitlines()
    assert lines[:1] == ["working"] and "saved" in lines, lines
    assert finish(cancel)[0] == 0
    code, jobs = sp_json(capsys, "status", lab.a.spec, "job-save", *connect(lab, trusted))
    assert jobs[0]["status"] == "failed"
    (deployed / ".bashrc").unlink()


def run_step_here(lab: Lab, step: str, *args: str) -> tuple[int, tuple[str, ...], float]:
    """A remote step run on this machine as the test user, as sp-deploy runs it (no ssh, so
    its own time is measured): its status, lines and seconds."""
    token = secrets.token_hex(8)
    start = time.monotonic()
    done = run_as(lab.user, "/bin/sh", "-s", "--", token, *args, input=step_script(step),
                  cwd="/")  # fmt: skip
    seconds = time.monotonic() - start
    framed = parse_framed(token, done.stdout)
    assert framed is not None, (done.stdout, done.stderr)
    return framed[0], framed[1], seconds


def test_cancel_waits_its_whole_wait_not_whole_seconds_of_the_host_clock(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    deployed: Path,
    trusted: Path,
) -> None:
    (deployed / ".bashrc").write_text("export SOLVERPILOT_KILL_GRACE=60\n")
    pids = deployed / SERVER / "scratch" / "pids"
    deaf = f"trap '' TERM; echo $$ > {pids}; while :; do sleep 0.1; done"
    try:
        code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-deaf3", *connect(lab, trusted),
                          "--", "sh", "-c", deaf)  # fmt: skip
        assert code == 0, err
        for wait in ("3", "1", "1", "1"):  # the step itself, timed without ssh
            status, lines, seconds = run_step_here(lab, "cancel", "job-deaf3", wait)
            assert code_name(status) == "still_running", lines
            assert seconds >= int(wait), (wait, seconds)
            assert seconds < int(wait) + 2
        start = time.monotonic()
        code, _, err = sp(capsys, "cancel", lab.a.spec, "job-deaf3", "--wait", "3",
                            *connect(lab, trusted))  # fmt: skip
        assert code == 1 and "job job-deaf3 still runs 3 s after TERM" in err
        assert time.monotonic() - start >= 3
    finally:
        (deployed / ".bashrc").unlink(missing_ok=True)
        if pids.exists() and pids.read_text().strip():  # the job, in its own group
            os.killpg(int(pids.read_text()), signal.SIGKILL)


# ---- item 17: what is left of a lost job ----


@pytest.fixture
def pids(deployed: Path) -> Iterator[Path]:
    """A file where a job writes the pids of its process groups: killed at teardown, since
    these jobs outlive their wrapper."""
    path = deployed / SERVER / "scratch" / "pids"
    yield path
    for n, pid in enumerate(path.read_text().split() if path.exists() else ()):
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if n == 0 else os.kill)(int(pid), signal.SIGKILL)


def test_cancel_force_stops_what_is_left_of_a_lost_job_and_records_it(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    deployed: Path,
    trusted: Path,
    pids: Path,
) -> None:
    # a process that left the job's group (setsid) still holds the lock: it is stopped too
    escapes = f'setsid sleep 301 & a=$!; sleep 300 & echo "$$ $! $a" > {pids}; wait'
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-orphan", *connect(lab, trusted),
                      "--", "sh", "-c", escapes)  # fmt: skip
    assert code == 0, err
    poll(lambda: pids.exists() and len(pids.read_text().split()) == 3, 20, "the job runs")
    job_pids = [int(p) for p in pids.read_text().split()]
    wrapper = state(deployed, "job-orphan")["pid"]
    assert isinstance(wrapper, int)
    os.kill(wrapper, signal.SIGKILL)
    poll(lambda: not alive(wrapper), 10, "the wrapper is gone")
    code, jobs = sp_json(capsys, "status", lab.a.spec, "job-orphan", *connect(lab, trusted))
    assert jobs[0]["lost_reason"] == "wrapper gone, its job still holds the lock"
    # a plain cancel signals nothing, names what still runs, and the way to stop it
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-orphan", *connect(lab, trusted))
    assert code == 1 and "is lost: its wrapper is gone, but processes of it still run" in err
    for pid in job_pids:
        assert str(pid) in err and alive(pid)
    assert "cancel --force job-orphan" in err
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-orphan", "--force",
                        *connect(lab, trusted))  # fmt: skip
    assert code == 0, err
    assert out.startswith("job-orphan failed exit 143 signal TERM (its wrapper was gone: ")
    signalled = out[out.index("signalled ") + 10 : out.index(" and wrote")].split(", ")
    assert sorted(signalled) == sorted(
        [f"{job_pids[0]} sh", f"{job_pids[1]} sleep", f"{job_pids[2]} sleep"]
    )
    for pid in job_pids:
        assert not alive(pid)
    final = state(deployed, "job-orphan")
    assert (final["status"], final["exit_code"], final["signal"]) == ("failed", 143, "TERM")
    assert final["pid"] == wrapper and "--force" in str(final["recorded_by"])
    assert db_row(deployed, "job-orphan") == ("failed", 143)
    code, jobs = sp_json(capsys, "status", lab.a.spec, "job-orphan", *connect(lab, trusted))
    assert (jobs[0]["status"], jobs[0]["lost_reason"]) == ("failed", None)
    # a lost job of which nothing runs: nothing to force
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-orphan", "--force",
                        *connect(lab, trusted))  # fmt: skip
    assert code == 0 and "it had already ended" in out


def test_cancel_force_kills_what_ignores_term_after_the_wait(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    deployed: Path,
    trusted: Path,
    pids: Path,
) -> None:
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "job-deafo", *connect(lab, trusted), "--",
        "sh", "-c", f"trap '' TERM; echo $$ > {pids}; while :; do sleep 0.1; done",
    )  # fmt: skip
    assert code == 0, err
    poll(lambda: pids.exists() and pids.read_text().strip(), 20, "the job runs")
    job_pid = int(pids.read_text())
    wrapper = state(deployed, "job-deafo")["pid"]
    assert isinstance(wrapper, int)
    os.kill(wrapper, signal.SIGKILL)
    poll(lambda: not alive(wrapper), 10, "the wrapper is gone")
    start = time.monotonic()
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-deafo", "--force", "--wait", "1",
                        *connect(lab, trusted))  # fmt: skip
    assert code == 0, err
    assert time.monotonic() - start >= 1
    assert out.startswith("job-deafo failed exit 137 signal KILL"), out
    assert not alive(job_pid)
    assert db_row(deployed, "job-deafo") == ("failed", 137)


# ---- the rules themselves, without a host ----


def test_stopping_is_a_final_record_whose_own_wrapper_still_runs() -> None:
    from solverpilot_deploy.status import parse_status_output

    record = '|{"id":"%s","status":"failed","pid":42,"start_ticks":7,"boot_id":"%s"%s}'
    lines = ["@boot B"]
    for job_id, live, ticks, boot, more in (
        ("stops", "yes", "7", "B", ""),  # its wrapper: stopping
        ("reused", "yes", "8", "B", ""),  # pid 42 is another process now
        ("ended", "no", "-", "B", ""),
        ("rebooted", "yes", "7", "A", ""),  # another boot: not that wrapper
        ("slurm", "yes", "7", "B", ',"slurm_job_id":"5"'),  # its pid is a compute node's
    ):
        lines += [f"@job {job_id} {live} {ticks}", record % (job_id, boot, more)]
    jobs = {job.id: job.status for job in parse_status_output(lines)}
    assert jobs == {
        "stops": "stopping", "reused": "failed", "ended": "failed", "rebooted": "failed",
        "slurm": "failed",
    }  # fmt: skip


def test_what_logs_follow_waits_for() -> None:
    from solverpilot_deploy.jobs import LogChunk

    def chunk(status: str, session: bool, wrapper: bool | None) -> LogChunk:
        return LogChunk(b"", 0, status, session, False, wrapper)

    assert chunk("failed", False, True).more_to_come  # a stop under way
    assert not chunk("failed", True, False).more_to_come  # another job's session of that name
    assert chunk("running", True, False).more_to_come  # its launcher ends now
    lost = chunk("running", False, False)
    assert not lost.more_to_come and lost.tmux_lost
    assert chunk("running", False, None).more_to_come  # a state without start ticks
    assert chunk("", True, None).more_to_come and not chunk("", False, None).more_to_come


def test_what_an_ended_job_left_holding_its_lock_is_named_and_stopped_by_force(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path, pids: Path
) -> None:
    """A process that left the job's group (setsid) outlives a stop: the record is final, the
    lock still held. cancel names it instead of "nothing changed"; --force stops it and keeps
    the final record as it is."""
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "job-left", *connect(lab, trusted),
                      "--", "sh", "-c", f'setsid sleep 300 & echo "$!" > {pids}; wait')  # fmt: skip
    assert code == 0, err
    poll(lambda: pids.exists() and pids.read_text().strip(), 20, "the job runs")
    escaped = int(pids.read_text())
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-left", *connect(lab, trusted))
    assert (code, out) == (0, "job-left failed exit 143 signal TERM\n"), err
    assert alive(escaped)  # out of the group the wrapper stops
    record = (deployed / SERVER / "jobs" / "job-left.status").read_bytes()
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-left", *connect(lab, trusted))
    assert code == 1, out
    said = f"has ended (failed), but processes it left still hold its lock ({escaped} sleep);"
    assert said in err
    assert "cancel --force job-left" in err and alive(escaped)
    code, out, err = sp(capsys, "cancel", lab.a.spec, "job-left", "--force",
                        *connect(lab, trusted))  # fmt: skip
    assert (code, out) == (
        0,
        f"job-left failed exit 143 signal TERM (it had ended; sp-deploy signalled what it left: "
        f"{escaped} sleep)\n",
    ), err
    assert not alive(escaped)
    assert (deployed / SERVER / "jobs" / "job-left.status").read_bytes() == record


def test_names_a_host_sends_reach_no_terminal_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    """held= and signalled= come from the host: a hostile one cannot send escapes through them."""
    from solverpilot_deploy import jobs
    from solverpilot_deploy.remote import StepResult

    osc = "1 x\x1b]52;c;cHduZWQ=\x07"
    answers = iter(
        [
            StepResult(code_number("lock_held"), (f"held={osc}",), ""),
            StepResult(0, (f"signalled={osc}",), ""),
        ]
    )
    monkeypatch.setattr(jobs, "run_step", lambda *args, **kwargs: next(answers))
    with pytest.raises(jobs.JobError) as error:
        jobs.cancel_job(None, "j", 1, 10)  # type: ignore[arg-type]
    assert "\x1b" not in str(error.value) and "\\x1b]52" in str(error.value)
    done = jobs.cancel_job(None, "j", 1, 10, force=True)  # type: ignore[arg-type]
    assert done.signalled == ("1 x\\x1b]52;c;cHduZWQ=\\x07",)


def _pids(match: Callable[[list[str]], bool]) -> list[int]:
    """The pids whose argv ``match`` accepts."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if raw and match([word.decode(errors="replace") for word in raw.split(b"\0") if word]):
            found.append(int(entry))
    return found


def _delayed(pids: list[int], call: str, micros: int, nth: int) -> subprocess.Popen[bytes]:
    """strace holding the ``nth`` ``call`` of ``pids`` (and their children) ``micros`` long."""
    strace = shutil.which("strace")
    assert strace, "strace is needed (tests/run_all.sh installs it)"
    attach = [word for pid in pids for word in ("-p", str(pid))]
    inject = f"inject={call}:delay_enter={micros}:when={nth}"
    return subprocess.Popen([strace, "-qq", "-f", "-o", "/dev/null", *attach, "-e", inject])


def test_a_cancel_that_wins_the_start_is_kept_whatever_order_the_run_step_cleans_up_in(
    lab: Lab, deployed: Path, trusted: Path
) -> None:
    """The interleaving a busy host can give (forced with strace's delay injection, as a
    process descheduled at the worst moment): the launcher is held just before it decides;
    cancel decides first and writes its record; the run step, seeing that record, removes the
    claim, its removal held half-way. The launcher then decides in what is left of the
    claim: it must not run the job (it did: both commands said it never ran while it ran).
    strace attaches to a launcher already started: on a loaded machine it can decide before
    the hold is in place (CI saw it once); such a try is cancelled and another made."""
    for _ in range(5):
        job_id = f"race{secrets.token_hex(3)}"
        aimed = _race_cancel_and_start(lab, deployed, trusted, job_id)
        if aimed is not None:
            break
    else:
        pytest.fail("in 5 tries, strace never held the launcher before it decided")
    out, run_code, run_err = aimed
    final = state(deployed, job_id)
    assert (final["status"], final["exit_code"], final["signal"]) == ("failed", 143, "TERM"), final
    assert db_row(deployed, job_id) == ("failed", 143)
    assert not user_processes_running(lab, "sleep 60"), "the job runs"
    if "never started" in out:
        assert run_code == 1 and "cancelled before it started" in run_err, run_err


def _race_cancel_and_start(
    lab: Lab, deployed: Path, trusted: Path, job_id: str
) -> tuple[str, int, str] | None:
    """One try of the race above: cancel's output, and run's exit code and stderr; None when
    the launcher had decided before strace could hold it (the job then runs: it is stopped)."""
    run = sp_process(lab, trusted, "run", lab.a.spec, "--id", job_id, "--", "sleep", "60")
    launcher: list[int] = []

    def found_launcher() -> bool:
        launcher[:] = _pids(lambda argv: argv == ["/bin/sh", "./launch", job_id])
        return bool(launcher)

    poll(found_launcher, 30, "the launcher")
    tracers = [_delayed(launcher, "mkdir", 4_000_000, 1)]
    decided = deployed / SERVER / "run" / job_id / "decided"
    holding, gone = ["mkdir", "decided"], ["/bin/sh", "./launch", job_id]
    try:
        steps = _pids(lambda argv: argv[:3] == ["/bin/sh", "-s", "--"] and job_id in argv[3:5])
        if steps:
            tracers.append(_delayed(steps, "unlinkat", 6_000_000, 2))
        held = False

        def held_or_missed() -> bool:
            nonlocal held
            held = bool(_pids(lambda argv: argv[:2] == holding))
            return held or decided.exists() or not _pids(lambda argv: argv == gone)

        poll(held_or_missed, 30, "the launcher's mkdir, or its decision")
        if not held or not steps:  # it decided first (the step may have ended): no aim
            for tracer in tracers:
                tracer.terminate()
            finish(run, 90)
            code, out, err = finish(sp_process(lab, trusted, "cancel", lab.a.spec, job_id))
            assert code == 0, (out, err)
            return None
        cancel = sp_process(lab, trusted, "cancel", lab.a.spec, job_id, "--wait", "5")
        code, out, err = finish(cancel)
        assert code == 0 and out.startswith(f"{job_id} failed exit 143 signal TERM"), (out, err)
        run_code, _, run_err = finish(run, 90)
        poll(lambda: not _pids(lambda argv: argv == gone), 30, "the launcher's end")
    finally:
        for tracer in tracers:
            tracer.terminate()
            tracer.wait()
    return out, run_code, run_err


def test_cancel_on_a_full_disk_says_it_stopped_the_job_whose_end_nobody_could_write(
    lab: Lab, deployed: Path, trusted: Path
) -> None:
    """The server folder's disk fills while a job runs: cancel's TERM stops it, and neither
    the wrapper can write its end. cancel writes it, or says that nobody could (it said "lost:
    nothing was signalled" of a job it had just stopped)."""
    server = deployed / SERVER
    user = lab.user
    options = f"size=512k,mode=0700,uid={user.pw_uid},gid={user.pw_gid}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(server)], check=True)
    try:
        code, out, err = finish(
            sp_process(lab, trusted, "run", lab.a.spec, "--id", "full-disk", "--", "sleep", "60")
        )
        assert code == 0, err
        poll(lambda: bool(user_processes_running(lab, "sleep 60")), 30, "the job")
        with contextlib.suppress(OSError), open(server / "filler", "wb") as filler:
            while True:  # until the disk is full
                filler.write(b"\0" * 65536)
                filler.flush()
        code, out, err = finish(sp_process(lab, trusted, "cancel", lab.a.spec, "full-disk"))
        # cancel writes the end when a block is left for it, else says that nobody could
        wrote = code == 0 and "its wrapper could not record it: sp-deploy did" in out
        assert wrote or (code == 1 and "was stopped (TERM sent" in err), (out, err)
        assert "nothing was signalled" not in err
        poll(lambda: not user_processes_running(lab, "sleep 60"), 20, "the job's end")
    finally:
        subprocess.run(["umount", "-l", str(server)], check=False)


def test_run_interrupted_once_the_job_may_have_started_names_it(
    lab: Lab, deployed: Path, trusted: Path
) -> None:
    """TERM (as Ctrl-C) to run once the host launches the job: exit 130, and the job that
    may have started is named, with how to look at it (it said only "interrupted", and the
    job ran on under an id never shown)."""
    run = subprocess.Popen(
        [sys.executable, "-m", "solverpilot_deploy", "run", lab.a.spec, *connect(lab, trusted),
         "--id", "interrupted-run", "--", "sleep", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    go = deployed / SERVER / "run" / "interrupted-run" / "go"
    state_file = deployed / SERVER / "jobs" / "interrupted-run.status"
    poll(lambda: go.exists() or state_file.exists(), 30, "the launch")
    run.send_signal(signal.SIGTERM)
    code, out, err = finish(run)
    assert code == 130, (out, err)
    assert "job interrupted-run may have started: see sp-deploy status" in err, err
    finish(sp_process(lab, trusted, "cancel", lab.a.spec, "interrupted-run"))

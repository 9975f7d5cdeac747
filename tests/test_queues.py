"""Queues, dependencies, time limits, wait, restart and clean, against a real sshd with real
tmux and the deployed wrapper (README "Queues"); and the queue under stress (the last test)."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, poll, require, sp, sp_json
from conftest import job_state as state
from sshlab import run_as

SERVER = ".solverpilot-server"


def connect(lab: Lab, trusted: Path) -> tuple[str, ...]:
    return ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "60")


@pytest.fixture
def deployed(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> Iterator[Path]:
    """Host a with the wrapper pushed and a scratch folder the jobs write to."""
    require(bool(shutil.which("tmux")), "needs tmux (Debian package tmux)")
    code, results = sp_json(capsys, "push", lab.a.spec, *connect(lab, trusted))
    assert code == 0, results
    scratch = home / SERVER / "scratch"
    scratch.mkdir()
    shutil.chown(scratch, lab.user.pw_uid, lab.user.pw_gid)
    yield home
    run_as(lab.user, "tmux", "kill-server")


def marks(scratch: Path) -> list[tuple[str, str, float]]:
    """The (S|E, id, time) lines the jobs wrote: when each started and ended."""
    path = scratch / "marks"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        kind, job_id, at = line.split()
        found.append((kind, job_id, float(at)))
    return found


def most_at_once(found: list[tuple[str, str, float]]) -> int:
    now = most = 0
    for kind, _, _ in sorted(found, key=lambda m: (m[2], m[0] == "S")):
        now += 1 if kind == "S" else -1
        most = max(most, now)
    return most


def marking(
    scratch: Path, job_id: str, seconds: float, code: int = 0, gate: str = ""
) -> tuple[str, ...]:
    """A job that notes its start and end (in scratch/marks) around a sleep (after waiting
    for the file ``gate``, when given)."""
    note = f"echo KIND {job_id} $(date +%s.%N) >> {scratch}/marks"
    start, end = note.replace("KIND", "S"), note.replace("KIND", "E")
    wait = f"until [ -e {gate} ]; do sleep 0.05; done; " if gate else ""
    return ("--", "sh", "-c", f"{wait}{start}; sleep {seconds}; {end}; exit {code}")


def db_status(home: Path, job_id: str) -> str | None:
    with sqlite3.connect(home / SERVER / "server.db") as db:
        row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def test_a_two_slot_queue_runs_its_jobs_two_at_a_time_in_order_with_no_client(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    code, out, err = sp(capsys, "queue", lab.a.spec, "q2", "--slots", "2", *c)
    assert code == 0, err
    ids = [f"{n:02}-q2job" for n in range(20)]  # (the first 8 characters differ)
    for job_id in ids:
        code, out, err = sp(
            capsys, "run", lab.a.spec, "--id", job_id, "--queue", "q2", "--name", f"n {job_id}",
            *c, *marking(scratch, job_id, 0.6),
        )  # fmt: skip
        assert (code, out) == (0, f"{job_id}\n"), err
    # every sp-deploy call has ended: the host alone goes on
    poll(lambda: len(marks(scratch)) == 40, 90, "all 20 jobs ran")
    found = marks(scratch)
    assert most_at_once(found) == 2
    assert [m[1] for m in found if m[0] == "S"] == ids  # in the order of submission
    poll(lambda: all(state(deployed, i)["status"] == "completed" for i in ids), 20, "final")
    # (the DB row follows its state file: written just after it, by the wrapper or --sync)
    poll(lambda: all(db_status(deployed, i) == "completed" for i in ids), 20, "the DB rows")
    code, jobs = sp_json(capsys, "status", lab.a.spec, *c)
    assert [j["id"] for j in jobs] == ids
    assert jobs[0]["name"] == "n 00-q2job" and jobs[0]["queue"] == "q2"
    assert jobs[0]["argv"][:2] == ["sh", "-c"]
    code, queues = sp_json(capsys, "queue", lab.a.spec, *c)
    assert queues == [{"name": "q2", "slots": 2, "running": 0, "waiting": 0}]


def test_queued_jobs_show_queued_in_both_stores_with_their_place_and_cancel_stops_one(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    gate = scratch / "gate"
    # the first holds the one slot until the gate file exists
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "hold", "--queue", "one", *c,
        "--", "sh", "-c", f"until [ -e {gate} ]; do sleep 0.05; done",
    )  # fmt: skip
    assert code == 0, err
    for job_id in ("w1", "w2", "w3"):
        code, out, err = sp(
            capsys, "run", lab.a.spec, "--id", job_id, "--queue", "one", *c,
            *marking(scratch, job_id, 0),
        )  # fmt: skip
        assert code == 0, err
    poll(lambda: state(deployed, "hold")["status"] == "running", 20, "hold runs")
    for job_id in ("w1", "w2", "w3"):
        assert state(deployed, job_id)["status"] == "queued"
        assert state(deployed, job_id)["pid"] is None
        assert db_status(deployed, job_id) == "queued"
    code, jobs = sp_json(capsys, "status", lab.a.spec, *c)
    assert [(j["id"], j["status"], j["position"]) for j in jobs] == [
        ("hold", "running", None), ("w1", "queued", 1), ("w2", "queued", 2), ("w3", "queued", 3)
    ]  # fmt: skip
    code, out, err = sp(capsys, "status", lab.a.spec, *c)
    assert "queued (one #2)" in out
    # cancel of a queued job: it never starts, and its record says so
    code, out, err = sp(capsys, "cancel", lab.a.spec, "w2", *c)
    assert code == 0, err
    assert "never started" in out
    final = state(deployed, "w2")
    assert (final["status"], final["pid"], final["reason"]) == (
        "failed",
        None,
        "cancelled while queued",
    )
    assert db_status(deployed, "w2") == "failed"
    gate.touch()
    poll(lambda: state(deployed, "w3")["status"] == "completed", 30, "w3 ran")
    assert [m[1] for m in marks(scratch) if m[0] == "S"] == ["w1", "w3"]
    assert state(deployed, "w2")["status"] == "failed"  # never replaced


def test_after_runs_a_job_once_its_dependencies_completed_and_fails_it_when_one_failed(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    gate = scratch / "gate"  # d-ok runs until the test has seen "then" wait
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "d-ok", *c, *marking(scratch, "d-ok", 0, gate=str(gate))
    )
    assert code == 0, err
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "d-bad", *c, *marking(scratch, "d-bad", 1, code=4)
    )
    assert code == 0, err
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "then", "--after", "d-ok", *c,
        *marking(scratch, "then", 0),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "never", "--after", "d-ok,d-bad", "--queue", "qa", *c,
        *marking(scratch, "never", 0),
    )  # fmt: skip
    assert code == 0, err
    assert state(deployed, "then")["status"] == "queued"
    gate.touch()
    code, out, err = sp(capsys, "wait", lab.a.spec, "then", "never", *c)
    assert code == 1, (out, err)
    assert state(deployed, "then")["status"] == "completed"
    never = state(deployed, "never")
    assert never["status"] == "failed" and never["pid"] is None
    assert never["reason"] == "job d-bad, which it waits for, ended failed (exit 4)"
    poll(lambda: db_status(deployed, "never") == "failed", 20, "its DB row")  # after its file
    started = [m[1] for m in marks(scratch) if m[0] == "S"]
    assert "never" not in started and started.index("then") > started.index("d-ok")
    ends = {m[1]: m[2] for m in marks(scratch) if m[0] == "E"}
    starts = {m[1]: m[2] for m in marks(scratch) if m[0] == "S"}
    assert starts["then"] >= ends["d-ok"]
    # an unknown id is a usage error, and nothing is submitted
    code, out, err = sp(
        capsys, "run", lab.a.spec, "--id", "orphan", "--after", "nosuch", *c, "--", "true"
    )
    assert code == 2 and "--after nosuch: no such job" in err, err
    assert not (deployed / SERVER / "jobs" / "orphan.status").exists()
    assert not (deployed / SERVER / "run" / "orphan").exists()


def test_wait_exits_with_the_jobs_own_code_and_logs_f_too(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    c = connect(lab, trusted)
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "seven", *c, "--", "sh", "-c", "sleep 1; exit 7"
    )
    assert code == 0, err
    code, out, err = sp(capsys, "wait", lab.a.spec, "seven", *c, "--timeout", "0.5")
    assert code == 124 and "not all ended" in err
    code, out, err = sp(capsys, "wait", lab.a.spec, "seven", *c)
    assert code == 7 and out == "seven failed exit 7\n", (out, err)
    code, out, err = sp(capsys, "logs", lab.a.spec, "seven", "-f", *c)
    assert code == 7, err
    code, out, err = sp(capsys, "wait", lab.a.spec, "seven", "nosuch", *c)
    assert code == 1 and "no job nosuch" in err


def test_a_time_limit_sends_int_before_it_then_stops_the_job_and_says_so(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    solver = (
        f"trap 'echo saved >> {scratch}/said' INT; "
        "while :; do sleep 0.1; done"  # saves on INT, goes on until stopped
    )
    began = time.monotonic()
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "limited", "--time", "0:04", "--save-before", "2", *c,
        "--", "sh", "-c", solver,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = sp(capsys, "wait", lab.a.spec, "limited", *c)
    took = time.monotonic() - began
    assert code == 143, (out, err)
    final = state(deployed, "limited")
    assert (final["status"], final["signal"], final["reason"]) == (
        "failed", "TERM", "time limit (4 s)"
    )  # fmt: skip
    assert (scratch / "said").read_text() == "saved\n"
    assert 3.5 < took < 12, took
    assert 3.9 <= float(final["wall_s"]) < 6  # type: ignore[arg-type]


def test_when_every_process_of_the_user_dies_as_in_a_reboot_the_next_status_starts_the_queue(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """SIGKILL of the tmux server, the launchers, the wrappers and the jobs at once (what a
    reboot leaves, but for the boot id): no job end will come to advance the queue. The
    queued jobs are still queued, the running one is lost, and the next status starts them."""
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    gate = scratch / "gate"
    for job_id in ("r-a", "r-b", "r-c"):
        code, _, err = sp(
            capsys, "run", lab.a.spec, "--id", job_id, "--queue", "reboot", *c,
            *marking(scratch, job_id, 0, gate=str(gate)),
        )  # fmt: skip
        assert code == 0, err
    poll(lambda: state(deployed, "r-a")["status"] == "running", 20, "r-a runs")
    subprocess.run(["pkill", "-KILL", "-u", lab.user.pw_name], check=False)
    poll(lambda: not alive_of(lab.user.pw_uid), 20, "every process of the user gone")
    gate.touch()
    assert [state(deployed, i)["status"] for i in ("r-b", "r-c")] == ["queued", "queued"]
    code, jobs = sp_json(capsys, "status", lab.a.spec, *c)
    # lost; or, when the tmux server died first, its wrapper got the pane's HUP and recorded it
    assert (jobs[0]["id"], jobs[0]["status"], jobs[0]["signal"]) in (
        ("r-a", "lost", None), ("r-a", "failed", "HUP")
    )  # fmt: skip
    poll(lambda: state(deployed, "r-c")["status"] == "completed", 30, "the queue went on")
    assert state(deployed, "r-b")["status"] == "completed"
    assert [m[1] for m in marks(scratch) if m[0] == "S"] == ["r-b", "r-c"]


def alive_of(uid: int) -> bool:
    """A process of ``uid`` is alive (a zombie does not count)."""
    for entry in os.listdir("/proc"):
        try:
            mine = entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
            if mine and Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                return True
        except OSError:
            continue
    return False


def test_run_refuses_what_cannot_work_before_any_connection(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for options, said in (
        (("--queue", "a/b"), "not a queue name"),
        (("--save-before", "5"), "--save-before needs --time"),
        (("--time", "0:05", "--save-before", "5"), "shorter than --time"),
        (("--time", "1:75"), "MINUTES or MINUTES:SECONDS"),
        (("--after", "bad id"), "not a job id"),
        (("--via", "slurm", "--queue", "q"), "Slurm queues the job"),
    ):
        code, _out, err = sp(capsys, "run", "nohost.invalid", *options, "--", "true")
        assert code == 2 and said in err.strip().splitlines()[-1], (options, err)
    # the host's sh counts in 64 bits: an age it would overflow on is refused here
    code, _out, err = sp(capsys, "clean", "nohost.invalid", "--older-than", "20000000000000w")
    assert code == 2 and "at most 520w" in err


def test_restart_runs_an_ended_jobs_command_again_and_clean_removes_ended_records(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    odd = 'it\'s a "word" $HOME; \\ \t end'  # travels as it is, through the spec too
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "first", "--name", "the first", "--cwd", str(scratch),
        *c, "--", "sh", "-c", 'printf "%s\\n" "$1" >> said; pwd >> said; exit 5', "sh", odd,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = sp(capsys, "wait", lab.a.spec, "first", *c)
    assert code == 5, err
    code, out, err = sp(capsys, "restart", lab.a.spec, "first", "--id", "again", *c)
    assert (code, out) == (0, "again\n"), err
    code, out, err = sp(capsys, "wait", lab.a.spec, "again", *c)
    assert code == 5, err
    assert (scratch / "said").read_text() == f"{odd}\n{scratch}\n" * 2
    code, jobs = sp_json(capsys, "status", lab.a.spec, "again", *c)
    assert (jobs[0]["restart_of"], jobs[0]["name"], jobs[0]["cwd"]) == (
        "first", "the first", str(scratch)
    )  # fmt: skip
    # a job that has not ended is not restarted; a job a waiting one names is not cleaned
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "ok", *c, "--", "true")
    assert code == 0, err
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "gate", *c, "--", "sh", "-c",
        f"until [ -e {scratch}/open ]; do sleep 0.05; done",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = sp(capsys, "restart", lab.a.spec, "gate", *c)
    assert code == 1 and "restart runs an ended job again" in err, err
    assert sp(capsys, "wait", lab.a.spec, "ok", *c)[0] == 0
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "waiter", "--after", "gate,ok", *c, "--", "true"
    )
    assert code == 0, err
    code, out, err = sp(capsys, "clean", lab.a.spec, "first", "ok", "gate", "waiter", *c)
    assert code == 1
    assert out == "removed first (failed)\n"
    assert "kept ok: a waiting job names it in --after" in err
    assert "kept gate: running" in err and "kept waiter: queued" in err
    server = deployed / SERVER
    for path in ("jobs/first.status", "jobs/first.spec", "locks/first.lock", "logs/first.log"):
        assert not (server / path).exists(), path
    assert db_status(deployed, "first") is None
    assert (server / "jobs" / "ok.status").exists() and db_status(deployed, "ok") == "completed"
    # the id is free again
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "first", *c, "--", "false")
    assert code == 0, err
    (scratch / "open").touch()
    code, out, err = sp(capsys, "wait", lab.a.spec, "waiter", "first", *c)
    assert code == 1, (out, err)  # waiter completed, first failed
    assert state(deployed, "waiter")["status"] == "completed"
    code, out, err = sp(capsys, "clean", lab.a.spec, "--status", "completed", *c)
    removed = sorted(out.splitlines())
    assert code == 0 and removed == [f"removed {i} (completed)" for i in ("gate", "ok", "waiter")]
    code, out, err = sp(capsys, "clean", lab.a.spec, "--older-than", "1h", *c)
    assert (code, out) == (0, "")
    code, out, err = sp(capsys, "clean", lab.a.spec, *c)
    assert code == 0 and sorted(out.splitlines()) == [
        "removed again (failed)",
        "removed first (failed)",
    ]
    code, jobs = sp_json(capsys, "status", lab.a.spec, *c)
    assert jobs == []


# The queue under stress, through a real sshd and tmux: jobs submitted at once from 4 clients
# into one 3-slot queue, cancels at random moments (queued, starting, running), and the queue's
# own process (the wrapper's --advance) killed at random. What must hold: never more than 3 jobs
# running at any sampled moment, every job ran at most once and only if not cancelled before it
# started, each client's jobs started in the order it submitted them, every record final in both
# stores. SP_QUEUE_STRESS_JOBS sets the number of jobs (200; 60 with CI set); SP_STRESS_SEED the
# random seed.
CLIENTS = 4
SLOTS = 3


def sp_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "solverpilot_deploy", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def processes_of(uid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of each process of ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.append((int(entry), [a.decode(errors="replace") for a in argv if a]))
    return found


def test_two_hundred_jobs_from_four_clients_cancels_and_killed_advances(
    lab: Lab,
    deployed: Path,
    trusted: Path,
) -> None:
    total = int(os.environ.get("SP_QUEUE_STRESS_JOBS") or (60 if os.environ.get("CI") else 200))
    rng = random.Random(os.environ.get("SP_STRESS_SEED"))
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    host = lab.a.spec
    done = sp_run("queue", host, "stress", "--slots", str(SLOTS), *c)
    assert done.returncode == 0, done.stderr
    uid = lab.user.pw_uid
    per_client = total // CLIENTS
    ids = {n: [f"c{n}-{k:03}" for k in range(per_client)] for n in range(CLIENTS)}
    submitted: dict[str, subprocess.CompletedProcess[str]] = {}
    cancelled: dict[str, subprocess.CompletedProcess[str]] = {}
    stop = threading.Event()
    stop_killing = threading.Event()
    most = [0]
    killed = [0]

    gate = scratch / "gate"  # closed for the first half of the submissions: the queue fills
    # and cancels find jobs waiting in it; then open, they find them starting and running too

    def client(n: int) -> None:
        for k, job_id in enumerate(ids[n]):
            if k == per_client // 2:
                gate.touch()
            job = marking(scratch, job_id, round(rng.uniform(0.05, 0.5), 2), gate=str(gate))
            submitted[job_id] = sp_run("run", host, "--id", job_id, "--queue", "stress", *c, *job)

    def canceller() -> None:
        every = [i for n in ids for i in ids[n]]
        while not stop.is_set() and len(cancelled) < total // 8:
            # the newest submitted (likely still queued), or any (starting, running, ended)
            newest = list(submitted)[-1:] if rng.random() < 0.5 else []
            job_id = newest[0] if newest else rng.choice(every)
            if job_id in submitted and job_id not in cancelled:
                cancelled[job_id] = sp_run("cancel", host, job_id, *c)
            time.sleep(rng.uniform(0, 0.3))

    def final(job_id: str) -> bool:
        with contextlib.suppress(OSError):
            text = (deployed / SERVER / "jobs" / f"{job_id}.status").read_text()
            return '"status":"completed"' in text or '"status":"failed"' in text
        return False

    def sampler() -> None:  # wrappers running jobs (not --advance), by job id: not those whose
        # record is final (their job has ended: the wrapper is only exiting, and the queue
        # counts its slot free once its last act, --advance ID, runs)
        while not stop.is_set():
            running = set()
            for _, argv in processes_of(uid):  # bash -p PATH/job_wrapper.sh ID COMMAND...
                at = [k for k, a in enumerate(argv[:4]) if a.endswith("/job_wrapper.sh")]
                if at and len(argv) > at[0] + 1 and not argv[at[0] + 1].startswith("-"):
                    running.add(argv[at[0] + 1])
            running = {job_id for job_id in running if not final(job_id)}
            most[0] = max(most[0], len(running))
            time.sleep(0.01)

    def killer() -> None:  # the queue's own process, at random moments
        while not stop_killing.is_set():
            for pid, argv in processes_of(uid):
                if "--advance" in argv and rng.random() < 0.3:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed[0] += 1
                    except ProcessLookupError:
                        pass
            time.sleep(rng.uniform(0, 0.05))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    helpers = [threading.Thread(target=f) for f in (canceller, sampler, killer)]
    for thread in threads + helpers:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for n in ids for i in ids[n]]
    refused = {i: p.stderr for i, p in submitted.items() if p.returncode != 0}
    assert not refused, refused
    # the jobs run on while advances are still killed, then the killer stops: what a killed
    # advance left undone, the next one does (a job's end, or any command on the host)
    poll(lambda: len(marks(scratch)) >= total, 120, "most jobs to run while advances die")
    stop_killing.set()
    helpers[2].join()
    try:
        poll(
            lambda: (
                sp_run("status", host, *c).returncode == 0
                and all(state(deployed, i)["status"] in ("completed", "failed") for i in every)
            ),
            240,
            "every record final",
        )
    finally:
        stop.set()
        for thread in helpers:
            thread.join()
    found = marks(scratch)
    starts: dict[str, list[float]] = {}
    for kind, job_id, at in found:
        if kind == "S":
            starts.setdefault(job_id, []).append(at)
    assert 0 < most[0] <= SLOTS, most[0]
    assert max(len(v) for v in starts.values()) == 1  # each job ran at most once
    never = {i for i, p in cancelled.items() if p.returncode == 0 and "never started" in p.stdout}
    said = {i: p.stdout + p.stderr for i, p in cancelled.items()}
    assert never, ("no cancel came while a job was queued", said)
    assert not never & set(starts), never & set(starts)
    for job_id in never:
        record = state(deployed, job_id)
        assert (record["status"], record["pid"]) == ("failed", None)
    for job_id in set(every) - set(cancelled):
        assert job_id in starts, f"{job_id} never ran: {state(deployed, job_id)}"
        assert state(deployed, job_id)["status"] == "completed"
    for n in range(CLIENTS):  # each client's jobs started in the order it submitted them
        ran = [starts[i][0] for i in ids[n] if i in starts]
        late = [(a, b) for a, b in itertools.pairwise(ran) if b < a - 0.25]
        assert not late, late
    with sqlite3.connect(deployed / SERVER / "server.db") as db:
        rows = dict(db.execute("SELECT id, status FROM jobs"))
    assert {i: rows.get(i) for i in every} == {i: state(deployed, i)["status"] for i in every}
    print(f"stress: {total} jobs, {len(never)} cancelled queued, {killed[0]} advances killed, "
          f"most running at once {most[0]}")  # fmt: skip


def test_found_by_an_adversary_limits_prefixes_places_and_lost_jobs(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """Each fixed: --time without --save-before sent INT at the start; a next job whose id
    shared its first 8 characters with the ended one stalled the queue; status ID numbered the
    places among the asked ids; a lost job's process that held its lock lost its slot."""
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    # --time alone: no INT before the limit; the stop at it
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "plain-limit", "--time", "0:03", *c,
        "--", "sh", "-c", "while :; do sleep 0.1; done",
    )  # fmt: skip
    assert code == 0, err
    # ids sharing their first 8 characters, one slot: the host alone runs them all
    for n in range(3):
        code, _, err = sp(
            capsys, "run", lab.a.spec, "--id", f"campaign-{n}", "--queue", "pfx", *c,
            *marking(scratch, f"campaign-{n}", 0.2),
        )  # fmt: skip
        assert code == 0, err
    poll(
        lambda: all(state(deployed, f"campaign-{n}")["status"] == "completed" for n in range(3)),
        30,
        "the three prefixed jobs, with no client",
    )
    assert sp(capsys, "wait", lab.a.spec, "plain-limit", *c)[0] == 143
    limited = state(deployed, "plain-limit")
    assert (limited["signal"], limited["reason"]) == ("TERM", "time limit (3 s)")
    assert 2.9 <= float(limited["wall_s"]) < 6  # type: ignore[arg-type]
    # a lost job whose own process holds its lock keeps its slot; status ID gives true places
    pids = scratch / "lost.pid"
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "lost-one", "--queue", "keep", *c,
        "--", "sh", "-c", f"echo $$ > {pids}; exec sleep 300",
    )  # fmt: skip
    assert code == 0, err
    for job_id in ("k1", "k2", "k3"):
        code, _, err = sp(
            capsys, "run", lab.a.spec, "--id", job_id, "--queue", "keep", *c,
            *marking(scratch, job_id, 0),
        )  # fmt: skip
        assert code == 0, err
    poll(lambda: pids.exists() and pids.read_text().strip(), 20, "lost-one runs")
    code, jobs = sp_json(capsys, "status", lab.a.spec, "k3", *c)
    assert [(j["id"], j["position"]) for j in jobs] == [("k3", 3)]
    wrapper = state(deployed, "lost-one")["pid"]
    assert isinstance(wrapper, int)
    os.kill(wrapper, signal.SIGKILL)
    code, jobs = sp_json(capsys, "status", lab.a.spec, "lost-one", "k1", *c)
    assert (jobs[0]["status"], jobs[0]["lost_reason"]) == (
        "lost", "wrapper gone, its job still holds the lock"
    )  # fmt: skip
    assert jobs[1]["status"] == "queued"  # its slot is still the lost job's
    os.kill(int(pids.read_text()), signal.SIGKILL)
    code, _ = sp_json(capsys, "status", lab.a.spec, *c)  # (the next command advances)
    poll(lambda: state(deployed, "k3")["status"] == "completed", 30, "the queue went on")


def test_clean_waits_for_the_queues_lock_and_frees_the_id_of_a_job_that_never_ran(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    c = connect(lab, trusted)
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "dep", *c, "--", "false")
    assert code == 0, err
    assert sp(capsys, "wait", lab.a.spec, "dep", *c)[0] == 1
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "child", "--after", "dep", *c, "--", "true"
    )
    assert code == 0, err
    assert state(deployed, "child")["status"] == "failed"  # dep failed: it never runs
    # clean waits while another holds the queues' lock (a submission checking its --after)
    lock = deployed / SERVER / "locks" / "queues.lock"
    holder = subprocess.Popen(
        ["runuser", "-u", lab.user.pw_name, "--", "flock", str(lock), "sleep", "300"],
        start_new_session=True,
    )
    try:
        poll(lambda: f" {lock.stat().st_ino} " in locks_held(), 20, "the lock held")
        clean = subprocess.Popen(
            [sys.executable, "-m", "solverpilot_deploy", "clean", lab.a.spec, *c],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        poll(lambda: flock_waits(lab.user.pw_uid), 20, "clean waiting on the host")
        assert clean.poll() is None and (deployed / SERVER / "jobs" / "child.status").exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # runuser, flock and its sleep
        holder.wait()
    out, err = clean.communicate(timeout=60)
    assert clean.returncode == 0, err
    assert sorted(out.splitlines()) == ["removed child (failed)", "removed dep (failed)"]
    assert not (deployed / SERVER / "run" / "child").exists()
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "child", *c, "--", "true")
    assert code == 0, err  # the id is free again


def locks_held() -> str:
    """/proc/locks, each line's inode between spaces (" INODE ")."""
    return " ".join(
        line.split()[5].rsplit(":", 1)[1] for line in Path("/proc/locks").read_text().splitlines()
        if len(line.split()) > 5 and line.split()[1] != "->"
    ).join("  ")  # fmt: skip


def flock_waits(uid: int) -> bool:
    """A process of ``uid`` is a `flock -w` (the clean step's, waiting for the queues' lock)."""
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if argv[0] == b"flock" and b"-w" in argv:
                    return True
        except OSError:
            continue
    return False


def test_found_by_an_adversary_stops_limits_decided_dependencies_and_bad_specs(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """Each fixed: tmux kill-session no longer stopped a job (the launcher kept the pane's
    hangup); a job's --time leaked through a tmux server a launcher started to later jobs; a
    job whose dependency failed stayed queued while its queue was full; a refused --after
    left a log; restart of an odd spec was an internal error; run/ID/decided was 0755."""
    scratch = deployed / SERVER / "scratch"
    c = connect(lab, trusted)
    # kill-session: the wrapper gets the hangup and records it
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "hangup", "--queue", "hq", "--time", "0:20", *c,
        "--", "sh", "-c", f"touch {scratch}/hup-runs; while :; do sleep 0.1; done",
    )  # fmt: skip
    assert code == 0, err
    poll((scratch / "hup-runs").exists, 20, "the job runs")
    assert (deployed / SERVER / "run" / "hangup" / "decided").stat().st_mode & 0o777 == 0o700
    run_as(lab.user, "tmux", "kill-session", "-t", "=solverpilot_" + lab.user.pw_name + "_hangup")
    # (the wrapper writes its state file, then the DB: both are waited for)
    poll(
        lambda: (
            (state(deployed, "hangup")["status"], db_status(deployed, "hangup"))
            == ("failed", "failed")
        ),
        20,
        "the hangup recorded in both stores",
    )
    assert state(deployed, "hangup")["signal"] == "HUP"
    # the tmux server is gone with its last session: a later job with no --time has no limit
    run_as(lab.user, "tmux", "kill-server")
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "nolimit", "--queue", "hq", *c, "--", "true"
    )
    assert code == 0, err
    assert sp(capsys, "wait", lab.a.spec, "nolimit", *c)[0] == 0
    assert "reason" not in state(deployed, "nolimit")
    # a full queue: a job whose dependency failed is recorded at once, not when a slot frees
    gate = scratch / "gate"
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "holder", "--queue", "full", *c,
        "--", "sh", "-c", f"until [ -e {gate} ]; do sleep 0.05; done",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = sp(capsys, "run", lab.a.spec, "--id", "bad-dep", *c, "--", "false")
    assert code == 0, err
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "doomed", "--queue", "full", "--after", "bad-dep",
        *c, "--", "true",
    )  # fmt: skip
    assert code == 0, err
    assert sp(capsys, "wait", lab.a.spec, "doomed", *c, "--timeout", "30")[0] == 1
    assert state(deployed, "holder")["status"] == "running"  # the queue is still full
    assert state(deployed, "doomed")["reason"].startswith("job bad-dep, which it waits for")  # type: ignore[union-attr]
    gate.touch()
    # a refused --after leaves nothing, its log neither
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "nolog", "--after", "nosuch", *c, "--", "true"
    )
    assert code == 2, err
    assert not (deployed / SERVER / "logs" / "nolog.log").exists()
    # restart of a spec that cannot be run again: one line, exit 1, nothing started
    spec = deployed / SERVER / "jobs" / "bad-dep.spec"
    spec.write_text(
        spec.read_text()
        .replace('"time_limit_s":null', '"time_limit_s":5')
        .replace('"save_before_s":null', '"save_before_s":9')
    )
    code, _out, err = sp(capsys, "restart", lab.a.spec, "bad-dep", "--id", "again", *c)
    assert code == 1 and "cannot be run again: --save-before must be shorter" in err, err
    assert "may have started" not in err and len(err.strip().splitlines()) == 1
    assert not (deployed / SERVER / "jobs" / "again.status").exists()


def test_tmux_that_cannot_start_a_session_is_a_recorded_reason_not_a_silent_wait(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """A tmux that refuses to start (its socket folder, /tmp/tmux-UID, planted by another user
    with a mode tmux refuses): the queued job ends failed, its reason tmux's words; it is
    never left queued for ever."""
    c = connect(lab, trusted)
    run_as(lab.user, "tmux", "kill-server")
    sockets = Path(f"/tmp/tmux-{lab.user.pw_uid}")
    shutil.rmtree(sockets, ignore_errors=True)
    sockets.mkdir(mode=0o777)
    sockets.chmod(0o777)  # root's, open to all: tmux refuses it
    try:
        code, _, err = sp(
            capsys, "run", lab.a.spec, "--id", "notmux", "--queue", "t", *c, "--", "true"
        )
        assert code == 0, err
        final = state(deployed, "notmux")
        assert final["status"] == "failed", final
        assert str(final["reason"]).startswith("tmux could not start its session: ")
        assert "unsafe permissions" in str(final["reason"]), final
        poll(lambda: db_status(deployed, "notmux") == "failed", 20, "its DB row")  # after its file
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def test_clean_takes_a_short_id_as_every_command_that_names_a_job(
    capsys: pytest.CaptureFixture[str], lab: Lab, deployed: Path, trusted: Path
) -> None:
    """A unique prefix of at least 4 characters (status's short ids) names the job in clean
    too: it kept "shortid-0: no record" and removed nothing (helper-24's finding 7); a prefix
    of two jobs is refused, naming them; one of none is kept, "no record"."""
    c = connect(lab, trusted)
    for job_id in ("shortid-0a", "shortid-1a", "shortid-1b"):
        code, _, err = sp(capsys, "run", lab.a.spec, "--id", job_id, *c, "--", "true")
        assert code == 0, err
    code, out, err = sp(capsys, "wait", lab.a.spec, "shortid-0a", "shortid-1a", "shortid-1b", *c)
    assert code == 0, (out, err)
    code, out, err = sp(capsys, "clean", lab.a.spec, "shortid-0", "nosuch-9", *c)
    assert (code, out) == (1, "removed shortid-0a (completed)\n"), (out, err)
    assert "kept nosuch-9: no record" in err
    assert not (deployed / SERVER / "jobs" / "shortid-0a.status").exists()
    code, out, err = sp(capsys, "clean", lab.a.spec, "shortid-1", *c)
    assert (code, out) == (2, "") and "shortid-1 begins 2 job ids" in err, err
    assert (deployed / SERVER / "jobs" / "shortid-1a.status").exists()

"""run --via slurm, cancel, status and logs against a real single-node Slurm (slurmlab.py),
through a real sshd on 127.0.0.1, with the wrapper deployed by sp-deploy push."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import job_state, payload, poll, require, sp, sp_json
from slurmlab import KILL_WAIT, Slurm, missing_tools
from sshlab import Sshd, authorize, clean_home, ensure_test_user, keygen, lab_user_name

from solverpilot_deploy.status import SLURM_ACTIVE

USER = lab_user_name("spslurm")
SERVER = ".solverpilot-server"


@dataclass
class Cluster:
    slurm: Slurm
    sshd: Sshd
    home: Path
    auth: tuple[str, ...]

    def state(self, job_id: str) -> dict[str, object]:
        return job_state(self.home, job_id)

    def db_row(self, job_id: str) -> tuple[object, ...] | None:
        with sqlite3.connect(self.home / SERVER / "server.db", timeout=5) as db:
            row: tuple[object, ...] | None = db.execute(
                "SELECT status, exit_code, completed_at IS NOT NULL FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        return row


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require(os.geteuid() == 0, "the Slurm tests need root (munged, slurmctld, slurmd, sshd)")
    missing = missing_tools()
    require(not missing, f"needs Slurm (apt-get install slurm-wlm munge): no {missing}")
    base = tmp_path_factory.mktemp("slurmlab")
    base.chmod(0o755)
    user = ensure_test_user(USER)
    clean_home(user)
    key = keygen(base / "client")
    authorize(user, base / "client.pub")
    # outside pytest's tmp tree, which the test user cannot enter: its sbatch reads slurm.conf
    slurm = Slurm(Path(tempfile.mkdtemp(prefix="sp-slurm-")))
    sshd = Sshd(base / "sshd", USER, extra_config=f"SetEnv SLURM_CONF={slurm.conf}\n")
    try:
        slurm.start()
        sshd.start()
        known = base / "known_hosts"
        known.write_text(sshd.known_hosts_line)
        auth = ("-i", str(key), "--known-hosts", str(known), "--timeout", "60")
        yield Cluster(slurm, sshd, Path(user.pw_dir), auth)
    finally:
        subprocess.run(["scancel", "-u", USER], env=slurm.env, check=False)
        sshd.stop()
        slurm.stop()
        clean_home(user)
        shutil.rmtree(slurm.workdir, ignore_errors=True)


@pytest.fixture
def deployed(capsys: pytest.CaptureFixture[str], cluster: Cluster) -> Iterator[Cluster]:
    """The wrapper pushed to the login node (this machine), into an empty home."""
    clean_home(ensure_test_user(USER))
    code, results = sp_json(capsys, "push", cluster.sshd.spec, *cluster.auth)
    assert code == 0, results
    yield cluster
    subprocess.run(["scancel", "-u", USER], env=cluster.slurm.env, check=False)
    # proctrack/linuxproc loses a job's processes once the wrapper (their parent) is KILLed,
    # as one test does: they would outlive the job (proctrack/cgroup, on clusters, would not)
    subprocess.run(["pkill", "-KILL", "-u", USER], check=False)


def submit(
    capsys: pytest.CaptureFixture[str], c: Cluster, *argv: str, options: tuple[str, ...] = ()
) -> tuple[str, str]:
    code, out, err = sp(
        capsys, "run", c.sshd.spec, "--via", "slurm", *options, *c.auth, "--", *argv
    )
    assert code == 0, err
    job_id, slurm_id = out.split()
    assert slurm_id.isdigit(), out
    return job_id, slurm_id


def submit_started(capsys: pytest.CaptureFixture[str], c: Cluster, *argv: str) -> tuple[str, str]:
    """Submit, then wait until the wrapper has written its running state on the node."""
    job_id, slurm_id = submit(capsys, c, *argv)
    state = c.home / SERVER / "jobs" / f"{job_id}.status"
    poll(state.exists, 30, "its running state")
    return job_id, slurm_id


def status_of(capsys: pytest.CaptureFixture[str], c: Cluster, job_id: str) -> dict[str, object]:
    code, jobs = sp_json(capsys, "status", c.sshd.spec, job_id, *c.auth)
    assert code == 0, jobs
    (job,) = jobs
    return job


def final(c: Cluster, job_id: str, slurm_id: str, seconds: float = 60) -> dict[str, object]:
    """The job's state once Slurm has ended the job (its wrapper has exited by then)."""
    # every state Slurm has not ended a job in (SIGNALING while --signal is sent, say)
    poll(lambda: c.slurm.squeue_state(slurm_id) not in SLURM_ACTIVE, seconds, "Slurm's end")
    return c.state(job_id)


def test_a_job_that_completes_with_every_argument_exact_and_its_log(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    args = ["two words", "it's", 'say "hi"', "$HOME;`id`", "line1\nline2", "-n", "*", ""]
    out = c.home / SERVER / "args.json"
    script = "import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w')); print('hello')"
    job_id, slurm_id = submit(capsys, c, "python3", "-c", script, str(out), *args)
    state = final(c, job_id, slurm_id)
    assert state["status"] == "completed" and state["exit_code"] == 0
    assert state["slurm_job_id"] == slurm_id
    assert state["host"] == Path("/proc/sys/kernel/hostname").read_text().strip()
    assert json.loads(out.read_text()) == args
    assert c.db_row(job_id) == ("completed", 0, 1)
    batch = c.home / SERVER / "slurm" / f"{job_id}.sbatch"
    assert 'exec "$wrapper" "$id" "$@"' in batch.read_text()
    # the log and the batch script are the user's alone; the job ran with the login's umask
    log_file = c.home / SERVER / "logs" / f"{job_id}.log"
    modes = [stat.S_IMODE(path.stat().st_mode) for path in (log_file, batch)]
    assert modes == [0o600, 0o600]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    # Slurm's name for it, and its output in the log `logs` reads
    code, log, _ = sp(capsys, "logs", c.sshd.spec, job_id, *c.auth)
    assert code == 0 and log == "hello\n"
    job = status_of(capsys, c, job_id)
    assert (job["status"], job["slurm_job_id"], job["lost_reason"]) == ("completed", slurm_id, None)
    assert job["tmux"] is None  # Slurm ran it, not tmux


def test_a_job_that_fails_and_one_whose_folder_is_missing_on_the_node(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    job_id, slurm_id = submit(capsys, c, "sh", "-c", "echo oops >&2; exit 3")
    state = final(c, job_id, slurm_id)
    assert (state["status"], state["exit_code"], state["signal"]) == ("failed", 3, None)
    assert c.db_row(job_id) == ("failed", 3, 1)
    job_id, slurm_id = submit(capsys, c, "true", options=("--cwd", "no/such/folder"))
    state = final(c, job_id, slurm_id)
    assert (state["status"], state["exit_code"]) == ("failed", 1)
    code, log, _ = sp(capsys, "logs", c.sshd.spec, job_id, *c.auth)
    assert code == 0 and "cannot enter" in log and "no/such/folder" in log


def test_the_job_name_and_the_options_reach_sbatch(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    job_id, slurm_id = submit(
        capsys,
        c,
        "sleep",
        "30",
        options=("--time", "7", "--cpus", "1", "--mem", "50M", "--partition", "debug"),
    )
    poll(lambda: c.slurm.squeue_state(slurm_id) == "RUNNING", 30, "the job to run")
    shown = subprocess.run(
        ["squeue", "-h", "-j", slurm_id, "-o", "%j|%l|%C|%m|%P"],
        env=c.slurm.env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert shown == f"solverpilot_{USER}_{job_id[:8]}|7:00|1|50M|debug"
    code, _out, err = sp(capsys, "cancel", c.sshd.spec, job_id, *c.auth)
    assert code == 0, err


def test_cancel_of_a_running_job_records_term(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    job_id, slurm_id = submit_started(capsys, c, "sleep", "300")
    assert status_of(capsys, c, job_id)["status"] == "running"
    code, out, err = sp(capsys, "cancel", c.sshd.spec, job_id, *c.auth)
    assert code == 0, err
    assert out.strip() == f"{job_id} failed exit 143 signal TERM"
    state = c.state(job_id)
    assert (state["status"], state["exit_code"], state["signal"]) == ("failed", 143, "TERM")
    assert isinstance(state["pid"], int)
    assert c.db_row(job_id) == ("failed", 143, 1)
    assert c.slurm.squeue_state(slurm_id) in ("CANCELLED", "")


def test_cancel_of_a_pending_job_writes_its_record(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    cpus = str(c.slurm.cpus)
    blocker, blocker_slurm = submit(capsys, c, "sleep", "300", options=("--cpus", cpus))
    job_id, slurm_id = submit(capsys, c, "touch", "ran", options=("--cpus", cpus))
    poll(lambda: c.slurm.squeue_state(blocker_slurm) == "RUNNING", 30, "the blocker")
    poll(lambda: c.slurm.squeue_state(slurm_id) == "PENDING", 30, "the job to wait")
    job = status_of(capsys, c, job_id)
    assert (job["status"], job["slurm_job_id"]) == ("pending", slurm_id)
    follow = subprocess.Popen(  # logs -f follows a pending job until its record is final
        [sys.executable, "-m", "solverpilot_deploy", "logs", "-f", c.sshd.spec, job_id, *c.auth],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.5)  # a span in which it must keep following, not a synchronisation
    assert follow.poll() is None, follow.communicate()
    code, out, err = sp(capsys, "cancel", c.sshd.spec, job_id, *c.auth)
    assert follow.wait(timeout=30) == 143  # as its record says it ended
    assert code == 0, err
    assert "it never started: sp-deploy wrote this record" in out
    state = c.state(job_id)
    assert (state["status"], state["exit_code"], state["signal"]) == ("failed", 143, "TERM")
    assert state["pid"] is None and state["slurm_job_id"] == slurm_id
    assert c.db_row(job_id) == ("failed", 143, 1)
    assert not (c.home / "ran").exists()
    assert status_of(capsys, c, job_id)["status"] == "failed"
    code, out, err = sp(capsys, "cancel", c.sshd.spec, blocker, *c.auth)
    assert code == 0 and "signal TERM" in out, err


def test_a_term_handler_that_outlives_killwait_keeps_the_record(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    """Slurm KILLs everything KillWait s after its TERM, the wrapper too (its grace is 10 s):
    the stop was recorded at once, so the record stands."""
    c = deployed
    marker, ready = c.home / SERVER / "got-term", c.home / SERVER / "trap-set"
    # Slurm TERMs each process of the job in turn: not `sleep & wait` (a wait that outlives a
    # TERMed sleep returns 0 and the job ends before its shell's TERM comes), and the handler
    # ignores the TERMs after its first (Slurm's and the wrapper's forward), its sleep too
    job = (
        f"trap 'trap \"\" TERM; touch {marker}; sleep 60' TERM; touch {ready}; "
        "while :; do sleep 1; done"
    )
    job_id, slurm_id = submit_started(capsys, c, "sh", "-c", job)
    poll(ready.exists, 30, "the job's TERM handler")
    started = time.monotonic()
    code, _out, err = sp(capsys, "cancel", c.sshd.spec, job_id, *c.auth)
    assert code == 0, err
    assert time.monotonic() - started >= KILL_WAIT - 1  # Slurm's KILL ended it, not the job
    assert marker.exists()
    assert c.slurm.squeue_state(slurm_id) in ("CANCELLED", "")
    state = c.state(job_id)
    assert (state["status"], state["exit_code"], state["signal"]) == ("failed", 143, "TERM")
    assert c.db_row(job_id) == ("failed", 143, 1)
    job_state = status_of(capsys, c, job_id)
    assert (job_state["status"], job_state["lost_reason"]) == ("failed", None)


def test_a_time_limit_with_save_before_lets_the_solver_save(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    saved = c.home / SERVER / "best.sol"
    solver = f"trap 'echo best > {saved}; exit 0' INT; while :; do sleep 1; done"
    job_id, slurm_id = submit(
        capsys, c, "sh", "-c", solver, options=("--time", "1", "--save-before", "50")
    )
    state = final(c, job_id, slurm_id, seconds=150)
    assert saved.read_text() == "best\n"
    assert (state["status"], state["exit_code"], state["signal"]) == ("failed", 130, "INT")
    assert c.db_row(job_id) == ("failed", 130, 1)


def test_status_of_a_job_slurm_killed_is_lost(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    job_id, slurm_id = submit_started(capsys, c, "sleep", "300")
    # KILL to the batch step's shell, which is the wrapper (it exec'd): its end is not recorded
    subprocess.run(["scancel", "--batch", "--signal=KILL", slurm_id], env=c.slurm.env, check=True)
    poll(lambda: c.slurm.squeue_state(slurm_id) not in SLURM_ACTIVE, 30, "the KILL to end it")
    assert c.state(job_id)["status"] == "running"  # the wrapper could not record it
    job = status_of(capsys, c, job_id)
    assert job["status"] == "lost"
    assert str(job["lost_reason"]).startswith(f"Slurm ended job {slurm_id} (")
    code, _out, err = sp(capsys, "cancel", c.sshd.spec, job_id, *c.auth)
    assert code != 0 and "is lost: Slurm ended it" in err
    # logs -f stops: nothing more will come (its record would say running forever)
    follow = subprocess.run(
        [sys.executable, "-m", "solverpilot_deploy", "logs", "-f", c.sshd.spec, job_id, *c.auth],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert follow.returncode == 1, follow.stderr  # lost: no exit code of its own


def test_usage_errors_of_run_via_slurm() -> None:
    """Each is one line on stderr and exit 2, before any connection (the host does not exist)."""
    for argv, said in (
        (("--mem", "4G"), "--mem is for --via slurm"),
        (("--via", "slurm", "--queue", "q"), "Slurm queues the job"),
        (("--via", "slurm", "--name", "n"), "--name is for tmux jobs"),
        (("--via", "slurm", "--mem", "lots"), "not a memory size"),
        (("--via", "slurm", "--partition=-x"), "not a partition name"),
        (("--via", "slurm", "--time", "inf"), "must be MINUTES or MINUTES:SECONDS"),
        (("--via", "slurm", "--save-before", "0"), "must be a number above 0"),
        (("--via", "slurm", "--cpus", "nan"), "must be a number above 0"),
        (("--via", "cron"), "invalid choice: 'cron'"),
        (("--via", "slurm", "--cpus", "\u0663"), "must be a number above 0"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "solverpilot_deploy", "run", "nohost", *argv, "--", "true"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2 and said in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_sbatch_absent_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    """A host without sbatch (not a login node): the error says so, nothing is left."""
    no_slurm = Path(tempfile.mkdtemp(prefix="sp-no-slurm-"))  # every program but Slurm's
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in ("sbatch", "squeue", "scancel"):
            (no_slurm / tool.name).symlink_to(tool)
    no_slurm.chmod(0o755)
    rc = deployed.home / ".bashrc"
    rc.write_text(f"export PATH={no_slurm}\n")
    try:
        code, _out, err = sp(
            capsys, "run", deployed.sshd.spec, "--via", "slurm", *deployed.auth, "--", "true"
        )
    finally:
        rc.unlink()
        shutil.rmtree(no_slurm)
    assert code == 1 and "sbatch is not on this host" in err, (code, err)
    assert not list((deployed.home / SERVER).glob("slurm/*"))


def test_cancels_at_random_moments_leave_every_job_recorded(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    """Jobs cancelled pending, starting (the batch shell before it execs the wrapper, the
    wrapper's first lines) and running, in parallel: each ends failed/143/TERM in both stores,
    written by its wrapper or, when the wrapper never ran, by cancel."""
    c = deployed
    runs = int(os.environ.get("SP_SLURM_STRESS_RUNS", "12"))
    rng = random.Random(os.environ.get("SP_STRESS_SEED"))
    whole_node = ("--cpus", str(c.slurm.cpus))  # one at a time: the rest wait, pending
    jobs = [submit(capsys, c, "sleep", "30", options=whole_node) for _ in range(runs)]

    def cancel(job_id: str) -> tuple[int, str, str]:
        time.sleep(rng.uniform(0, 2))
        argv = ["cancel", c.sshd.spec, job_id, *c.auth, "--json"]
        done = subprocess.run(
            [sys.executable, "-m", "solverpilot_deploy", *argv],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(cancel, [job_id for job_id, _ in jobs]))
    wrote = 0
    for (job_id, slurm_id), (code, out, err) in zip(jobs, answers, strict=True):
        assert code == 0, (job_id, err)
        state = c.state(job_id)
        assert (state["status"], state["exit_code"], state["signal"]) == ("failed", 143, "TERM")
        assert c.db_row(job_id) == ("failed", 143, 1)
        by_cancel = payload(out)["recorded_by_sp_deploy"]
        assert by_cancel == (state["pid"] is None), state
        wrote += by_cancel
        assert c.slurm.squeue_state(slurm_id) in ("CANCELLED", "")
    assert 0 < wrote < runs  # both kinds happened: some never started, some did


def test_one_id_is_one_job_whether_tmux_or_slurm_runs_it(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    c = deployed
    code, _, err = sp(capsys, "run", c.sshd.spec, "--id", "shared-1", *c.auth, "--", "sleep", "30")
    assert code == 0, err
    code, _, err = sp(
        capsys, "run", c.sshd.spec, "--via", "slurm", "--id", "shared-1", *c.auth, "--", "true"
    )
    assert code == 1 and "job id shared-1 is already used" in err
    # a pending Slurm job (no record yet) holds its id too
    whole_node = ("--cpus", str(c.slurm.cpus))
    blocker, _ = submit(capsys, c, "sleep", "30", options=whole_node)
    job_id, slurm_id = submit(capsys, c, "true", options=("--id", "shared-2", *whole_node))
    poll(lambda: c.slurm.squeue_state(slurm_id) == "PENDING", 30, "the job to wait")
    code, _, err = sp(capsys, "run", c.sshd.spec, "--id", job_id, *c.auth, "--", "true")
    assert code == 1 and "job id shared-2 is already used" in err
    for job in ("shared-1", "shared-2", blocker):
        code, _, err = sp(capsys, "cancel", c.sshd.spec, job, *c.auth)
        assert code == 0, err
    subprocess.run(["runuser", "-u", USER, "--", "tmux", "kill-server"], check=False)


@pytest.mark.parametrize(
    ("rc_line", "folder"),
    [
        ("export SOLVERPILOT_SERVER_DIR=$HOME/srv\\\\dir", "srv\\dir"),
        # a name that ends in a newline: $(pwd) would drop it and name another folder
        ("export SOLVERPILOT_SERVER_DIR=\"$HOME/srv\"$'\\n'", "srv\n"),
    ],
    ids=["backslash", "trailing-newline"],
)
def test_a_server_folder_slurm_cannot_log_into_is_refused(
    capsys: pytest.CaptureFixture[str], deployed: Cluster, rc_line: str, folder: str
) -> None:
    """sbatch's --output drops a backslash: the job would run with no log and no record; a
    newline ends its option line. Refused, and nothing is written beside the folder either."""
    rc = deployed.home / ".bashrc"
    rc.write_text(rc_line + "\n")
    try:
        code, _, err = sp(
            capsys, "run", deployed.sshd.spec, "--via", "slurm", *deployed.auth, "--", "true"
        )
    finally:
        rc.unlink()
    assert code == 1 and "has a backslash or a newline" in err, err
    assert not list((deployed.home / folder).glob("slurm/*.sbatch"))
    assert not (deployed.home / "srv").exists()  # the name without its newline: untouched


def test_after_maps_to_slurms_afterok_on_the_named_jobs(
    capsys: pytest.CaptureFixture[str], deployed: Cluster
) -> None:
    """--after A with --via slurm: Slurm holds the job until A completed; when A failed, Slurm
    never runs it (DependencyNeverSatisfied), and a tmux job is no dependency Slurm can see."""
    c = deployed
    gate = c.home / SERVER / "gate"
    first, first_slurm = submit(
        capsys, c, "sh", "-c", f"until [ -e {gate} ]; do sleep 0.1; done", options=("--time", "2")
    )
    then, then_slurm = submit(capsys, c, "true", options=("--after", first))
    poll(lambda: c.slurm.squeue_state(first_slurm) == "RUNNING", 30, "the first to run")
    reason = subprocess.run(
        ["squeue", "-h", "-j", then_slurm, "-O", "Dependency:0 ,Reason:0"],
        env=c.slurm.env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert reason == [f"afterok:{first_slurm}(unfulfilled)", "Dependency"], reason
    assert c.slurm.squeue_state(then_slurm) == "PENDING"
    gate.touch()
    assert final(c, first, first_slurm)["status"] == "completed"
    assert final(c, then, then_slurm)["status"] == "completed"
    # an unknown id, or one that is no Slurm job here: a usage error, nothing submitted
    code, _out, err = sp(
        capsys, "run", c.sshd.spec, "--via", "slurm", "--after", "nosuch", *c.auth, "--", "true"
    )
    assert code == 2 and "no job run --via slurm of that id" in err, err
    assert len(list((c.home / SERVER / "slurm").glob("*.sbatch"))) == 2  # the first two only

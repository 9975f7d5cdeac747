"""Judging job states read back from a host (the remote side is covered with real sshd)."""

from __future__ import annotations

import pytest

from solverpilot_deploy.status import lost_reason, parse_status_output, tmux_session_name

BOOT = "11111111-2222-3333-4444-555555555555"
RUNNING = {"status": "running", "boot_id": BOOT, "start_ticks": 500}


def test_a_live_wrapper_started_when_recorded_is_running() -> None:
    assert lost_reason(RUNNING, True, True, "500", BOOT) is None


@pytest.mark.parametrize(
    ("held", "alive", "ticks", "boot", "reason"),
    [
        (True, True, "500", "another-boot", "host rebooted"),
        (False, False, "-", BOOT, "wrapper gone, lock free"),
        (True, False, "-", BOOT, "wrapper gone, its job still holds the lock"),
        (True, True, "777", BOOT, "pid reused"),
        (False, True, "777", BOOT, "pid reused"),
    ],
)
def test_each_lost_job_says_why(
    held: bool, alive: bool, ticks: str, boot: str, reason: str
) -> None:
    assert lost_reason(RUNNING, held, alive, ticks, boot) == reason


def test_a_state_without_start_ticks_falls_back_on_the_lock() -> None:
    old = {"status": "running", "boot_id": BOOT}
    assert lost_reason(old, True, True, "123", BOOT) is None
    assert lost_reason(old, False, True, "123", BOOT) == "wrapper gone, lock free"


def test_parse_merges_state_files_db_only_rows_locks_and_tmux() -> None:
    text = (
        f"@boot {BOOT}\n"
        "@tmux\n"
        "@session solverpilot_ann_b\n"
        "@held b\n"
        "@held y\n"
        "@job a no -\n"
        '|{"id":"a","status":"completed","exit_code":0,"signal":null,"user":"ann",'
        '"started_at":"s","completed_at":"c","cpu_user_s":1.25,"cpu_sys_s":0.5,"wall_s":9.00}\n'
        "@job b yes 42\n"
        f'|{{"id":"b","status":"running","boot_id":"{BOOT}","started_at":"s","user":"ann",'
        '"start_ticks":42}\n'
        "@job c yes 1\n|{not json\n"
        "@db\n"
        "=a\tcompleted\t0\ts\tc\n"
        "=y\trunning\t\ts3\t\n"
        "=x\trunning\t\ts4\t\n"
        "=z\tfailed\t2\ts2\tc2\n"
    )
    jobs = {job.id: job.as_json() for job in parse_status_output(text.splitlines())}
    assert jobs["a"] == {
        "id": "a",
        "status": "completed",
        "exit_code": 0,
        "signal": None,
        "started_at": "s",
        "completed_at": "c",
        "cpu_user_s": 1.25,
        "cpu_sys_s": 0.5,
        "wall_s": 9.0,
        "lost_reason": None,
        "tmux": "absent",
        "slurm_job_id": None,
        "slurm_state": None,
        "slurm_attempt": None,
        # what run was asked (none: no spec), and the queue
        "name": None,
        "argv": None,
        "cwd": None,
        "queue": None,
        "position": None,
        "after": [],
        "time_limit_s": None,
        "save_before_s": None,
        "submitted_at": None,
        "reason": None,
        "restart_of": None,
    }
    assert (jobs["b"]["status"], jobs["b"]["tmux"]) == ("running", "present")
    assert jobs["c"]["status"] == "unreadable"
    assert jobs["z"]["status"] == "failed" and jobs["z"]["exit_code"] == 2
    # DB rows "running" with no state file: judged by the lock
    assert (jobs["y"]["status"], jobs["y"]["lost_reason"]) == ("running", None)
    assert (jobs["x"]["status"], jobs["x"]["lost_reason"]) == ("lost", "wrapper gone, lock free")


def test_no_tmux_on_the_host_is_none_not_absent() -> None:
    lines = ["@job a no -", '|{"status":"completed","user":"u"}']
    assert parse_status_output(lines)[0].tmux is None


def test_tmux_session_names_follow_tmux_rules() -> None:
    assert tmux_session_name("ann", "job.1.2345678") == "solverpilot_ann_job_1_23"


@pytest.mark.parametrize(
    "content",
    [
        ["null"],
        ["[]"],
        ["42"],
        ['"running"'],
        ["{}"],
        ['{"status": 7}'],
        ['{"status": ["running"]}'],
        ["\x00\x01binary\xff"],
        [],
        ["@job forged yes 1", '{"status":"running"}'],
        ['{"status":"completed","cpu_user_s":"1","wall_s":1e400}'],
    ],
)
def test_a_malformed_state_file_is_unreadable_and_the_others_stand(content: list[str]) -> None:
    lines = [
        f"@boot {BOOT}",
        "@job bad?one no -",
        *(f"|{line}" for line in content),
        "@job good no -",
        '|{"status":"completed","exit_code":"zero","signal":5,"started_at":null,"wall_s":true}',
    ]
    jobs = {job.id: job for job in parse_status_output(lines)}
    assert jobs["bad?one"].status == "unreadable"
    good = jobs["good"]
    assert good.status == "completed"
    assert (good.exit_code, good.signal, good.started_at, good.wall_s) == (None, None, None, None)


def test_odd_numbers_in_a_state_are_dropped_not_reported() -> None:
    lines = [
        "@job j no -",
        '|{"status":"completed","cpu_user_s":"1","cpu_sys_s":-2,"wall_s":1e400}',
    ]
    job = parse_status_output(lines)[0]
    assert (job.status, job.cpu_user_s, job.cpu_sys_s, job.wall_s) == (
        "completed",
        None,
        None,
        None,
    )


def test_a_huge_state_file_is_unreadable() -> None:
    lines = ["@job big no -", "@big", "@job ok no -", '|{"status":"failed"}']
    jobs = {job.id: job.status for job in parse_status_output(lines)}
    assert jobs == {"big": "unreadable", "ok": "failed"}


def test_deep_nesting_and_odd_digits_are_unreadable_not_a_crash() -> None:
    lines = [
        "@job deep no -",
        "|" + "[" * 30000,
        "@job fine no -",
        '|{"status":"completed"}',
        "@db",
        "=odd\tfailed\t\u00b2\t\t",
    ]
    jobs = {job.id: job for job in parse_status_output(lines)}
    assert jobs["deep"].status == "unreadable"
    assert jobs["fine"].status == "completed"
    assert (jobs["odd"].status, jobs["odd"].exit_code) == ("failed", None)


def _slurm_job(job_id: str, status: str, slurm_id: str | None, boot: str = "other-node") -> str:
    sid = "null" if slurm_id is None else f'"{slurm_id}"'
    return (
        f"@job {job_id} no -\n"
        f'|{{"id":"{job_id}","status":"{status}","boot_id":"{boot}","start_ticks":9,'
        f'"pid":4242,"slurm_job_id":{sid}}}\n'
    )


def test_slurm_jobs_are_judged_by_slurm_not_by_the_login_nodes_pids() -> None:
    text = (
        "@submitted p 101\n@submitted r 102\n@submitted gone 103\n@submitted s 104\n"
        "@submitted nostate 105\n@submitted killed 106\n@submitted bad;id 107\n"
        "@slurm\n@squeue 101 PENDING 0\n@squeue 102 RUNNING 0\n@squeue 104 RUNNING 0\n"
        "@squeue 106 CANCELLED 0\n@squeue 201 COMPLETING 0\n"
        f"@boot {BOOT}\n"
        + _slurm_job("r", "running", "102")
        + _slurm_job("killed", "running", "106")
        + _slurm_job("gone", "running", "103")
        + _slurm_job("own", "running", "201")  # a job the user sbatch'ed, not run --via slurm
        + _slurm_job("done", "completed", None)
    )
    jobs = {j.id: j for j in parse_status_output(text.splitlines())}
    assert set(jobs) == {"p", "r", "gone", "s", "nostate", "killed", "own", "done"}
    assert (jobs["p"].status, jobs["p"].slurm_job_id) == ("pending", "101")
    assert (jobs["r"].status, jobs["r"].lost_reason) == ("running", None)  # pids say nothing
    assert jobs["own"].status == "running"
    assert (jobs["s"].status, jobs["s"].lost_reason) == ("running", None)  # starting
    assert jobs["killed"].status == "lost"
    assert jobs["killed"].lost_reason == "Slurm ended job 106 (CANCELLED)"
    assert jobs["gone"].lost_reason == "Slurm no longer knows job 103"
    assert jobs["nostate"].status == "lost"
    assert jobs["nostate"].lost_reason == "Slurm no longer knows job 105; its wrapper never ran"
    assert jobs["done"].status == "completed"  # not a Slurm job: as before
    assert jobs["r"].as_json()["slurm_job_id"] == "102"


def test_slurm_jobs_without_an_answer_from_slurm_keep_their_records_word() -> None:
    for tail in ("", "@slurm\n@squeueerror\n"):
        text = "@submitted p 101\n" + tail + f"@boot {BOOT}\n" + _slurm_job("r", "running", "102")
        jobs = {j.id: j for j in parse_status_output(text.splitlines())}
        assert (jobs["p"].status, jobs["r"].status, jobs["r"].lost_reason) == (
            "submitted",
            "running",
            None,
        )


def test_only_the_wanted_submitted_jobs_are_listed() -> None:
    text = "@submitted p 101\n@submitted q 102\n@slurm\n@squeue 101 PENDING 0\n"
    assert [j.id for j in parse_status_output(text.splitlines(), ("q",))] == ["q"]


def test_a_record_without_a_slurm_id_that_run_via_slurm_submitted_is_judged_by_slurm() -> None:
    """A batch script written before the wrapper took the id from it passes none (the record
    says null): the submission counts; likewise for a wrapper too old to say."""
    text = (
        "@submitted t 101\n@submitted old 102\n@slurm\n@squeue 101 RUNNING 0\n"
        f"@boot {BOOT}\n@job t no -\n"
        f'|{{"id":"t","status":"running","boot_id":"other","start_ticks":9,"pid":1,'
        '"slurm_job_id":null}\n'
        f'@job old no -\n|{{"id":"old","status":"running","boot_id":"{BOOT}","pid":1}}\n'
        f'@job tmux no -\n|{{"id":"tmux","status":"running","boot_id":"{BOOT}","pid":1,'
        '"start_ticks":9,"slurm_job_id":null}\n'
    )
    jobs = {j.id: j for j in parse_status_output(text.splitlines())}
    assert (jobs["t"].status, jobs["t"].slurm_job_id, jobs["t"].lost_reason) == (
        "running",
        "101",
        None,
    )
    assert (jobs["old"].status, jobs["old"].slurm_job_id) == ("lost", "102")
    assert jobs["old"].lost_reason == "Slurm no longer knows job 102"
    assert (jobs["tmux"].status, jobs["tmux"].slurm_job_id) == ("lost", None)  # by its pid


def _attempt(job_id: str, status: str, slurm_id: str, attempt: int) -> str:
    return (
        f"@job {job_id} no -\n"
        f'|{{"id":"{job_id}","status":"{status}","slurm_job_id":"{slurm_id}",'
        f'"slurm_attempt":{attempt}}}\n'
    )


def test_slurm_says_requeued_and_suspended_by_the_attempt_it_is_at() -> None:
    text = (
        "@slurm\n@squeue 1 PENDING 1\n@squeue 2 PENDING 1\n@squeue 3 SUSPENDED 0\n"
        "@squeue 4 RUNNING 1\n@squeue 5 RUNNING 0\n@squeue 6 REQUEUE_HOLD 2\n@squeue 7 RUNNING 1\n"
        + _attempt("ended", "failed", "1", 1)  # its first attempt ended, Slurm runs it again
        + _attempt("nodefail", "running", "2", 1)  # its wrapper died with the node
        + _attempt("susp", "running", "3", 1)
        + _attempt("next", "failed", "4", 1)  # the second attempt's wrapper is starting
        + _attempt("stopping", "failed", "5", 1)  # its wrapper recorded a stop and ends
        + _attempt("held", "failed", "6", 2)
        + _attempt("second", "running", "7", 2)
    )
    jobs = {j.id: j for j in parse_status_output(text.splitlines())}
    shown = {key: (job.status, job.slurm_state, job.slurm_attempt) for key, job in jobs.items()}
    assert shown == {
        "ended": ("requeued", "PENDING", 1),
        "nodefail": ("requeued", "PENDING", 1),
        "susp": ("suspended", "SUSPENDED", 1),
        "next": ("running", "RUNNING", 1),
        "stopping": ("failed", "RUNNING", 1),
        "held": ("requeued", "REQUEUE_HOLD", 2),
        "second": ("running", "RUNNING", 2),
    }
    assert all(job.lost_reason is None for job in jobs.values())


def test_a_slurm_that_did_not_answer_in_time_leaves_the_records_word() -> None:
    text = "@slurm\n@squeueslow 5\n" + _attempt("r", "running", "1", 1)
    (job,) = parse_status_output(text.splitlines())
    assert (job.status, job.slurm_state, job.lost_reason) == ("running", None, None)


def test_parse_reads_specs_queue_places_and_orders_by_submission() -> None:
    lines = [
        "@wait q 000000000007 late",
        "@wait q 000000000003 early",
        "@active q 000000000002 starting1",
        "@job late no -",
        '|{"id":"late","status":"queued","submitted_at":"2026-01-02T00:00:00+00:00","seq":7,'
        '"queue":"q","pid":null}',
        "@spec",
        '|{"argv":["sh","-c","x"],"cwd":"","name":"n1","queue":"q","after":["a","b c"],'
        '"time_limit_s":60,"save_before_s":5,"restart_of":null,"submitted_at":"x"}',
        "@job early no -",
        '|{"id":"early","status":"queued","submitted_at":"2026-01-01T00:00:00+00:00","seq":3,'
        '"queue":"q","pid":null}',
        "@job starting1 no -",
        '|{"id":"starting1","status":"queued","submitted_at":"2026-01-01T00:00:00+00:00",'
        '"seq":2,"queue":"q","pid":null}',
        "@job old no -",
        '|{"id":"old","status":"completed","started_at":"2025-12-31T00:00:00+00:00"}',
    ]
    jobs = parse_status_output(lines)
    assert [j.id for j in jobs] == ["old", "starting1", "early", "late"]
    by_id = {j.id: j for j in jobs}
    assert (by_id["early"].status, by_id["early"].position) == ("queued", 1)
    assert (by_id["late"].status, by_id["late"].position) == ("queued", 2)
    assert by_id["starting1"].status == "starting"
    late = by_id["late"].as_json()
    assert (late["argv"], late["name"], late["after"], late["time_limit_s"]) == (
        ["sh", "-c", "x"], "n1", ["a"], 60
    )  # fmt: skip
    assert by_id["old"].argv is None and by_id["old"].as_json()["after"] == []

"""Judging job states read back from a host (the remote side is covered with real sshd)."""

from __future__ import annotations

import pytest

from solverpilot_deploy.status import judge, parse_status_output

BOOT = "11111111-2222-3333-4444-555555555555"


def test_running_with_lock_and_pid_is_running() -> None:
    assert judge({"status": "running", "boot_id": BOOT}, True, True, BOOT) == "running"


def test_running_is_lost_when_lock_free_pid_dead_or_rebooted() -> None:
    state = {"status": "running", "boot_id": BOOT}
    assert judge(state, False, True, BOOT) == "lost"
    assert judge(state, True, False, BOOT) == "lost"
    assert judge(state, True, True, "another-boot") == "lost"


def test_finished_states_are_reported_as_recorded() -> None:
    assert judge({"status": "failed"}, False, False, BOOT) == "failed"
    assert judge({"status": "completed"}, False, False, BOOT) == "completed"


def test_parse_merges_state_files_and_db_only_rows() -> None:
    text = (
        f"@boot {BOOT}\n"
        "@job free no a\n"
        '|{"id":"a","status":"completed","exit_code":0,"signal":null,'
        '"started_at":"s","completed_at":"c"}\n'
        "@job held yes b\n"
        f'|{{"id":"b","status":"running","boot_id":"{BOOT}","started_at":"s"}}\n'
        "@job held yes c\n|{not json\n"
        "@db\n"
        "a\tcompleted\t0\ts\tc\n"
        "z\tfailed\t2\ts2\tc2\n"
    )
    jobs = {job.id: job.as_json() for job in parse_status_output(text.splitlines())}
    assert jobs["a"] == {
        "id": "a",
        "status": "completed",
        "exit_code": 0,
        "signal": None,
        "started_at": "s",
        "completed_at": "c",
    }
    assert jobs["b"]["status"] == "running"
    assert jobs["c"]["status"] == "unreadable"
    assert jobs["z"] == {
        "id": "z",
        "status": "failed",
        "exit_code": 2,
        "signal": None,
        "started_at": "s2",
        "completed_at": "c2",
    }


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
        ["@job held yes forged", '{"status":"running"}'],
    ],
)
def test_a_malformed_state_file_is_unreadable_and_the_others_stand(content: list[str]) -> None:
    lines = [
        f"@boot {BOOT}",
        "@job free no bad?one",
        *(f"|{line}" for line in content),
        "@job free no good",
        '|{"status":"completed","exit_code":"zero","signal":5,"started_at":null}',
    ]
    jobs = {job.id: job for job in parse_status_output(lines)}
    assert jobs["bad?one"].status == "unreadable"
    assert jobs["good"].status == "completed"
    assert (jobs["good"].exit_code, jobs["good"].signal, jobs["good"].started_at) == (
        None,
        None,
        None,
    )


def test_a_huge_state_file_is_unreadable() -> None:
    lines = ["@job free no big", "@big", "@job free no ok", '|{"status":"failed"}']
    jobs = {job.id: job.status for job in parse_status_output(lines)}
    assert jobs == {"big": "unreadable", "ok": "failed"}


def test_deep_nesting_and_odd_digits_are_unreadable_not_a_crash() -> None:
    lines = [
        "@job free no deep",
        "|" + "[" * 30000,
        "@job free no fine",
        '|{"status":"completed"}',
        "@db",
        "odd\tfailed\t\u00b2\t\t",
    ]
    jobs = {job.id: job for job in parse_status_output(lines)}
    assert jobs["deep"].status == "unreadable"
    assert jobs["fine"].status == "completed"
    assert (jobs["odd"].status, jobs["odd"].exit_code) == ("failed", None)

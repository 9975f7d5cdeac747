"""status on a real host: lost jobs and why, tmux sessions, many jobs, filtering on the host."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Lab, poll, require, sp, sp_json
from sshlab import run_as

from solverpilot_deploy.remote import parse_framed, step_script
from solverpilot_deploy.status import JOB_ID

SERVER = ".solverpilot-server"


def connect(lab: Lab, trusted: Path) -> tuple[str, ...]:
    return ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "60")


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def start_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(") ", 1)[1].split()[19])


@contextmanager
def flock_held(path: Path) -> Iterator[None]:
    """Another process holds a flock on ``path``, listed in /proc/locks, until the block ends."""
    holder = subprocess.Popen(["flock", str(path), "sleep", "60"])
    try:
        ino = path.stat().st_ino
        poll(lambda: f":{ino} " in Path("/proc/locks").read_text(), 10, f"a flock on {path.name}")
        yield
    finally:
        holder.kill()
        holder.wait()


def write_states(server: Path, states: dict[str, dict[str, object]], owner: int | None) -> None:
    """State files and DB rows as the wrapper writes them."""
    (server / "jobs").mkdir(parents=True, exist_ok=True)
    (server / "locks").mkdir(exist_ok=True)
    for job_id, state in states.items():
        text = json.dumps(state, separators=(",", ":"))  # as the wrapper writes it
        (server / "jobs" / f"{job_id}.status").write_text(text + "\n")
    with sqlite3.connect(server / "server.db") as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, started_at TEXT,"
            " completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT)"
        )
        db.executemany(
            "INSERT OR REPLACE INTO jobs (id, status, exit_code) VALUES (?, ?, ?)",
            [(k, v["status"], v.get("exit_code")) for k, v in states.items()],
        )
    if owner is not None:
        for path in (server, *server.rglob("*")):
            os.chown(path, owner, owner)


def finished(job_id: str, user: str = "sptest") -> dict[str, object]:
    return {
        "id": job_id,
        "status": "completed",
        "started_at": "2026-01-01T00:00:00+00:00",
        "user": user,
        "pid": 999999,
        "start_ticks": 1,
        "host": "h",
        "boot_id": boot_id(),
        "exit_code": 0,
        "completed_at": "2026-01-01T00:01:00+00:00",
        "signal": None,
        "cpu_user_s": 1.5,
        "cpu_sys_s": 0.25,
        "wall_s": 60.0,
    }


def test_lost_jobs_say_why_and_tmux_sessions_are_seen(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    require(bool(shutil.which("tmux")), "needs tmux")
    user = lab.user
    # a live process of the user: the pid that "pid reused" and "running" name
    sleeper = subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "sleep", "60"]
    )  # fmt: skip
    socket = home / "tmux.sock"
    try:
        ticks = start_ticks(sleeper.pid)
        live = {"status": "running", "user": user.pw_name, "pid": sleeper.pid, "boot_id": boot_id()}
        write_states(
            home / SERVER,
            {
                "reused": {**live, "id": "reused", "start_ticks": ticks + 1},
                "rebooted": {**live, "id": "rebooted", "start_ticks": ticks, "boot_id": "b0"},
                "gone": {**live, "id": "gone", "start_ticks": ticks, "pid": 999999},
                "alive": {**live, "id": "alive", "start_ticks": ticks},
                "done": finished("done"),
            },
            user.pw_uid,
        )
        # the tmux session `run` would start for "alive", on the user's default socket
        tmux = run_as(
            user, "tmux", "new-session", "-d", "-s", f"solverpilot_{user.pw_name}_alive", "sleep 60"
        )
        assert tmux.returncode == 0, tmux.stderr
        code, jobs = sp_json(capsys, "status", lab.a.spec, *connect(lab, trusted))
    finally:
        sleeper.kill()
        sleeper.wait()
        run_as(user, "tmux", "kill-server")
        socket.unlink(missing_ok=True)
    assert code == 0
    by_id = {job["id"]: job for job in jobs}
    assert {k: (v["status"], v["lost_reason"]) for k, v in by_id.items()} == {
        "reused": ("lost", "pid reused"),
        "rebooted": ("lost", "host rebooted"),
        "gone": ("lost", "wrapper gone, lock free"),
        "alive": ("running", None),
        "done": ("completed", None),
    }
    assert by_id["alive"]["tmux"] == "present"
    assert by_id["done"]["tmux"] == "absent"
    assert (by_id["done"]["cpu_user_s"], by_id["done"]["cpu_sys_s"]) == (1.5, 0.25)
    assert by_id["done"]["wall_s"] == 60.0


def test_a_thousand_jobs_and_a_filter_applied_on_the_host(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    states = {f"job-{n:04d}": finished(f"job-{n:04d}") for n in range(1000)}
    write_states(home / SERVER, states, lab.user.pw_uid)
    code, jobs = sp_json(capsys, "status", lab.a.spec, *connect(lab, trusted))
    assert code == 0
    assert [job["id"] for job in jobs] == sorted(states)
    assert all(job["status"] == "completed" and job["exit_code"] == 0 for job in jobs)
    code, jobs = sp_json(capsys, "status", lab.a.spec, "job-0007", "job-0999", "nope",
                         *connect(lab, trusted))  # fmt: skip
    assert code == 1  # "nope" is no job there: said on stderr, the others listed
    assert [job["id"] for job in jobs] == ["job-0007", "job-0999"]


def test_a_bad_job_id_is_a_usage_error_before_any_connection(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = __import__("solverpilot_deploy.cli", fromlist=["main"]).main(
        ["status", "nobody@127.0.0.1:1", "ok", "no'quote"]
    )
    assert code == 2
    assert 'not a job id: "no\'quote"' in capsys.readouterr().err
    assert not JOB_ID.match("no'quote")


def run_status_step(server: Path, *ids: str) -> tuple[list[str], int]:
    """The status step run here by sh, under strace: its answer lines and the programs it ran."""
    trace = server.parent / "trace"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", str(trace),
         "sh", "-s", "--", "TOKEN", *ids],
        input=step_script("status"), capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(server.parent),
             "SOLVERPILOT_SERVER_DIR": str(server)},
    )  # fmt: skip
    execs = [line for line in trace.read_text().splitlines() if line.rstrip().endswith("= 0")]
    framed = parse_framed("TOKEN", result.stdout)
    assert framed is not None and framed[0] == 0, result.stdout[-500:]
    return list(framed[1]), len(execs)


def test_status_runs_as_many_programs_for_1000_jobs_as_for_10(tmp_path: Path) -> None:
    require(bool(shutil.which("strace")), "needs strace")
    counts = {}
    for n in (10, 1000):
        server = tmp_path / f"n{n}" / "server"
        write_states(server, {f"j{i}": finished(f"j{i}") for i in range(n)}, None)
        lines, counts[n] = run_status_step(server)
        assert sum(line.startswith("@job ") for line in lines) == n
    assert counts[10] == counts[1000], counts
    lines, _ = run_status_step(tmp_path / "n1000" / "server", "j5", "j77")
    assert [line for line in lines if line.startswith("@job ")] == ["@job j5 no -", "@job j77 no -"]
    assert not [line for line in lines if line.startswith("=")]  # their state files count
    (tmp_path / "n1000" / "server" / "jobs" / "j5.status").unlink()
    lines, _ = run_status_step(tmp_path / "n1000" / "server", "j5", "j77")
    assert [line for line in lines if line.startswith("@job ")] == ["@job j77 no -"]
    assert [line for line in lines if line.startswith("=")] == ["=j5\tcompleted\t0\t\t"]


def test_a_megabyte_answer_arrives_whole_every_time(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """sshd may send the exit status before the last of a large answer: it must still all be
    read (1 MB of state files, 30 times)."""
    states = {f"big-{n:02d}": {**finished(f"big-{n:02d}"), "pad": "x" * 60000} for n in range(20)}
    write_states(home / SERVER, states, lab.user.pw_uid)
    for _ in range(30):
        code, jobs = sp_json(capsys, "status", lab.a.spec, *connect(lab, trusted))
        assert code == 0
        assert [(j["id"], j["status"]) for j in jobs] == [(k, "completed") for k in sorted(states)]


def test_a_db_row_running_without_a_state_file_is_judged_by_its_lock(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    server = home / SERVER
    write_states(server, {}, lab.user.pw_uid)
    with sqlite3.connect(server / "server.db") as db:
        db.executemany(
            "INSERT INTO jobs (id, status) VALUES (?, 'running')", [("db-held",), ("db-free",)]
        )
    for name in ("db-held", "db-free"):
        (server / "locks" / f"{name}.lock").touch()
    with flock_held(server / "locks" / "db-held.lock"):
        code, jobs = sp_json(capsys, "status", lab.a.spec, *connect(lab, trusted))
    assert code == 0
    assert {j["id"]: (j["status"], j["lost_reason"]) for j in jobs} == {
        "db-held": ("running", None),
        "db-free": ("lost", "wrapper gone, lock free"),
    }


def test_an_answer_that_keeps_coming_is_never_cut_by_the_timeout_one_that_stalls_is(
    capsys: pytest.CaptureFixture[str], transport: str, lab: Lab, home: Path, trusted: Path
) -> None:
    """status of a host with very many jobs answers for longer than --timeout: while its lines
    keep coming it is not cut off; an answer that stops for --timeout seconds is a timeout that
    says so. The host's awk is slowed to a line every 0.25 s (6 s for 24 lines, timeout 3);
    each state file is 8 KiB, so that each line passes the host's stdio buffers at once."""
    server = home / SERVER
    states = {f"slow-{n:02d}": {**finished(f"slow-{n:02d}"), "pad": "x" * 8192} for n in range(12)}
    write_states(server, states, lab.user.pw_uid)
    shims = home / "shims"
    shims.mkdir(exist_ok=True)
    awk = shutil.which("awk")
    (shims / "awk").write_text(
        f'#!/bin/sh\nn=0\n"{awk}" "$@" | while IFS= read -r line; do\n'
        '  printf "%s\\n" "$line"; n=$((n + 1))\n'
        '  if [ "$n" -gt 6 ]; then sleep "${SP_LATER_PAUSE:-0.25}"; else sleep 0.25; fi\ndone\n'
    )
    (shims / "awk").chmod(0o755)
    rc = home / ".bashrc"
    args = ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "3")
    try:
        rc.write_text(f"export PATH={shims}:$PATH\n")
        started = time.monotonic()
        code, jobs = sp_json(capsys, "status", lab.a.spec, *args)
        took = time.monotonic() - started
        assert code == 0
        assert sorted(j["id"] for j in jobs) == sorted(states)
        assert took > 5, f"took {took:.1f} s: the slowed answer was not longer than the timeout"
        rc.write_text(f"export PATH={shims}:$PATH SP_LATER_PAUSE=5\n")  # stalls after 6 lines
        code, out, err = sp(capsys, "status", lab.a.spec, *args)
    finally:
        rc.unlink()
    assert code == 1, (out, err)
    assert "timeout: the host's answer stopped for 3 s" in err, err


def test_a_lock_on_another_device_with_the_same_inode_number_is_not_the_jobs_lock(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    """Another user can flock a file of their own tmpfs whose inode number equals a job's lock
    file's: /proc/locks lists it by device and inode, and status must not take it for the
    job's lock (the job is lost, its lock free)."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    server = home / SERVER
    write_states(server, {}, lab.user.pw_uid)
    with sqlite3.connect(server / "server.db") as db:
        db.execute("INSERT INTO jobs (id, status) VALUES ('db-lost', 'running')")
    locks, other = server / "locks", tmp_path / "other"
    other.mkdir()
    uid, gid = lab.user.pw_uid, lab.user.pw_gid
    mounted: list[Path] = []
    try:
        for folder in (locks, other):  # fresh tmpfs each: inode numbers start from 1 on both
            options = f"size=1m,mode=0700,uid={uid},gid={gid}"
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True
            )
            mounted.append(folder)
        lock = locks / "db-lost.lock"
        lock.touch()
        os.chown(lock, uid, gid)
        target = lock.stat().st_ino
        twin = None
        for n in range(target + 10):
            path = other / f"f{n}"
            path.touch()
            if path.stat().st_ino == target:
                twin = path
                break
        assert twin is not None, f"no file on the second tmpfs got inode {target}"
        with flock_held(twin):
            code, jobs = sp_json(capsys, "status", lab.a.spec, *connect(lab, trusted))
    finally:
        for folder in reversed(mounted):
            subprocess.run(["umount", "-l", str(folder)], check=False)
    assert code == 0
    assert {j["id"]: (j["status"], j["lost_reason"]) for j in jobs} == {
        "db-lost": ("lost", "wrapper gone, lock free"),
    }


def test_a_held_lock_on_btrfs_is_seen_though_stat_names_the_subvolume_not_the_filesystem(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    """On btrfs (Fedora's and openSUSE's homes), stat gives a subvolume's own device while
    /proc/locks names the filesystem's: a DB-only "running" job whose lock is held is running,
    one whose lock is free is lost."""
    require(os.geteuid() == 0, "mounting a btrfs image needs root")
    require(shutil.which("mkfs.btrfs") is not None, "mkfs.btrfs (btrfs-progs) is missing")
    server = home / SERVER
    server.mkdir(mode=0o700)
    image = tmp_path / "btrfs.img"
    with image.open("wb") as handle:
        handle.truncate(160 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(server)], check=True)
    try:
        write_states(server, {}, lab.user.pw_uid)
        with sqlite3.connect(server / "server.db") as db:
            db.executemany(
                "INSERT INTO jobs (id, status) VALUES (?, 'running')", [("held",), ("free",)]
            )
        for path in (server, *server.rglob("*")):
            os.chown(path, lab.user.pw_uid, lab.user.pw_gid)
        for name in ("held", "free"):
            (server / "locks" / f"{name}.lock").touch()
        lock = server / "locks" / "held.lock"
        assert os.stat(server / "locks").st_dev != os.stat(image).st_dev
        with flock_held(lock):
            code, jobs = sp_json(capsys, "status", lab.a.spec, *connect(lab, trusted))
    finally:
        subprocess.run(["umount", "-l", str(server)], check=False)
    assert code == 0
    assert {j["id"]: (j["status"], j["lost_reason"]) for j in jobs} == {
        "held": ("running", None),
        "free": ("lost", "wrapper gone, lock free"),
    }


def test_a_fifo_or_a_link_named_like_a_state_file_is_unreadable_and_never_opened(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    server = home / SERVER
    write_states(server, {"fine": finished("fine")}, lab.user.pw_uid)
    os.mkfifo(server / "jobs" / "fifo.status")
    big = tmp_path / "big"
    big.write_text("x" * 3_000_000)
    (server / "jobs" / "link.status").symlink_to(big)
    (server / "jobs" / "zero.status").symlink_to("/dev/zero")
    code, jobs = sp_json(capsys, "status", lab.a.spec, *connect(lab, trusted))
    assert code == 0
    assert {j["id"]: j["status"] for j in jobs} == {
        "fifo": "unreadable",
        "link": "unreadable",
        "zero": "unreadable",
        "fine": "completed",
    }

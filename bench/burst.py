"""Many jobs finishing at once on one DB: updates lost, time until all are recorded.

N wrappers start jobs that each wait for a line on one fifo; once all N are running, N lines
are written and every job ends within the same few milliseconds, so N final writes contend
for one SQLite DB.
The baseline (../shared/baseline/seed_job_wrapper.sh) only UPDATEs rows that exist, so its
rows are inserted first ("queued"), as its design's server did. A lost update is a job whose
row does not say "completed" once every wrapper has exited. The slowest write is the longest
time from the release to one wrapper's exit (its final write included, waits for the lock too).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jobcost import BASELINE, ROOT, SP_DEPLOY

JOB = 'read -r _ <"$0"'  # one line from the fifo: blocks without using the CPU


@dataclass
class Burst:
    runner: str
    jobs: int
    lost: int
    all_recorded_s: float  # release to the last wrapper's exit: its final write is the slowest
    median_s: float  # release to a wrapper's exit, the median one


def _burst(runner: str, n: int, work: Path, wrapper: Path) -> Burst:
    go = work / "go"
    os.mkfifo(go)
    release = os.open(go, os.O_RDWR)  # held open: a job's open never blocks, its read does
    home = work / "home"
    server = home / ".solverpilot-server"
    server.mkdir(parents=True)
    env = {**os.environ, "HOME": str(home), "USER": "bench", "SOLVERPILOT_KILL_GRACE": "10"}
    env.pop("SOLVERPILOT_SERVER_DIR", None)
    ids = [f"{runner[:1]}{i:04d}" for i in range(n)]
    if runner == "baseline":
        with sqlite3.connect(server / "server.db") as db:
            db.executescript((ROOT / "templates" / "schema.sql").read_text())
            db.executemany(
                "INSERT INTO jobs (id, status) VALUES (?, 'queued')", [(i,) for i in ids]
            )
        argv = ["bash", str(BASELINE)]
    else:
        argv = ["bash", "-p", str(wrapper)]
    procs = [
        subprocess.Popen(
            [*argv, job_id, "sh", "-c", JOB, str(go)], env=env, stderr=subprocess.DEVNULL
        )
        for job_id in ids
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # every job running: its state file says so
        states = list((server / "jobs").glob("*.status")) if (server / "jobs").exists() else []
        if len(states) == n and all('"running"' in p.read_text() for p in states):
            break
        time.sleep(0.05)
    os.write(release, b"\n" * n)  # a line for each job: they all end now
    released = time.monotonic()
    ends = []
    pids = {proc.pid for proc in procs}
    while pids:  # each exit as it happens, in the order it happens
        pid, _ = os.waitpid(-1, 0)
        if pid in pids:
            pids.discard(pid)
            ends.append(time.monotonic() - released)
    for proc in procs:
        proc.returncode = 0  # reaped above
    os.close(release)
    with sqlite3.connect(server / "server.db") as db:
        done = db.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()[0]
    ends.sort()
    return Burst(runner, n, n - done, ends[-1], ends[len(ends) // 2])


def measure(sizes: list[int], runs: int = 1) -> list[Burst]:
    """``runs`` bursts of each size, for ours and the baseline (when present), interleaved."""
    results = []
    with tempfile.TemporaryDirectory(prefix="sp-bench-burst-") as tmp:
        wrapper = Path(tmp) / "job_wrapper.sh"
        subprocess.run([*SP_DEPLOY, "render", "--distro", "debian", "-o", str(wrapper)], check=True)
        for _ in range(runs):
            for n in sizes:
                for runner in ("ours", "baseline") if BASELINE.exists() else ("ours",):
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    results.append(_burst(runner, n, work, wrapper))
                    shutil.rmtree(work, ignore_errors=True)
    return results

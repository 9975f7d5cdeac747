"""How `sp-deploy status` grows with the number of recorded jobs, against a bare ssh round trip.

Usage: python bench/status.py [--runs N] [--sizes 10,1000,10000]   (as root: it makes a test
user and a loopback sshd, as the tests do)

For each size the test user's server folder holds that many finished jobs (state files and DB
rows, as the wrapper writes them). Each round times, in turn, `ssh HOST true` and
`sp-deploy status HOST --json` at every size (the whole command, Python's start included);
rounds alternate so drift hits every size alike. Prints medians, p10-p90, and each size's
ratio to the smallest, taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobcost import SP_DEPLOY, use_checkout
from overhead import machine
from sshlab import Sshd, authorize, clean_home, ensure_test_user, keygen

USER = "spbench"


def fill(server: Path, count: int, uid: int) -> None:
    """``count`` finished jobs in ``server``, as the wrapper leaves them."""
    shutil.rmtree(server, ignore_errors=True)
    (server / "jobs").mkdir(parents=True)
    (server / "locks").mkdir()
    rows = []
    for n in range(count):
        job_id = f"{n:08d}-bench"
        state = {
            "id": job_id, "status": "completed", "started_at": "2026-01-01T00:00:00+00:00",
            "user": USER, "pid": 100000 + n, "start_ticks": 1, "host": "bench",
            "boot_id": "b", "exit_code": 0, "completed_at": "2026-01-01T01:00:00+00:00",
            "signal": None, "cpu_user_s": 1.0, "cpu_sys_s": 0.1, "wall_s": 3600.0,
        }  # fmt: skip
        (server / "jobs" / f"{job_id}.status").write_text(json.dumps(state) + "\n")
        (server / "locks" / f"{job_id}.lock").touch()
        rows.append((job_id, "completed", 0))
    with sqlite3.connect(server / "server.db") as db:
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT, started_at TEXT,"
            " completed_at TEXT, exit_code INTEGER, tmux_session_name TEXT)"
        )
        db.executemany("INSERT INTO jobs (id, status, exit_code) VALUES (?, ?, ?)", rows)
    for path in (server, *server.rglob("*")):
        shutil.chown(path, uid, uid)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds ``argv`` took, run to its end (``env``: added to this process's)."""
    start = time.perf_counter()
    subprocess.run(argv, env={**os.environ, **(env or {})}, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@contextmanager
def bench_host(sizes: list[int]) -> Iterator[tuple[list[str], list[str], Callable[[int], None]]]:
    """A loopback sshd for the bench user with a server folder of each size: yields the argv
    of `ssh HOST`, of `sp-deploy status HOST` (paramiko) and a function that points the login
    shell's start-up file at a size's folder. Removes it all on exit."""
    user = ensure_test_user(USER)
    base = Path(tempfile.mkdtemp(prefix="sp-bench-status-"))
    base.chmod(0o755)
    key = keygen(base / "client")
    authorize(user, base / "client.pub")
    sshd = Sshd(base / "sshd", USER).start()
    known = base / "known_hosts"
    known.write_text(sshd.known_hosts_line)
    homes = {n: Path(user.pw_dir) / f"server-{n}" for n in sizes}
    bashrc = Path(user.pw_dir) / ".bashrc"

    def use(n: int) -> None:
        bashrc.write_text(f"export SOLVERPILOT_SERVER_DIR={homes[n]}\n")

    try:
        for n, folder in homes.items():
            fill(folder, n, user.pw_uid)
        ssh = ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes",
               "-p", str(sshd.port), f"{USER}@127.0.0.1"]  # fmt: skip
        status = [*SP_DEPLOY, "status", sshd.spec, "-i", str(key), "--transport", "paramiko",
                  "--known-hosts", str(known)]  # fmt: skip
        yield ssh, status, use
    finally:
        sshd.stop()
        clean_home(user)
        for folder in homes.values():
            shutil.rmtree(folder, ignore_errors=True)
        bashrc.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def measure(runs: int, sizes: list[int]) -> dict[str, list[float]]:
    """Seconds per round: "ssh true", then "status, N jobs" for each size."""
    with bench_host(sizes) as (ssh, status, use):
        samples: dict[str, list[float]] = {"ssh true": []}
        samples.update({f"status, {n} jobs": [] for n in sizes})
        for round_ in range(runs + 1):  # the first round warms caches and is dropped
            got = {"ssh true": timed([*ssh, "true"])}
            for n in sizes:
                use(n)
                got[f"status, {n} jobs"] = timed([*status, "--json"])
            if round_:
                for name, seconds in got.items():
                    samples[name].append(seconds)
        return samples


def timed_with_memory(argv: list[str]) -> tuple[float, float]:
    """Seconds ``argv`` took, with its peak memory (MB, resident), run to its end."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *argv], check=True, capture_output=True)
    seconds, kilobytes = done.stdout.split()
    return float(seconds), int(kilobytes) / 1024


def scale(runs: int, sizes: list[int]) -> dict[tuple[int, str], list[tuple[float, float]]]:
    """Per size and output (table, --json): (seconds, peak MB) of each round of `status` at
    its default --timeout, after a first round that warms the page cache and is dropped."""
    out: dict[tuple[int, str], list[tuple[float, float]]] = {}
    with bench_host(sizes) as (_, status, use):
        for round_ in range(runs + 1):
            for n in sizes:
                use(n)
                for mode, extra in (("table", []), ("--json", ["--json"])):
                    got = timed_with_memory([*status, *extra])
                    if round_:
                        out.setdefault((n, mode), []).append(got)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--scale", action="store_true", help="time and memory, table and json")
    args = parser.parse_args()
    use_checkout()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.scale:
        print(f"machine: {machine()}")
        for (n, mode), got in scale(args.runs, sizes).items():
            secs, mbs = sorted(g[0] for g in got), sorted(g[1] for g in got)
            print(f"  {n} jobs, {mode}: {statistics.median(secs):.1f} s "
                  f"({secs[0]:.1f}-{secs[-1]:.1f}), {statistics.median(mbs):.0f} MB")  # fmt: skip
        return 0
    samples = measure(args.runs, sizes)
    print(f"machine: {machine()}")
    print(f"{args.runs} rounds; medians (p10-p90); ratio to status with {sizes[0]} jobs")
    base_median = statistics.median(samples[f"status, {sizes[0]} jobs"])
    for name, values in samples.items():
        values = sorted(values)
        med = statistics.median(values)
        p10, p90 = values[len(values) // 10], values[(len(values) * 9) // 10 - 1]
        print(f"  {name:22} {med * 1000:8.1f} ms ({p10 * 1000:.1f}-{p90 * 1000:.1f})"
              f"  x{med / base_median:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

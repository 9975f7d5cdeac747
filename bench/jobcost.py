"""Per-job cost of running `true` under each job runner, and the programs each executes.

Runners: `true` alone; our wrapper (`bash -p job_wrapper.sh ID true`); the design we started
from (../shared/baseline/seed_job_wrapper.sh, where present); nq (`nq true`, then `nq -w`
until its exit status is in its log); task-spooler (`tsp true`, then `tsp -w ID`). Each run
times the whole, as a user's script would wait for the job's recorded end. Rounds alternate
between runners, so drift on a shared machine hits them all alike; the ratios to `true` are
taken per round.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT.parent / "shared" / "baseline" / "seed_job_wrapper.sh"
# this checkout's sp-deploy, whatever is installed or on PATH (use_checkout() points Python at it)
SP_DEPLOY = [sys.executable, "-m", "solverpilot_deploy"]


def use_checkout() -> None:
    """Every child Python imports solverpilot_deploy from this checkout first."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


@dataclass
class Runner:
    name: str
    run: Callable[[int], None]  # run(i): job number i, to its recorded end
    trace: list[list[str]]  # the commands of one job whose execve calls are counted


def _runners(work: Path, wrapper: Path) -> list[Runner]:
    env = {**os.environ, "SOLVERPILOT_SERVER_DIR": str(work / "ours"), "USER": "bench"}
    true = shutil.which("true") or "/bin/true"
    runners = [
        Runner("true", lambda i: _call([true], env), [[true]]),
        Runner(
            "ours",
            lambda i: _call(["bash", "-p", str(wrapper), f"j{i}", true], env),
            [["bash", "-p", str(wrapper), "trace", true]],
        ),
    ]
    if BASELINE.exists():
        home = work / "seedhome"
        (home / ".solverpilot-server").mkdir(parents=True)
        schema = (ROOT / "templates" / "schema.sql").read_text()
        with sqlite3.connect(home / ".solverpilot-server" / "server.db") as db:
            db.executescript(schema)
        seed_env = {**env, "HOME": str(home)}
        runners.append(
            Runner(
                "baseline",
                lambda i: _call(["bash", str(BASELINE), f"s{i}", true], seed_env),
                [["bash", str(BASELINE), "trace", true]],
            )
        )
    if shutil.which("nq"):
        nq_env = {**env, "NQDIR": str(work / "nq")}
        (work / "nq").mkdir()

        def nq(i: int) -> None:
            _call(["nq", "-q", true], nq_env)
            _call(["nq", "-w"], nq_env)

        runners.append(Runner("nq", nq, [["nq", "-q", true], ["nq", "-w"]]))
    tsp = shutil.which("tsp") or shutil.which("ts")
    if tsp:
        # TMPDIR: its per-job output files (ts-out.*) stay in the work folder, removed after
        tsp_env = {
            **env,
            "TS_SOCKET": str(work / "tsp.socket"),
            "TS_SAVELIST": "",
            "TMPDIR": str(work),
        }

        def spool(i: int) -> None:
            job = subprocess.run(
                [tsp, true], env=tsp_env, capture_output=True, text=True, check=True
            ).stdout.strip()
            _call([tsp, "-w", job], tsp_env)

        # the client that queues a job also runs it (its server tells it when): strace -f of
        # the client sees the job's `true`
        runners.append(Runner("task-spooler", spool, [[tsp, true], [tsp, "-w"]]))
    return runners


def _call(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)


def exec_count(commands: list[list[str]], env: dict[str, str]) -> int:
    """The successful execve calls of ``commands`` and all their children (strace -f)."""
    strace = shutil.which("strace")
    if strace is None:
        return -1
    total = 0
    for argv in commands:
        with tempfile.NamedTemporaryFile("r") as trace:
            traced = [strace, "-f", "-qq", "-e", "trace=execve", "-e", "signal=none"]
            subprocess.run(
                [*traced, "-o", trace.name, *argv],
                env=env,
                check=False,
                stdout=subprocess.DEVNULL,
            )
            total += sum(line.rstrip().endswith("= 0") for line in trace.read().splitlines())
    return total


@dataclass
class Cost:
    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    ratio: float  # median of the per-round ratios to `true`
    execs: int


def measure(rounds: int) -> list[Cost]:
    """Each runner ``rounds`` times (after one warm-up each), interleaved."""
    with tempfile.TemporaryDirectory(prefix="sp-bench-") as tmp:
        work = Path(tmp)
        wrapper = work / "job_wrapper.sh"
        subprocess.run([*SP_DEPLOY, "render", "--distro", "debian", "-o", str(wrapper)], check=True)
        runners = _runners(work, wrapper)
        times: dict[str, list[float]] = {r.name: [] for r in runners}
        for i in range(rounds + 1):
            for runner in runners:
                start = time.perf_counter()
                runner.run(i)
                if i:
                    times[runner.name].append((time.perf_counter() - start) * 1000)
        env = {**os.environ, "SOLVERPILOT_SERVER_DIR": str(work / "ours"), "USER": "bench"}
        env.update({"NQDIR": str(work / "nq"), "TS_SOCKET": str(work / "tsp.socket")})
        env.update({"TS_SAVELIST": "", "TMPDIR": str(work)})
        env["HOME"] = str(work / "seedhome")
        costs = []
        for runner in runners:
            samples = times[runner.name]
            ratios = [t / b for t, b in zip(samples, times["true"], strict=True)]
            deciles = statistics.quantiles(samples, n=10, method="inclusive")
            costs.append(
                Cost(
                    runner.name,
                    statistics.median(samples),
                    deciles[0],
                    deciles[-1],
                    statistics.median(ratios),
                    exec_count(runner.trace, env),
                )
            )
        if shutil.which("tsp") or shutil.which("ts"):
            tsp = shutil.which("tsp") or shutil.which("ts") or "tsp"
            subprocess.run([tsp, "-K"], env=env, check=False, capture_output=True)
        return costs

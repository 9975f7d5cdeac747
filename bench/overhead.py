"""Per-job overhead of the rendered wrapper: wall time and the programs it executes.

Usage: python bench/overhead.py [--distro NAME] [--runs N]

Runs `job_wrapper.sh ID true` N times (a fresh job id each run, one warm-up first) against a
server folder in a temporary directory, and `true` alone N times; prints the medians, their
difference (the wrapper's cost per job), and the execve calls of one run counted by strace.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.render import render_wrapper, write_atomically


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {model}, {os.cpu_count()} cores, Linux {platform.release()}"


def median_ms(argv: list[str], runs: int, env: dict[str, str], vary_id: bool) -> float:
    samples = []
    for i in range(runs + 1):
        args = [a.replace("{i}", str(i)) for a in argv] if vary_id else argv
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True)
        if i:  # the first run warms caches and creates the folders
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def exec_count(wrapper: Path, env: dict[str, str]) -> list[str]:
    strace = shutil.which("strace")
    if not strace:
        return []
    with tempfile.NamedTemporaryFile("r") as trace:
        subprocess.run(
            [
                strace,
                "-f",
                "-qq",
                "-e",
                "trace=execve",
                "-e",
                "signal=none",
                "-o",
                trace.name,
                str(wrapper),
                "bench-strace",
                "true",
            ],
            env=env,
            check=True,
        )
        lines = [line for line in trace.read().splitlines() if line.rstrip().endswith("= 0")]
    return [line.split('"')[1] for line in lines]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distro", default="debian")
    parser.add_argument("--runs", type=int, default=101)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "job_wrapper.sh"
        write_atomically(wrapper, render_wrapper(load_profile(args.distro)))
        env = {**os.environ, "SOLVERPILOT_SERVER_DIR": str(Path(tmp) / "server")}
        env.setdefault("USER", "bench")
        true = shutil.which("true") or "/bin/true"
        bare = median_ms([true], args.runs, env, vary_id=False)
        wrapped = median_ms([str(wrapper), "bench-{i}", true], args.runs, env, vary_id=True)
        execs = exec_count(wrapper, env)
    print(f"machine: {machine()}")
    print(f"profile: {args.distro}, runs: {args.runs}, python {sys.version.split()[0]}")
    print(f"median `true` alone:           {bare:7.2f} ms")
    print(f"median under job_wrapper.sh:   {wrapped:7.2f} ms")
    print(f"wrapper overhead per job:      {wrapped - bare:7.2f} ms")
    if execs:
        print(f"execve per job ({len(execs)}, incl. the script and the job): {' '.join(execs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

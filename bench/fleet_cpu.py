"""CPU per host of a fleet push: the hosts' side and the client's, measured apart.

Usage: python bench/fleet_cpu.py [--hosts N] [--runs R] [--tools T,...]   (as root)

On bench/fleet.py's lab (N loopback sshd hosts, each its own user and home), every sshd and all
it runs is put in one cgroup (cgroup v1 cpuacct, else v2), read before and after each command;
the client's CPU is the command's own (rusage of the children). Each round and tool: a push into
emptied homes of hosts pushed to before (fleet.py's "seen"), then the same push again, nothing
to change ("repeat"). Round 0 warms up and is dropped. Prints one line per tool and phase: the
median wall time, and the client's and the hosts' CPU in ms per host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from resource import RUSAGE_CHILDREN, getrusage

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet
from jobcost import use_checkout


class Cgroup:
    """A cgroup of this benchmark's own: processes put in it, their CPU seconds so far."""

    def __init__(self, name: str) -> None:
        v1 = Path("/sys/fs/cgroup/cpuacct")
        self.v1 = v1.is_dir()
        self.path = (v1 if self.v1 else Path("/sys/fs/cgroup")) / name
        self.path.mkdir(exist_ok=True)

    def add(self, pid: int) -> None:
        (self.path / ("tasks" if self.v1 else "cgroup.procs")).write_text(str(pid))

    def seconds(self) -> float:
        if self.v1:
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise RuntimeError("cpu.stat has no usage_usec")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", default="sp-deploy paramiko,pyinfra files.put")
    args = parser.parse_args()
    use_checkout()
    tools = args.tools.split(",")
    group = Cgroup("sp-fleet-cpu")
    lab = fleet.Lab(args.hosts)
    found: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for host in lab.hosts:
            group.add(host.sshd.process.pid)
        for round_ in range(args.runs + 1):
            for tool in tools:
                for phase in ("seen", "repeat"):
                    if phase == "seen":
                        lab.clean()
                    argv, env = lab.command(tool, args.hosts)
                    cpu0, kids0 = group.seconds(), getrusage(RUSAGE_CHILDREN)
                    t0 = time.perf_counter()
                    done = subprocess.run(
                        argv, env={**os.environ, **env}, cwd=lab.base, capture_output=True
                    )
                    wall = time.perf_counter() - t0
                    kids1, cpu1 = getrusage(RUSAGE_CHILDREN), group.seconds()
                    if done.returncode != 0:
                        print(f"{tool} {phase}: exit {done.returncode}", file=sys.stderr)
                        return 1
                    lab.end_masters(env)
                    client = kids1.ru_utime - kids0.ru_utime + kids1.ru_stime - kids0.ru_stime
                    if round_:
                        found.setdefault((tool, phase), []).append((wall, client, cpu1 - cpu0))
    finally:
        lab.close()
    for (tool, phase), rows in found.items():
        wall, client, hosts = (statistics.median(row[k] for row in rows) for k in range(3))
        print(
            f"{tool:30s} {phase:6s} wall {wall:5.2f} s  client {client * 1000 / args.hosts:6.1f}"
            f" ms/host  hosts {hosts * 1000 / args.hosts:6.1f} ms/host  ({len(rows)} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

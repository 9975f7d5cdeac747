"""Events against polling: how soon `sp-deploy watch` tells of a job's end, and what watching
costs the host and the client, against `sp-deploy status` run at a fixed interval.

Usage: python bench/watch.py [--hosts 10] [--jobs 1000] [--ends 20] [--seconds 30]
(as root: it makes test users and one sshd per host on 127.0.0.1, as the tests do)

Each host is its own sshd and its own test user (spbenchw0, spbenchw1...), with the wrapper
pushed and JOBS recorded jobs (final state files). One `sp-deploy watch` of all the hosts runs
(--json). Then:
1. Latency: on each host in turn, ENDS jobs run (the wrapper, as tmux would run it) at random
   moments; each end's latency is the time its event line reached the client minus the time
   its state file was last written (the host's clock is the client's). p50 and p99.
2. Idle cost: for SECONDS with nothing changing, the host CPU of one host's watch (every process
   that its sshd runs for the connection, reaped children included) and the client's (the
   watch process), per hour; against `sp-deploy status HOST --json` once a second (the same
   look, a login each time): its logins per hour, host CPU (sshd's processes and all they ran)
   and client CPU. With inotifywait on the host (inotify-tools), and without it (the poll loop:
   a PATH without inotifywait, through sshd's SetEnv).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import machine
from sshlab import Sshd, authorize, clean_home, ensure_test_user, keygen

HZ = os.sysconf("SC_CLK_TCK")
SERVER = ".solverpilot-server"
WRAPPER = ".solverpilot/bin/job_wrapper.sh"


def cpu_of_tree(root: int) -> float:
    """CPU seconds of ``root`` and every live process below it, with the children each has
    reaped (so a process that ended between two readings still counts, in its parent)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            f = stats[pid]
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        todo += children.get(pid, [])
    return total / HZ


def own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / HZ


def sp(*args: str) -> list[str]:
    return [sys.executable, "-m", "solverpilot_deploy", *args]


def as_user(user: pwd.struct_passwd, *argv: str) -> subprocess.Popen[bytes]:
    env = {"HOME": user.pw_dir, "USER": user.pw_name, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *argv],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def record_jobs(user: pwd.struct_passwd, count: int) -> None:
    """``count`` ended jobs' state files, as the wrapper writes them."""
    jobs = Path(user.pw_dir) / SERVER / "jobs"
    as_user(user, f"{user.pw_dir}/{WRAPPER}", "seed", "true").wait()
    text = (jobs / "seed.status").read_text()
    for n in range(count):
        path = jobs / f"old{n:05}.status"
        path.write_text(text.replace('"id":"seed"', f'"id":"old{n:05}"'))
        os.chown(path, user.pw_uid, user.pw_gid)


class Watch:
    """One `sp-deploy watch --json` of hosts, its lines read as they come."""

    def __init__(self, hosts: list[str], common: list[str]) -> None:
        self.proc = subprocess.Popen(
            sp("watch", *hosts, *common, "--json"), stdout=subprocess.PIPE, text=True
        )
        self.arrived: dict[tuple[str, str, str], float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            key = (event["host"], str(event.get("id")), event["event"])
            self.arrived.setdefault(key, time.time())

    def wait(self, key: tuple[str, str, str], seconds: float) -> float:
        deadline = time.monotonic() + seconds
        while key not in self.arrived:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no event {key}")
            time.sleep(0.005)
        return self.arrived[key]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def idle_row(label: str, server: Sshd, client: int | None, seconds: float, logins: int) -> str:
    """One table row: host and client CPU over ``seconds`` (client: the watch's pid, or None:
    this process's children, the status runs)."""
    assert server.process is not None
    host0 = cpu_of_tree(server.process.pid)
    mine0 = own_cpu(client) if client else os.times().children_user + os.times().children_system
    time.sleep(seconds)  # the span measured, not a synchronisation
    host = cpu_of_tree(server.process.pid) - host0
    mine = (
        own_cpu(client) if client else os.times().children_user + os.times().children_system
    ) - mine0
    per_hour = 3600 / seconds
    return (f"| {label} | {logins * per_hour:.0f} | {host * per_hour:.1f} | "
            f"{100 * host / seconds:.2f} | {mine * per_hour:.1f} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--ends", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: it makes test users and sshd servers", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="sp-bench-watch-"))
    base.chmod(0o755)
    key = keygen(base / "client")
    users = [ensure_test_user(f"spbenchw{n}") for n in range(args.hosts)]
    servers = []
    known = base / "known_hosts"
    no_inotify = base / "bin"
    no_inotify.mkdir()
    for tool in os.listdir("/usr/bin"):
        if tool != "inotifywait":
            (no_inotify / tool).symlink_to(f"/usr/bin/{tool}")
    try:
        for user in users:
            subprocess.run(["pkill", "-KILL", "-u", user.pw_name], check=False)
            clean_home(user)
            authorize(user, base / "client.pub")
            servers.append(Sshd(base / user.pw_name, user.pw_name, log_level="INFO").start())
        poll_server = Sshd(base / "poll", users[0].pw_name, log_level="INFO",
                           extra_config=f"SetEnv PATH={no_inotify}:/bin\n").start()  # fmt: skip
        known.write_text("".join(s.known_hosts_line for s in [*servers, poll_server]))
        common = ["-i", str(key), "--known-hosts", str(known)]
        hosts = [s.spec for s in servers]
        done = subprocess.run(sp("push", *hosts, *common, "--json"), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"push: {done.stdout} {done.stderr}")
        for user in users:
            record_jobs(user, args.jobs)
        how = "inotify" if shutil.which("inotifywait") else "poll"
        # 1. latency, all hosts watched by one process
        watch = Watch(hosts, common)
        for host in hosts:
            watch.wait((host, "seed", "now"), 120)
        late = []
        for n in range(args.ends):
            for host, user in zip(hosts, users, strict=True):
                job_id = f"end{n:03}"
                as_user(user, f"{user.pw_dir}/{WRAPPER}", job_id, "true").wait()
                arrived = watch.wait((host, job_id, "ended"), 30)
                written = (Path(user.pw_dir) / SERVER / "jobs" / f"{job_id}.status").stat().st_mtime
                late.append(arrived - written)
                time.sleep(random.uniform(0, 0.1))
        watch.stop()
        # 2. idle cost on one host: watch (inotify, then poll), against status each second
        rows = []
        one = Watch([hosts[0]], common)
        one.wait((hosts[0], "seed", "now"), 120)
        rows.append(idle_row(f"watch ({how})", servers[0], one.proc.pid, args.seconds, 0))
        one.stop()
        poll = Watch([poll_server.spec], common)
        poll.wait((poll_server.spec, "seed", "now"), 120)
        rows.append(
            idle_row("watch (poll: no inotifywait)", poll_server, poll.proc.pid, args.seconds, 0)
        )
        poll.stop()
        looks = [0]
        stop = threading.Event()

        def status_each_second() -> None:
            while not stop.is_set():
                began = time.monotonic()
                subprocess.run(sp("status", hosts[0], *common, "--json"), capture_output=True)
                looks[0] += 1
                stop.wait(max(0.0, 1 - (time.monotonic() - began)))

        runner = threading.Thread(target=status_each_second)
        runner.start()
        time.sleep(2)  # (a first look's start-up is not measured)
        started = looks[0]
        row = idle_row("status once a second", servers[0], None, args.seconds, 0)
        count = looks[0] - started
        stop.set()
        runner.join()
        rows.append(row.replace("| 0 |", f"| {count * 3600 / args.seconds:.0f} |", 1))
        rows[0] = rows[0].replace("| 0 |", "| 1 per watch |", 1)
        rows[1] = rows[1].replace("| 0 |", "| 1 per watch |", 1)
        print(f"machine: {machine()}")
        p50, p99 = statistics.median(late) * 1000, percentile(late, 0.99) * 1000
        print(f"Latency of {len(late)} ends on {args.hosts} hosts ({args.jobs} recorded jobs "
              f"each; {how} on the hosts): p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
              f"most {max(late) * 1000:.0f} ms")  # fmt: skip
        print()
        print(f"| watching one host ({args.jobs} jobs, idle) | logins per hour | "
              "host CPU s per hour | "
              "host % of a core | client CPU s per hour |")  # fmt: skip
        print("| --- | ---: | ---: | ---: | ---: |")
        for row in rows:
            print(row)
    finally:
        for server in servers:
            server.stop()
        if "poll_server" in locals():
            poll_server.stop()
        for user in users:
            subprocess.run(["pkill", "-KILL", "-u", user.pw_name], check=False)
            clean_home(user)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

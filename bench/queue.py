"""What waiting costs the host, and how soon a freed slot starts the next job.

Usage: python bench/queue.py [--waiting 1000] [--handoffs 20]   (as root: it makes a test user,
as the tests do; the host side is the real one: the deployed wrapper, the run step, tmux)

The run step (templates/remote/run.sh, with lib.sh and end.sh, as sp-deploy sends it) runs as
the test user on this machine, fed on stdin as ssh would feed it; no sshd is needed for what is
measured here, which all happens on the host.

1. Waiting: a 2-slot queue whose two jobs hold their slots, then WAITING more jobs submitted to
   it. Then, for 30 s: the user's processes (count, summed RSS) and the CPU they use (utime +
   stime of every process of the user, /proc), against the same with no job waiting.
2. Hand-off: in a 1-slot queue, a job ends (it notes the time as its last act) and the next
   (which notes the time as its first) starts; HANDOFFS times. Median and p10-p90 of the gap.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import machine
from sshlab import clean_home, ensure_test_user

from solverpilot_deploy.jobs import JobSpec, run_payload
from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.remote import parse_framed, step_script, with_payload, with_token
from solverpilot_deploy.render import render_wrapper

USER = "spbenchq"


def as_user(
    user: pwd.struct_passwd, *argv: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = {"HOME": user.pw_dir, "USER": user.pw_name, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    words = [f"{k}={v}" for k, v in env.items()]
    return subprocess.run(
        ["runuser", "-u", user.pw_name, "--", "env", "-i", *words, *argv],
        input=stdin, capture_output=True, cwd=user.pw_dir, check=False,
    )  # fmt: skip


def step(
    user: pwd.struct_passwd, name: str, *args: str, payload: str | None = None
) -> tuple[int, tuple[str, ...]]:
    """Run remote step ``name`` as ``user``, as sp-deploy sends it; its status and lines."""
    token = secrets.token_hex(12)
    script = step_script(name)
    if payload is not None:
        script = with_payload(script, payload)
    done = as_user(user, "/bin/sh", "-s", "--", *args, stdin=with_token(script, token).encode())
    framed = parse_framed(token, done.stdout.decode(errors="replace"))
    if framed is None:
        raise RuntimeError(f"{name}: no answer: {done.stderr.decode(errors='replace')[-300:]}")
    return framed


def submit(user: pwd.struct_passwd, job_id: str, queue: str, argv: list[str]) -> None:
    spec = JobSpec(tuple(argv), queue=queue)
    status, lines = step(
        user, "run", job_id, "30", queue, "-", "-", "-",
        payload=spec.json_head() + "\n" + run_payload("", argv),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"run {job_id}: exit {status}: {lines}")


def user_processes(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def usage(uid: int) -> tuple[int, int, float]:
    """(processes, summed RSS in KiB, summed utime+stime in seconds) of the user's processes."""
    count = rss = 0
    ticks = 0
    for pid in user_processes(uid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        count += 1
        ticks += int(stat[11]) + int(stat[12])
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
    return count, rss, ticks / os.sysconf("SC_CLK_TCK")


def watch(uid: int, seconds: float) -> tuple[int, int, float]:
    """The user's processes and RSS at the end of ``seconds``, and the CPU seconds they used."""
    _, _, cpu0 = usage(uid)
    time.sleep(seconds)  # the span measured, not a synchronisation
    count, rss, cpu1 = usage(uid)
    return count, rss, cpu1 - cpu0


def wait_for(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--handoffs", type=int, default=20)
    parser.add_argument("--quiet-seconds", type=float, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: it makes a test user", file=sys.stderr)
        return 2
    user = ensure_test_user(USER)
    subprocess.run(["pkill", "-KILL", "-u", USER], check=False)  # an earlier run's leftovers
    clean_home(user)
    home = Path(user.pw_dir)
    bin_dir = home / ".solverpilot" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "job_wrapper.sh").write_text(render_wrapper(load_profile("debian")))
    (bin_dir / "job_wrapper.sh").chmod(0o755)
    shutil.chown(home / ".solverpilot", user.pw_uid, user.pw_gid)
    shutil.chown(bin_dir, user.pw_uid, user.pw_gid)
    shutil.chown(bin_dir / "job_wrapper.sh", user.pw_uid, user.pw_gid)
    work = home / "bench-queue"  # the gates and marks (clean_home leaves the home's own files)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    shutil.chown(work, user.pw_uid, user.pw_gid)
    marks = work / "marks"
    try:
        print(f"machine: {machine()}")
        # 1. waiting jobs
        step(user, "queue", "wait2", "2")
        gate = work / "gate"
        for n in range(2):
            submit(
                user, f"hold{n}", "wait2", ["sh", "-c", f"until [ -e {gate} ]; do sleep 1; done"]
            )
        wait_for(lambda: len(user_processes(user.pw_uid)) >= 5, 30, "the two holders run")
        time.sleep(2)  # let the start settle before the idle span
        base = watch(user.pw_uid, args.quiet_seconds)
        began = time.monotonic()
        for n in range(args.waiting):
            submit(user, f"w{n:05}", "wait2", ["true"])
        took = time.monotonic() - began
        loaded = watch(user.pw_uid, args.quiet_seconds)
        each = took / args.waiting * 1000
        print(f"Submitting {args.waiting} queued jobs: {took:.1f} s ({each:.1f} ms each).\n")
        print("| | processes | RSS (MiB) | CPU over the span (s) |")
        print("| --- | --- | --- | --- |")
        for label, (count, rss, cpu) in (
            ("2 running, none waiting", base),
            (f"2 running, {args.waiting} waiting", loaded),
        ):
            span = f"{cpu:.2f} over {args.quiet_seconds:.0f} s"
            print(f"| {label} | {count} | {rss / 1024:.1f} | {span} |")
        as_user(user, "tmux", "kill-server")
        clean_home(user)
        bin_dir.mkdir(parents=True)
        (bin_dir / "job_wrapper.sh").write_text(render_wrapper(load_profile("debian")))
        (bin_dir / "job_wrapper.sh").chmod(0o755)
        for path in (home / ".solverpilot", bin_dir, bin_dir / "job_wrapper.sh"):
            shutil.chown(path, user.pw_uid, user.pw_gid)
        # 2. hand-offs
        gaps = []
        for n in range(args.handoffs):
            first_gate = work / f"go{n}"
            first = (
                f"until [ -e {first_gate} ]; do sleep 0.05; done; "
                f"echo E $(date +%s.%N) >> {marks}.{n}"
            )
            submit(user, f"a{n:03}", "one", ["sh", "-c", first])
            submit(user, f"b{n:03}", "one", ["sh", "-c", f"echo S $(date +%s.%N) >> {marks}.{n}"])
            first_gate.touch()
            path = Path(f"{marks}.{n}")
            wait_for(lambda p=path: p.exists() and len(p.read_text().split()) == 4, 30, "b starts")
            values = dict(
                zip(
                    path.read_text().split()[::2],
                    map(float, path.read_text().split()[1::2]),
                    strict=True,
                )
            )
            gaps.append(values["S"] - values["E"])
        gaps.sort()
        deciles = statistics.quantiles(gaps, n=10)
        low, high = deciles[0] * 1000, deciles[-1] * 1000
        print(
            f"\nHand-off, a job's last act to the next one's first ({args.handoffs} times): median "
            f"{statistics.median(gaps) * 1000:.0f} ms, p10-p90 {low:.0f}-{high:.0f} ms"
        )
    finally:
        subprocess.run(["pkill", "-KILL", "-u", USER], check=False)
        clean_home(user)
    return 0


if __name__ == "__main__":
    sys.exit(main())

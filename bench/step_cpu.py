"""Host CPU of push's remote steps, part by part, without ssh: where a first push's time goes.

Usage: python bench/step_cpu.py [--distro NAME] [--runs N]

Runs each step push sends (the script remote.py builds: lib.sh, its functions, the step,
end.sh; the payload and its per-call token as sp-deploy sends them) with `/bin/sh -s` in a fresh
home of its own, N times, and prints the median CPU (user + system of the shell and all it ran,
from rusage) and wall time in ms, with the p10-p90 spread:

- probe: probe.sh, a first push's first step (os-release, each tool run once, the paths);
- install, no DB, no smoke: install.sh into an empty home, the wrapper alone (mkdir, mktemp,
  bash -n, the sha256 check, the rename);
- install and DB: the same, and the DB set-up (sp_init_db);
- install, DB and smoke: push's default, and the smoke job (one real run of the new wrapper);
- repeat: push.sh on a home that has the wrapper already (its quick path: current=yes).

What ssh adds (a login, a channel per step) is not here: bench/fleet_cpu.py measures the whole.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overhead import machine

from solverpilot_deploy import deploy, remote
from solverpilot_deploy.profiles import load_profile


def run_step(
    home: str, name: str, args: tuple[str, ...], payload: str | None
) -> tuple[float, float]:
    """(CPU ms, wall ms) of step ``name`` run as push runs it, in ``home``; AssertionError
    when it does not end with its answer's exit 0."""
    token = secrets.token_hex(12)
    script = remote.step_script(name)
    if payload is not None:
        script = remote.with_payload(script, payload)
    stdin = remote.with_token(script, token).encode()
    env = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    done = subprocess.run(
        ["/bin/sh", "-s", "--", *args], input=stdin, capture_output=True, env=env, cwd=home,
        check=False,
    )  # fmt: skip
    wall = (time.monotonic() - began) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    framed = remote.parse_framed(token, done.stdout.decode("utf-8", "replace"))
    assert framed is not None and framed[0] == 0, (name, framed, done.stderr[-300:])
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu * 1000, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distro", default="debian")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    text, digest = deploy.wrapper_for(load_profile(args.distro))
    payload = deploy._schema_line() + text

    def install(db: bool, smoke: bool) -> Callable[[str], tuple[float, float]]:
        smoke_id = f"sp-smoke-{secrets.token_hex(4)}" if smoke else "-"
        step = ("install", (digest, "60", "db" if db else "-", smoke_id))
        return lambda home: run_step(home, *step, payload)

    def repeat(home: str) -> tuple[float, float]:
        install(True, False)(home)
        return run_step(home, "push", (digest, "60", "db", "-", "0" * 64), payload)

    cases: dict[str, Callable[[str], tuple[float, float]]] = {
        "probe": lambda home: run_step(home, "probe", (), None),
        "install, no DB, no smoke": install(False, False),
        "install and DB": install(True, False),
        "install, DB and smoke": install(True, True),
        "repeat (push.sh, current=yes)": repeat,
    }
    print(f"# {machine()}; {args.runs} runs each, /bin/sh is {os.path.realpath('/bin/sh')}")
    print("| step | CPU ms | p10-p90 | wall ms |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="sp-step-cpu-") as top:
        for label, case in cases.items():
            cpu, wall = [], []
            for i in range(args.runs + 1):  # the first is a warm-up, dropped
                home = os.path.join(top, f"home{i}")
                os.mkdir(home, 0o700)
                took = case(home)
                shutil.rmtree(home)
                if i:
                    cpu.append(took[0])
                    wall.append(took[1])
            deciles = statistics.quantiles(cpu, n=10, method="inclusive")  # (within the samples)
            print(
                f"| {label} | {statistics.median(cpu):.1f} | {deciles[0]:.1f}-{deciles[-1]:.1f} "
                f"| {statistics.median(wall):.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

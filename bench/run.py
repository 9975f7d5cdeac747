"""Run the benchmarks side by side and write BENCHMARKS.md and bench/plots/*.png.

Usage: python bench/run.py [--quick] [--dry-run] [--out FILE]   (as root: apt, test users, sshd)

Sets up what it needs (the Debian packages nq, task-spooler and strace, and the `bench` extra
of pyproject.toml: ansible-core, pyinfra, matplotlib, when missing), then measures, in one run
on one machine: the per-job cost of `true` under each job runner with its exec count; many jobs
finishing at once on one DB (ours and the baseline); fleet pushes against Ansible and pyinfra;
`status` against the number of jobs; and the start-up of `sp-deploy render`. Every figure is a
median over repeated runs with its p10-p90 spread, and every comparison a ratio taken in the
same run. --dry-run checks the set-up and prints the plan without measuring or installing;
--quick runs fewer rounds and sizes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import burst as burst_bench
import fleet as fleet_bench
import jobcost
import status as status_bench

APT = {"nq": "nq", "tsp": "task-spooler", "strace": "strace"}
PYTHON = ("ansible", "pyinfra", "matplotlib")  # importable names of the `bench` extra
PLOTS = jobcost.ROOT / "bench" / "plots"  # the default of --plots
Row = tuple[str, float, float, float, float]  # name, median, p10, p90, ratio


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, p10 and p90 (inclusive deciles: never outside the samples)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), deciles[0], deciles[-1]


def machine() -> list[tuple[str, str]]:
    """The machine, as the tables' reader needs it to compare."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break

    def out(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError:
            return "absent"
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"

    fs = out("stat", "-f", "-c", "%T", tempfile.gettempdir())
    return [
        ("CPU", f"{model}, {os.cpu_count()} cores"),
        ("kernel", f"Linux {platform.release()}"),
        ("bash", out("bash", "--version")),
        ("sqlite3", out("sqlite3", "--version").split(" ")[0]),
        ("Python", sys.version.split()[0]),
        ("filesystem of the temporary folder", fs),
    ]


def setup(dry_run: bool) -> list[str]:
    """Install the missing apt packages (as root) and the `bench` extra (into this Python);
    returns what is still missing."""
    missing = [pkg for tool, pkg in APT.items() if shutil.which(tool) is None]
    if missing and not dry_run and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False)
        missing = [pkg for tool, pkg in APT.items() if shutil.which(tool) is None]
    absent = [name for name in PYTHON if importlib.util.find_spec(name) is None]
    if absent and not dry_run:
        extra = tomllib.loads((jobcost.ROOT / "pyproject.toml").read_text())["project"]
        wanted = extra["optional-dependencies"]["bench"]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=False)
        importlib.invalidate_caches()
        absent = [name for name in PYTHON if importlib.util.find_spec(name) is None]
    return missing + [f"python:{name}" for name in absent]


def startup(rounds: int) -> list[tuple[str, float, float, float, float]]:
    """`sp-deploy render` with a warm and a cold render cache, against `python -c pass`."""
    exe = shutil.which("sp-deploy") or "sp-deploy"
    warm = tempfile.mkdtemp(prefix="sp-bench-cache-")
    runs: dict[str, list[float]] = {"python -c pass": [], "render, cached": [], "render, cold": []}
    try:
        for i in range(rounds + 1):
            cold = tempfile.mkdtemp(prefix="sp-bench-cache-")
            got = {
                "python -c pass": _timed([sys.executable, "-c", "pass"], {}),
                "render, cached": _timed(
                    [exe, "render", "--distro", "debian"], {"XDG_CACHE_HOME": warm}
                ),
                "render, cold": _timed(
                    [exe, "render", "--distro", "debian"], {"XDG_CACHE_HOME": cold}
                ),
            }
            shutil.rmtree(cold, ignore_errors=True)
            if i:
                for name, seconds in got.items():
                    runs[name].append(seconds)
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    return rows_of(runs, "python -c pass", 1)


def rows_of(samples: dict[str, list[float]], base: str, scale: float) -> list[Row]:
    """One row per name: median, p10, p90 (times ``scale``) and the median of the per-round
    ratios to ``base``."""
    rows = []
    for name, values in samples.items():
        ratio = statistics.median(v / b for v, b in zip(values, samples[base], strict=True))
        median, p10, p90 = spread(values)
        rows.append((name, median * scale, p10 * scale, p90 * scale, ratio))
    return rows


def fleet_rows(rounds: int, sizes: list[int]) -> list[tuple[int, str, Row, Row]]:
    """Per size and tool: the first deploy's row and the repeat's, each with its ratio to
    sp-deploy (paramiko) in the same round and phase."""
    samples = fleet_bench.measure(rounds, sizes)
    out: list[tuple[int, str, Row, Row]] = []
    for n in sizes:
        rows = {}
        for phase in fleet_bench.PHASES:
            by_tool = {tool: samples[(n, tool, phase)] for tool in fleet_bench.TOOLS}
            rows[phase] = rows_of(by_tool, fleet_bench.TOOLS[0], 1)
        out.extend((n, f[0], f, r) for f, r in zip(rows["first"], rows["repeat"], strict=True))
    return out


def bursts_rows(bursts: list[burst_bench.Burst]) -> list[tuple[int, str, int, int, Row]]:
    """Per size and runner: runs, the most updates lost in one run, the slowest write."""
    keys = dict.fromkeys((b.jobs, b.runner) for b in bursts)
    out: list[tuple[int, str, int, int, Row]] = []
    for n, runner in keys:
        mine = [b for b in bursts if (b.jobs, b.runner) == (n, runner)]
        slowest = spread([b.all_recorded_s for b in mine])
        out.append((n, runner, len(mine), max(b.lost for b in mine), (runner, *slowest, 0.0)))
    return out


def plot(
    folder: Path,
    fleet: list[tuple[int, str, Row, Row]],
    statuses: list[Row],
    bursts: list[tuple[int, str, int, int, Row]],
) -> None:
    """fleet.png, status.png and bursts.png in ``folder``, from the tables' numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)

    def label(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)

    if fleet:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, first, title in ((axes[0], True, "first deploy"), (axes[1], False, "no-op repeat")):
            for tool in fleet_bench.TOOLS:
                xs = [n for n, name, _, _ in fleet if name == tool]
                rows = [f if first else r for _, name, f, r in fleet if name == tool]
                ax.errorbar(
                    xs,
                    [row[1] for row in rows],
                    yerr=[[row[1] - row[2] for row in rows], [row[3] - row[1] for row in rows]],
                    marker="o",
                    capsize=3,
                    label=tool,
                )
            ax.set_title(f"Fleet push, {title}")
            ax.set_xlabel("loopback hosts (one sshd each), all at once")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("seconds (median, p10-p90)")
        axes[0].legend(fontsize=8)
        save(fig, "fleet.png")
    if statuses:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        jobs = [int(row[0].split()[1]) for row in statuses[1:]]
        ax.errorbar(
            jobs,
            [row[1] for row in statuses[1:]],
            yerr=[[r[1] - r[2] for r in statuses[1:]], [r[3] - r[1] for r in statuses[1:]]],
            marker="o", capsize=3, label="sp-deploy status",
        )  # fmt: skip
        ax.axhline(statuses[0][1], color="grey", linestyle="--", label="ssh HOST true (floor)")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        label(
            ax, "status against the number of jobs", "recorded jobs on the host",
            "ms (median, p10-p90)",
        )  # fmt: skip
        save(fig, "status.png")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for runner in dict.fromkeys(row[1] for row in bursts):
        mine = [row for row in bursts if row[1] == runner]
        ax.plot([r[0] for r in mine], [r[3] for r in mine], marker="o", label=f"{runner}: lost")
    label(
        ax, "Jobs finishing at once on one DB", "jobs finishing at once",
        "updates lost (worst run)",
    )  # fmt: skip
    save(fig, "bursts.png")


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def report(args: argparse.Namespace, started: float) -> str:
    quick = args.quick
    rounds = 15 if quick else 101
    root = os.geteuid() == 0
    costs = jobcost.measure(rounds)
    bursts = bursts_rows(
        burst_bench.measure([50, 100] if quick else [50, 100, 200, 400], 2 if quick else 5)
    )
    fleet_rounds, fleet_sizes = (2, [1, 10]) if quick else (5, [1, 10, 30])
    fleet = fleet_rows(fleet_rounds, fleet_sizes) if root else []
    status_rounds = 3 if quick else 11
    statuses = []
    if root:
        sizes = [10, 100, 1000] if quick else [10, 100, 1000, 10000]
        statuses = rows_of(status_bench.measure(status_rounds, sizes), "ssh true", 1000)
    starts = startup(5 if quick else 21)
    plot(Path(args.plots), fleet, statuses, bursts)
    fleet_table = [
        f"| {n} | {tool} | {f[1]:.2f} | {f[2]:.2f}-{f[3]:.2f} | {f[4]:.2f} | "
        f"{r[1]:.2f} | {r[2]:.2f}-{r[3]:.2f} | {r[4]:.2f} |"
        for n, tool, f, r in fleet
    ]
    by = {(n, tool): (f, r) for n, tool, f, r in fleet}
    most = max(fleet_sizes)
    paramiko = by.get((most, "sp-deploy paramiko"))
    pyinfra = by.get((most, "pyinfra files.put"))
    behind_fleet = (
        [
            f"- Fleet push on {most} hosts: pyinfra's files.put took x{pyinfra[0][4]:.2f} of "
            f"our time on a first deploy and x{pyinfra[1][4]:.2f} on a repeat (table 3; below 1 "
            "means faster than us). It copies one file; a push also checks the sha256 on the "
            "host, creates the DB and runs a smoke job (the --no-smoke row shows that share). "
            "The openssh transport costs more than paramiko: one ssh process per step.",
        ]
        if paramiko and pyinfra
        else []
    )
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python bench/run.py{' --quick' if quick else ''}` (as root) in "
        f"{time.monotonic() - started:.0f} s. Every time is a median over repeated runs with "
        "its p10-p90 spread; every ratio is the median of per-round ratios to the row named in "
        "its table's header, taken in the same run (absolute times drift on shared machines, "
        "ratios much less). Plots: bench/plots/*.png.",
        "",
        "To reproduce: on a Debian 12 machine, as root, with the project installed "
        "(`pip install -e '.[test,bench]'`, or the README's test command first), run "
        "`python bench/run.py` (about 10 minutes on the machine below; `--quick` about 3). It "
        "installs what is missing (apt: nq, task-spooler, strace; pip: the `bench` extra), "
        "makes its own test users and loopback sshd servers, and removes them after.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in machine()),
        "",
        f"## 1. Per job: `true` under each runner ({rounds} rounds)",
        "",
        "Each run waits until the runner has recorded the job's end. ours: the rendered wrapper "
        "(state file and SQLite row, lock, process group); baseline: the design we started "
        "from; nq and task-spooler record an exit status in a log file or a server's memory, "
        "with no DB and no stop rule. execs: programs executed for one job (strace -f; for "
        "task-spooler its client's, plus the job, which its server runs).",
        "",
        "| runner | median ms | p10-p90 ms | x `true` | execs |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {c.name} | {c.median_ms:.2f} | {c.p10_ms:.2f}-{c.p90_ms:.2f} | "
            f"{c.ratio:.1f} | {c.execs} |"
            for c in costs
        ),
        "",
        "## 2. Jobs finishing at once on one DB",
        "",
        "N wrappers run jobs that end within the same few milliseconds, so N final writes "
        "contend for one SQLite DB. lost: rows that do not say completed once every wrapper "
        "has exited, the worst of the runs (must be 0 for ours). slowest write: from the jobs' "
        "end to the last wrapper's exit, i.e. the longest any job waited for its record "
        "(lock waits included). Plot: bench/plots/bursts.png.",
        "",
        "| N | runner | runs | lost (worst run) | slowest write s | p10-p90 s |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {n} | {runner} | {runs} | {lost} | {row[1]:.2f} | {row[2]:.2f}-{row[3]:.2f} |"
            for n, runner, runs, lost, row in bursts
        ),
        "",
        f"## 3. Fleet push of the wrapper ({fleet_rounds} rounds)",
        "",
        "Every host is its own sshd on 127.0.0.1 with its own user and home; all hosts at "
        "once (-j, forks, --parallel = hosts). first: into empty homes; repeat: the same "
        "command again, nothing to change. sp-deploy push also checks the sha256 on the host, "
        "creates the DB and runs a smoke job (--no-smoke: without it). Ansible: a playbook "
        "with file + copy, facts off, its default ControlPersist but a fresh ControlPath per "
        "command (no login reused across commands). pyinfra: files.put. After every command "
        "every host's file is checked byte for byte. Ratios: to sp-deploy paramiko, same "
        "round and phase. Plot: bench/plots/fleet.png.",
        "",
        "| hosts | tool | first s | p10-p90 | x ours | repeat s | p10-p90 | x ours |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(fleet_table or ["| | (not measured: needs root) | | | | | | |"]),
        "",
        f"## 4. `sp-deploy status` against the number of recorded jobs ({status_rounds} rounds)",
        "",
        "The whole command (Python's start, the ssh login, one remote step) on a loopback "
        "sshd; `ssh true` is the floor: a bare login and command. Ratios per round to it. "
        "Plot: bench/plots/status.png.",
        "",
        "| command | median ms | p10-p90 ms | x `ssh true` |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {n} | {m:.1f} | {a:.1f}-{b:.1f} | {r:.2f} |" for n, m, a, b, r in statuses),
        *([] if statuses else ["| (not measured: needs root) | | | |"]),
        "",
        "## 5. Start-up of `sp-deploy render`",
        "",
        "cached: the rendered wrapper is in the user's cache; cold: an empty cache (Jinja2 "
        "is imported and the template rendered).",
        "",
        "| command | median ms | p10-p90 ms | x `python -c pass` |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {n} | {m:.1f} | {a:.1f}-{b:.1f} | {r:.2f} |" for n, m, a, b, r in starts),
        "",
        "## Where we are behind",
        "",
        "- Per job, nq and task-spooler cost a fraction of our wrapper (table 1): they keep "
        "one log line, no database, no lock held by the job, no stop rule. Our cost is the "
        "price of the record, close to the baseline's, which keeps fewer promises and loses "
        "most updates when jobs end together (table 2).",
        "- Many jobs ending at once wait for one another's DB writes (table 2's slowest "
        "write): the price of losing none.",
        *behind_fleet,
        "- `status` grows with the number of recorded jobs once they reach the thousands "
        "(table 4): it reads every state file on the host.",
        "- Start-up: `sp-deploy` imports Jinja2 and paramiko; a cold render costs several "
        "times a bare Python start (table 5).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes")
    parser.add_argument("--dry-run", action="store_true", help="check the set-up, measure nothing")
    parser.add_argument("--out", default=str(jobcost.ROOT / "BENCHMARKS.md"))
    parser.add_argument("--plots", default=str(PLOTS), help="folder for the plots")
    args = parser.parse_args()
    started = time.monotonic()
    missing = setup(args.dry_run)
    if args.dry_run:
        print("machine:", "; ".join(f"{k}: {v}" for k, v in machine()))
        print("missing (installed on a real run, as root):", " ".join(missing) or "nothing")
        print("baseline:", jobcost.BASELINE if jobcost.BASELINE.exists() else "absent")
        print(
            "plan: per-job cost; jobs finishing at once; fleet push; status; render start-up ->",
            args.out,
            "and",
            args.plots,
        )
        return 0
    if missing:
        print("bench: missing after set-up:", " ".join(missing), file=sys.stderr)
        return 1
    Path(args.out).write_text(report(args, started))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

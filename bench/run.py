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
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import signal
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

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    fs = out("stat", "-f", "-c", "%T", tempfile.gettempdir())
    head = out("git", "-C", str(jobcost.ROOT), "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(
        ["git", "-C", str(jobcost.ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr
    tools = (
        f"OpenSSH {ssh.split(',')[0].removeprefix('OpenSSH_')}; paramiko {version('paramiko')}; "
        f"ansible-core {version('ansible-core')}; pyinfra {version('pyinfra')}; "
        f"nq, task-spooler: Debian's {out('dpkg-query', '-W', '-f', '${Version}', 'nq')}, "
        f"{out('dpkg-query', '-W', '-f', '${Version}', 'task-spooler')}"
    )
    return [
        ("code", f"{head}{' with uncommitted changes' if dirty else ''} (this checkout's)"),
        ("tools compared", tools),
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
        subprocess.run(["apt-get", "update", "-qq"], check=False)
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
    exe = jobcost.SP_DEPLOY
    warm = tempfile.mkdtemp(prefix="sp-bench-cache-")
    runs: dict[str, list[float]] = {"python -c pass": [], "render, cached": [], "render, cold": []}
    try:
        for i in range(rounds + 1):
            cold = tempfile.mkdtemp(prefix="sp-bench-cache-")
            got = {
                "python -c pass": status_bench.timed([sys.executable, "-c", "pass"], {}),
                "render, cached": status_bench.timed(
                    [*exe, "render", "--distro", "debian"], {"XDG_CACHE_HOME": warm}
                ),
                "render, cold": status_bench.timed(
                    [*exe, "render", "--distro", "debian"], {"XDG_CACHE_HOME": cold}
                ),
            }
            shutil.rmtree(cold, ignore_errors=True)
            if i:
                for name, seconds in got.items():
                    runs[name].append(seconds)
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    return rows_of(runs, "python -c pass", 1000)


def rows_of(samples: dict[str, list[float]], base: str, scale: float) -> list[Row]:
    """One row per name: median, p10, p90 (times ``scale``) and the median of the per-round
    ratios to ``base``."""
    rows = []
    for name, values in samples.items():
        ratio = statistics.median(v / b for v, b in zip(values, samples[base], strict=True))
        median, p10, p90 = spread(values)
        rows.append((name, median * scale, p10 * scale, p90 * scale, ratio))
    return rows


def scale_rows(at_scale: dict[tuple[int, str], list[tuple[float, float]]]) -> list[str]:
    """Table 4b's lines: per size and output, the median seconds, their range, the median MB."""
    lines = []
    for (n, mode), got in at_scale.items():
        seconds = sorted(g[0] for g in got)
        memory = statistics.median(g[1] for g in got)
        median = statistics.median(seconds)
        lines.append(
            f"| {n:,} | {mode} | {median:.1f} | {seconds[0]:.1f}-{seconds[-1]:.1f} | {memory:.0f} |"
        )
    return lines


Fleet = list[tuple[int, str, dict[str, Row]]]  # per size and tool: each phase's row


def fleet_rows(rounds: int, sizes: list[int], big_rounds: int) -> Fleet:
    """Per size and tool: each phase's row (first, seen, repeat), each with its ratio to
    sp-deploy (paramiko) in the same round and phase."""
    return fleet_rows_of(fleet_bench.measure(rounds, sizes, big_rounds), sizes)


def fleet_rows_of(
    samples: dict[tuple[int, str, str], list[float]],
    sizes: list[int],
    tools: tuple[str, ...] = fleet_bench.TOOLS,
) -> Fleet:
    """fleet_rows from bench/fleet.py's samples (``tools`` begins with sp-deploy paramiko)."""
    out: Fleet = []
    for n in sizes:
        rows = {}
        for phase in fleet_bench.PHASES:
            by_tool = {tool: samples[(n, tool, phase)] for tool in tools}
            rows[phase] = rows_of(by_tool, fleet_bench.TOOLS[0], 1)
        for i, tool in enumerate(tools):
            out.append((n, tool, {phase: rows[phase][i] for phase in fleet_bench.PHASES}))
    return out


def fleet_table(fleet: Fleet) -> list[str]:
    """Table 3's rows."""
    return [
        f"| {n} | {tool} | "
        + " | ".join(
            f"{row[1]:.2f} | {row[2]:.2f}-{row[3]:.2f} | {row[4]:.2f}"
            for row in (rows[phase] for phase in fleet_bench.PHASES)
        )
        + " |"
        for n, tool, rows in fleet
    ]


def bursts_rows(bursts: list[burst_bench.Burst]) -> list[tuple[int, str, int, int, Row]]:
    """Per size and runner: runs, the most updates lost in one run, the slowest write (its
    ratio: to the baseline's in the same run; 1 for the baseline, 0 without one)."""
    keys = dict.fromkeys((b.jobs, b.runner) for b in bursts)
    out: list[tuple[int, str, int, int, Row]] = []
    for n, runner in keys:
        mine = [b.all_recorded_s for b in bursts if (b.jobs, b.runner) == (n, runner)]
        base = [b.all_recorded_s for b in bursts if (b.jobs, b.runner) == (n, "baseline")]
        ratio = statistics.median(m / b for m, b in zip(mine, base, strict=True)) if base else 0
        worst = max(b.lost for b in bursts if (b.jobs, b.runner) == (n, runner))
        out.append((n, runner, len(mine), worst, (runner, *spread(mine), ratio)))
    return out


def plot(
    folder: Path,
    fleet: Fleet,
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
        titles = {"first": "first deploy", "seen": "host seen before", "repeat": "no-op repeat"}
        fig, axes = plt.subplots(1, len(titles), figsize=(16, 4.2), sharey=True)
        for ax, (phase, title) in zip(axes, titles.items(), strict=True):
            for tool in fleet_bench.TOOLS:
                xs = [n for n, name, _ in fleet if name == tool]
                rows = [by_phase[phase] for _, name, by_phase in fleet if name == tool]
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
        ax.axhline(statuses[0][1], color="grey", linestyle="--", label="ssh HOST true (OpenSSH)")
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


def behind_notes(
    costs: list[jobcost.Cost],
    bursts: list[tuple[int, str, int, int, Row]],
    fleet: Fleet,
    statuses: list[Row],
    starts: list[Row],
) -> list[str]:
    """The closing notes, each said only as far as this run's numbers say it."""
    cost = {c.name: c for c in costs}
    notes = []
    quick = [n for n in ("nq", "task-spooler") if n in cost and cost[n].ratio < cost["ours"].ratio]
    if quick:
        notes.append(
            f"- Per job, {' and '.join(quick)} cost a fraction of our wrapper (table 1: "
            + ", ".join(f"{n} x{cost[n].ratio:.1f} of `true`" for n in quick)
            + f", ours x{cost['ours'].ratio:.1f}): they keep one log line, no database, no lock "
            "held by the job, no stop rule. Our cost is the price of the record."
        )
    lost = {(n, r): worst for n, r, _, worst, _ in bursts}
    if any(r == "baseline" for _, r in lost):
        biggest = max(n for n, _ in lost)
        notes.append(
            f"- The baseline is cheaper per job (table 1: x{cost['baseline'].ratio:.1f}) but lost "
            f"{lost[(biggest, 'baseline')]} of {biggest} updates when jobs ended together "
            f"(ours {lost[(biggest, 'ours')]}); ours waited up to the slowest write of table 2."
        )
    by = {(n, tool): rows for n, tool, rows in fleet}
    if fleet:
        most = max(n for n, _ in by)
        for tool in ("pyinfra files.put", "ansible copy", "sp-deploy openssh"):
            rows = by[(most, tool)]
            if any(row[4] < 1 for row in rows.values()):
                notes.append(
                    f"- Fleet push on {most} hosts: {tool} took "
                    + ", ".join(f"x{row[4]:.2f} ({phase})" for phase, row in rows.items())
                    + " of our time (sp-deploy paramiko; table 3; below 1: faster than us). A "
                    "push also checks the sha256 on the host, creates the DB and runs a smoke "
                    "job (the --no-smoke row shows that share)."
                )
        first = by[(most, "sp-deploy openssh")]["first"]
        if first[4] > 1:
            notes.append(
                f"- The openssh transport took x{first[4]:.2f} of paramiko's time on {most} "
                "hosts (one ssh process per step); it is for what paramiko cannot do."
            )
    if statuses:
        notes.append(
            f"- `status` on {statuses[-1][0].split()[1]} recorded jobs took "
            f"x{statuses[-1][4]:.2f} of a bare `ssh true` (table 4): it reads every state file."
        )
    notes.append(
        f"- A cold render took x{starts[2][4]:.1f} of a bare Python start (table 5): it imports "
        "Jinja2 and renders; a cached one neither (paramiko is never imported by render)."
    )
    return notes


def queue_table(quick: bool) -> list[str]:
    """bench/queue.py's table and hand-off line (its machine line left out: the header has it)."""
    sizes = ("200", "10", "10") if quick else ("1000", "20", "30")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("queue.py")), "--waiting", sizes[0],
         "--handoffs", sizes[1], "--quiet-seconds", sizes[2]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return [f"(failed: {done.stderr.strip().splitlines()[-1:]})"]
    return [line for line in done.stdout.splitlines() if not line.startswith("machine:")]


def watch_table(quick: bool) -> list[str]:
    """bench/watch.py's latency line and table (its machine line left out)."""
    sizes = ("3", "200", "5", "10") if quick else ("10", "1000", "20", "30")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("watch.py")), "--hosts", sizes[0],
         "--jobs", sizes[1], "--ends", sizes[2], "--seconds", sizes[3]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return [f"(failed: {done.stderr.strip().splitlines()[-1:]})"]
    return [line for line in done.stdout.splitlines() if not line.startswith("machine:")]


def report(args: argparse.Namespace, started: float) -> str:
    described = machine()  # before the run rewrites its own plots, which would read as changes
    quick = args.quick
    rounds = 15 if quick else 101
    root = os.geteuid() == 0
    costs = jobcost.measure(rounds)
    bursts = bursts_rows(
        burst_bench.measure([50, 100] if quick else [50, 100, 200, 400], 3 if quick else 5)
    )
    fleet_rounds, fleet_sizes = (3, [1, 10]) if quick else (5, [1, 10, 30, 100])
    big_rounds = 2  # 100 hosts: Ansible alone takes about 50 s a command
    fleet = fleet_rows(fleet_rounds, fleet_sizes, big_rounds) if root else []
    status_rounds = 3 if quick else 11
    statuses = []
    if root:
        sizes = [10, 100, 1000] if quick else [10, 100, 1000, 10000]
        statuses = rows_of(status_bench.measure(status_rounds, sizes), "ssh true", 1000)
    scale_rounds, scale_sizes = (1, [100_000]) if quick else (2, [100_000, 1_000_000])
    at_scale = status_bench.scale(scale_rounds, scale_sizes) if root else {}
    starts = startup(5 if quick else 21)
    queue_lines = queue_table(quick) if root else ["(not measured: needs root)"]
    watch_lines = watch_table(quick) if root else ["(not measured: needs root)"]
    plot(Path(args.plots), fleet, statuses, bursts)
    fleet_lines = fleet_table(fleet)
    behind = behind_notes(costs, bursts, fleet, statuses, starts)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python bench/run.py{' --quick' if quick else ''}`"
        f"{' (as root)' if root else ' (not as root)'} in "
        f"{time.monotonic() - started:.0f} s. Every time is a median over repeated runs with "
        "its p10-p90 spread; every ratio is the median of per-round ratios to the row named in "
        "its table's header, taken in the same run (absolute times drift on shared machines, "
        "ratios much less). Plots: bench/plots/*.png.",
        "",
        "To reproduce: on a Debian 12 machine, as root, with the project installed "
        "(`pip install -e '.[test,bench]'`, or the README's test command first), run "
        "`python bench/run.py` (about 10 minutes on the machine below; `--quick` about 3). It "
        "installs what is missing (apt: nq, task-spooler, strace; pip: the `bench` extra), "
        "makes its own loopback sshd servers and removes them and its files after (also on "
        "Ctrl-C or TERM); the users it creates (spbench, spfleet00-99) stay for the next run "
        "(`userdel -r` removes them). It times this checkout's code (`python -m "
        "solverpilot_deploy` with the checkout first on PYTHONPATH), whatever is installed.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in described),
        "",
        f"## 1. Per job: `true` under each runner ({rounds} rounds)",
        "",
        "Each run waits until the runner has recorded the job's end. ours: the rendered wrapper "
        "(state file and SQLite row, lock, process group); baseline: the design we started "
        "from; nq and task-spooler record an exit status in a log file or a server's memory, "
        "with no DB and no stop rule. execs: programs executed for one job, the job's `true` "
        "included (strace -f of the commands a user runs; task-spooler's client runs the job "
        "itself when its server says so).",
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
        "| N | runner | runs | lost (worst run) | slowest write s | p10-p90 s | x baseline |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {n} | {runner} | {runs} | {lost} | {row[1]:.2f} | {row[2]:.2f}-{row[3]:.2f} | "
            f"{f'{row[4]:.2f}' if row[4] else '-'} |"
            for n, runner, runs, lost, row in bursts
        ),
        "",
        f"## 3. Fleet push of the wrapper ({fleet_rounds} rounds; {fleet_bench.BIG} hosts and "
        f"more: {big_rounds})",
        "",
        "Every host is its own sshd on 127.0.0.1 with its own user and home; all hosts at "
        "once (-j, forks, --parallel = hosts). first: into empty homes, hosts sp-deploy has "
        "not seen (its memory of them emptied: probe, then install); seen: into empty homes "
        "again, hosts it has pushed to (probe and install in one step); repeat: the same "
        "command again, nothing to change. sp-deploy push also checks the sha256 on the host, "
        "creates the DB and runs a smoke job (--no-smoke: without it). Ansible: a playbook "
        "with file + copy, facts off, its default ControlPersist but a fresh ControlPath per "
        "command (no login reused across commands). pyinfra: files.put. After every command "
        "every host's file is checked byte for byte. Ratios: to sp-deploy paramiko, same "
        "round and phase. Plot: bench/plots/fleet.png.",
        "",
        "| hosts | tool | first s | p10-p90 | x ours | seen s | p10-p90 | x ours | repeat s | "
        "p10-p90 | x ours |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(fleet_lines or ["| | (not measured: needs root) | | | | | | | | | |"]),
        "",
        f"## 4. `sp-deploy status` against the number of recorded jobs ({status_rounds} rounds)",
        "",
        "The whole command (Python's start, the ssh login, one remote step) on a loopback "
        "sshd, with the paramiko transport; `ssh true` (OpenSSH's client: a bare login and "
        "command) is the reference, not a floor for paramiko, whose own login is faster. "
        "Ratios per round to it. All jobs recorded are finished ones. Plot: "
        "bench/plots/status.png.",
        "",
        "| command | median ms | p10-p90 ms | x `ssh true` |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {n} | {m:.1f} | {a:.1f}-{b:.1f} | {r:.2f} |" for n, m, a, b, r in statuses),
        *([] if statuses else ["| (not measured: needs root) | | | |"]),
        "",
        f"## 4b. `sp-deploy status` at scale ({scale_rounds} rounds)",
        "",
        "As table 4, at the default `--timeout` (60 s, counted from the answer's last line "
        "once it flows), printing the table and `--json`; after a first round that warms the "
        "page cache. MB: the client's peak resident memory.",
        "",
        "| jobs | output | median s | min-max s | MB |",
        "| ---: | --- | ---: | ---: | ---: |",
        *(scale_rows(at_scale) or ["| (not measured: needs root) | | | | |"]),
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
        "## 6. Queues: waiting jobs on the host, and a freed slot's hand-off",
        "",
        "bench/queue.py: the host side as sp-deploy runs it (the run step as the test user, "
        "the deployed wrapper's --advance, tmux); no sshd needed for what is measured here.",
        "",
        *queue_lines,
        "",
        "## 7. Events against polling: watch and status once a second",
        "",
        "bench/watch.py: hosts are sshd servers on 127.0.0.1, each its own test user with the "
        "wrapper pushed and recorded jobs; one `sp-deploy watch --json` of all; host CPU: the "
        "processes sshd runs for the connection (children they reaped included).",
        "",
        *watch_lines,
        "",
        "## Where we are behind",
        "",
        *behind,
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
    if not Path(args.out).resolve().parent.is_dir():
        print(f"bench: no folder for --out {args.out}", file=sys.stderr)
        return 2
    jobcost.use_checkout()
    # TERM ends the run as Ctrl-C does: the servers, folders and files made so far are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    missing = setup(args.dry_run)
    if args.dry_run:
        print("machine:", "; ".join(f"{k}: {v}" for k, v in machine()))
        print("missing (installed on a real run, as root):", " ".join(missing) or "nothing")
        print(
            "baseline:",
            jobcost.BASELINE if jobcost.BASELINE.exists() else "absent (tables 1 and 2 without it)",
        )
        if os.geteuid() != 0:
            print("not root: tables 3 and 4 (users, sshd) are not measured")
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

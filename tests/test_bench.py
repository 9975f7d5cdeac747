"""The benchmark runner keeps working: its dry run checks the set-up and prints its plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_run_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    plots = tmp_path / "plots"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--dry-run",
            "--out",
            str(out),
            "--plots",
            str(plots),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "plan: per-job cost; jobs finishing at once; fleet push; status; render start-up"
        in proc.stdout
    )
    assert proc.stdout.startswith("machine: code: ") and "; CPU: " in proc.stdout
    assert not out.exists() and not plots.exists()  # a dry run writes nothing


def test_bench_run_refuses_an_out_file_in_a_missing_folder(tmp_path: Path) -> None:
    """Checked first, not after ten minutes of measuring."""
    out = tmp_path / "missing" / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"bench: no folder for --out {out}\n"


def test_step_cpu_runs_every_step_to_its_answer() -> None:
    """bench/step_cpu.py runs each step as push sends it and asserts that each answers exit 0
    (a step that failed would be timed for nothing): one row per step, with numbers."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "step_cpu.py"), "--runs", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [row[0] for row in rows[2:]] == [
        "| probe",
        "| install, no DB, no smoke",
        "| install and DB",
        "| install, DB and smoke",
        "| repeat (push.sh, current=yes)",
    ]
    for row in rows[2:]:
        cpu, spread, wall = row[1], row[2], row[3].rstrip(" |")
        assert float(cpu) > 0 and float(wall) > 0, row
        low, high = (float(x) for x in spread.split("-"))
        assert low <= float(cpu) <= high, row

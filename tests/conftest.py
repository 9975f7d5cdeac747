from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

PROFILE_NAMES = ["alpine", "debian", "rhel", "ubuntu"]


@pytest.fixture(params=PROFILE_NAMES)
def profile_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name

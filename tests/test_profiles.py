from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import PROFILE_NAMES

from solverpilot_deploy import profiles
from solverpilot_deploy.errors import ProfileError, UsageError


def test_the_four_profiles_are_shipped() -> None:
    assert profiles.profile_names() == PROFILE_NAMES


def test_profile_loads_as_frozen_data(profile_name: str) -> None:
    profile = profiles.load_profile(profile_name)
    assert profile.name == profile_name
    assert profile.targets and profile.description and profile.os_ids
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "hint", "userland"),
    [
        ("alpine", "apk add bash sqlite flock", "busybox"),
        ("rhel", "sudo dnf install bash sqlite util-linux coreutils", "gnu"),
        ("debian", "sudo apt-get install bash sqlite3 util-linux coreutils", "gnu"),
        ("ubuntu", "sudo apt-get install bash sqlite3 util-linux coreutils", "gnu"),
    ],
)
def test_profiles_hold_what_differs(name: str, hint: str, userland: str) -> None:
    profile = profiles.load_profile(name)
    assert profile.install_hint == hint
    assert profile.userland == userland


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(UsageError) as caught:
        profiles.load_profile("gentoo")
    assert str(caught.value) == "unknown profile 'gentoo'; known profiles: " + ", ".join(
        PROFILE_NAMES
    )
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = [", "cannot read profile"),
        ('name = "x"\n', "missing"),
    ],
)
def test_broken_profile_file_is_a_profile_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    (tmp_path / "x.toml").write_text(text)
    monkeypatch.setattr(profiles, "profiles_dir", lambda: tmp_path)
    with pytest.raises(ProfileError, match=message):
        profiles.load_profile("x")

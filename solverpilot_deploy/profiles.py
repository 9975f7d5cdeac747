"""Distro profiles: one TOML data file per target under templates/profiles/."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from solverpilot_deploy.errors import ProfileError, UsageError
from solverpilot_deploy.resources import templates_dir


@dataclass(frozen=True)
class Profile:
    """What differs between target distros; everything else lives in the one template."""

    name: str
    description: str
    targets: str
    os_ids: tuple[str, ...]
    install_hint: str
    tmux_hint: str  # how to install tmux, which run, cancel and logs need
    min_bash: str
    min_sqlite: str
    userland: str


def profiles_dir() -> Path:
    return templates_dir() / "profiles"


def profile_names() -> list[str]:
    return list(_names_in(profiles_dir()))


# (each folder listed and each file parsed once a run: a push to 100 hosts asks for the
# profiles several times a host)
@functools.cache
def _names_in(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in folder.glob("*.toml")))


@functools.cache
def _parse(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path.name}: {exc}") from exc
    wanted = {f.name for f in fields(Profile)}
    missing, unknown = wanted - data.keys(), data.keys() - wanted
    if missing or unknown:
        raise ProfileError(
            f"profile {path.name}: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    if data["name"] != path.stem:
        raise ProfileError(f"profile {path.name} names itself {data['name']!r}")
    if data["userland"] not in ("gnu", "busybox"):
        raise ProfileError(f"profile {path.name}: userland must be 'gnu' or 'busybox'")
    data["os_ids"] = tuple(data["os_ids"])
    return Profile(**data)


def load_profile(name: str) -> Profile:
    """The named profile; UsageError naming the known ones when there is none."""
    known = profile_names()
    if name not in known:
        raise UsageError(f"unknown profile {name!r}; known profiles: {', '.join(known)}")
    return _parse(profiles_dir() / f"{name}.toml")


def load_profiles() -> list[Profile]:
    return list(_all_in(profiles_dir()))


@functools.cache
def _all_in(folder: Path) -> tuple[Profile, ...]:
    return tuple(_parse(folder / f"{name}.toml") for name in _names_in(folder))

"""sp-deploy render serves a verified cached copy so that it starts without Jinja2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from regen_golden import golden_path

from solverpilot_deploy import render_cache
from solverpilot_deploy.errors import UsageError

SP_DEPLOY = str(Path(sys.executable).parent / "sp-deploy")
LOADED = (
    "import sys; from solverpilot_deploy.cli import main; main(sys.argv[1:]); "
    "print(*sorted(m for m in ('jinja2', 'tomllib', 'paramiko') if m in sys.modules), "
    "sep=',', file=sys.stderr)"
)


def render_in_subprocess(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOADED, "render", *argv], capture_output=True, text=True, check=True
    )


def test_first_render_fills_the_cache_then_jinja2_is_not_imported(
    private_render_cache: Path, profile_name: str
) -> None:
    first = render_in_subprocess("--distro", profile_name)
    assert first.stdout == golden_path(profile_name).read_text()
    assert first.stderr.strip() == "jinja2,tomllib"  # a miss renders
    entries = list((private_render_cache / "solverpilot-deploy").glob("*.sh"))
    assert len(entries) == 1
    second = render_in_subprocess("--distro", profile_name)
    assert second.stdout == first.stdout
    assert second.stderr.strip() == ""  # a hit: no Jinja2, no profile parsing, no paramiko


def test_a_damaged_entry_is_never_served(private_render_cache: Path) -> None:
    render_in_subprocess("--distro", "debian")
    (entry,) = (private_render_cache / "solverpilot-deploy").glob("*.sh")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, name unchanged
    again = render_in_subprocess("--distro", "debian")
    assert again.stdout == golden_path("debian").read_text()
    assert again.stderr.strip() == "jinja2,tomllib"


def test_the_key_covers_version_profile_and_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    base = render_cache.render_key("debian")
    assert render_cache.render_key("debian") == base
    assert render_cache.render_key("alpine") != base
    monkeypatch.setattr(render_cache, "__version__", "9.9.9")
    assert render_cache.render_key("debian") != base


def test_a_template_change_is_a_new_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "templates"
    shutil.copytree(render_cache.templates_dir(), copy)
    monkeypatch.setattr(render_cache, "templates_dir", lambda: copy)
    before = render_cache.render_key("debian")
    (copy / "schema.sql").write_text((copy / "schema.sql").read_text() + "-- changed\n")
    assert render_cache.render_key("debian") != before


def test_an_unwritable_cache_only_costs_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert render_cache.cached_render("rhel") == golden_path("rhel").read_text()


def test_unknown_or_odd_names_get_the_usual_error() -> None:
    for name in ("gentoo", "../profiles/debian", "Debian"):
        with pytest.raises(UsageError, match="unknown profile"):
            render_cache.cached_render(name)


def test_render_starts_well_under_150_ms(private_render_cache: Path) -> None:
    subprocess.run([SP_DEPLOY, "render", "--distro", "debian"], capture_output=True, check=True)
    times = []
    for _ in range(9):
        start = time.perf_counter()
        subprocess.run([SP_DEPLOY, "render", "--distro", "debian"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    median = sorted(times)[4]
    assert median < 0.150, f"median start {median * 1000:.0f} ms"
    assert os.listdir(private_render_cache / "solverpilot-deploy")


def test_the_cache_folders_it_makes_are_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XDG: the cache folder is 0700. Every folder the cache makes on the way is, under any
    umask; one that was there is left as it is."""
    tmp_path.chmod(0o755)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a" / "b"))
    old = os.umask(0)
    try:
        render_cache.cached_render("debian")
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", render_cache.cache_dir()):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert tmp_path.stat().st_mode & 0o777 == 0o755

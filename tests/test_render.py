from __future__ import annotations

import re
import subprocess

import pytest
from regen_golden import golden_path

from solverpilot_deploy import __version__
from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.render import render_wrapper, shell_quote
from solverpilot_deploy.resources import schema_sql


def test_render_matches_golden_file_byte_for_byte(profile_name: str) -> None:
    rendered = render_wrapper(load_profile(profile_name)).encode()
    assert rendered == golden_path(profile_name).read_bytes(), (
        "rendering changed: review it, then run python tests/regen_golden.py"
    )


def test_render_is_deterministic(profile_name: str) -> None:
    profile = load_profile(profile_name)
    assert render_wrapper(profile) == render_wrapper(profile)


def test_header_names_version_profile_and_contract(profile_name: str) -> None:
    text = render_wrapper(load_profile(profile_name))
    header = text.split("\nif [ -z")[0]
    assert header.startswith("#!/bin/bash -p\n")
    assert f"sp-deploy {__version__} for profile {profile_name}" in header
    for needed in ("Usage:", "Exit codes:", "Signals:", "Environment:", "SIGKILL", "64", "73"):
        assert needed in header


def test_script_stays_small(profile_name: str) -> None:
    # a budget: ~400 lines of which a third are the contract and its comments (issue 16 added
    # the server folder's check and stops without /proc, issue 17 the time limit and the
    # queues' advance at the end), then the queues (templates/queue.bash) and the DB's sync
    # (templates/sync.bash, issue 18), which the job's own run never reaches
    wrapper, queues = render_wrapper(load_profile(profile_name)).split("\n# ---- queues ", 1)
    queues, sync = queues.split("\n# ---- the DB's sync ", 1)
    # (+5 in issue 18: the timer that cannot leak; +14 in 19: the server folder's name without
    # a trailing / or a "..", each link it leads through checked, stat's lines read exactly)
    assert len(wrapper.splitlines()) <= 424
    assert len(queues.splitlines()) <= 235
    assert len(sync.splitlines()) <= 175  # about 75 of them sync.sql's


def test_install_hint_is_in_the_script(profile_name: str) -> None:
    profile = load_profile(profile_name)
    assert f"readonly INSTALL_HINT={shell_quote(profile.install_hint)}\n" in render_wrapper(profile)


def test_schema_is_embedded_from_its_single_source() -> None:
    text = render_wrapper(load_profile("debian"))
    assert f"readonly SCHEMA={shell_quote(schema_sql())}\n" in text
    assert re.search(r"CREATE TABLE IF NOT EXISTS jobs", schema_sql())


@pytest.mark.parametrize("text", ["", "plain", "it's", "a'b'c", '$HOME `x` \\ " !', "\n\t"])
def test_shell_quote_round_trips_through_bash(text: str) -> None:
    out = subprocess.run(
        ["bash", "-c", f"printf %s {shell_quote(text)}"], capture_output=True, check=True
    ).stdout.decode()
    assert out == text


def test_every_rendered_script_passes_bash_syntax_check(profile_name: str) -> None:
    text = render_wrapper(load_profile(profile_name))
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)

"""A non-editable install must carry the templates: build the wheel and use it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from regen_golden import golden_path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_templates_and_renders(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("solverpilot_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("job_wrapper.sh.j2", "schema.sql", "profiles/alpine.toml"):
        assert f"solverpilot_deploy/templates/{needed}" in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import solverpilot_deploy, sys; from solverpilot_deploy.cli import main;"
            "print(solverpilot_deploy.__file__, file=sys.stderr); sys.exit(main(sys.argv[1:]))",
            "render",
            "--distro",
            "rhel",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stderr.startswith(str(target))  # the installed copy, not the checkout
    assert proc.stdout == golden_path("rhel").read_text()

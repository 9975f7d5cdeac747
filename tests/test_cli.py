from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROFILE_NAMES
from regen_golden import golden_path

from solverpilot_deploy import cli, render

KNOWN = ", ".join(PROFILE_NAMES)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_to_stdout(capsys: pytest.CaptureFixture[str], profile_name: str) -> None:
    code, out, err = run_main(capsys, "render", "--distro", profile_name)
    assert (code, err) == (0, "")
    assert out == golden_path(profile_name).read_text()


def test_render_to_file_is_atomic_and_executable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "job_wrapper.sh"
    target.write_text("old")
    code, out, err = run_main(capsys, "render", "--distro", "alpine", "-o", str(target))
    assert (code, out, err) == (0, "", "")
    assert target.read_text() == golden_path("alpine").read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job_wrapper.sh"]


def test_render_to_missing_folder_is_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_main(
        capsys, "render", "--distro", "debian", "-o", str(tmp_path / "no" / "such" / "file")
    )
    assert code == 1
    assert out == ""
    assert err.startswith("sp-deploy: error: cannot write ") and err.count("\n") == 1


def test_render_over_a_folder_fails_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "taken").mkdir()
    code, _, err = run_main(capsys, "render", "--distro", "debian", "-o", str(tmp_path / "taken"))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert list((tmp_path / "taken").iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        ["render", "--distro", "gentoo"],
        ["lint", "--distro", "gentoo"],
        ["push", "somehost", "--distro", "gentoo"],
        ["verify", "somehost", "--distro", "gentoo"],
    ],
)
def test_unknown_profile_exits_2_and_names_known_ones(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, out, err = run_main(capsys, *command)
    assert (code, out) == (2, "")
    assert err == f"sp-deploy: error: unknown profile 'gentoo'; known profiles: {KNOWN}\n"


def test_profiles_lists_each_with_its_targets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "profiles")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == PROFILE_NAMES
    assert "Alpine 3.18+" in lines[0] and "RHEL 8" in lines[2]


def test_lint_all_profiles_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "lint")
    assert code == 0
    steps = ["cancel", "clean", "init_db", "install", "logs", "probe", "push", "queue", "reconcile"]
    steps += ["run", "slurm_submit"]
    assert out.splitlines() == [f"{name}: clean" for name in PROFILE_NAMES] + [
        f"remote/{step}: clean" for step in [*steps, "status", "watch"]
    ] + ["slurm/batch: clean"]


def test_lint_findings_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "render_wrapper", lambda profile: "#!/bin/bash\nrm -rf $1/x\n")
    code, out, _ = run_main(capsys, "lint", "--distro", "rhel")
    assert code == 1
    assert out.startswith("rhel: shellcheck findings\n") and "SC2086" in out


def test_interrupt_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(profile: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "render_wrapper", interrupted)
    code, _, err = run_main(capsys, "render", "--distro", "rhel")
    assert (code, err) == (130, "sp-deploy: interrupted\n")


def test_unexpected_error_is_a_short_report(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(profile: object) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(render, "render_wrapper", broken)
    code, _, err = run_main(capsys, "render", "--distro", "rhel")
    assert (code, err) == (1, "sp-deploy: internal error: RuntimeError: boom\n")


def sp_deploy(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "sp-deploy"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "command", [[], ["render"], ["profiles"], ["lint"], ["push"], ["verify"], ["status"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    proc = sp_deploy(*command, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: sp-deploy")


@pytest.mark.parametrize(
    "argv",
    [
        ["render"],
        ["nonsense"],
        ["render", "--distro"],
        ["lint", "--bogus"],
        [],
        ["push"],
        ["push", "h", "-j", "0"],
        ["verify", "h", "--timeout", "-1"],
        ["status"],
        ["push", "h", "--timeout", "soon"],
        ["render", "--distro", "debian", "extra"],
        ["push", "h", "--json", "--bogus"],
    ],
)
def test_usage_errors_exit_2_without_traceback(argv: list[str]) -> None:
    proc = sp_deploy(*argv)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "usage: sp-deploy" in proc.stderr


def test_python_dash_m_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "solverpilot_deploy", "render", "--distro", "ubuntu"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == golden_path("ubuntu").read_text()


def test_broken_pipe_is_quiet() -> None:
    exe = Path(sys.executable).parent / "sp-deploy"
    proc = subprocess.run(
        f"'{exe}' render --distro debian | head -c 10 >/dev/null",
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "0"},
        check=False,
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["status", "push", "verify"])
@pytest.mark.parametrize("host", ["a b@c", "x@-oProxyCommand=touch /tmp/pwned", "x@-l"])
def test_a_host_that_is_not_a_host_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: str, host: str
) -> None:
    # an option-like host would reach ssh as an option
    code, out, err = run_main(capsys, command, host, "--transport", "openssh")
    assert (code, out) == (2, "")
    assert err.startswith(f"sp-deploy: error: not a host: {host!r}") and err.count("\n") == 1


def test_render_to_a_name_near_the_length_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / ("w" * 250)
    code, _, err = run_main(capsys, "render", "--distro", "debian", "-o", str(target))
    assert (code, err) == (0, "")
    assert target.read_text().startswith("#!/bin/bash -p\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]

"""The deployer's promises under interruption, races and bad input, against real sshd.

A host ends with the old wrapper or the new one, as reported: Ctrl-C, timeouts and parallel
pushes into one home must not change that. Bad input (malformed state files, odd key paths,
odd output files, odd numbers) gets a one-line answer, never a traceback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Lab, error_text, payload, poll, require, sp, sp_deploy, sp_json
from sshlab import TEST_USERS, Sshd, run_as

from solverpilot_deploy.deploy import Probe, check_requirements
from solverpilot_deploy.errors import RequirementError
from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.render import render_wrapper

WRAPPER = ".solverpilot/bin/job_wrapper.sh"
DEBIAN_SHA = hashlib.sha256(render_wrapper(load_profile("debian")).encode()).hexdigest()
OLD_WRAPPER = b"#!/bin/sh\n# the old wrapper\n"


@dataclass
class SlowHost:
    """An sshd whose user's sha256sum sleeps ~/slow-seconds before hashing the uploaded
    wrapper (never the probe's "abc"): an install step that takes as long as a test wants."""

    sshd: Sshd
    home: Path
    uid: int
    gid: int

    @property
    def spec(self) -> str:
        return self.sshd.spec

    def delay(self, seconds: float) -> None:
        (self.home / "slow-seconds").write_text(f"{seconds}\n")

    def temp_files(self) -> list[str]:
        folder = self.home / ".solverpilot/bin"
        return sorted(p.name for p in folder.glob(".job_wrapper.sh.*")) if folder.is_dir() else []

    def remote_busy(self) -> bool:
        """A process of the host's user is still running (the install step, its sleep)."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == self.uid and (entry / "exe").resolve().name != "sshd":
                        return True
                except OSError:
                    continue
        return False

    def place_old_wrapper(self) -> None:
        path = self.home / WRAPPER
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(OLD_WRAPPER)
        for item in (self.home / ".solverpilot", path.parent, path):
            os.chown(item, self.uid, self.gid)


@pytest.fixture(scope="session")
def slow_host(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowHost]:
    user = lab.users[TEST_USERS[3]]
    shims = Path(tempfile.mkdtemp(prefix="sp-slow-bin-"))
    shims.chmod(0o755)
    shim = shims / "sha256sum"
    shim.write_text(
        "#!/bin/sh\n"
        'case "$*" in *job_wrapper.sh.*)\n'
        '  if [ -f "$HOME/slow-seconds" ]; then sleep "$(cat "$HOME/slow-seconds")"; fi ;;\n'
        "esac\n"
        f'exec {shutil.which("sha256sum")} "$@"\n'
    )
    shim.chmod(0o755)
    mv = shims / "mv"  # a rename as slow as a hung NFS home, when ~/slow-mv-seconds says so
    mv.write_text(
        "#!/bin/sh\n"
        'case "$*" in *job_wrapper.sh.*)\n'
        '  if [ -f "$HOME/slow-mv-seconds" ]; then sleep "$(cat "$HOME/slow-mv-seconds")"; fi ;;\n'
        "esac\n"
        f'exec {shutil.which("mv")} "$@"\n'
    )
    mv.chmod(0o755)
    sshd = Sshd(
        tmp_path_factory.mktemp("slow"),
        user.pw_name,
        extra_config=f"SetEnv PATH={shims}:/usr/bin:/bin\n",
    ).start()
    try:
        yield SlowHost(sshd, Path(user.pw_dir), user.pw_uid, user.pw_gid)
    finally:
        sshd.stop()
        shutil.rmtree(shims, ignore_errors=True)


@pytest.fixture
def slow(slow_host: SlowHost, home: Path) -> Iterator[SlowHost]:
    for name in ("slow-seconds", "slow-mv-seconds"):
        (slow_host.home / name).unlink(missing_ok=True)
    yield slow_host
    poll(lambda: not slow_host.remote_busy(), 30, "the slow host's steps to end")
    for name in ("slow-seconds", "slow-mv-seconds"):
        (slow_host.home / name).unlink(missing_ok=True)


@pytest.fixture
def kh(trusted: Path, slow_host: SlowHost) -> Path:
    with trusted.open("a") as handle:
        handle.write(slow_host.sshd.known_hosts_line)
    return trusted


def ssh_args(lab: Lab, kh: Path, timeout: str = "60") -> list[str]:
    return ["-i", str(lab.client_key), "--known-hosts", str(kh), "--timeout", timeout]


# ---- 8. Ctrl-C during a fleet push ----


def test_ctrl_c_finishes_the_host_in_flight_and_skips_the_rest(
    lab: Lab, home: Path, kh: Path, slow: SlowHost
) -> None:
    slow.delay(3)
    b_home = Path(lab.users[TEST_USERS[1]].pw_dir)
    hosts = [lab.a.spec, slow.spec, lab.b.spec]
    proc = sp_deploy("push", *hosts, "-j", "1", "--json", *ssh_args(lab, kh))
    poll(lambda: slow.temp_files(), 30, "the slow host's install to start")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    results = payload(out)
    assert [r["status"] for r in results] == ["deployed", "deployed", "skipped"]
    assert error_text(results[2]) == "interrupted before any change"
    # the DB set-up and the smoke run are part of the install step the host ends
    assert "skipped" not in err
    assert (slow.home / ".solverpilot-server/server.db").exists()
    assert "Traceback" not in err and err.rstrip().endswith("sp-deploy: interrupted")
    assert hashlib.sha256((slow.home / WRAPPER).read_bytes()).hexdigest() == DEBIAN_SHA
    assert slow.temp_files() == []
    assert not (b_home / ".solverpilot").exists()


def test_a_second_ctrl_c_aborts_the_host_in_flight_which_keeps_its_old_wrapper(
    lab: Lab, home: Path, kh: Path, slow: SlowHost
) -> None:
    slow.place_old_wrapper()
    slow.delay(4)
    proc = sp_deploy("push", slow.spec, lab.b.spec, "-j", "1", "--json", *ssh_args(lab, kh))
    poll(lambda: slow.temp_files(), 30, "the slow host's install to start")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # two separate key presses, not one
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    results = payload(out)
    assert [r["status"] for r in results] == ["failed", "skipped"]
    assert "interrupted" in str(error_text(results[0]))
    poll(lambda: not slow.remote_busy(), 20, "the aborted install step to end on the host")
    assert (slow.home / WRAPPER).read_bytes() == OLD_WRAPPER
    assert slow.temp_files() == []


# ---- 9. a push reported failed never changes the host later ----


def test_a_rename_still_running_at_the_deadline_is_reported_as_either_wrapper(
    lab: Lab, home: Path, kh: Path, slow: SlowHost
) -> None:
    """The host had checked the new wrapper and begun the rename (a hung NFS home) when the
    time ran out: the report may not claim the old wrapper stays."""
    slow.place_old_wrapper()
    (slow.home / "slow-mv-seconds").write_text("10\n")
    proc = sp_deploy("push", slow.spec, "--json", *ssh_args(lab, kh, timeout="8"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    (result,) = payload(out)
    assert result["status"] == "failed"
    assert str(error_text(result)).startswith("timeout: the host was renaming the new wrapper in")
    assert "sp-deploy verify" in str(error_text(result))
    poll(lambda: not slow.remote_busy(), 30, "the slow rename to end on the host")
    assert (slow.home / WRAPPER).read_bytes() != OLD_WRAPPER  # it did land, as warned


def push_with_login_line(lab: Lab, kh: Path, slow: SlowHost, line: str) -> tuple[int, str, str]:
    """push --json over the slow host's old wrapper, its login's ~/.bashrc holding ``line``:
    the exit code, stdout and stderr."""
    slow.place_old_wrapper()
    bashrc = slow.home / ".bashrc"
    bashrc.write_text(f"{line}\n")
    try:
        proc = sp_deploy("push", slow.spec, "--json", *ssh_args(lab, kh))
        out, err = proc.communicate(timeout=60)
    finally:
        bashrc.unlink()
    return proc.returncode, out, err


def test_a_failure_after_the_install_says_the_new_wrapper_is_in_place(
    lab: Lab, home: Path, kh: Path, slow: SlowHost
) -> None:
    """The smoke run fails (the login exports a grace the wrapper refuses, as it would for
    every job): the host has the new wrapper, and the report says so."""
    _, out, _ = push_with_login_line(lab, kh, slow, "export SOLVERPILOT_KILL_GRACE=soon")
    (result,) = payload(out)
    assert result["status"] == "failed"
    assert str(error_text(result)).startswith("the new wrapper is installed (sha256 ")
    assert "smoke run failed" in str(error_text(result))
    assert result["sha256"] == hashlib.sha256((slow.home / WRAPPER).read_bytes()).hexdigest()
    assert (slow.home / WRAPPER).read_bytes() != OLD_WRAPPER
    assert sorted(p.name for p in (slow.home / ".solverpilot").iterdir()) == ["bin"]


def test_a_tmpdir_that_does_not_exist_fails_no_smoke_run(
    lab: Lab, home: Path, kh: Path, slow: SlowHost
) -> None:
    """Some clusters set a TMPDIR that does not exist: the smoke run's folder is made beside
    the wrapper, not in it, and is gone after."""
    code, out, err = push_with_login_line(lab, kh, slow, "export TMPDIR=/nonexistent/tmp")
    assert code == 0, err
    (result,) = payload(out)
    assert result["status"] == "deployed"
    assert sorted(p.name for p in (slow.home / ".solverpilot").iterdir()) == ["bin"]


@pytest.mark.parametrize("delay", [6, 14])
def test_a_timed_out_push_never_installs_later(
    lab: Lab, home: Path, kh: Path, slow: SlowHost, delay: int
) -> None:
    # 6 s: the host notices its own deadline has passed; 14 s: sp-deploy gives up first
    slow.place_old_wrapper()
    slow.delay(delay)
    start = time.monotonic()
    proc = sp_deploy("push", slow.spec, "--json", *ssh_args(lab, kh, timeout="8"))
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 1, err
    (result,) = payload(out)
    assert result["status"] == "failed" and str(error_text(result)).startswith("timeout: ")
    assert took < 12
    poll(lambda: not slow.remote_busy(), 30, "the install step to end on the host")
    assert (slow.home / WRAPPER).read_bytes() == OLD_WRAPPER
    assert slow.temp_files() == []


# ---- 10. several pushes into one home at once ----


def test_parallel_pushes_into_one_home_all_succeed_with_one_sound_wrapper(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, kh: Path
) -> None:
    others = [sp_deploy("push", lab.a.spec, "--json", *ssh_args(lab, kh)) for _ in range(3)]
    code, results = sp_json(capsys, "push", *[lab.a.spec] * 6, "-j", "6", *ssh_args(lab, kh))
    outcomes = [r["status"] for r in results]
    for proc in others:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outcomes += [r["status"] for r in payload(out)]
    assert code == 0, results
    assert set(outcomes) <= {"deployed", "unchanged"} and "deployed" in outcomes
    assert hashlib.sha256((home / WRAPPER).read_bytes()).hexdigest() == DEBIAN_SHA
    assert sorted(p.name for p in (home / ".solverpilot/bin").iterdir()) == ["job_wrapper.sh"]
    tables = run_as(
        lab.user, "sqlite3", str(home / ".solverpilot-server/server.db"), ".tables"
    ).stdout
    assert tables.split() == ["jobs"]


# ---- 11. render -o writes only regular files atomically ----


def test_render_into_a_device_a_fifo_stdout_and_through_a_symlink(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    require(os.geteuid() == 0, "making a device node needs root")
    text = render_wrapper(load_profile("debian"))
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    code, _, err = sp(capsys, "render", "--distro", "debian", "-o", str(device))
    assert (code, err) == (0, "")
    assert stat.S_ISCHR(device.stat().st_mode)

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    code, _, err = sp(capsys, "render", "--distro", "debian", "-o", str(fifo))
    reader.join(10)
    assert (code, err, got) == (0, "", [text])
    assert stat.S_ISFIFO(fifo.lstat().st_mode)

    code, out, _ = sp(capsys, "render", "--distro", "debian", "-o", "-")
    assert (code, out) == (0, text)
    assert not (Path.cwd() / "-").exists()

    real = tmp_path / "real.sh"
    real.write_text("old\n")
    link = tmp_path / "link.sh"
    link.symlink_to(real)
    code, _, _ = sp(capsys, "render", "--distro", "debian", "-o", str(link))
    assert code == 0 and link.is_symlink() and real.read_text() == text


# ---- 12. malformed state files on a host ----


def test_status_lists_malformed_state_files_as_unreadable(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, kh: Path
) -> None:
    jobs = home / ".solverpilot-server/jobs"
    jobs.mkdir(parents=True)
    bad = {
        "null": b"null",
        "list": b"[]",
        "number": b"42",
        "huge": b'{"status":"completed","pad":"' + b"x" * 200_000 + b'"}',
        "binary": bytes(range(256)),
        "with space": b'{"status":"completed"}',
        "forged": b'x\n@job held yes evil\r@job held yes evil2\x1c@db\n{"status":"running"}',
        "weird-types": b'{"status":["x"],"exit_code":"0"}',
    }
    for name, data in bad.items():
        (jobs / f"{name}.status").write_bytes(data)
    (jobs / "good.status").write_text(
        '{"id":"good","status":"completed","exit_code":0,"signal":null,'
        '"started_at":"2026-01-01T00:00:00+00:00","completed_at":"2026-01-01T00:00:01+00:00"}\n'
    )
    for path in (home / ".solverpilot-server", jobs, *jobs.iterdir()):
        os.chown(path, lab.user.pw_uid, lab.user.pw_gid)
    code, out, err = sp(capsys, "status", lab.a.spec, "--json", *ssh_args(lab, kh))
    assert (code, err) == (0, "")
    listed = {job["id"]: job for job in payload(out)}
    assert listed["good"]["status"] == "completed" and listed["good"]["exit_code"] == 0
    for name in bad:  # a name no job id can have is shown with ? for the odd characters
        assert listed[name.replace(" ", "?")]["status"] == "unreadable", name
    assert "evil" not in listed and "evil2" not in listed


# ---- 13. IdentityFile tokens and bad key paths ----


def test_identity_file_tokens_are_expanded_as_ssh_does(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, kh: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(lab.client_key, keys / f"127.0.0.1-{lab.a.port}-{lab.a.user}.key")
    (keys / f"127.0.0.1-{lab.a.port}-{lab.a.user}.key").chmod(0o600)
    config = tmp_path / "config"
    config.write_text(
        f"Host tokhost\n  HostName 127.0.0.1\n  Port {lab.a.port}\n  User {lab.a.user}\n"
        f"  IdentityFile {keys}/%h-%p-%r.key\n  IdentitiesOnly yes\n"
    )
    code, results = sp_json(capsys, "push", "tokhost", "-F", str(config), "--known-hosts", str(kh))
    assert (code, results[0]["status"]) == (0, "deployed"), results


def test_a_missing_or_public_key_is_an_authentication_error(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, kh: Path, tmp_path: Path
) -> None:
    for key, expected in (
        (tmp_path / "nope", f"authentication failed: no such key {tmp_path / 'nope'}"),
        (
            Path(f"{lab.client_key}.pub"),
            f"authentication failed: {lab.client_key}.pub is a public key; give its private "
            "key to -i",
        ),
    ):
        code, results = sp_json(
            capsys, "push", lab.a.spec, "-i", str(key), "--known-hosts", str(kh)
        )
        assert (code, error_text(results[0])) == (1, expected)
    config = tmp_path / "config"
    config.write_text(f"Host *\n  IdentityFile {tmp_path}/absent.key\n  IdentitiesOnly yes\n")
    code, results = sp_json(capsys, "push", lab.a.spec, "-F", str(config), "--known-hosts", str(kh))
    assert code == 1
    assert str(error_text(results[0])).startswith("authentication failed: ")
    assert "no such key" in str(error_text(results[0]))


# ---- 14. the profiles' minimum versions ----


def _probe(bash: str | None, sqlite3: str | None) -> Probe:
    return Probe("debian", (), bash, True, True, sqlite3, "sha256sum", None, False)


def test_profile_minimums_fail_on_bash_and_warn_on_sqlite() -> None:
    rhel = load_profile("rhel")  # bash 4.4, sqlite 3.26
    with pytest.raises(RequirementError, match=r"bash >= 4\.4 as /bin/bash \(found 4\.2\)"):
        check_requirements(_probe("4.2", "3.40.1"), rhel)
    with pytest.raises(RequirementError, match=r"bash >= 4\.4 as /bin/bash \(none found\)"):
        check_requirements(_probe(None, "3.40.1"), rhel)
    assert check_requirements(_probe("4.4", "3.26.0"), rhel) == ()
    (warning,) = check_requirements(_probe("5.2", "3.7.17"), rhel)
    assert warning.startswith("sqlite3 3.7.17 is older than the rhel profile's 3.26")


def test_a_host_below_the_profiles_sqlite_gets_a_warning(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, kh: Path
) -> None:
    # Debian 12's sqlite3 is 3.40; the alpine profile asks for 3.41
    code, out, err = sp(
        capsys, "push", lab.a.spec, "--distro", "alpine", "--json", *ssh_args(lab, kh)
    )
    assert code == 0
    assert "warning: sqlite3 3.40" in err and "older than the alpine profile's 3.41" in err
    assert payload(out)[0]["status"] == "deployed"


# ---- 15. render cache failures, odd numbers ----


def test_an_unreadable_cache_entry_only_costs_a_render(
    capsys: pytest.CaptureFixture[str], private_render_cache: Path
) -> None:
    from solverpilot_deploy.render_cache import cache_dir, render_key

    text = render_wrapper(load_profile("debian"))
    entry = cache_dir() / f"{render_key('debian')}-{hashlib.sha256(text.encode()).hexdigest()}.sh"
    entry.mkdir(parents=True)  # a folder where the entry should be: unreadable even for root
    code, out, err = sp(capsys, "render", "--distro", "debian")
    assert (code, out, err) == (0, text, "")
    entry.rmdir()
    sp(capsys, "render", "--distro", "debian")
    entry.chmod(0)
    if os.geteuid() == 0:  # root reads anything: an entry root wrote, read by another user
        cache = private_render_cache
        for path in (cache, *cache.rglob("*")):
            os.chown(path, 0, 0)
        cache.chmod(0o755)
        (cache / "solverpilot-deploy").chmod(0o755)
        env = {**os.environ, "XDG_CACHE_HOME": str(cache), "HOME": "/nonexistent"}
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "solverpilot_deploy", "render", "--distro", "debian"],
            env=env, capture_output=True, text=True, check=False,
            cwd="/",
        )  # fmt: skip
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, text, "")


@pytest.mark.parametrize(
    "argv",
    [
        ["push", "h", "--timeout", "inf"],
        ["push", "h", "--timeout", "nan"],
        ["push", "h", "--timeout", "1e999"],
        ["push", "h", "--timeout", "-1"],
        ["status", "h", "--timeout", "1e308"],
        ["push", "h", "-j", "0"],
        ["verify", "h", "-j", "99999999999"],
        ["push", "h", "-p", "70000"],
        ["push", "h", "-p", "0"],
    ],
)
def test_odd_numbers_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = sp(capsys, *argv)
    assert (code, out) == (2, "")
    assert "Traceback" not in err and "must be a number above 0" in err
    assert err.startswith(f"usage: sp-deploy {argv[0]} "), err  # the command's own usage


def test_a_version_a_host_says_in_odd_digits_is_no_version() -> None:
    """A host's answer is data: "5.²" (a digit to str.isdigit, not to int) or thousands of
    digits (past int's limit) name no version, instead of ending the push with a traceback."""
    from solverpilot_deploy.deploy import version_tuple

    assert version_tuple("5.2") == (5, 2) and version_tuple("3.40.1") == (3, 40, 1)
    for odd in ("5.\u00b2", "9" * 4301, "\u0665.1", "5.", "", None, "5.2 "):
        assert version_tuple(odd) is None, odd


def test_the_install_budget_leaves_room_for_the_links_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host counts the install's seconds from when the step starts there: the budget sent
    is the deadline less COMMIT_MARGIN and half the login's time (a login is eight one-way
    delays or more, the step's start three), at most LATENCY_CAP of it for a login that may
    have waited for a person; none left is a refusal before anything is sent."""
    from solverpilot_deploy import deploy
    from solverpilot_deploy.remote import StepResult

    sent: list[tuple[str, ...]] = []

    def step(session: object, name: str, *args: str, **kwargs: object) -> StepResult:
        sent.append(args)
        return StepResult(0, (), "")

    monkeypatch.setattr(deploy, "run_step", step)

    class Login:
        def __init__(self, seconds: float, may_prompt: bool = False) -> None:
            self.login_seconds, self.may_prompt = seconds, may_prompt
            self.steps: list[tuple[str, float]] = []

    cases = ((0.2, False, 30 - 3), (10.0, False, 30 - 3 - 5), (40.0, False, 30 - 3 - 20),
             (40.0, True, 30 - 3 - 10))  # fmt: skip
    for login, prompt, want in cases:
        deploy.send_install(Login(login, prompt), "x\n", "0" * 64, time.monotonic() + 30)  # type: ignore[arg-type]
        assert int(sent[-1][1]) in (want - 1, want), (login, prompt, sent[-1])
    with pytest.raises(deploy.InstallRefused, match="no time left"):
        deploy.send_install(Login(19.0), "x\n", "0" * 64, time.monotonic() + 13)  # type: ignore[arg-type]
    assert len(sent) == 4

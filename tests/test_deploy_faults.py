"""push and verify under faults of the network, the disk and the signals, against real sshd.

The deployer's promise: a host ends with the old wrapper or the new one, as reported. A
connection that stalls once the install step was sent, a full disk, a wrapper whose bytes are
right but that cannot run (or that another user could replace), a Ctrl-C while a host hangs in
its login, a flood of TERM: each is reported as what it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, error_text, payload, poll, require, sp, sp_deploy, sp_json
from sshlab import TEST_USERS

from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.remote import parse_framed, step_script
from solverpilot_deploy.render import render_wrapper

pytestmark = pytest.mark.usefixtures("transport")

WRAPPER = ".solverpilot/bin/job_wrapper.sh"
DEBIAN_BYTES = render_wrapper(load_profile("debian")).encode()
DEBIAN_SHA = hashlib.sha256(DEBIAN_BYTES).hexdigest()
OLD_WRAPPER = b"#!/bin/sh\n# the old wrapper\n"


def ssh_args(lab: Lab, kh: Path, timeout: str = "30") -> list[str]:
    return ["-i", str(lab.client_key), "--known-hosts", str(kh), "--timeout", timeout]


def place(home: Path, uid: int, gid: int, data: bytes = OLD_WRAPPER, mode: int = 0o755) -> Path:
    path = home / WRAPPER
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(data)
    path.chmod(mode)
    for item in (home / ".solverpilot", path.parent, path):
        os.chown(item, uid, gid)
    return path


def temp_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / ".solverpilot/bin").glob(".job_wrapper.sh.*"))


def catches(pid: int, number: int) -> bool:
    """Process ``pid`` runs sp-deploy (before its exec, a fork shows this test's own handlers)
    and has a handler for signal ``number`` (/proc/PID/status SigCgt), or has ended."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    if b"solverpilot_deploy" not in argv:
        return False
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    if fields.get("State", "").strip().startswith("Z"):
        return True
    return bool(int(fields.get("SigCgt", "0").strip(), 16) >> (number - 1) & 1)


def user_processes(uid: int, name: str = "") -> list[int]:
    """Pids of the processes of user ``uid`` (other than sshd), whose command has ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] and not argv[0].startswith(b"sshd") and name.encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


class StderrLines:
    """Reads a process's stderr as it comes (to wait for a line), and its stdout at the end."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, seconds: float) -> tuple[str, str]:
        assert self.proc.stdout is not None
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"sp-deploy still ran {seconds} s later; it said: {''.join(self.lines)}")
        self.thread.join()
        return self.proc.stdout.read(), "".join(self.lines)


# ---- 12. a connection that stalls once the install step was sent ----


class StallingProxy:
    """A TCP relay on 127.0.0.1 to ``port``: client to server always; server to client until
    the client has sent ``after`` bytes on one connection, then nothing more (what the
    server says is read and dropped, as by a proxy that lost the way back)."""

    def __init__(self, port: int, after: int) -> None:
        self.target, self.after = port, after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.sockets: list[socket.socket] = []
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            sent = [0]
            threading.Thread(target=self._up, args=(client, server, sent), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, sent), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, sent: list[int]) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                sent[0] += len(data)
                if sent[0] > self.after:
                    self.stalled.set()
                server.sendall(data)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _down(self, server: socket.socket, client: socket.socket, sent: list[int]) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if sent[0] <= self.after:
                    client.sendall(data)

    def close(self) -> None:
        self.closing = True
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def stalling(lab: Lab, trusted: Path) -> Iterator[StallingProxy]:
    # the login and the probe come well under this; the install step (the wrapper rides
    # in it) goes past it
    proxy = StallingProxy(lab.a.port, len(step_script("probe")) + 16384)
    with trusted.open("a") as handle:
        handle.write(lab.a.known_hosts_line.replace(f":{lab.a.port} ", f":{proxy.port} "))
    yield proxy
    proxy.close()


def test_a_stall_after_the_install_was_sent_says_either_wrapper_may_be_in_place(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    trusted: Path,
    stalling: StallingProxy,
) -> None:
    place(home, lab.user.pw_uid, lab.user.pw_gid)
    spec = f"{lab.user.pw_name}@127.0.0.1:{stalling.port}"
    code, results = sp_json(capsys, "push", spec, *ssh_args(lab, trusted, timeout="10"))
    assert stalling.stalled.is_set()
    assert code == 1
    (result,) = results
    assert result["status"] == "failed"
    assert result["outcome"] == "unknown"
    assert result["sha256"] == DEBIAN_SHA  # the wrapper that may be in place
    error = str(error_text(result))
    assert error.startswith("timeout: ")
    assert "either wrapper may be in place" in error
    assert f"sp-deploy verify {spec}" in error
    # the host did rename it in: "nothing changed" would have been a lie
    poll(lambda: (home / WRAPPER).read_bytes() == DEBIAN_BYTES, 20, "the new wrapper")
    poll(lambda: not user_processes(lab.user.pw_uid), 20, "the install step to end")
    assert temp_files(home) == []


def test_a_second_ctrl_c_during_a_stalled_install_says_either_wrapper_may_be_in_place(
    lab: Lab, home: Path, trusted: Path, stalling: StallingProxy
) -> None:
    place(home, lab.user.pw_uid, lab.user.pw_gid)
    spec = f"{lab.user.pw_name}@127.0.0.1:{stalling.port}"
    proc = sp_deploy("push", spec, "--json", *ssh_args(lab, trusted, timeout="60"))
    said = StderrLines(proc)
    # the install step went through on the host; its answer never comes back
    poll(lambda: (home / WRAPPER).read_bytes() == DEBIAN_BYTES, 30, "the new wrapper")
    proc.send_signal(signal.SIGINT)
    poll(lambda: said.has("interrupted: hosts not yet changed"), 10, "the first Ctrl-C taken")
    proc.send_signal(signal.SIGINT)
    out, err = said.finish(20)
    assert proc.returncode == 130, err
    (result,) = payload(out)
    assert (result["status"], result["outcome"]) == ("failed", "unknown")
    error = str(error_text(result))
    assert error.startswith("interrupted: connection aborted by a second Ctrl-C; ")
    assert "either wrapper may be in place" in error and "keep" not in error
    assert f"sp-deploy verify {spec}" in error


def test_every_push_result_says_which_wrapper_the_host_has(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    dead = f"nobody@127.0.0.1:{lab.a.port}"  # a refused login: nothing sent
    args = ssh_args(lab, trusted)
    code, results = sp_json(capsys, "push", lab.a.spec, "--dry-run", *args)
    assert [r["outcome"] for r in results] == ["old"]
    code, results = sp_json(capsys, "push", lab.a.spec, dead, *args)
    assert [(r["status"], r["outcome"]) for r in results] == [
        ("deployed", "new"),
        ("failed", "old"),
    ]
    code, results = sp_json(capsys, "push", lab.a.spec, *args)
    assert [(r["status"], r["outcome"]) for r in results] == [("unchanged", "new")]
    code, results = sp_json(capsys, "verify", lab.a.spec, *args)
    assert code == 0 and [(r["status"], r["outcome"]) for r in results] == [("ok", None)]


# ---- 14. a full disk during the install ----


@pytest.fixture
def full_bin(lab: Lab, home: Path) -> Iterator[Path]:
    """The test user's ~/.solverpilot/bin on a small tmpfs holding the old wrapper and a
    filler that takes every free block."""
    require_root()
    folder = home / ".solverpilot/bin"
    folder.mkdir(parents=True, mode=0o700)
    os.chown(folder.parent, lab.user.pw_uid, lab.user.pw_gid)
    options = f"size=64k,mode=0700,uid={lab.user.pw_uid},gid={lab.user.pw_gid}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        place(home, lab.user.pw_uid, lab.user.pw_gid)
        with contextlib.suppress(OSError), (folder / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def require_root() -> None:
    require(os.geteuid() == 0, "mounting a tmpfs needs root")


def test_a_full_disk_is_named_and_the_old_wrapper_stays(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, full_bin: Path
) -> None:
    code, results = sp_json(capsys, "push", lab.a.spec, *ssh_args(lab, trusted))
    assert code == 1
    (result,) = results
    assert (result["status"], result["outcome"], result["sha256"]) == ("failed", "old", None)
    error = str(error_text(result))
    assert "No space left on device" in error, error
    assert "bash -n" not in error
    assert "the old wrapper is kept" in error
    assert (home / WRAPPER).read_bytes() == OLD_WRAPPER
    assert temp_files(home) == []


@pytest.mark.transports("paramiko")  # no connection: the step runs here, under sh
def test_a_full_or_read_only_tmp_does_not_make_the_probe_call_flock_missing() -> None:
    """The probe's flock check needs a file of its own: with /tmp unusable it takes one in
    the home (never a fixed name in /tmp, which another user could plant)."""
    require_root()
    home = Path(tempfile.mkdtemp(prefix="sp-probe-home-", dir="/var/tmp"))  # not under /tmp
    try:
        _probe_with_a_read_only_tmp(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _probe_with_a_read_only_tmp(home: Path) -> None:
    token = "t0k3n"
    # a private mount namespace whose /tmp is a read-only tmpfs
    inner = f"mount -t tmpfs -o ro,size=4k tmpfs /tmp && exec /bin/sh -s -- {token}"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
        input=step_script("probe"),
        capture_output=True,
        text=True,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "TMPDIR": "/tmp"},
        timeout=30,
        check=False,
    )
    framed = parse_framed(token, done.stdout)
    assert framed is not None, done
    status, lines = framed
    assert status == 0 and "flock=ok" in lines, lines
    assert list(home.iterdir()) == []  # its file is gone with the step


# ---- 13. the right bytes are not enough: a wrapper that cannot run, or that others could replace


def _not_executable(home: Path, lab: Lab) -> None:
    (home / WRAPPER).chmod(0o644)


def _group_writable(home: Path, lab: Lab) -> None:
    (home / WRAPPER).chmod(0o775)


def _others_write_the_folder(home: Path, lab: Lab) -> None:
    (home / ".solverpilot/bin").chmod(0o777)


def _a_symlink(home: Path, lab: Lab) -> None:
    real = home / ".solverpilot/real_wrapper.sh"
    (home / WRAPPER).rename(real)
    (home / WRAPPER).symlink_to(real)
    os.lchown(home / WRAPPER, lab.user.pw_uid, lab.user.pw_gid)


def _owned_by_root(home: Path, lab: Lab) -> None:
    os.chown(home / WRAPPER, 0, 0)


REPAIRABLE = {
    "not executable": (_not_executable, "job_wrapper.sh is not executable"),
    "group-writable": (_group_writable, "job_wrapper.sh is writable by group or others"),
    "folder writable by others": (_others_write_the_folder, "bin is writable by group or others"),
    "a symlink": (_a_symlink, "job_wrapper.sh is a symbolic link"),
    "not owned": (_owned_by_root, "job_wrapper.sh is not owned by you"),
}


@pytest.mark.parametrize("case", list(REPAIRABLE))
def test_verify_reports_and_push_repairs_a_wrapper_with_the_right_bytes(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, case: str
) -> None:
    spoil, said = REPAIRABLE[case]
    args = ssh_args(lab, trusted)
    code, results = sp_json(capsys, "push", lab.a.spec, "--no-smoke", *args)
    assert code == 0 and results[0]["status"] == "deployed"
    spoil(home, lab)
    code, results = sp_json(capsys, "verify", lab.a.spec, *args)
    assert code == 1
    assert results[0]["status"] == "needs-repair"
    assert said in str(error_text(results[0]))
    code, results = sp_json(capsys, "push", lab.a.spec, "--no-smoke", *args)
    assert code == 0 and results[0]["status"] == "deployed", results
    assert any(said in w for w in results[0]["warnings"]), results  # type: ignore[attr-defined]
    wrapper = home / WRAPPER
    info = wrapper.lstat()
    assert stat.S_ISREG(info.st_mode) and info.st_uid == lab.user.pw_uid
    assert stat.S_IMODE(info.st_mode) == 0o755
    assert stat.S_IMODE((home / ".solverpilot/bin").stat().st_mode) & 0o022 == 0
    assert wrapper.read_bytes() == DEBIAN_BYTES
    code, results = sp_json(capsys, "verify", lab.a.spec, *args)
    assert (code, results[0]["status"]) == (0, "ok")
    code, results = sp_json(capsys, "push", lab.a.spec, "--no-smoke", *args)
    assert results[0]["status"] == "unchanged"


def test_a_folder_another_user_owns_is_refused_and_the_old_wrapper_stays(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    place(home, lab.user.pw_uid, lab.user.pw_gid)
    folder = home / ".solverpilot/bin"
    os.chown(folder, 0, 0)
    folder.chmod(0o777)  # the user can write it, and so can everyone: not the user's
    code, results = sp_json(capsys, "push", lab.a.spec, *ssh_args(lab, trusted))
    assert code == 1
    (result,) = results
    assert (result["status"], result["outcome"]) == ("failed", "old")
    assert "~/.solverpilot/bin is not owned by you" in str(error_text(result))
    assert (home / WRAPPER).read_bytes() == OLD_WRAPPER
    code, results = sp_json(capsys, "verify", lab.a.spec, *ssh_args(lab, trusted))
    assert code == 1 and "not owned by you" in str(error_text(results[0]))


def test_a_home_folder_linked_to_another_users_folder_is_refused_before_any_write(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    other = lab.users[TEST_USERS[1]]
    planted = Path(tempfile.mkdtemp(prefix="sp-planted-"))  # outside pytest's 0700 tree
    try:
        os.chown(planted, other.pw_uid, other.pw_gid)
        planted.chmod(0o777)
        (home / ".solverpilot").symlink_to(planted)
        os.lchown(home / ".solverpilot", lab.user.pw_uid, lab.user.pw_gid)
        code, results = sp_json(capsys, "push", lab.a.spec, *ssh_args(lab, trusted))
        assert code == 1
        (result,) = results
        assert (result["status"], result["outcome"]) == ("failed", "old")
        assert "~/.solverpilot is a symbolic link" in str(error_text(result))
        assert list(planted.iterdir()) == []  # nothing was created through the link
        code, results = sp_json(capsys, "verify", lab.a.spec, *ssh_args(lab, trusted))
        assert code == 1 and "~/.solverpilot is a symbolic link" in str(error_text(results[0]))
    finally:
        (home / ".solverpilot").unlink(missing_ok=True)
        shutil.rmtree(planted, ignore_errors=True)


# ---- 15. one Ctrl-C while a host hangs in its login ----


@contextlib.contextmanager
def silent_listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP port that accepts connections and never says a word (no SSH banner)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def _interrupt_once_and_time(proc: subprocess.Popen[str]) -> tuple[float, str, str]:
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("sp-deploy still ran 20 s after one Ctrl-C")
    return time.monotonic() - start, out, err


def test_one_ctrl_c_gives_up_a_host_that_hangs_before_its_login(
    lab: Lab, home: Path, trusted: Path
) -> None:
    with silent_listener() as (port, accepted):
        proc = sp_deploy(
            "push", f"nobody@127.0.0.1:{port}", "--json", *ssh_args(lab, trusted, "60")
        )
        poll(lambda: accepted, 20, "the connection to the silent host")
        took, out, err = _interrupt_once_and_time(proc)
    assert proc.returncode == 130, err
    assert took < 5
    (result,) = payload(out)
    assert (result["status"], error_text(result)) == ("skipped", "interrupted before any change")
    assert "second Ctrl-C" not in out + err and "Traceback" not in err


def test_wait_gives_up_a_host_that_hangs_within_its_timeout(lab: Lab, trusted: Path) -> None:
    """wait --timeout 3 of a host that never answers ends within its 3 s (and a second or so):
    it waited 60 s, wait's own step timeout (helper-24's finding 1); a host failure, exit 1,
    kind timeout."""
    with silent_listener() as (port, accepted):
        began = time.monotonic()
        proc = sp_deploy(
            "wait", f"nobody@127.0.0.1:{port}", "some-job", "--timeout", "3", "--json",
            "-i", str(lab.client_key), "--known-hosts", str(trusted),
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        took = time.monotonic() - began
    assert accepted, "the connection to the silent host"
    assert proc.returncode == 1, (out, err)
    assert json.loads(out)["error"]["kind"] == "timeout", out
    assert 3 <= took < 8, took


def test_one_ctrl_c_gives_up_a_host_whose_start_up_file_hangs(
    lab: Lab, home: Path, trusted: Path
) -> None:
    b = lab.users[TEST_USERS[1]]
    rc = Path(b.pw_dir) / ".bashrc"
    rc.write_text("sleep 120\n")
    try:
        proc = sp_deploy("push", lab.b.spec, "--json", *ssh_args(lab, trusted, "60"))
        poll(lambda: user_processes(b.pw_uid, "sleep 120"), 20, "the start-up file's sleep")
        took, out, err = _interrupt_once_and_time(proc)
    finally:
        rc.unlink()
        for pid in user_processes(b.pw_uid, "sleep 120"):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert took < 5
    (result,) = payload(out)
    assert (result["status"], error_text(result)) == ("skipped", "interrupted before any change")
    assert "second Ctrl-C" not in out + err and "Traceback" not in err
    assert not (Path(b.pw_dir) / ".solverpilot").exists()


def ssh_processes_for(port: int) -> list[int]:
    """Pids of the ssh clients whose command line names ``port``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if argv and argv[0].endswith(b"ssh") and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


def test_one_ctrl_c_during_the_login_of_a_one_host_command_leaves_no_login_behind(
    lab: Lab, trusted: Path
) -> None:
    with silent_listener() as (port, accepted):
        proc = sp_deploy("status", f"nobody@127.0.0.1:{port}", *ssh_args(lab, trusted, "60"))
        poll(lambda: accepted, 20, "the connection to the silent host")
        took, _, err = _interrupt_once_and_time(proc)
        left = ssh_processes_for(port)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert took < 5
    assert left == []


def test_after_one_ctrl_c_each_host_names_its_true_cause(
    lab: Lab, home: Path, trusted: Path, stalling: StallingProxy
) -> None:
    """One Ctrl-C: the host still logging in is given up at once; the host whose install
    is in flight ends its step, here by the timeout, and says so (not "a second Ctrl-C")."""
    place(home, lab.user.pw_uid, lab.user.pw_gid)
    stalled = f"{lab.user.pw_name}@127.0.0.1:{stalling.port}"
    with silent_listener() as (port, accepted):
        silent = f"nobody@127.0.0.1:{port}"
        proc = sp_deploy("push", stalled, silent, "--json", *ssh_args(lab, trusted, "12"))
        said = StderrLines(proc)
        poll(lambda: accepted, 20, "the connection to the silent host")
        poll(lambda: (home / WRAPPER).read_bytes() == DEBIAN_BYTES, 20, "the new wrapper")
        proc.send_signal(signal.SIGINT)
        out, err = said.finish(30)
    assert proc.returncode == 130, err
    first, second = payload(out)
    assert (first["status"], first["outcome"]) == ("failed", "unknown")
    assert str(error_text(first)).startswith("timeout: "), first
    assert (second["status"], error_text(second)) == ("skipped", "interrupted before any change")
    assert "second Ctrl-C" not in out + err and "Traceback" not in err


# ---- 16. a flood of TERM ----


def test_a_flood_of_term_always_exits_130_with_its_report(
    lab: Lab, home: Path, trusted: Path
) -> None:
    runs = int(os.environ.get("SP_STRESS_RUNS", "3"))
    rc = home / ".bashrc"
    rc.write_text("sleep 0.3\n")  # every step takes a moment: time to be signalled mid-push
    try:
        for run in range(runs):
            proc = sp_deploy("push", lab.a.spec, "--json", "--no-smoke", *ssh_args(lab, trusted))
            poll(lambda: user_processes(lab.user.pw_uid), 30, "the push to reach the host")
            while proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                time.sleep(0.001)
            out, err = proc.communicate()
            assert proc.returncode == 130, f"run {run}: exit {proc.returncode}: {err}"
            assert "Traceback" not in err, err
            (result,) = payload(out)
            assert result["status"] in ("skipped", "deployed", "failed"), result
            poll(lambda: not user_processes(lab.user.pw_uid), 30, "the host's steps to end")
    finally:
        rc.unlink()


def test_a_ctrl_c_at_any_moment_of_a_json_push_prints_json_or_nothing(
    lab: Lab, home: Path, trusted: Path
) -> None:
    """A Ctrl-C from the start of `push --json` (Python loading the CLI, the arguments,
    the host's start-up file, the steps): exit 130 every time, one line on stderr at most and
    no traceback; stdout is the whole report, or (when the signal came before the command had
    read its hosts) nothing or the error's document, never a part of one."""
    runs = max(10, int(os.environ.get("SP_STRESS_RUNS", "20")) // 5)
    rc = home / ".bashrc"
    rc.write_text("sleep 0.2\n")
    argv = ("push", lab.a.spec, "--json", "--no-smoke", *ssh_args(lab, trusted))
    try:
        assert sp_deploy(*argv).wait(timeout=60) == 0  # the pushes below change nothing
        started = time.monotonic()
        assert sp_deploy(*argv).wait(timeout=60) == 0
        length = time.monotonic() - started  # of a whole push: the moments span it
        reports = empty = 0
        for run in range(runs):
            proc = sp_deploy(*argv)
            # from sp-deploy's first lines (the README: not within Python's own start, where a
            # signal ends it as its default says), which catch TERM, to near the push's end
            pid = proc.pid
            poll(lambda: catches(pid, signal.SIGTERM), 30, "sp-deploy's first lines")  # noqa: B023
            time.sleep(run / runs * 0.8 * length)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            assert "Traceback" not in err, err
            if proc.returncode == 0:  # it ended just before the signal: its whole report
                assert payload(out)[0]["status"] == "unchanged"
                continue
            assert proc.returncode == 130, f"run {run}: exit {proc.returncode}: {err}"
            doc = payload(out) if out else None
            if isinstance(doc, list):
                (result,) = doc
                assert result["status"] in ("skipped", "unchanged", "failed"), result
                reports += 1
            else:  # before the hosts were read: no report, the error's document at most
                assert doc is None or doc["error"]["kind"] == "interrupted", out
                assert err == "sp-deploy: interrupted\n", err
                empty += 1
            poll(lambda: not user_processes(lab.user.pw_uid), 30, "the host's steps to end")
    finally:
        rc.unlink()
    assert reports and empty, f"{reports} reports, {empty} empty: the moments missed a phase"


def test_a_cancel_whose_answer_stalls_says_the_job_may_have_been_stopped(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The connection stalls once cancel's step went out: the host may have stopped the job.
    The error says so and how to look (it blamed a start-up file only)."""
    args = ssh_args(lab, trusted, timeout="20")
    assert sp_json(capsys, "push", lab.a.spec, "--no-smoke", *args)[0] == 0
    code, _, err = sp(
        capsys, "run", lab.a.spec, "--id", "stalled-cancel", *args, "--", "sleep", "60"
    )
    assert code == 0, err
    # the whole step reaches the host (client to server is never held): only its answer stalls
    proxy = StallingProxy(lab.a.port, len(step_script("cancel")))
    with trusted.open("a") as handle:
        handle.write(lab.a.known_hosts_line.replace(f":{lab.a.port} ", f":{proxy.port} "))
    try:
        spec = f"{lab.user.pw_name}@127.0.0.1:{proxy.port}"
        proc = sp_deploy(
            "cancel", spec, "stalled-cancel", "--wait", "1", *ssh_args(lab, trusted, timeout="4")
        )
        out, err = proc.communicate(timeout=60)
    finally:
        proxy.close()
    assert proxy.stalled.is_set()
    assert proc.returncode == 1, (out, err)
    assert "job stalled-cancel may have been stopped: see sp-deploy status" in err, err
    sp_json(capsys, "cancel", lab.a.spec, "stalled-cancel", *args)


def test_a_db_step_that_hangs_after_the_rename_is_reported_with_the_new_wrapper(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The install step renames the wrapper in, then sets up the DB: when that hangs past the
    deadline, the host has the new wrapper, and push says so (outcome "new"), since the step's
    "installed" line reaches sp-deploy at once (not held with the rest of the answer)."""
    try:
        with fake_sqlite3(lab, home, 'case "$*" in *server.db*) exec sleep 60 ;; esac'):
            code, results = sp_json(capsys, "push", lab.a.spec, *ssh_args(lab, trusted, "10"))
        (result,) = results
        assert (code, result["status"], result["outcome"]) == (1, "failed", "new"), result
        assert "the new wrapper is installed" in str(error_text(result)), result
    finally:
        for pid in user_processes(lab.user.pw_uid, "sleep"):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    code, results = sp_json(capsys, "verify", lab.a.spec, *ssh_args(lab, trusted))
    assert (code, results[0]["status"]) == (0, "ok"), results


def test_an_install_step_killed_after_the_rename_is_reported_with_the_new_wrapper(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The step's shell killed during the DB set-up (the OOM killer, an admin): its answer ends
    "@end 137", but its "installed" came first, so the push says the new wrapper is in place
    (outcome "new"), not that the host kept its old one; the same when the install travels with
    the probe (a host seen before)."""
    with fake_sqlite3(lab, home, 'case " $* " in *" -bail "*) kill -KILL "$PPID" ;; esac'):
        for steps in (["connect", "probe", "install"], ["connect", "push"]):
            for folder in (".solverpilot", ".solverpilot-server"):  # (the DB is created anew)
                shutil.rmtree(home / folder, ignore_errors=True)
            code, results = sp_json(capsys, "push", lab.a.spec, *ssh_args(lab, trusted))
            (result,) = results
            assert (code, result["status"], result["outcome"]) == (1, "failed", "new"), result
            assert [step["name"] for step in result["steps"]] == steps, result
            assert "the new wrapper is installed" in str(error_text(result)), result
            assert "exit 137" in str(error_text(result)), result
            assert (home / WRAPPER).read_bytes() == DEBIAN_BYTES


@contextlib.contextmanager
def fake_sqlite3(lab: Lab, home: Path, first: str) -> Iterator[None]:
    """The test user's logins find a sqlite3 that runs the sh line ``first``, then the real
    one (its PATH set in ~/.bashrc, which bash reads for ssh's commands)."""
    fake = home / "fakebin"
    fake.mkdir(exist_ok=True)
    (fake / "sqlite3").write_text(f'#!/bin/sh\n{first}\nexec /usr/bin/sqlite3 "$@"\n')
    (fake / "sqlite3").chmod(0o755)
    rc = home / ".bashrc"
    rc.write_text(f"export PATH={fake}:$PATH\n")
    for path in (fake, fake / "sqlite3", rc):
        os.chown(path, lab.user.pw_uid, lab.user.pw_gid)
    try:
        yield
    finally:
        rc.unlink()
        shutil.rmtree(fake)


@pytest.mark.transports("paramiko")  # no connection: the steps run here, under sh
def test_a_checksum_mismatch_in_push_sh_names_the_hosts_hash_and_leaves_the_facts_alone(
    tmp_path: Path,
) -> None:
    """push.sh's answer is the probe's, then the install's: on a checksum mismatch the install
    says sha256=HASH, a key the probe's facts have too (the tool's name). The error names the
    hash the host computed, and the facts kept are the probe's alone."""
    from solverpilot_deploy.deploy import InstallRefused, _schema_line, check_install
    from solverpilot_deploy.host_facts import facts_of, facts_sha256
    from solverpilot_deploy.remote import StepResult, with_payload, with_token

    def run(name: str, *args: str, payload: str | None = None) -> tuple[int, tuple[str, ...]]:
        script = step_script(name) if payload is None else with_payload(step_script(name), payload)
        done = subprocess.run(
            ["sh", "-s", "--", *args], input=with_token(script, "TOKEN"), capture_output=True,
            text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, check=False,
        )  # fmt: skip
        framed = parse_framed("TOKEN", done.stdout)
        assert framed is not None, done
        return framed

    _, probed = run("probe")
    facts = facts_of(probed)
    wrong = "0" * 64
    status, lines = run(
        "push", wrong, "30", "-", "-", facts_sha256(facts), payload=_schema_line() + "echo x\n"
    )
    assert status == 11 and "install=begun" in lines, lines
    assert facts_of(lines) == facts
    real = hashlib.sha256(b"echo x\n").hexdigest()
    with pytest.raises(InstallRefused, match=f"host computed {real[:12]}"):
        check_install(StepResult(status, lines, ""), wrong)
    assert not (tmp_path / WRAPPER).exists()


@pytest.mark.parametrize(
    "given", ["--known-hosts fifo", "-i fifo", "-F fifo", "--known-hosts /dev/zero"]
)
def test_a_fifo_or_endless_device_given_as_a_file_fails_at_once(
    lab: Lab, trusted: Path, tmp_path: Path, given: str
) -> None:
    """A fifo no one writes, as known_hosts, key or ssh config, hung push for ever, past
    --timeout and two Ctrl-C (a thread blocked in open); /dev/zero as known_hosts was read
    until the memory ran out (helper-25's findings 11 and 12). Each now fails its host at
    once, with its kind."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    option, name = given.split()
    path = str(fifo) if name == "fifo" else name
    args = {"--known-hosts": ["-i", str(lab.client_key)], "-i": ["--known-hosts", str(trusted)]}
    extra = args.get(option, ["-i", str(lab.client_key), "--known-hosts", str(trusted)])
    began = time.monotonic()
    proc = sp_deploy("push", lab.a.spec, option, path, *extra, "--timeout", "20", "--json")
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - began < 10
    (result,) = payload(out)
    kind = {"--known-hosts": "host_key", "-i": "authentication", "-F": "usage"}[option]
    assert proc.returncode == 1, (out, err)
    assert result["error"]["kind"] == kind, result
    assert "not a regular file" in error_text(result) or "larger than" in error_text(result)


def test_a_host_name_the_resolver_refuses_is_unreachable_not_an_internal_error(
    lab: Lab, trusted: Path
) -> None:
    """A label over 63 characters: Python's resolver raised UnicodeError (idna), reported as
    sp-deploy's own bug, kind internal (helper-25's finding 10); it is an unreachable host."""
    proc = sp_deploy(
        "status", "a" * 64 + ".example.org", "--json", "-i", str(lab.client_key),
        "--known-hosts", str(trusted), "--timeout", "10",
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, (out, err)
    assert json.loads(out)["error"]["kind"] == "unreachable", out
    assert "internal" not in err

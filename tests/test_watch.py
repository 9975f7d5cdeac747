"""watch: the jobs as events over one connection per host (README "Watching jobs"), through a
real sshd (its log counts the logins) with the deployed wrapper: each change printed once and
quickly, sshd killed and restarted with ends in between (none lost, none twice), a stalled
connection made again, --on-end run once per end, a hostile host's bytes kept off the
terminal, Ctrl-C and TERM (exit 130); and the host's loop without inotifywait."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Lab, poll, require, sp, sp_deploy, sp_json
from conftest import run_wrapper as wrapper
from sshlab import Sshd, run_as

from solverpilot_deploy.remote import step_script, with_token

SERVER = ".solverpilot-server"
WRAPPER = ".solverpilot/bin/job_wrapper.sh"


@dataclass
class Watching:
    """A running ``sp-deploy watch``: its JSON lines as they came (with the time each came)."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.lines.append((time.monotonic(), json.loads(line)))

    def events(self, job_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """The events (of ``job_id``, of kind ``kind``) so far."""
        return [
            e for _, e in self.lines if job_id in (None, e.get("id")) and kind in (None, e["event"])
        ]

    def wait_for(self, job_id: str | None, kind: str, seconds: float) -> dict[str, object]:
        if not self.events(job_id, kind) and self.proc.poll() is not None:
            assert self.proc.stderr is not None
            pytest.fail(f"watch ended ({self.proc.returncode}): {self.proc.stderr.read()}")
        poll(lambda: self.events(job_id, kind), seconds, f"{kind} of {job_id}: {self.raw[-5:]}")
        return self.events(job_id, kind)[0]

    def arrived(self, job_id: str, kind: str) -> float:
        return next(t for t, e in self.lines if e.get("id") == job_id and e["event"] == kind)


@contextlib.contextmanager
def watching(*argv: str) -> Iterator[Watching]:
    w = Watching(sp_deploy("watch", *argv, "--json"))
    threading.Thread(target=w.read, daemon=True).start()
    try:
        yield w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()


@pytest.fixture
def own_sshd(lab: Lab, tmp_path: Path) -> Iterator[Sshd]:
    """An sshd of host a's user that this test may kill and restart; its log counts logins."""
    server = Sshd(tmp_path / "sshd", lab.user.pw_name, log_level="INFO").start()
    yield server
    kill_sshd(server)


def descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in found.split()]
    return children + [d for child in children for d in descendants(child)]


def kill_sshd(server: Sshd) -> None:
    """sshd and every connection it serves (each one's sshd processes and the commands they
    run), as a crash of the server ends them."""
    if server.process is None:
        return
    for pid in descendants(server.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.kill()
    server.process.wait()
    server.process = None


def logins(server: Sshd) -> int:
    return server.log.read_text(errors="replace").count("Accepted publickey")


def options(lab: Lab, trusted: Path, server: Sshd) -> tuple[str, ...]:
    trusted.write_text(trusted.read_text() + server.known_hosts_line)
    return ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "30")


def test_watch_prints_each_change_once_across_a_restarted_sshd_and_runs_on_end_once(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, own_sshd: Sshd,
    transport: str, tmp_path: Path,
) -> None:  # fmt: skip
    require(bool(shutil.which("inotifywait")), "needs inotifywait (Debian package inotify-tools)")
    c = options(lab, trusted, own_sshd)
    code, results = sp_json(capsys, "push", own_sshd.spec, *c)
    assert code == 0, results
    wrapper(lab, "j0", "true").wait(30)
    ends = tmp_path / "ends"
    ends.touch(mode=0o666)
    on_end = f'echo "$SP_HOST $SP_JOB_ID $SP_STATUS [$SP_EXIT_CODE] [$SP_SIGNAL]" >> {ends}'
    before = logins(own_sshd)
    with watching(own_sshd.spec, *c, "--beat", "1", "--on-end", on_end) as w:
        w.wait_for("j0", "now", 30)
        # a change: the line comes within a second of the state file's last write
        wrapper(lab, "j1", "sh", "-c", "sleep 0.3; exit 3").wait(30)
        ended = w.wait_for("j1", "ended", 10)
        assert (ended["status"], ended["exit_code"]) == ("failed", 3)
        written = (home / SERVER / "jobs" / "j1.status").stat().st_mtime
        late = time.time() - written - (time.monotonic() - w.arrived("j1", "ended"))
        assert late < 1.5, f"the end came {late:.2f} s after the state file's write"
        assert logins(own_sshd) - before == 1  # one login for the watch, however long it runs
        # sshd dies with its connections; jobs end while the watch is away
        kill_sshd(own_sshd)
        w.wait_for(None, "disconnected", 30)
        wrapper(lab, "j2", "sh", "-c", "exit 5").wait(30)
        wrapper(lab, "j3", "true").wait(30)
        j4 = wrapper(lab, "j4", "sleep", "60")
        poll(lambda: (home / SERVER / "jobs" / "j4.status").exists(), 10, "j4 started")
        own_sshd.start()
        w.wait_for(None, "reconnected", 60)
        assert w.wait_for("j2", "ended", 20)["exit_code"] == 5
        assert w.wait_for("j3", "ended", 20)["status"] == "completed"
        w.wait_for("j4", "started", 20)
        os.kill(j4.pid, signal.SIGTERM)
        j4.wait(30)
        assert w.wait_for("j4", "ended", 20)["signal"] == "TERM"
        poll(lambda: len(ends.read_text().splitlines()) >= 4, 20, "the on-end commands")
        assert logins(own_sshd) - before == 2  # and one more after the restart
        # each end once, the sequence numbers without a gap or a repeat
        for job_id in ("j1", "j2", "j3", "j4"):
            assert len(w.events(job_id, "ended")) == 1, w.events(job_id)
        assert [e["seq"] for _, e in w.lines] == list(range(1, len(w.lines) + 1))
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(20) == 130
    host = own_sshd.spec
    assert sorted(ends.read_text().splitlines()) == [
        f"{host} j1 failed [3] []", f"{host} j2 failed [5] []", f"{host} j3 completed [0] []",
        f"{host} j4 failed [143] [TERM]",
    ]  # fmt: skip


class StallProxy:
    """A TCP relay on 127.0.0.1 to ``port`` that, once ``stall`` is set, forwards nothing more
    on the connections it has (they stay open: a network that stalls); new ones pass."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.stall = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            was = self.stall.is_set()  # a connection made while stalled is not stalled itself
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b, was), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, was: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if was or not self.stall.is_set():
                    dst.sendall(data)


def test_a_stalled_connection_is_made_again_and_the_end_meanwhile_comes_once(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, own_sshd: Sshd,
) -> None:  # fmt: skip
    c = options(lab, trusted, own_sshd)
    code, results = sp_json(capsys, "push", own_sshd.spec, *c)
    assert code == 0, results
    proxy = StallProxy(own_sshd.port)
    host = f"{lab.user.pw_name}@127.0.0.1:{proxy.port}"
    line = own_sshd.known_hosts_line.replace(f"]:{own_sshd.port} ", f"]:{proxy.port} ")
    trusted.write_text(trusted.read_text() + line)
    wrapper(lab, "s0", "true").wait(30)
    with watching(host, *c, "--beat", "1") as w:
        w.wait_for("s0", "now", 30)
        proxy.stall.set()
        wrapper(lab, "s1", "sh", "-c", "exit 7").wait(30)
        began = time.monotonic()
        w.wait_for(None, "disconnected", 30)
        assert time.monotonic() - began < 15  # 3 beats and 5 s of silence, then it says so
        proxy.stall.clear()
        assert w.wait_for("s1", "ended", 60)["exit_code"] == 7
        assert len(w.events("s1", "ended")) == 1
        w.proc.send_signal(signal.SIGINT)
        assert w.proc.wait(20) == 130


def test_a_hostile_hosts_fields_never_reach_the_terminal_and_wait_runs_on_end_once(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    c = ("-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, results = sp_json(capsys, "push", lab.a.spec, *c)
    assert code == 0, results
    wrapper(lab, "h1", "sh", "-c", "exit 2").wait(30)
    path = home / SERVER / "jobs" / "h1.status"
    record = json.loads(path.read_text())
    record["reason"] = "\x1b]52;c;cGF3bmVk\x07\x1b[2J\u202e"
    record["signal"] = "\x1b[31mTERM"
    path.write_text(json.dumps(record) + "\n")
    proc = sp_deploy("watch", lab.a.spec, *c)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert "h1 now: failed (" in line and " exit 2 " in line, line
    assert not any(ch in line + err for ch in "\x1b\x07\u202e"), repr(line)
    assert proc.returncode == 130
    # wait --on-end: once for each job, the one already ended too
    out_file = home / SERVER / "waited"
    code, _, err = sp(capsys, "wait", lab.a.spec, "h1", *c, "--on-end",
                        f'echo "$SP_JOB_ID $SP_STATUS $SP_EXIT_CODE" >> {out_file}')  # fmt: skip
    assert code == 2, err
    assert out_file.read_text() == "h1 failed 2\n"


def poll_mode_bin(folder: Path) -> Path:
    """A PATH folder with what watch.sh and status need, but no inotifywait."""
    folder.mkdir()
    tools = "sh awk find sed stat ls sqlite3 id sleep cat tr cut date mkdir rm head tail wc grep"
    for tool in (*tools.split(), "tmux", "mktemp"):
        found = shutil.which(tool)
        if found:
            (folder / tool).symlink_to(found)
    folder.chmod(0o755)
    return folder


def test_without_inotifywait_the_host_looks_every_half_second(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    user: pwd.struct_passwd = lab.user
    # outside pytest's tmp tree, which other users cannot enter
    bin_dir = poll_mode_bin(Path(tempfile.mkdtemp(prefix="sp-poll-bin-")) / "bin")
    bin_dir.parent.chmod(0o755)
    server = home / SERVER
    run_as(user, "mkdir", "-m", "700", "-p", str(server / "jobs"), check=True)
    env = {"HOME": user.pw_dir, "USER": user.pw_name, "PATH": str(bin_dir)}
    step = subprocess.Popen(
        [str(shutil.which("setpriv")), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
         "--init-groups", "/bin/sh", "-s", "--", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=user.pw_dir,
        start_new_session=True,
    )  # fmt: skip
    assert step.stdin is not None and step.stdout is not None
    step.stdin.write(with_token(step_script("watch"), "TOKEN"))
    step.stdin.close()
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert step.stdout is not None
        for line in step.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))

    threading.Thread(target=read, daemon=True).start()
    try:
        poll(lambda: "TOKEN @watch poll" in [t for _, t in lines], 20, "the poll loop")
        poll(lambda: sum(t == "TOKEN @scanned" for _, t in lines) >= 1, 20, "the first look")
        looks = sum(t == "TOKEN @scanned" for _, t in lines)
        began = time.monotonic()
        target = server / "jobs" / "p1.status"
        run_as(
            user,
            "sh",
            "-c",
            f'echo \'{{"id":"p1","status":"completed","exit_code":0}}\' > {target}',
            check=True,
        )
        poll(lambda: any(t == "TOKEN @job p1 no -" for _, t in lines), 5, "the change seen")
        seen = next(at for at, t in lines if t == "TOKEN @job p1 no -")
        assert seen - began < 1.5
        assert sum(t == "TOKEN @scanned" for _, t in lines) >= looks + 1
        poll(lambda: any(t == "TOKEN @beat" for _, t in lines), 10, "a beat when nothing changes")
    finally:
        os.killpg(step.pid, signal.SIGKILL)  # the step and its loops
        step.wait()
        shutil.rmtree(bin_dir.parent, ignore_errors=True)
    assert sys.platform.startswith("linux")


def test_a_wrapper_killed_without_a_word_is_told_lost_within_seconds(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    c = ("-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, results = sp_json(capsys, "push", lab.a.spec, *c)
    assert code == 0, results
    wrapper(lab, "k0", "true").wait(30)
    with watching(lab.a.spec, *c, "--on-end", "exit 9") as w:
        w.wait_for("k0", "now", 30)
        job = wrapper(lab, "k1", "sleep", "60")
        w.wait_for("k1", "started", 20)
        os.kill(job.pid, signal.SIGKILL)  # the wrapper: nothing is written
        job.wait()  # (reaped, as its tmux pane's shell or launcher does at once)
        killed = time.monotonic()
        lost = w.wait_for("k1", "lost", 10)
        assert time.monotonic() - killed < 3
        assert lost["job"]["lost_reason"] == "wrapper gone, its job still holds the lock"
        # the failing --on-end is reported, and the watch goes on
        run_as(lab.user, "pkill", "-u", lab.user.pw_name, "-x", "sleep")
        wrapper(lab, "k2", "true").wait(30)
        w.wait_for("k2", "ended", 20)
        w.proc.send_signal(signal.SIGINT)
        assert w.proc.wait(20) == 130
        assert w.proc.stderr is not None
        said = w.proc.stderr.read()
        assert "--on-end for" in said and "k1 exited 9" in said and "k2 exited 9" in said, said


def test_term_to_watch_ends_the_on_end_command_it_was_running(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    c = ("-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, results = sp_json(capsys, "push", lab.a.spec, *c)
    assert code == 0, results
    wrapper(lab, "t0", "true").wait(30)
    pid_file = tmp_path / "on-end.pid"
    with watching(lab.a.spec, *c, "--on-end", f"echo $$ > {pid_file}; exec sleep 120") as w:
        w.wait_for("t0", "now", 30)
        wrapper(lab, "t1", "true").wait(30)
        poll(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 20, "on-end")
        pid = int(pid_file.read_text())
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(20) == 130
    poll(
        lambda: (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        ),
        10,
        "the on-end command ended",
    )


@pytest.mark.parametrize("why", ["missing ssh config", "host name ssh refuses"])
def test_what_no_retry_can_fix_ends_the_hosts_watch_failed(
    lab: Lab, trusted: Path, tmp_path: Path, why: str
) -> None:
    """An ssh config that is not there, a host name ssh refuses: the host's watch ends
    "failed" (kind usage) and watch exits 1, as status exits at once; it retried them for
    ever, "trying again in 1, 2, 4, 8 s" (helper-24's finding 9)."""
    c = ("-i", str(lab.client_key), "--known-hosts", str(trusted))
    args = (
        (lab.a.spec, "-F", str(tmp_path / "absent" / "config"))
        if why == "missing ssh config"
        else ("bad\x1bhost",)
    )
    proc = sp_deploy("watch", *args, *c, "--transport", "openssh", "--json")
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 1, (out, err)
    assert [e["event"] for e in events] == ["failed"], events
    assert events[0]["error"]["kind"] == "usage", events

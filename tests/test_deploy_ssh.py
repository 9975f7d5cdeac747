"""sp-deploy push / verify / status against real OpenSSH servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import socket
import sqlite3
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, error_text, payload, sp, sp_json
from sshlab import TEST_USERS, Sshd, free_port, run_as

from solverpilot_deploy.profiles import load_profile
from solverpilot_deploy.render import render_wrapper
from solverpilot_deploy.resources import schema_columns, schema_version
from solverpilot_deploy.status import JOB_KEYS

# every test here runs once per transport (see conftest.transport)
pytestmark = pytest.mark.usefixtures("transport")

WRAPPER = ".solverpilot/bin/job_wrapper.sh"
DEBIAN_BYTES = render_wrapper(load_profile("debian")).encode()
DEBIAN_SHA = hashlib.sha256(DEBIAN_BYTES).hexdigest()


def push(capsys: pytest.CaptureFixture[str], lab: Lab, kh: Path, *args: str):  # type: ignore[no-untyped-def]
    return sp_json(
        capsys,
        "push",
        *args,
        "-i",
        str(lab.client_key),
        "--known-hosts",
        str(kh),
        "--timeout",
        "30",
    )


def bin_dir_listing(home: Path) -> list[str]:
    return sorted(p.name for p in (home / ".solverpilot/bin").iterdir())


def test_first_deploy_checksum_mode_db_and_clean_smoke(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0
    steps = results[0].pop("steps")
    assert results == [
        {
            "host": lab.a.spec,
            "status": "deployed",
            "distro": "debian",
            "sha256": DEBIAN_SHA,
            "error": None,
            "warnings": [],
            "outcome": "new",
            "current_sha256": None,
            "render_sha256": DEBIAN_SHA,
            "action": "install",
        }
    ]
    # the login, the probe, then one step that installs, sets up the DB and runs the smoke job
    assert [step["name"] for step in steps] == ["connect", "probe", "install", "init_db", "smoke"]
    assert all(isinstance(step["seconds"], float) and step["seconds"] >= 0 for step in steps)
    live = home / WRAPPER
    assert live.read_bytes() == DEBIAN_BYTES
    assert stat.S_IMODE(live.stat().st_mode) == 0o755
    assert live.stat().st_uid == lab.user.pw_uid
    # the folders it creates are the user's alone
    assert stat.S_IMODE((home / ".solverpilot/bin").stat().st_mode) == 0o700
    assert bin_dir_listing(home) == ["job_wrapper.sh"]  # nothing temporary left
    db = home / ".solverpilot-server/server.db"
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        assert columns == [column.split()[0] for column in schema_columns()]
        assert columns[:6] == [
            "id",
            "status",
            "started_at",
            "completed_at",
            "exit_code",
            "tmux_session_name",
        ]  # the first version's, in order
        assert conn.execute("PRAGMA user_version").fetchone() == (schema_version(),)
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)  # smoke: no trace
    assert not (home / ".solverpilot-server/jobs").exists()
    assert not (home / ".solverpilot-server/locks").exists()


def test_repush_is_unchanged_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    assert push(capsys, lab, trusted, lab.a.spec)[0] == 0
    before = (home / WRAPPER).stat()
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and results[0]["status"] == "unchanged"
    after = (home / WRAPPER).stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )


def test_replace_is_a_rename_a_hard_link_keeps_the_old_bytes(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    assert push(capsys, lab, trusted, lab.a.spec)[0] == 0
    live = home / WRAPPER
    old = b"#!/bin/bash\necho old wrapper\n"
    live.write_bytes(old)
    os.link(live, home / ".solverpilot/old-link")
    try:
        code, results = push(capsys, lab, trusted, lab.a.spec)
        assert code == 0 and results[0]["status"] == "deployed"
        assert live.read_bytes() == DEBIAN_BYTES
        assert (home / ".solverpilot/old-link").read_bytes() == old
        assert live.stat().st_ino != (home / ".solverpilot/old-link").stat().st_ino
    finally:
        (home / ".solverpilot/old-link").unlink()


def test_unknown_host_key_is_refused_with_fingerprint(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, known_hosts: Path
) -> None:
    code, results = push(capsys, lab, known_hosts, lab.a.spec)
    assert code == 1
    (result,) = results
    assert result["status"] == "failed"
    error = str(error_text(result))
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(lab.a.host_key) + ".pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert error.startswith("host key: unknown host key for [127.0.0.1]:")
    assert fingerprint in error and "--accept-new" in error
    assert not known_hosts.exists()
    assert not (home / ".solverpilot").exists()


def test_accept_new_records_the_key_then_it_is_trusted(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, known_hosts: Path
) -> None:
    code, results = push(capsys, lab, known_hosts, lab.a.spec, "--accept-new")
    assert code == 0 and results[0]["status"] == "deployed"
    # one entry, this key (openssh hashes the name where the ssh config says HashKnownHosts)
    (line,) = known_hosts.read_text().splitlines()
    assert line.split()[1:] == lab.a.known_hosts_line.split()[1:]
    found = subprocess.run(
        ["ssh-keygen", "-F", f"[127.0.0.1]:{lab.a.port}", "-f", str(known_hosts)],
        capture_output=True,
        check=False,
    )
    assert found.returncode == 0
    code, results = push(capsys, lab, known_hosts, lab.a.spec)
    assert code == 0 and results[0]["status"] == "unchanged"


def test_hashed_known_hosts_entries_are_understood(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(trusted)], check=True, capture_output=True)
    assert "|1|" in trusted.read_text() and "127.0.0.1" not in trusted.read_text()
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and results[0]["status"] == "deployed"


def test_changed_host_key_is_refused_even_with_accept_new(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, known_hosts: Path
) -> None:
    other = lab.b.known_hosts_line.split(" ", 1)[1]  # b's key, recorded for a's address
    known_hosts.write_text(f"[127.0.0.1]:{lab.a.port} {other}")
    before = known_hosts.read_text()
    code, results = push(capsys, lab, known_hosts, lab.a.spec, "--accept-new")
    assert code == 1
    assert str(error_text(results[0])).startswith("host key: host key for [127.0.0.1]:")
    assert "CHANGED" in str(error_text(results[0]))
    assert known_hosts.read_text() == before
    assert not (home / ".solverpilot").exists()


def test_wrong_key_is_an_authentication_error(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    code, results = sp_json(
        capsys, "push", lab.a.spec, "-i", str(lab.wrong_key), "--known-hosts", str(trusted)
    )
    assert code == 1
    assert str(error_text(results[0])).startswith("authentication failed: ")


def test_a_dead_host_among_live_ones(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    dead = f"{lab.user.pw_name}@127.0.0.1:{free_port()}"
    code, results = push(capsys, lab, trusted, lab.a.spec, dead, lab.b.spec, "-j", "3")
    assert code == 1
    assert [r["host"] for r in results] == [lab.a.spec, dead, lab.b.spec]
    assert [r["status"] for r in results] == ["deployed", "failed", "deployed"]
    assert str(error_text(results[1])).startswith("unreachable: ")
    assert "Traceback" not in capsys.readouterr().err
    assert results[1]["distro"] is None and results[1]["sha256"] is None
    assert (home / WRAPPER).read_bytes() == DEBIAN_BYTES
    assert (Path(lab.users[TEST_USERS[1]].pw_dir) / WRAPPER).read_bytes() == DEBIAN_BYTES


def test_dry_run_changes_nothing(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    code, results = push(capsys, lab, trusted, lab.a.spec, "--dry-run")
    assert code == 0
    assert results[0]["status"] == "would-deploy" and results[0]["sha256"] is None
    assert results[0]["render_sha256"] == DEBIAN_SHA
    assert not (home / ".solverpilot").exists()
    assert not (home / ".solverpilot-server").exists()
    push(capsys, lab, trusted, lab.a.spec)
    code, results = push(capsys, lab, trusted, lab.a.spec, "--dry-run")
    assert results[0]["status"] == "unchanged"


def test_a_wrapper_there_but_unreadable_needs_repair_not_missing(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The render's bytes, mode 000: verify said "missing" with a null sha, against its own
    "is not executable" (helper-25's finding 13); it is there: needs-repair, its bytes not
    known (null), push would replace it, and does."""
    verify = ("verify", lab.a.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted))
    push(capsys, lab, trusted, lab.a.spec)
    (home / WRAPPER).chmod(0)
    code, results = sp_json(capsys, *verify)
    assert code == 1 and results[0]["status"] == "needs-repair", results
    assert (results[0]["current_sha256"], results[0]["action"]) == (None, "replace"), results
    assert "is not readable" in error_text(results[0]), results
    push(capsys, lab, trusted, lab.a.spec)
    code, results = sp_json(capsys, *verify)
    assert code == 0 and results[0]["status"] == "ok", results
    assert stat.S_IMODE((home / WRAPPER).stat().st_mode) == 0o755


def test_verify_ok_then_tampered_then_missing(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    verify = ("verify", lab.a.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, results = sp_json(capsys, *verify)
    assert code == 1 and results[0]["status"] == "missing"
    push(capsys, lab, trusted, lab.a.spec)
    code, results = sp_json(capsys, *verify)
    assert code == 0 and results[0]["status"] == "ok" and results[0]["sha256"] == DEBIAN_SHA
    with (home / WRAPPER).open("ab") as handle:
        handle.write(b"# tampered\n")
    code, results = sp_json(capsys, *verify)
    assert code == 1 and results[0]["status"] == "mismatch"
    assert results[0]["sha256"] == hashlib.sha256(DEBIAN_BYTES + b"# tampered\n").hexdigest()
    (home / WRAPPER).unlink()
    code, results = sp_json(capsys, *verify)
    assert code == 1 and results[0]["status"] == "missing"


def test_ssh_config_alias_with_identity_file_and_port(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    (tmp_path / "extra.conf").write_text(
        f"Host box-a\n  HostName 127.0.0.1\n  Port {lab.a.port}\n  User {lab.user.pw_name}\n"
        f"  IdentityFile {lab.client_key}\n  IdentitiesOnly yes\n"
    )
    config = tmp_path / "config"
    config.write_text(f"Include {tmp_path}/extra.conf\n")
    code, results = sp_json(
        capsys, "push", "box-a", "-F", str(config), "--known-hosts", str(trusted)
    )
    assert code == 0
    assert results[0]["host"] == "box-a" and results[0]["status"] == "deployed"


def test_proxy_jump_through_a_second_sshd(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    # the known hosts file in the config: OpenSSH's jump (ssh -W) reads no -o of the command
    config.write_text(
        f"Host hop\n  HostName 127.0.0.1\n  Port {lab.jump.port}\n  User {lab.user.pw_name}\n"
        f"  IdentityFile {lab.client_key}\n  UserKnownHostsFile {trusted}\n"
        f"Host inner\n  HostName 127.0.0.1\n  Port {lab.a.port}\n  User {lab.user.pw_name}\n"
        f"  IdentityFile {lab.client_key}\n  ProxyJump hop\n"
    )
    log_before = lab.jump.log.read_text() if lab.jump.log.exists() else ""
    code, results = sp_json(
        capsys, "push", "inner", "-F", str(config), "--known-hosts", str(trusted)
    )
    assert code == 0 and results[0]["status"] == "deployed"
    new_log = lab.jump.log.read_text()[len(log_before) :]
    assert f"to 127.0.0.1 port {lab.a.port}" in new_log  # the jump host opened the forward


def test_missing_requirement_fails_with_install_hint(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    code, results = push(capsys, lab, trusted, lab.limited.spec)
    assert code == 1
    error = str(error_text(results[0]))
    assert error.startswith("missing requirement: flock; install: sudo apt-get install")
    assert not (Path(lab.users[TEST_USERS[2]].pw_dir) / ".solverpilot").exists()


def test_timeout_on_a_host_that_never_answers(
    capsys: pytest.CaptureFixture[str], lab: Lab, trusted: Path
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        code, results = sp_json(
            capsys,
            "push",
            f"sptest@127.0.0.1:{listener.getsockname()[1]}",
            "--known-hosts",
            str(trusted),
            "--timeout",
            "2",
        )
        took = time.monotonic() - start
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
    assert code == 1
    assert str(error_text(results[0])).startswith("timeout: ")
    assert "Traceback" not in capsys.readouterr().err
    assert 1.5 < took < 10


def test_status_completed_failed_running_and_lost(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    push(capsys, lab, trusted, lab.a.spec)
    status = ("status", lab.a.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted))
    wrapper = str(home / WRAPPER)
    assert run_as(lab.user, wrapper, "job-ok", "true").returncode == 0
    assert run_as(lab.user, wrapper, "job-bad", "sh", "-c", "exit 3").returncode == 3
    # a running job, and one whose wrapper is killed by SIGKILL (lost), both with jobs alive
    go = home / "go"
    env = {"HOME": str(home), "USER": "sptest", "PATH": "/usr/bin:/bin"}
    wait_go = f'touch "$0"; while [ ! -e {go} ]; do sleep 0.05; done'
    procs = [
        subprocess.Popen(
            [
                "setpriv",
                f"--reuid={lab.user.pw_uid}",
                f"--regid={lab.user.pw_gid}",
                "--init-groups",
                wrapper,
                job,
                "sh",
                "-c",
                wait_go,
                f"{home}/{job}.started",  # the job has begun (the wrapper has forked it)
            ],
            env=env,
        )
        for job in ("job-run", "job-lost")
    ]
    try:
        for job in ("job-run", "job-lost"):
            started = home / f"{job}.started"
            deadline = time.monotonic() + 10
            while not started.exists():
                assert time.monotonic() < deadline, f"{job} did not start"
                time.sleep(0.05)
        procs[1].kill()
        procs[1].wait()
        code, jobs = sp_json(
            capsys, "status", lab.a.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted)
        )
    finally:
        go.touch()
        procs[0].wait(timeout=20)
        go.unlink()
        for job in ("job-run", "job-lost"):
            (home / f"{job}.started").unlink(missing_ok=True)
    assert code == 0
    by_id = {job["id"]: job for job in jobs}
    assert set(by_id) == {"job-ok", "job-bad", "job-run", "job-lost"}
    assert by_id["job-ok"]["status"] == "completed" and by_id["job-ok"]["exit_code"] == 0
    assert by_id["job-bad"]["status"] == "failed" and by_id["job-bad"]["exit_code"] == 3
    assert by_id["job-run"]["status"] == "running"
    assert by_id["job-lost"]["status"] == "lost"
    # its wrapper was SIGKILLed; its job, still waiting, holds the lock
    assert by_id["job-lost"]["lost_reason"] == "wrapper gone, its job still holds the lock"
    assert by_id["job-run"]["lost_reason"] is None
    assert list(by_id["job-ok"]) == list(JOB_KEYS)
    assert by_id["job-ok"]["wall_s"] is not None and by_id["job-ok"]["cpu_user_s"] is not None
    code, jobs = sp_json(capsys, *status, "job-bad")
    assert [job["id"] for job in jobs] == ["job-bad"]
    code, out, _ = sp(capsys, *status, "job-bad", "--wide")
    header, row = out.splitlines()
    head = "ID NAME STATUS EXIT SIGNAL STARTED_AT COMPLETED_AT CPU_S WALL_S TMUX COMMAND"
    assert header.split() == head.split()
    assert row.split()[:5] == ["job-bad", "-", "failed", "3", "-"]  # (no name)
    code, out, _ = sp(capsys, *status, "job-bad")
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "EXIT", "STARTED", "WALL", "CPU", "COMMAND"]
    assert row.split()[:4] == ["job-bad", "-", "failed", "3"]


def test_json_output_is_only_json(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    code, out, _ = sp(
        capsys,
        "push",
        lab.a.spec,
        "-i",
        str(lab.client_key),
        "--known-hosts",
        str(trusted),
        "--json",
    )
    assert code == 0
    assert isinstance(payload(out), list)


@contextlib.contextmanager
def limited_with_flock(lab: Lab) -> Iterator[None]:
    """The limited host (no flock, no sqlite3) with flock, and the sleep and id it lacks too."""
    added = []
    try:
        for tool in ("flock", "sleep", "id"):
            link = lab.limited_bin / tool
            link.symlink_to(shutil.which(tool) or tool)
            added.append(link)
        yield
    finally:
        for link in added:
            link.unlink()


def test_missing_sqlite3_is_only_a_warning(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    with limited_with_flock(lab):
        code, out, err = sp(
            capsys,
            "push",
            lab.limited.spec,
            "-i",
            str(lab.client_key),
            "--known-hosts",
            str(trusted),
            "--json",
        )
    assert (code, error_text(payload(out)[0])) == (0, None)
    assert payload(out)[0]["status"] == "deployed"
    assert f"sp-deploy: {lab.limited.spec}: warning: sqlite3 missing" in err
    limited_home = Path(lab.users[TEST_USERS[2]].pw_dir)
    assert (limited_home / WRAPPER).read_bytes() == DEBIAN_BYTES
    assert not (limited_home / ".solverpilot-server").exists()


def test_l_p_i_override_and_a_named_distro(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    rhel = render_wrapper(load_profile("rhel")).encode()
    where = ("127.0.0.1", "-l", lab.user.pw_name, "-p", str(lab.a.port))
    auth = ("-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, results = sp_json(capsys, "push", *where, *auth, "--distro", "rhel")
    assert code == 0
    assert results[0]["distro"] == "rhel"
    assert results[0]["sha256"] == hashlib.sha256(rhel).hexdigest()
    assert (home / WRAPPER).read_bytes() == rhel
    code, results = sp_json(capsys, "verify", *where, *auth)
    assert code == 1 and results[0]["status"] == "mismatch"  # auto picks debian


def test_ssh_agent_is_used_when_present(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    trusted: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(lab.client_key)], env=env, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        config = tmp_path / "config"  # no IdentityFile anywhere: only the agent has the key
        config.write_text(
            f"Host agent-box\n  HostName 127.0.0.1\n  Port {lab.a.port}\n"
            f"  User {lab.user.pw_name}\n  IdentityFile {tmp_path}/none\n"
        )
        code, results = sp_json(
            capsys, "push", "agent-box", "-F", str(config), "--known-hosts", str(trusted)
        )
    finally:
        agent.terminate()
        agent.wait()
    assert code == 0 and results[0]["status"] == "deployed"


def test_a_failed_install_leaves_nothing_temporary(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    blocker = home / WRAPPER  # a non-empty folder where the wrapper goes: the rename fails
    (blocker / "keep").mkdir(parents=True)
    for path in (home / ".solverpilot", home / ".solverpilot/bin", blocker, blocker / "keep"):
        os.chown(path, lab.user.pw_uid, lab.user.pw_gid)
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 1
    assert str(error_text(results[0])).startswith("remote command failed: cannot install ")
    assert bin_dir_listing(home) == ["job_wrapper.sh"]
    assert blocker.is_dir() and (blocker / "keep").is_dir()


def test_summary_table_without_json(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    code, out, _ = sp(
        capsys, "push", lab.a.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted)
    )
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["HOST", "STATUS", "DISTRO", "SHA256", "ERROR"]
    assert row.split() == [lab.a.spec, "deployed", "debian", DEBIAN_SHA[:12]]
    # verify and --dry-run: what the host has, the render, what push would do
    auth = ("-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, out, _ = sp(capsys, "verify", lab.a.spec, *auth)
    header, row = out.splitlines()
    assert code == 0 and header.split() == [
        "HOST", "STATUS", "DISTRO", "HOST_SHA256", "RENDER_SHA256", "PUSH_WOULD", "ERROR"
    ]  # fmt: skip
    assert row.split() == [lab.a.spec, "ok", "debian", DEBIAN_SHA[:12], DEBIAN_SHA[:12], "none"]
    (home / ".solverpilot/bin/job_wrapper.sh").write_text("#!/bin/bash\n")
    code, out, _ = sp(capsys, "push", lab.a.spec, "--dry-run", *auth)
    header, row = out.splitlines()
    planted = hashlib.sha256(b"#!/bin/bash\n").hexdigest()[:12]
    assert code == 0 and row.split()[:4] == [lab.a.spec, "would-deploy", "debian", planted]
    assert row.split()[4:] == [DEBIAN_SHA[:12], "replace"], row
    # -v: each host's steps and times as it ends; -q: only what did not succeed
    code, out, err = sp(capsys, "push", lab.a.spec, "-v", *auth)
    assert code == 0 and re.search(rf"{re.escape(lab.a.spec)}: deployed in [0-9.]+s \(connect", err)
    code, out, err = sp(capsys, "push", lab.a.spec, "-q", *auth)
    assert (code, out, err) == (0, "", "")


def test_status_of_an_unreachable_host_is_one_line(
    capsys: pytest.CaptureFixture[str], trusted: Path
) -> None:
    dead = f"nobody@127.0.0.1:{free_port()}"
    code, out, err = sp(capsys, "status", dead, "--known-hosts", str(trusted))
    assert code == 1 and out == ""
    assert err.startswith(f"sp-deploy: error: {dead}: unreachable: ") and err.count("\n") == 1


def test_an_unwritable_folder_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    (home / ".solverpilot/bin").mkdir(parents=True)
    for path in (home / ".solverpilot", home / ".solverpilot/bin"):
        os.chown(path, lab.user.pw_uid, lab.user.pw_gid)
    (home / ".solverpilot/bin").chmod(0o500)  # the user's, and not writable
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 1
    assert error_text(results[0]) == (
        "remote command failed: cannot install ~/.solverpilot/bin/job_wrapper.sh: "
        "cannot write to ~/.solverpilot/bin: Permission denied"
    )
    assert bin_dir_listing(home) == []


def test_a_checksum_mismatch_fails_the_host_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    # a sha256sum that is right for the probe's "abc" and its line end, and wrong for anything
    # else, as a corrupted upload would look
    fake = lab.limited_bin / "sha256sum"
    real = fake.readlink()
    fake.unlink()
    fake.write_text(
        '#!/bin/sh\nif [ $# -gt 0 ]; then in=$(cat "$1"); else in=$(cat); fi\n'
        'if [ "$in" = abc ]; then\n'
        "  echo 'edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb  -'\n"
        "else\n  echo '0000000000000000000000000000000000000000000000000000000000000000  -'\nfi\n"
    )
    fake.chmod(0o755)
    flock = lab.limited_bin / "flock"
    flock.symlink_to(shutil.which("flock") or "flock")
    try:
        code, results = push(capsys, lab, trusted, lab.limited.spec)
    finally:
        flock.unlink()
        fake.unlink()
        fake.symlink_to(real)
    assert code == 1
    assert str(error_text(results[0])).startswith("checksum mismatch: uploaded ")
    limited_home = Path(lab.users[TEST_USERS[2]].pw_dir)
    assert bin_dir_listing(limited_home) == []


class FlakyProxy:
    """A TCP front for a real sshd that hangs up on the first ``drops`` connections."""

    def __init__(self, backend_port: int, drops: int) -> None:
        self.backend_port, self.drops, self.connections = backend_port, drops, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.serve, daemon=True)]
        self.threads[0].start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            if self.connections <= self.drops:
                conn.close()  # the client sees no SSH banner
                continue
            backend = socket.create_connection(("127.0.0.1", self.backend_port))
            for src, dst in ((conn, backend), (backend, conn)):
                thread = threading.Thread(target=self.pipe, args=(src, dst), daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stop.set()
        self.threads[0].join()
        self.listener.close()


@pytest.mark.parametrize(("drops", "status"), [(2, "deployed"), (5, "failed")])
def test_banner_errors_are_retried_a_bounded_number_of_times(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    known_hosts: Path,
    drops: int,
    status: str,
) -> None:
    proxy = FlakyProxy(lab.a.port, drops)
    key = lab.a.known_hosts_line.split(" ", 1)[1]
    known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {key}")
    try:
        code, results = push(capsys, lab, known_hosts, f"{lab.user.pw_name}@127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    assert results[0]["status"] == status
    assert proxy.connections == min(drops + 1, 3)  # one try and two retries at most
    if status == "failed":
        assert code == 1 and "banner" in str(error_text(results[0])).lower()


def push_on_a_terminal(
    lab: Lab, trusted: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """push to hosts a and b with stderr on a pty (stdout a pipe): it ended, and what the
    terminal got."""
    import sys

    master, slave = os.openpty()
    exe = str(Path(sys.executable).parent / "sp-deploy")
    proc = subprocess.run(
        [exe, "push", lab.a.spec, lab.b.spec, "-i", str(lab.client_key), "--known-hosts",
         str(trusted)],
        stdout=subprocess.PIPE, stderr=slave, text=True, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    os.close(slave)
    drawn = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(master, 65536):
            drawn += chunk
    os.close(master)
    return proc, drawn


def test_progress_on_a_terminal_then_the_table(lab: Lab, home: Path, trusted: Path) -> None:
    proc, progress = push_on_a_terminal(lab, trusted)
    assert proc.returncode == 0
    # one line redrawn in place: the count as hosts start and end, the last count, erased
    drawn = progress.decode().split("\r\x1b[K")
    assert drawn[0] == "" and drawn[-1] == "", drawn
    assert drawn[1].startswith("[0/2] 0 ok, 0 failed, 1 in flight, "), drawn
    assert drawn[-2].startswith("[2/2] 2 ok, 0 failed, 0 in flight, "), drawn
    assert "\n" not in progress.decode()
    # then the table, on stdout
    assert proc.stdout.splitlines()[0].split() == ["HOST", "STATUS", "DISTRO", "SHA256", "ERROR"]
    assert [line.split()[:2] for line in proc.stdout.splitlines()[1:]] == [
        [lab.a.spec, "deployed"],
        [lab.b.spec, "deployed"],
    ]


def test_no_progress_line_on_a_dumb_terminal(lab: Lab, home: Path, trusted: Path) -> None:
    """TERM=dumb takes no escapes: no line redrawn in place (\\r and ESC [K), as no colours
    (helper-25's finding 8); the table still comes, on stdout."""
    proc, drawn = push_on_a_terminal(lab, trusted, {"TERM": "dumb"})
    assert proc.returncode == 0, proc.stdout
    assert b"\r" not in drawn and b"\x1b" not in drawn, drawn
    assert proc.stdout.splitlines()[0].split() == ["HOST", "STATUS", "DISTRO", "SHA256", "ERROR"]


@pytest.mark.transports("paramiko")
def test_proxy_command_is_refused_not_ignored(
    capsys: pytest.CaptureFixture[str], lab: Lab, trusted: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text(
        f"Host viacmd\n  HostName 127.0.0.1\n  Port {lab.a.port}\n  ProxyCommand nc %h %p\n"
    )
    code, results = sp_json(
        capsys, "push", "viacmd", "-F", str(config), "--known-hosts", str(trusted)
    )
    assert code == 1
    assert error_text(results[0]) == (
        "viacmd: the paramiko transport cannot use ProxyCommand; use --transport openssh "
        "(or auto), or ProxyJump"
    )


# ---- what push did and would do, per host: the sha256s, the action, the steps' times ----


def plan(result: dict[str, object]) -> tuple[object, ...]:
    return (result["status"], result["current_sha256"], result["render_sha256"], result["action"])


def test_dry_run_and_verify_show_both_sha256s_and_what_push_would_do(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    verify = ("verify", lab.a.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted))
    # nothing on the host: push would install
    assert plan(push(capsys, lab, trusted, lab.a.spec, "--dry-run")[1][0]) == (
        "would-deploy", None, DEBIAN_SHA, "install",
    )  # fmt: skip
    assert plan(sp_json(capsys, *verify)[1][0]) == ("missing", None, DEBIAN_SHA, "install")
    # other bytes: push would replace them (verify's sha256 stays the host's, as before)
    other = b"#!/bin/bash\necho other wrapper\n"
    other_sha = hashlib.sha256(other).hexdigest()
    assert push(capsys, lab, trusted, lab.a.spec)[0] == 0
    (home / WRAPPER).write_bytes(other)
    assert plan(push(capsys, lab, trusted, lab.a.spec, "--dry-run")[1][0]) == (
        "would-deploy", other_sha, DEBIAN_SHA, "replace",
    )  # fmt: skip
    code, results = sp_json(capsys, *verify)
    assert plan(results[0]) == ("mismatch", other_sha, DEBIAN_SHA, "replace")
    assert results[0]["sha256"] == other_sha
    # the same bytes, but writable by the group: a fresh copy (repair)
    (home / WRAPPER).write_bytes(DEBIAN_BYTES)
    (home / WRAPPER).chmod(0o775)
    assert plan(push(capsys, lab, trusted, lab.a.spec, "--dry-run")[1][0]) == (
        "would-deploy", DEBIAN_SHA, DEBIAN_SHA, "repair",
    )  # fmt: skip
    assert plan(sp_json(capsys, *verify)[1][0]) == (
        "needs-repair", DEBIAN_SHA, DEBIAN_SHA, "repair",
    )  # fmt: skip
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and plan(results[0]) == ("deployed", DEBIAN_SHA, DEBIAN_SHA, "repair")
    # in place: nothing to do
    assert plan(push(capsys, lab, trusted, lab.a.spec, "--dry-run")[1][0]) == (
        "unchanged", DEBIAN_SHA, DEBIAN_SHA, "none",
    )  # fmt: skip
    assert plan(sp_json(capsys, *verify)[1][0]) == ("ok", DEBIAN_SHA, DEBIAN_SHA, "none")
    # and in the table for people: the host's sha256 and the render's differ in a replace
    (home / WRAPPER).write_bytes(other)
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and plan(results[0]) == ("deployed", other_sha, DEBIAN_SHA, "replace")


def step_names(result: dict[str, object]) -> list[object]:
    return [step["name"] for step in result["steps"]]  # type: ignore[attr-defined]


def test_each_host_says_which_steps_it_ran_and_their_seconds(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    dead = f"{lab.user.pw_name}@127.0.0.1:{free_port()}"
    began = time.monotonic()
    code, results = push(capsys, lab, trusted, lab.a.spec, dead, "--no-smoke")
    took = time.monotonic() - began
    assert code == 1
    # no smoke run asked for; the dead host got no further than its login
    assert step_names(results[0]) == ["connect", "probe", "install", "init_db"]
    assert step_names(results[1]) == ["connect"]
    for result in results:
        seconds = [step["seconds"] for step in result["steps"]]  # type: ignore[attr-defined]
        assert all(isinstance(s, float) and s >= 0 for s in seconds), result
        assert sum(seconds) <= took  # each host's steps follow one another
    # a repeat: one step (push.sh, for a host seen before), which finds nothing to do; verify
    # probes only
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and results[0]["status"] == "unchanged"
    assert step_names(results[0]) == ["connect", "push"]
    verify = ("verify", lab.a.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted))
    assert step_names(sp_json(capsys, *verify)[1][0]) == ["connect", "probe"]
    # a new wrapper with a smoke run, in that one step; the DB is there and gets its migration
    (home / WRAPPER).write_bytes(b"#!/bin/bash\necho other wrapper\n")
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and results[0]["status"] == "deployed"
    assert step_names(results[0]) == ["connect", "push", "init_db", "smoke"]


def test_the_host_times_the_parts_of_the_install_step(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    """The DB set-up and the smoke run travel in the install step; the host times them: a
    DB creation that takes two seconds longer (a slow disk: sqlite3 waits first) shows in
    "init_db", not in "install" or "smoke"."""
    shims = Path(tempfile.mkdtemp(prefix="sp-slow-db-"))  # (the test user must reach it)
    shims.chmod(0o755)
    (shims / "sqlite3").write_text(
        "#!/bin/sh\n"
        'case "$*" in *.solverpilot-server/server.db*) sleep 2 ;; esac\n'
        f'exec {shutil.which("sqlite3")} "$@"\n'
    )
    (shims / "sqlite3").chmod(0o755)
    sshd = Sshd(
        tmp_path / "sshd", lab.user.pw_name, extra_config=f"SetEnv PATH={shims}:/usr/bin:/bin\n"
    ).start()
    try:
        with trusted.open("a") as handle:
            handle.write(sshd.known_hosts_line)
        code, results = push(capsys, lab, trusted, sshd.spec)
    finally:
        sshd.stop()
        shutil.rmtree(shims)
    assert code == 0 and results[0]["status"] == "deployed", results
    took = {step["name"]: step["seconds"] for step in results[0]["steps"]}  # type: ignore[attr-defined]
    assert list(took) == ["connect", "probe", "install", "init_db", "smoke"]
    assert took["init_db"] >= 2
    assert took["install"] < 2 and took["smoke"] < 2


def test_a_distro_other_than_the_hosts_own_is_warned_about(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The test hosts are this machine (Debian): --distro ubuntu installs the ubuntu render,
    with a warning that the host's os-release picks debian; --distro debian warns of
    nothing."""
    ubuntu = render_wrapper(load_profile("ubuntu")).encode()
    code, results = push(capsys, lab, trusted, lab.a.spec, "--distro", "ubuntu")
    assert code == 0 and results[0]["status"] == "deployed"
    assert (home / WRAPPER).read_bytes() == ubuntu
    said = "--distro ubuntu given, but the host's os-release (ID=debian) picks the debian profile"
    assert results[0]["warnings"] == [said]
    # the people's output prints it too
    auth = ("-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, _, err = sp(capsys, "push", lab.a.spec, "--distro", "ubuntu", "--dry-run", *auth)
    assert code == 0 and f"{lab.a.spec}: warning: {said}" in err
    # a repeat (push.sh's short answer: the wrapper in place) says it again
    code, results = push(capsys, lab, trusted, lab.a.spec, "--distro", "ubuntu")
    assert code == 0 and step_names(results[0]) == ["connect", "push"]
    assert (results[0]["status"], results[0]["warnings"]) == ("unchanged", [said])
    code, results = push(capsys, lab, trusted, lab.a.spec, "--distro", "debian")
    assert code == 0 and results[0]["status"] == "deployed"
    assert results[0]["warnings"] == []
    code, results = push(capsys, lab, trusted, lab.a.spec)  # auto: nothing to say
    assert code == 0 and results[0]["status"] == "unchanged" and results[0]["warnings"] == []


# ---- a host seen before: probe and install in one step (host_facts) ----


def memory_file(host: str) -> Path:
    """Where push keeps what ``host``'s last probe said (the test's own cache folder)."""
    from solverpilot_deploy.host_facts import Memory
    from solverpilot_deploy.render_cache import cache_dir

    return cache_dir() / Memory(host).name


def test_a_host_seen_before_is_probed_and_installed_in_one_step(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The first push to a host probes, then installs; sp-deploy keeps the host's facts, so
    the next one (here onto an emptied home, as after a user's clean-up) sends both in one
    step and does all the first did: the same wrapper, the DB, the smoke run, no trace."""
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and step_names(results[0])[:2] == ["connect", "probe"]
    kept = memory_file(lab.a.spec)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert kept.read_text().startswith("os_id=debian\n"), kept.read_text()
    for folder in (".solverpilot", ".solverpilot-server"):
        shutil.rmtree(home / folder)
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0, results
    assert step_names(results[0]) == ["connect", "push", "init_db", "smoke"]
    assert all(step["seconds"] >= 0 for step in results[0].pop("steps"))
    assert {k: results[0][k] for k in ("status", "distro", "sha256", "outcome", "action")} == {
        "status": "deployed", "distro": "debian", "sha256": DEBIAN_SHA, "outcome": "new",
        "action": "install",
    }  # fmt: skip
    assert (home / WRAPPER).read_bytes() == DEBIAN_BYTES
    assert stat.S_IMODE((home / WRAPPER).stat().st_mode) == 0o755
    assert stat.S_IMODE((home / ".solverpilot/bin").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / ".solverpilot-server").stat().st_mode) == 0o700
    assert bin_dir_listing(home) == ["job_wrapper.sh"]
    with sqlite3.connect(home / ".solverpilot-server/server.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (schema_version(),)
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    # a repeat: the same one step, which finds the wrapper in place and changes nothing
    before = (home / WRAPPER).stat()
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and results[0]["status"] == "unchanged"
    assert step_names(results[0]) == ["connect", "push"]
    after = (home / WRAPPER).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_facts_kept_that_the_host_no_longer_has_never_install_a_wrong_wrapper(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """What push kept of a host is a guess: the host installs in the probe's step only when its
    facts hash as those. Kept facts of another distro (as when a name now means another host)
    would render alpine's wrapper: the host refuses it, and the push goes on from the probe's
    answer with the profile the host's os-release picks."""
    assert push(capsys, lab, trusted, lab.a.spec)[0] == 0
    kept = memory_file(lab.a.spec)
    facts = kept.read_text()
    kept.write_text(facts.replace("os_id=debian\n", "os_id=alpine\n", 1))
    shutil.rmtree(home / ".solverpilot")
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0, results
    assert step_names(results[0]) == ["connect", "push", "install", "init_db", "smoke"]
    assert (results[0]["distro"], results[0]["sha256"]) == ("debian", DEBIAN_SHA)
    assert (home / WRAPPER).read_bytes() == DEBIAN_BYTES
    assert kept.read_text() == facts  # what the host said now is kept
    # kept facts that are not sound (a damaged or foreign file) are not used at all
    # (a bash version that is a digit to str.isdigit, not to int: the kept facts are whole,
    # but name no bash the wrapper can run on, so they are not used)
    odd = re.sub(r"\nbash=[^\n]*\n", "\nbash=5.\u00b2\n", facts).encode()
    for bad in (b"os_id=debian\nrm -rf ~\n", b"\xff\xfe\n", b"os_id=x\n" * 2000, b"", odd):
        kept.write_bytes(bad)
        shutil.rmtree(home / ".solverpilot")
        code, results = push(capsys, lab, trusted, lab.a.spec)
        assert code == 0 and step_names(results[0])[:3] == ["connect", "probe", "install"], bad
        assert (home / WRAPPER).read_bytes() == DEBIAN_BYTES
        assert kept.read_text() == facts


def test_a_host_seen_before_that_now_lacks_a_tool_keeps_its_wrapper(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The limited host (no flock) is kept as having had it: the kept facts pass the
    requirements, the host's do not, so it installs nothing in the probe's step and the push
    fails as a first one would, naming flock; the old wrapper stays."""
    user = pwd.getpwnam(lab.limited.user)
    assert push(capsys, lab, trusted, lab.limited.spec)[0] == 1  # (it learns the facts)
    kept = memory_file(lab.limited.spec)
    facts = kept.read_text()
    assert "\nflock=\n" in facts
    kept.write_text(facts.replace("\nflock=\n", "\nflock=ok\n"))
    old = "#!/bin/bash\necho old wrapper\n"
    made = run_as(
        user, "sh", "-c", f"mkdir -p ~/.solverpilot/bin && printf '%s' '{old}' > ~/{WRAPPER}"
    )
    assert made.returncode == 0, made
    code, results = push(capsys, lab, trusted, lab.limited.spec)
    assert code == 1 and step_names(results[0]) == ["connect", "push"], results
    assert results[0]["outcome"] == "old" and "flock" in str(error_text(results[0])), results
    assert (Path(user.pw_dir) / WRAPPER).read_text() == old


def test_a_push_that_finds_its_wrapper_in_place_runs_no_tool_and_verify_does(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """A repeat push to a host seen before whose wrapper is the render, with nothing to repair,
    answers from the wrapper's hash and the folders' modes (push.sh's current=yes): its tools
    are not run again, so a tool gone since (flock here) does not fail it: nothing was
    changed, and it says so. verify runs them and names what is missing."""
    with limited_with_flock(lab):
        code, results = push(capsys, lab, trusted, lab.limited.spec)
    assert code == 0 and results[0]["status"] == "deployed", results
    assert "\nflock=ok\n" in memory_file(lab.limited.spec).read_text()
    code, results = push(capsys, lab, trusted, lab.limited.spec)
    assert code == 0 and step_names(results[0]) == ["connect", "push"], results
    assert (results[0]["status"], results[0]["action"], results[0]["sha256"]) == (
        "unchanged", "none", DEBIAN_SHA
    )  # fmt: skip
    assert results[0]["warnings"] == []  # (the first push warned of sqlite3: not run again)
    # push.sh's short answer is not kept: the facts are still the last whole probe's
    assert "\nflock=ok\n" in memory_file(lab.limited.spec).read_text()
    verify = ("verify", lab.limited.spec, "-i", str(lab.client_key), "--known-hosts", str(trusted))
    code, results = sp_json(capsys, *verify)
    assert code == 1 and results[0]["status"] == "failed", results
    assert str(error_text(results[0])).startswith("missing requirement: flock; install:")
    assert "\nflock=\n" in memory_file(lab.limited.spec).read_text()  # (verify's probe)
    # the missing tool hides nothing else verify finds: a wrapper another could replace
    folder = (Path(lab.users[lab.limited.user].pw_dir) / WRAPPER).parent
    folder.chmod(0o770)
    try:
        code, results = sp_json(capsys, *verify)
    finally:
        folder.chmod(0o700)
    assert code == 1 and results[0]["status"] == "failed", results
    said = str(error_text(results[0]))
    assert said.startswith("missing requirement: flock; install:"), said
    assert "; and needs-repair: ~/.solverpilot/bin is writable by group or others" in said
    assert (results[0]["current_sha256"], results[0]["action"]) == (DEBIAN_SHA, "repair")
    assert results[0]["error"]["kind"] == "missing_requirement"
    # without a sha256 tool the wrapper cannot be hashed: no verdict on its bytes (it said
    # "and missing: no .solverpilot/bin/job_wrapper.sh" of the wrapper in place)
    tool = lab.limited_bin / "sha256sum"
    tool.unlink()
    try:
        code, results = sp_json(capsys, *verify)
    finally:
        tool.symlink_to(shutil.which("sha256sum") or "sha256sum")
    said = str(error_text(results[0]))
    assert code == 1 and "a sha256 tool" in said, results
    assert said.endswith("; the wrapper's bytes cannot be compared without one"), said
    assert (results[0]["current_sha256"], results[0]["action"]) == (None, None)


def test_a_host_seen_before_whose_os_release_now_picks_another_profile_gets_it(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """Kept facts that pick ubuntu, and the host has ubuntu's wrapper: push.sh finds that
    wrapper in place (current=yes), but the os-release in its answer picks debian, so the push
    probes again and installs debian's, as a push without kept facts would."""
    ubuntu = render_wrapper(load_profile("ubuntu")).encode()
    code, results = push(capsys, lab, trusted, lab.a.spec, "--distro", "ubuntu")
    assert code == 0 and (home / WRAPPER).read_bytes() == ubuntu
    kept = memory_file(lab.a.spec)
    kept.write_text(kept.read_text().replace("os_id=debian\n", "os_id=ubuntu\n", 1))
    # (the kept facts alone would say unchanged: the host's wrapper is the one they pick)
    code, results = push(capsys, lab, trusted, lab.a.spec)
    assert code == 0 and results[0]["status"] == "deployed", results
    assert step_names(results[0]) == ["connect", "push", "probe", "install", "init_db", "smoke"]
    assert (results[0]["distro"], results[0]["action"]) == ("debian", "replace")
    assert (home / WRAPPER).read_bytes() == DEBIAN_BYTES
    assert kept.read_text().startswith("os_id=debian\n")  # the probe's facts are kept


def test_folders_a_default_acl_opens_are_made_private(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """A default ACL on the home gives new folders what the umask keeps from others: push checks
    the folders it has just made too, and makes them private (and says so)."""
    undefined = 0xFFFFFFFF  # u::rwx g::rwx o::rwx as a default ACL (version 2, raw xattr)
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, 7, undefined) for tag in (1, 4, 0x20)
    )
    os.setxattr(home, "system.posix_acl_default", acl)
    try:
        code, results = push(capsys, lab, trusted, lab.a.spec)
    finally:
        os.removexattr(home, "system.posix_acl_default")
    assert code == 0 and results[0]["status"] == "deployed", results
    for folder in (".solverpilot", ".solverpilot/bin", ".solverpilot-server"):
        assert stat.S_IMODE((home / folder).stat().st_mode) & 0o022 == 0, folder
    said = " ".join(results[0]["warnings"])
    assert "~/.solverpilot is writable by group or others: made private" in said, said
    assert "made ~/.solverpilot-server 0700" in said, said


@pytest.mark.transports("paramiko")
def test_paramiko_and_the_server_agree_on_an_aead_cipher(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path
) -> None:
    """The paramiko transport offers AES-GCM first (the tag checked inside the cipher, not by
    paramiko's byte-by-byte MAC compare in Python): OpenSSH's sshd takes it, both ways."""
    before = lab.jump.log.read_text() if lab.jump.log.exists() else ""
    assert push(capsys, lab, trusted, lab.jump.spec)[0] == 0
    said = lab.jump.log.read_text()[len(before) :]
    ciphers = re.findall(r"kex: (?:client->server|server->client) cipher: (\S+)", said)
    assert ciphers and set(ciphers) == {"aes128-gcm@openssh.com"}, said[-2000:]

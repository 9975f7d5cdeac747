"""The openssh transport against real sshd: logins counted in the server's log, the user's
own ControlMaster, ProxyCommand, --transport auto, keyboard-interactive hosts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, error_text, payload, sp, sp_json
from sshlab import TEST_USERS, Sshd, keygen

USER = TEST_USERS[3]  # the user of the hosts a test starts itself
SP_DEPLOY = str(Path(sys.executable).parent / "sp-deploy")


@pytest.fixture(scope="module")
def counted(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """An sshd that logs every login (LogLevel INFO: "Accepted publickey for ...")."""
    server = Sshd(tmp_path_factory.mktemp("counted"), USER, log_level="INFO").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kbdint(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """An sshd that accepts keyboard-interactive (PAM) logins only, as 2FA hosts do."""
    server = Sshd(
        tmp_path_factory.mktemp("kbdint"),
        USER,
        auth_config="PasswordAuthentication no\nKbdInteractiveAuthentication yes\nUsePAM yes\n"
        "AuthenticationMethods keyboard-interactive\n",
    ).start()
    yield server
    server.stop()


def logins(server: Sshd) -> int:
    return server.log.read_text().count(f"Accepted publickey for {USER} ")


def write_config(tmp_path: Path, lab: Lab, server: Sshd, trusted: Path, extra: str = "") -> Path:
    config = tmp_path / "config"
    config.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {server.port}\n  User {USER}\n"
        f"  IdentityFile {lab.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {trusted}\n  BatchMode yes\n{extra}"
    )
    return config


@pytest.fixture
def trusted_all(trusted: Path, counted: Sshd, kbdint: Sshd) -> Path:
    with trusted.open("a") as handle:
        handle.write(counted.known_hosts_line + kbdint.known_hosts_line)
    return trusted


RELAY = "/bin/bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3'"  # a ProxyCommand


@contextlib.contextmanager
def user_master(config: Path, control: Path) -> Iterator[None]:
    """The user's own master for host "box" of ``config`` (its socket in ``control``), up
    for the block; then stopped, and ``control`` removed."""
    try:
        subprocess.run(["ssh", "-F", str(config), "-M", "-N", "-f", "box"], check=True, timeout=30)
        yield
    finally:
        subprocess.run(["ssh", "-F", str(config), "-O", "exit", "box"], check=False)
        shutil.rmtree(control, ignore_errors=True)


def leftover_masters(config: str) -> list[str]:
    """sp-deploy's ssh masters still running for the hosts of ``config``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if config in cmdline and "sp-ssh-" in cmdline:
                found.append(cmdline)
    return found


def test_one_login_for_a_whole_push_and_no_master_left(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    counted: Sshd,
    trusted_all: Path,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, lab, counted, trusted_all)
    before = logins(counted)
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", "openssh")
    assert code == 0 and results[0]["status"] == "deployed", results
    # probe, install, DB set-up and smoke run: several steps, one login
    assert logins(counted) - before == 1
    assert leftover_masters(str(config)) == []
    before = logins(counted)
    code, _, _ = sp(capsys, "status", "box", "-F", str(config), "--transport", "openssh")
    assert code == 0
    assert logins(counted) - before == 1


def test_the_users_own_master_is_reused_without_a_new_login(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    counted: Sshd,
    trusted_all: Path,
    tmp_path: Path,
) -> None:
    control = Path(tempfile.mkdtemp(prefix="cm-"))  # a socket path must be short
    config = write_config(
        tmp_path,
        lab,
        counted,
        trusted_all,
        f"  ControlMaster auto\n  ControlPath {control}/%C\n  ControlPersist 60\n",
    )
    with user_master(config, control):
        before = logins(counted)
        for argv in (["push"], ["verify"], ["status"]):
            code, out, err = sp(capsys, *argv, "box", "-F", str(config), "--transport", "auto")
            assert code == 0, (argv, out, err)
            # auto chose openssh for this host, and says why
            assert "transport openssh: the ssh config of this host uses ControlMaster" in err
        assert logins(counted) == before  # no new login, so no new 2FA prompt
        check = subprocess.run(["ssh", "-F", str(config), "-O", "check", "box"], check=False)
        assert check.returncode == 0  # the user's master is still up: not ours to close


def test_a_proxy_command_host(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    counted: Sshd,
    trusted_all: Path,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, lab, counted, trusted_all, f"  ProxyCommand {RELAY}\n")
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", "auto")
    assert code == 0 and results[0]["status"] == "deployed", results
    assert results[0]["warnings"] == [
        "transport openssh: the ssh config of this host uses ProxyCommand, which paramiko cannot do"
    ]
    code, results = sp_json(capsys, "verify", "box", "-F", str(config), "--transport", "openssh")
    assert code == 0 and results[0]["status"] == "ok" and results[0]["warnings"] == []


def test_auto_keeps_paramiko_for_a_plain_host(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    counted: Sshd,
    trusted_all: Path,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, lab, counted, trusted_all)
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", "auto")
    assert code == 0 and results[0]["status"] == "deployed"
    assert results[0]["warnings"] == []
    assert leftover_masters(str(config)) == []


def kbdint_push(server: Sshd, trusted: Path, timeout: str) -> list[str]:
    argv = [SP_DEPLOY, "push", server.spec, "--transport", "openssh", "--json"]
    argv += ["--known-hosts", str(trusted), "--timeout", timeout]
    return argv


def test_keyboard_interactive_without_a_terminal_fails_fast(
    lab: Lab, kbdint: Sshd, trusted_all: Path
) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        kbdint_push(kbdint, trusted_all, "60"),
        capture_output=True,
        text=True,
        start_new_session=True,  # no controlling terminal, as under cron or CI
        timeout=90,
        check=False,
    )
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    (result,) = payload(proc.stdout)
    assert result["error"]["kind"] == "authentication", result
    assert str(error_text(result)).startswith("authentication failed: "), result
    assert "keyboard-interactive" in str(error_text(result))
    assert took < 10  # not the 60 s deadline: nothing waited for an answer


def test_keyboard_interactive_on_a_terminal_prompts_there(
    lab: Lab, kbdint: Sshd, trusted_all: Path
) -> None:
    master, slave = os.openpty()

    def own_terminal() -> None:  # a session whose controlling terminal is the pty
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        kbdint_push(kbdint, trusted_all, "30"),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=own_terminal,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        os.set_blocking(master, False)
        while b"assword" not in seen and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                seen += os.read(master, 4096)
            time.sleep(0.05)
        assert b"assword" in seen, seen  # ssh asked on the terminal, as it would a user
    finally:
        proc.kill()
        proc.communicate()
        os.close(master)


def test_error_kinds_match_the_paramiko_transport(
    capsys: pytest.CaptureFixture[str], lab: Lab, trusted_all: Path, counted: Sshd
) -> None:
    dead = f"{USER}@127.0.0.1:1"
    kinds = {}
    for transport in ("paramiko", "openssh"):
        _, results = sp_json(
            capsys,
            "push",
            dead,
            counted.spec,
            "--transport",
            transport,
            "-i",
            str(lab.wrong_key),
            "--known-hosts",
            str(trusted_all),
        )
        kinds[transport] = [str(error_text(r)).split(":")[0] for r in results]
    assert kinds["paramiko"] == kinds["openssh"] == ["unreachable", "authentication failed"]


def test_a_certificate_login_picked_by_auto(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    trusted: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A host that trusts a user CA, and a key that only its certificate makes acceptable
    (the key itself is in no authorized_keys)."""
    keys = tmp_path_factory.mktemp("cert")
    keys.chmod(0o755)
    ca, user_key = keygen(keys / "ca"), keygen(keys / "user")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "sp-test", "-n", USER, f"{user_key}.pub"],
        check=True,
    )
    # elsewhere than beside the key, where paramiko would find it by itself
    cert = keys / "certs" / "user.cert"
    cert.parent.mkdir()
    Path(f"{user_key}-cert.pub").rename(cert)
    server = Sshd(keys / "sshd", USER, extra_config=f"TrustedUserCAKeys {ca}.pub\n").start()
    try:
        with trusted.open("a") as handle:
            handle.write(server.known_hosts_line)
        config = keys / "config"
        config.write_text(
            f"Host certbox\n  HostName 127.0.0.1\n  Port {server.port}\n  User {USER}\n"
            f"  IdentityFile {user_key}\n  CertificateFile {cert}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {trusted}\n"
        )
        args = ("certbox", "-F", str(config))
        # paramiko would log in with the key alone (or fail): it refuses, naming the keyword
        code, results = sp_json(capsys, "push", *args, "--transport", "paramiko")
        assert code == 1 and "does not implement CertificateFile" in str(error_text(results[0]))
        code, results = sp_json(capsys, "push", *args, "--transport", "auto")
        assert code == 0 and results[0]["status"] == "deployed", results
        assert "uses CertificateFile" in str(results[0]["warnings"])
    finally:
        server.stop()


def test_a_control_path_that_does_not_name_the_login_is_not_reused(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    counted: Sshd,
    trusted_all: Path,
    tmp_path: Path,
) -> None:
    control = Path(tempfile.mkdtemp(prefix="cm-"))
    # one socket for every user and port: it may be logged in as someone else
    config = write_config(
        tmp_path, lab, counted, trusted_all, f"  ControlMaster auto\n  ControlPath {control}/m\n"
    )
    with user_master(config, control):
        before = logins(counted)
        code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", "openssh")
        assert code == 0 and results[0]["status"] == "deployed"
        assert "ControlPath does not name the user and port" in str(results[0]["warnings"])
        assert logins(counted) - before == 1  # its own master, not the user's


def test_a_config_remote_command_or_local_command_changes_no_step(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    counted: Sshd,
    trusted_all: Path,
    tmp_path: Path,
) -> None:
    ran_here = tmp_path / "local-command-ran"
    config = write_config(
        tmp_path,
        lab,
        counted,
        trusted_all,
        "  RemoteCommand echo hijacked\n  StdinNull yes\n  SessionType subsystem\n"
        f"  PermitLocalCommand yes\n  LocalCommand touch {ran_here}\n",
    )
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", "openssh")
    assert code == 0 and results[0]["status"] == "deployed", results
    assert not ran_here.exists()


def test_term_ends_a_push_in_order_and_leaves_no_master(
    lab: Lab, home: Path, counted: Sshd, trusted_all: Path, tmp_path: Path
) -> None:
    """TERM (systemd, timeout) is a Ctrl-C: the host in flight ends its step, the results are
    printed, exit 130, and sp-deploy's master and its folder are gone."""
    user_home = Path(lab.users[USER].pw_dir)
    rc = user_home / ".bashrc"
    rc.write_text("sleep 2\n")  # every step takes 2 s: time to be signalled mid-push
    config = write_config(tmp_path, lab, counted, trusted_all)
    try:
        proc = subprocess.Popen(
            [SP_DEPLOY, "push", "box", "-F", str(config), "--transport", "openssh", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not leftover_masters(str(config)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftover_masters(str(config)), "the master never came up"
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        rc.unlink()
    assert proc.returncode == 130, err
    (result,) = payload(out)
    assert result["status"] in ("skipped", "deployed")
    assert leftover_masters(str(config)) == []
    assert "Traceback" not in err


def test_auto_names_its_choice_also_for_a_host_that_fails(
    capsys: pytest.CaptureFixture[str], lab: Lab, trusted: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text(  # a ProxyCommand to a port where nothing listens
        f"Host deadbox\n  HostName 127.0.0.1\n  Port 1\n  BatchMode yes\n  ProxyCommand {RELAY}\n"
    )
    code, results = sp_json(capsys, "push", "deadbox", "-F", str(config), "--transport", "auto")
    assert code == 1 and results[0]["status"] == "failed"
    assert "uses ProxyCommand" in str(results[0]["warnings"])

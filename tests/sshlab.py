"""Real OpenSSH servers on 127.0.0.1 for the deploy tests.

Each Sshd is Debian's /usr/sbin/sshd started in the foreground with its own generated host
key and config, on a free loopback port, accepting only the dedicated test user with the
generated client key. Needs root (to create the user and run sshd as a server).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# SP_TEST_USER_SUFFIX gives a second test run on the same machine users of its own
USER_SUFFIX = os.environ.get("SP_TEST_USER_SUFFIX", "")


def lab_user_name(base: str) -> str:
    """The name of the dedicated test user ``base`` for this test run."""
    return base + USER_SUFFIX


# one per simulated host, each its own home
TEST_USERS = tuple(lab_user_name(n) for n in ("sptest", "sptest2", "sptest3", "sptest4"))
SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path


def ensure_test_user(name: str, shell: str = "/bin/bash") -> pwd.struct_passwd:
    """The user ``name`` with login shell ``shell``, created when missing."""
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", shell, name], check=True)
        # '*' = no password login, but not "locked" (sshd refuses locked accounts without PAM)
        subprocess.run(["usermod", "-p", "*", name], check=True)
        return pwd.getpwnam(name)
    if user.pw_shell != shell:
        subprocess.run(["usermod", "-s", shell, name], check=True)
        user = pwd.getpwnam(name)
    return user


def authorize(user: pwd.struct_passwd, public_key: Path) -> None:
    ssh_dir = Path(user.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(public_key.read_text())
    for path in (ssh_dir, keys):
        os.chown(path, user.pw_uid, user.pw_gid)
    keys.chmod(0o600)


@dataclass
class Sshd:
    """One running sshd; ``log`` holds what it logged."""

    workdir: Path
    user: str
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    log_level: str = "ERROR"
    # keys only by default; a test may ask for keyboard-interactive (PAM) instead
    auth_config: str = "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
    process: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.workdir / "host_ed25519"

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        kind, blob = (self.workdir / "host_ed25519.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def start(self) -> Sshd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key)
        config = self.workdir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {self.workdir}/sshd.pid\nAuthorizedKeysFile .ssh/authorized_keys\n"
            f"{self.auth_config}StrictModes no\nAllowUsers {self.user}\n"
            "Subsystem sftp internal-sftp\n"
            f"AllowTcpForwarding yes\nLogLevel {self.log_level}\n{self.extra_config}"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def clean_home(user: pwd.struct_passwd) -> None:
    """Remove what a test may have left in the test user's home (keeps .ssh)."""
    home = Path(user.pw_dir)
    for name in (".solverpilot", ".solverpilot-server"):
        shutil.rmtree(home / name, ignore_errors=True)


def run_as(
    user: pwd.struct_passwd, *argv: str, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run a command as the test user, with its home and a login-like environment."""
    env = {"HOME": user.pw_dir, "USER": user.pw_name, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *argv],
        env=env,
        text=True,
        capture_output=True,
        **kwargs,
    )

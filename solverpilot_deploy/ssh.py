"""SSH connections as OpenSSH would make them: config, host keys, jumps, deadlines.

The user's OpenSSH configuration is resolved by OpenSSH itself (``ssh -G``), so Include, Match,
wildcards and defaults behave exactly as they do for ``ssh``; paramiko then makes the
connection. Host keys are checked against a known_hosts file (hashed and ``[host]:port`` entries
included); an unknown key is refused unless ``accept_new`` records it, a changed key always is.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from solverpilot_deploy.errors import (
    AuthenticationError,
    HostError,
    HostKeyError,
    HostTimeoutError,
    RemoteCommandError,
    UnreachableError,
    UsageError,
)

if TYPE_CHECKING:
    import paramiko

# paramiko logs failures (with tracebacks) that we report as one line per host instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

BANNER_RETRIES = 2
MAX_ANSWER = 64 << 20  # bytes of stdout one command may send (status of 10,000 jobs: ~4 MiB)
MAX_STDERR = 64 << 10  # the end of stderr that is kept
_KNOWN_HOSTS_LOCK = threading.Lock()
_SPEC_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class ConnectOptions:
    """What the command line says about connecting; None means "as the config says"."""

    config_file: str | None = None
    identity: str | None = None
    login: str | None = None
    port: int | None = None
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    accept_new: bool = False
    timeout: float = 60.0


@dataclass(frozen=True)
class Target:
    """One destination, fully resolved."""

    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    identities_only: bool
    proxy_jump: tuple[str, ...]


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (host may be ``[v6addr]``) into its parts."""
    match = _SPEC_RE.match(spec)
    if not match:
        raise UsageError(f"not a host: {spec!r} (use an ssh alias or [user@]hostname[:port])")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"not a port: {match['port']!r} in {spec!r}")
    return match["user"], match["host"].strip("[]"), port


def _ssh_g(
    host: str, user: str | None, port: int | None, config: str | None
) -> dict[str, list[str]]:
    ssh = shutil.which("ssh")
    if ssh is None:
        raise UsageError("the OpenSSH client (ssh) is needed to read the ssh config; install it")
    argv = [ssh, "-G"]
    if config:
        argv += ["-F", config]
    if user:
        argv += ["-l", user]
    if port:
        argv += ["-p", str(port)]
    proc = subprocess.run(
        [*argv, "--", host], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1:] or ["ssh -G failed"]
        raise UsageError(f"cannot read the ssh config for {host}: {reason[0]}")
    values: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), []).append(value)
    return values


def resolve(spec: str, options: ConnectOptions) -> Target:
    """Resolve ``spec`` through the ssh config; -l/-p/-i (``options``) override it."""
    user, host, port = parse_spec(spec)
    values = _ssh_g(host, options.login or user, options.port or port, options.config_file)

    def one(key: str, default: str = "") -> str:
        return values.get(key, [default])[0]

    jump = one("proxyjump", "none")
    if one("proxycommand", "none") != "none":
        raise UsageError(f"{spec}: ProxyCommand is not supported; use ProxyJump")
    hostname, port_text, remote_user = one("hostname", host), one("port", "22"), one("user")
    tokens = {
        "h": hostname,
        "n": host,
        "p": port_text,
        "r": remote_user,
        "j": "" if jump == "none" else jump,
    }
    identity_files = tuple(expand_path_tokens(p, tokens) for p in values.get("identityfile", []))
    if options.identity:
        identity_files = (os.path.expanduser(options.identity),)
        check_identity(identity_files[0])
    return Target(
        hostname=hostname,
        port=int(port_text),
        user=remote_user,
        identity_files=identity_files,
        identities_only=one("identitiesonly", "no") == "yes" or bool(options.identity),
        proxy_jump=() if jump == "none" else tuple(j.strip() for j in jump.split(",")),
    )


def expand_path_tokens(path: str, remote: dict[str, str]) -> str:
    """An IdentityFile path with OpenSSH's %-tokens and ``~`` expanded, as ssh does it.

    ``remote`` gives h (HostName), n (the host as given), p (port), r (remote user) and j
    (ProxyJump); the local ones (d, u, i, l, L) are this machine's; %% is a percent sign.
    """
    import getpass
    import socket

    local = {
        "d": os.path.expanduser("~"),
        "u": getpass.getuser(),
        "i": str(os.getuid()),
        "l": socket.getfqdn(),
        "L": socket.gethostname().split(".")[0],
        "%": "%",
    }
    values = {**local, **remote}

    def token(match: re.Match[str]) -> str:
        key = match[1]
        if key not in values:
            raise UsageError(f"IdentityFile {path}: unknown token %{key}")
        return values[key]

    return os.path.expanduser(re.sub(r"%(.)", token, path))


def check_identity(path: str) -> None:
    """``-i KEY`` must name a private key that exists: say so plainly when it does not."""
    if not os.path.exists(path):
        raise AuthenticationError(f"no such key {path}")
    if os.path.isdir(path):
        raise AuthenticationError(f"{path} is a folder, not a key")
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise AuthenticationError(f"cannot read key {path}: {exc.strerror}") from exc
    if re.match(rb"^(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ AAAA", head):
        raise AuthenticationError(f"{path} is a public key; give its private key to -i")


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (time.monotonic), never less than 0.1."""
    return max(deadline - time.monotonic(), 0.1)


def known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _host_key_policy(options: ConnectOptions) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(
            self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
        ) -> None:
            if not options.accept_new:
                raise HostKeyError(
                    f"unknown host key for {hostname} ({_fingerprint(key)}); check it, then "
                    "re-run with --accept-new to trust and record it"
                )
            record_host_key(options.known_hosts, hostname, key)

    return Policy()


def record_host_key(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append ``name key`` to a known_hosts file, as OpenSSH's accept-new does."""
    with _KNOWN_HOSTS_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = path.read_text() if path.exists() else ""
        with path.open("a") as handle:
            if text and not text.endswith("\n"):
                handle.write("\n")
            handle.write(f"{name} {key.get_name()} {key.get_base64()}\n")


class Session:
    """One live connection (and the jump connections under it); ``abort`` ends them all."""

    def __init__(self) -> None:
        self.clients: list[paramiko.SSHClient] = []
        self.aborted = threading.Event()

    @property
    def client(self) -> paramiko.SSHClient:
        return self.clients[-1]

    def abort(self) -> None:
        self.aborted.set()
        self.close()

    def close(self) -> None:
        for client in reversed(self.clients):
            client.close()

    def run(self, command: str, stdin: bytes = b"", timeout: float = 60.0) -> tuple[int, str, str]:
        """Run ``command`` on the host; returns (exit status, stdout, stderr)."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise UnreachableError("connection lost")
        channel = transport.open_session(timeout=timeout)
        end = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            channel.exec_command(command)
            try:
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
            except OSError:
                pass  # the command ended before it read all of stdin: its answer tells
            # sshd may send the exit status before the last of the output: read until EOF
            while not (channel.exit_status_ready() and channel.eof_received) and not (
                channel.closed
            ):
                if time.monotonic() > end:
                    error = HostTimeoutError(
                        f"no answer to a command within {timeout:.0f} s (is a start-up file "
                        "of the login shell stuck?)"
                    )
                    error.partial = out.decode("utf-8", "replace")
                    raise error
                if channel.recv_ready():
                    out += channel.recv(65536)
                    if len(out) > MAX_ANSWER:
                        raise RemoteCommandError(
                            f"the host sent more than {MAX_ANSWER >> 20} MiB for one command "
                            "(does a start-up file of the login shell print without end?)"
                        )
                elif channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    del err[:-MAX_STDERR]  # only its end is ever shown
                else:
                    time.sleep(0.002)
            while channel.recv_ready():  # what came with the end
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            status = channel.recv_exit_status()
        finally:
            channel.close()
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _connect_one(
    session: Session,
    target: Target,
    options: ConnectOptions,
    deadline: float,
    sock: paramiko.Channel | None,
) -> None:
    import paramiko

    client = paramiko.SSHClient()
    if options.known_hosts.exists():
        try:
            client.load_host_keys(str(options.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read {options.known_hosts}: {exc}") from exc
    client.set_missing_host_key_policy(_host_key_policy(options))
    keys = [p for p in target.identity_files if os.path.exists(p)]
    name = known_hosts_name(target.hostname, target.port)

    for attempt in range(BANNER_RETRIES + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            raise HostTimeoutError(f"no connection to {name} within the deadline")
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                key_filename=keys or None,
                allow_agent=not target.identities_only,
                look_for_keys=False,
                timeout=left,
                banner_timeout=left,
                auth_timeout=left,
                channel_timeout=left,
                sock=sock,
            )
            break
        except Exception as exc:
            client.close()
            if _is_banner_error(exc) and attempt < BANNER_RETRIES:
                time.sleep(min(0.5 * (attempt + 1), max(deadline - time.monotonic(), 0)))
                continue
            raise _connect_error(exc, target, options, deadline) from exc
    session.clients.append(client)


def _is_banner_error(exc: Exception) -> bool:
    import paramiko

    return isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower()


def _connect_error(
    exc: Exception, target: Target, options: ConnectOptions, deadline: float
) -> Exception:
    """The one-line HostError that names what went wrong with a connection attempt."""
    import paramiko

    name = known_hosts_name(target.hostname, target.port)
    if isinstance(exc, HostError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"host key for {name} has CHANGED (now {_fingerprint(exc.key)}); refusing to "
            f"connect: if the change is expected, remove the old entry from "
            f"{options.known_hosts}"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return AuthenticationError(f"{target.user}@{name}: {exc}")
    if isinstance(exc, TimeoutError):
        return HostTimeoutError(f"no answer from {name}")
    if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
        listed = ", ".join(target.identity_files) or "none configured"
        return AuthenticationError(
            f"{target.user}@{name}: no key to offer: no such key ({listed}) and no agent"
        )
    if isinstance(exc, paramiko.SSHException):
        if time.monotonic() >= deadline:
            return HostTimeoutError(f"no SSH answer from {name}: {exc}")
        return UnreachableError(f"{name}: {exc}")
    if isinstance(exc, OSError):
        return UnreachableError(f"{name}: {exc.strerror or exc}")
    return exc


@contextmanager
def connect(spec: str, options: ConnectOptions, deadline: float) -> Iterator[Session]:
    """A Session to ``spec``, through its ProxyJump hosts; closed on exit."""
    session = Session()
    try:
        target = resolve(spec, options)
        jump_options = _jump_options(options)
        chain = [*(resolve(jump, jump_options) for jump in target.proxy_jump), target]
        sock = None
        for index, hop in enumerate(chain):
            _connect_one(session, hop, options, deadline, sock)
            if index + 1 < len(chain):
                sock = _open_forward(session, chain[index + 1], deadline)
        yield session
    finally:
        session.close()


def _jump_options(options: ConnectOptions) -> ConnectOptions:
    """Jump hosts take their identity from the config, not from -i/-l/-p."""
    return dataclasses.replace(options, identity=None, login=None, port=None)


def _open_forward(session: Session, target: Target, deadline: float) -> paramiko.Channel:
    transport = session.client.get_transport()
    if transport is None:
        raise UnreachableError("jump host connection lost")
    try:
        return transport.open_channel(
            "direct-tcpip",
            (target.hostname, target.port),
            ("127.0.0.1", 0),
            timeout=max(deadline - time.monotonic(), 0.1),
        )
    except Exception as exc:
        raise UnreachableError(
            f"jump host cannot reach {known_hosts_name(target.hostname, target.port)}: {exc}"
        ) from exc

"""The paramiko transport: the connection is made in this process.

Host keys are checked against a known_hosts file (hashed and ``[host]:port`` entries
included); an unknown key is refused unless ``accept_new`` records it, a changed key always is.
ProxyJump hosts are connected in turn, each through a forward of the one before.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from solverpilot_deploy.errors import (
    AuthenticationError,
    HostError,
    HostKeyError,
    HostTimeoutError,
    UnreachableError,
)
from solverpilot_deploy.ssh import (
    MAX_STDERR,
    ConnectOptions,
    SshConfig,
    Target,
    known_hosts_name,
    resolve,
)
from solverpilot_deploy.transport import Answer, Session, Started

if TYPE_CHECKING:
    import paramiko

# paramiko logs failures (with tracebacks) that we report as one line per host instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

BANNER_RETRIES = 2
_KNOWN_HOSTS_LOCK = threading.Lock()


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _host_key_policy(options: ConnectOptions, known_hosts: Path) -> paramiko.MissingHostKeyPolicy:
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
            record_host_key(known_hosts, hostname, key)

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


class ParamikoSession(Session):
    """One live connection (and the jump connections under it); ``abort`` ends them all."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[paramiko.SSHClient] = []

    @property
    def client(self) -> paramiko.SSHClient:
        return self.clients[-1]

    def close(self) -> None:
        for client in reversed(self.clients):
            client.close()

    def run(
        self, command: str, stdin: bytes = b"", timeout: float = 60.0, framed: bytes = b""
    ) -> tuple[int, str, str]:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise UnreachableError("connection lost")
        channel = transport.open_session(timeout=timeout)
        end = time.monotonic() + timeout
        answer, err = Answer(framed), bytearray()
        out = answer.data
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
                    answer.add(channel.recv(65536))
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
    session: ParamikoSession,
    target: Target,
    options: ConnectOptions,
    deadline: float,
    sock: paramiko.Channel | None,
) -> None:
    import paramiko

    client = paramiko.SSHClient()
    if target.known_hosts.exists():
        try:
            client.load_host_keys(str(target.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read {target.known_hosts}: {exc}") from exc
    client.set_missing_host_key_policy(_host_key_policy(options, target.known_hosts))
    keys = [p for p in target.identity_files if os.path.exists(p)]
    name = known_hosts_name(target.hostname, target.port)

    session.clients.append(client)  # from now on, abort() closes it, also while it connects
    for attempt in range(BANNER_RETRIES + 1):
        if session.aborted.is_set():
            raise UnreachableError("connection aborted")
        left = deadline - time.monotonic()
        if left <= 0:
            raise HostTimeoutError(f"no connection to {name} within the deadline")
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                # a list, as paramiko takes it (types-paramiko, which pyinfra pulls in, says str)
                key_filename=cast(Any, keys or None),
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
            f"{target.known_hosts}"
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
def connect_paramiko(
    spec: str,
    options: ConnectOptions,
    deadline: float,
    values: SshConfig | None,
    started: Started,
) -> Iterator[Session]:
    """A Session to ``spec``, through its ProxyJump hosts; closed on exit."""
    session = ParamikoSession()
    started(session)
    try:
        target = resolve(spec, options, values)
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


def _open_forward(session: ParamikoSession, target: Target, deadline: float) -> paramiko.Channel:
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

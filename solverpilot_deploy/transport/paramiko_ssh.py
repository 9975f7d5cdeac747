"""The paramiko transport: the connection is made in this process.

Host keys are checked against a known_hosts file (hashed and ``[host]:port`` entries
included); an unknown key is refused unless ``accept_new`` records it, a changed key always is.
ProxyJump hosts are connected in turn, each through a forward of the one before.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from solverpilot_deploy.errors import (
    AuthenticationError,
    HostError,
    HostKeyError,
    HostTimeoutError,
    OutputError,
    UnreachableError,
)
from solverpilot_deploy.localfiles import append_line
from solverpilot_deploy.ssh import (
    MAX_STDERR,
    ConnectOptions,
    SshConfig,
    Target,
    check_known_hosts,
    key_permissions_ok,
    known_host_entries,
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


class _HostKeys:
    """What the known_hosts files say about one host, matched as ssh matches them: the keys
    recorded for its name (HostKeyAlias, else [host]:port; hashed, wildcard and negated
    patterns), the keys a @revoked line names, and the keys recorded for the host without
    its port (see Target.port_less_name)."""

    def __init__(self, target: Target) -> None:
        check_known_hosts(target.known_hosts_files)
        entries = known_host_entries(target.known_hosts_files, target.host_key_name)
        self.revoked = {e.blob for e in entries if e.marker == "@revoked"}
        self.known = [(e.kind, e.blob) for e in entries if not e.marker]
        port_less = []
        if target.port_less_name:
            found = known_host_entries(target.known_hosts_files, target.port_less_name)
            port_less = [(e.kind, e.blob) for e in found if not e.marker]
        self.port_less = port_less

    def trusts(self, key: paramiko.PKey) -> bool:
        """ssh's HOST_OK: the key is one of those recorded for the host (or, when none is,
        one recorded for it without its port), and not revoked."""
        mine = (key.get_name(), key.get_base64())
        if mine[1] in self.revoked:
            return False
        return mine in self.known or (not self.known and mine in self.port_less)

    def load_into(self, found: paramiko.HostKeys, sock_name: str) -> None:
        """The first recorded key of each type, under ``sock_name`` (the name paramiko looks
        up): paramiko then prefers those types and compares the key itself."""
        import paramiko

        for kind, blob in self.known:
            if blob in self.revoked:
                continue
            try:
                key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
            except Exception:  # a key type paramiko cannot read, a damaged line: ssh skips it
                continue
            known = found.lookup(sock_name)
            if known is None or kind not in known:
                found.add(sock_name, kind, key)


def _revoked_error(target: Target, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"host key for {target.host_key_name} ({_fingerprint(key)}) is REVOKED in known_hosts; "
        "refusing to connect"
    )


def _unknown_error(target: Target, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"unknown host key for {target.host_key_name} ({_fingerprint(key)}); "
        "check it, then re-run with --accept-new to trust and record it"
    )


def _changed_error(target: Target, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"host key for {target.host_key_name} has CHANGED (now {_fingerprint(key)}); "
        "refusing to connect: if the change is expected, remove the old entry from "
        f"{' or '.join(str(p) for p in target.known_hosts_files if p.exists())}"
    )


def _new_key(options: ConnectOptions, target: Target, known: _HostKeys, key: paramiko.PKey) -> None:
    """A key paramiko found no recorded key to compare with: trusted when ssh would (its
    port-less record), CHANGED when another key is recorded (of a type paramiko cannot
    read), recorded with --accept-new, else refused as unknown."""
    if key.get_base64() in known.revoked:
        raise _revoked_error(target, key)
    if known.trusts(key):
        return
    if known.known:
        raise _changed_error(target, key)
    if not options.accept_new:
        raise _unknown_error(target, key)
    record_host_key(target, key)


def _host_key_policy(
    options: ConnectOptions, target: Target, known: _HostKeys
) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(
            self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
        ) -> None:
            _new_key(options, target, known, key)

    return Policy()


def record_host_key(target: Target, key: paramiko.PKey) -> None:
    """Append the host's key to the first known_hosts file, as OpenSSH's accept-new does
    (its name hashed under HashKnownHosts); a link or fifo planted there is refused."""
    import paramiko

    name = target.host_key_name
    if target.hash_known_hosts:
        name = paramiko.HostKeys.hash_host(name)
    with _KNOWN_HOSTS_LOCK:
        try:
            append_line(target.known_hosts, f"{name} {key.get_name()} {key.get_base64()}\n")
        except OutputError as exc:
            raise HostKeyError(f"cannot record the host key: {exc}") from exc


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
        self,
        command: str,
        stdin: bytes = b"",
        timeout: float = 60.0,
        framed: bytes = b"",
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[int, str, str]:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise UnreachableError("connection lost")
        channel = transport.open_session(timeout=timeout)
        answer, err = Answer(framed, timeout, on_line), bytearray()
        out = answer.data
        # woken by the channel itself (its fileno: a pipe paramiko sets when output or EOF
        # comes), not by polling: many hosts at once would spend the CPU on wake-ups
        ready = select.poll()
        ready.register(channel.fileno(), select.POLLIN)
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
                if answer.left() < 0:
                    raise answer.timed_out()
                if channel.recv_ready():
                    answer.add(channel.recv(65536))
                elif channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    del err[:-MAX_STDERR]  # only its end is ever shown
                elif channel.eof_received:  # (the pipe stays set): the exit status is due
                    channel.status_event.wait(min(max(answer.left(), 0.0), 0.05))
                else:  # a bound on the wait: the clock, an abort (the channel then closes)
                    ready.poll(min(max(answer.left(), 0.0), 0.5) * 1000)
            while channel.recv_ready():  # what came with the end
                answer.add(channel.recv(65536))
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
    reopen: Callable[[], paramiko.Channel] | None = None,
) -> None:
    """Connect to ``target`` (through ``sock``, a jump host's forward, which ``reopen``
    opens again for a second attempt)."""
    import paramiko

    client = paramiko.SSHClient()
    name = known_hosts_name(target.hostname, target.port)  # what paramiko looks up
    known = _HostKeys(target)
    known.load_into(client.get_host_keys(), name)
    client.set_missing_host_key_policy(_host_key_policy(options, target, known))
    decided = False  # a key paramiko called changed was then found trusted: once
    # as ssh: a key file others can read is skipped (-i KEY: check_identity said so)
    keys = [p for p in target.identity_files if os.path.exists(p) and key_permissions_ok(p)]
    if not target.pubkey_authentication:
        keys = []
    disabled = _disabled_algorithms(target)

    session.clients.append(client)  # from now on, abort() closes it, also while it connects
    banner_retries = 0
    while True:
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
                allow_agent=not target.identities_only and target.pubkey_authentication,
                disabled_algorithms=disabled,
                look_for_keys=False,
                timeout=left,
                banner_timeout=left,
                auth_timeout=left,
                channel_timeout=left,
                sock=sock,
                transport_factory=_transport,
            )
            break
        except Exception as exc:
            client.close()
            if _is_banner_error(exc) and banner_retries < BANNER_RETRIES:
                banner_retries += 1
                time.sleep(min(0.5 * banner_retries, max(deadline - time.monotonic(), 0)))
                sock = reopen() if reopen is not None else None
                continue
            if isinstance(exc, paramiko.BadHostKeyException) and not decided:
                # paramiko compares with the first recorded key of the type only; ssh
                # trusts any recorded key: if it is one, connect again with it (a server
                # that changes its key meanwhile is refused then)
                if exc.key.get_base64() in known.revoked:
                    raise _revoked_error(target, exc.key) from exc
                if not known.trusts(exc.key):  # any other key recorded: ssh's HOST_CHANGED
                    raise _connect_error(exc, target, options, deadline) from exc
                client.get_host_keys().add(name, exc.key.get_name(), exc.key)
                decided = True
                sock = reopen() if reopen is not None else None
                continue
            raise _connect_error(exc, target, options, deadline) from exc
    # a step writes its command, its script and its end one after the other: without
    # TCP_NODELAY the last small write waits for the server's delayed ACK (40 ms a step)
    transport = client.get_transport()
    if transport is not None and isinstance(transport.sock, socket.socket):
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _transport(*args: Any, **kwargs: Any) -> paramiko.Transport:
    """paramiko's Transport, offering its AEAD ciphers (AES-GCM, paramiko 3.3+) first, as
    OpenSSH offers chacha20-poly1305 first: the message's tag is checked inside the cipher,
    not by paramiko's MAC, which compares it byte by byte in Python (a tenth of the client's
    time on a push to 30 hosts). A server without them gets the others, in paramiko's order."""
    import paramiko

    transport = paramiko.Transport(*args, **kwargs)
    options = transport.get_security_options()
    aead = [name for name in options.ciphers if name.endswith("-gcm@openssh.com")]
    options.ciphers = (*aead, *(name for name in options.ciphers if name not in aead))
    return transport


def _disabled_algorithms(target: Target) -> dict[str, list[str]]:
    """The config's HostKeyAlgorithms (as ssh -G resolved it), as the paramiko host key
    algorithms it leaves out."""
    import paramiko

    disabled: dict[str, list[str]] = {}
    # (a private attribute: types-paramiko, which the bench extra brings, does not list it)
    offered: tuple[str, ...] = vars(paramiko.Transport)["_preferred_keys"]
    if target.host_key_algorithms:
        disabled["keys"] = [a for a in offered if a not in target.host_key_algorithms]
    return disabled


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
        return _changed_error(target, exc.key)
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
    if isinstance(exc, UnicodeError):  # (the resolver's: a label over 63 characters, say)
        return UnreachableError(f"{name}: cannot resolve {target.hostname!r}: {exc}")
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
        reopen: Callable[[], paramiko.Channel] | None = None
        for index, hop in enumerate(chain):
            _connect_one(session, hop, options, deadline, sock, reopen)
            if index + 1 < len(chain):
                reopen = functools.partial(
                    _open_forward, session.client, chain[index + 1], deadline
                )
                sock = reopen()
        yield session
    finally:
        session.close()


def _jump_options(options: ConnectOptions) -> ConnectOptions:
    """Jump hosts take their identity from the config, not from -i/-l/-p."""
    return dataclasses.replace(options, identity=None, login=None, port=None)


def _open_forward(client: paramiko.SSHClient, target: Target, deadline: float) -> paramiko.Channel:
    transport = client.get_transport()
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

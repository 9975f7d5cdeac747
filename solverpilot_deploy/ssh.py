"""The ssh config as OpenSSH reads it, and what the command line adds to it.

The user's OpenSSH configuration is resolved by OpenSSH itself (``ssh -G``), so Include, Match,
wildcards and defaults behave exactly as they do for ``ssh``. The transports (``transport/``)
connect with what this module resolves.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from solverpilot_deploy.errors import AuthenticationError, UsageError

MAX_ANSWER = 64 << 20  # bytes of stdout besides the answer's lines (transport.Answer)
MAX_STDERR = 64 << 10  # the end of stderr that is kept
TRANSPORTS = ("paramiko", "openssh", "auto")
_SPEC_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")

SshConfig = dict[str, list[str]]  # ssh -G: each keyword (lower case) with its values


@dataclass(frozen=True)
class ConnectOptions:
    """What the command line says about connecting; None means "as the config says"."""

    config_file: str | None = None
    identity: str | None = None
    login: str | None = None
    port: int | None = None
    known_hosts: Path | None = None  # None: the config's UserKnownHostsFile
    accept_new: bool = False
    timeout: float = 60.0
    transport: str = "paramiko"


@dataclass(frozen=True)
class Target:
    """One destination, fully resolved."""

    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    identities_only: bool
    proxy_jump: tuple[str, ...]
    known_hosts: Path


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (host may be ``[v6addr]``) into its parts."""
    match = _SPEC_RE.fullmatch(spec)
    if not match or match["host"].startswith("-") or (match["user"] or "").startswith("-"):
        raise UsageError(f"not a host: {spec!r} (use an ssh alias or [user@]hostname[:port])")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"not a port: {match['port']!r} in {spec!r}")
    return match["user"], match["host"].strip("[]"), port


def _ssh_g(host: str, user: str | None, port: int | None, config: str | None) -> SshConfig:
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
    values: SshConfig = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), []).append(value)
    return values


def ssh_config(spec: str, options: ConnectOptions) -> SshConfig:
    """What ``ssh -G`` says for ``spec`` with -F/-l/-p of ``options``."""
    user, host, port = parse_spec(spec)
    return _ssh_g(host, options.login or user, options.port or port, options.config_file)


def paramiko_cannot(values: SshConfig) -> list[str]:
    """What the resolved config asks for that only OpenSSH can do (empty: paramiko can)."""
    first = {key: found[0] for key, found in values.items()}
    reasons = []
    if first.get("proxycommand", "none") != "none":
        reasons.append("ProxyCommand")
    if first.get("controlmaster", "false") != "false":
        reasons.append("ControlMaster")
    if "certificatefile" in values:  # paramiko finds only KEY-cert.pub, beside its key
        reasons.append("CertificateFile")
    keys = [os.path.expanduser(path) for path in values.get("identityfile", [])]
    if any(_is_sk_key(key) for key in keys):
        reasons.append("a FIDO (sk-) key")
    if first.get("gssapiauthentication") == "yes" and _kerberos_ticket():
        reasons.append("GSSAPI (a Kerberos ticket is present)")
    return reasons


def _is_sk_key(path: str) -> bool:
    """A FIDO key that exists (its public half says sk-...; ssh lists id_*_sk by default)."""
    try:
        with open(f"{path}.pub", "rb") as handle:
            return handle.read(3) == b"sk-" and os.path.exists(path)
    except OSError:
        return False


def _kerberos_ticket() -> bool:
    cache = os.environ.get("KRB5CCNAME", f"FILE:/tmp/krb5cc_{os.getuid()}")
    kind, _, where = cache.rpartition(":")
    return kind not in ("", "FILE") or os.path.exists(where)


def resolve(spec: str, options: ConnectOptions, values: SshConfig | None = None) -> Target:
    """Resolve ``spec`` through the ssh config; -l/-p/-i (``options``) override it."""
    _, host, _ = parse_spec(spec)
    if values is None:
        values = ssh_config(spec, options)

    def one(key: str, default: str = "") -> str:
        return values.get(key, [default])[0]

    jump = one("proxyjump", "none")
    if one("proxycommand", "none") != "none":
        raise UsageError(
            f"{spec}: the paramiko transport cannot use ProxyCommand; use --transport openssh "
            "(or auto), or ProxyJump"
        )
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
        known_hosts=options.known_hosts
        or Path(os.path.expanduser(one("userknownhostsfile", "~/.ssh/known_hosts").split()[0])),
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

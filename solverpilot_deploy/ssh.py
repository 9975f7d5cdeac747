"""The ssh config as OpenSSH reads it, and what the command line adds to it.

The user's OpenSSH configuration is resolved by OpenSSH itself (``ssh -G``), so Include, Match,
wildcards and defaults behave exactly as they do for ``ssh``. The transports (``transport/``)
connect with what this module resolves.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hmac
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from solverpilot_deploy.errors import AuthenticationError, HostKeyError, OutputError, UsageError
from solverpilot_deploy.localfiles import read_start

MAX_ANSWER = 64 << 20  # bytes of stdout besides the answer's lines (transport.Answer)
MAX_STDERR = 64 << 10  # the end of stderr that is kept
TRANSPORTS = ("paramiko", "openssh", "auto")
MAX_KNOWN_HOSTS = 64 << 20  # a known_hosts file larger than this is refused (/dev/zero ...)
SSH_G_TIMEOUT = 10  # seconds ssh -G may take to read the ssh config
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
    known_hosts: Path  # where --accept-new records a key
    known_hosts_files: tuple[Path, ...] = ()  # every file a host key is checked against
    host_key_name: str = ""  # the name it is looked up (and recorded) under
    # on a port other than 22 without HostKeyAlias, ssh also trusts a key recorded for the
    # host without its port (never as "changed", only as a match): that name, else ""
    port_less_name: str = ""
    host_key_algorithms: tuple[str, ...] = ()  # HostKeyAlgorithms (empty: paramiko's own)
    pubkey_authentication: bool = True
    hash_known_hosts: bool = False  # HashKnownHosts: record the name hashed


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (host may be ``[v6addr]``; also as ``ssh://...``, the form
    ProxyJump may use) into its parts."""
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://") :].rstrip("/")
    match = _SPEC_RE.fullmatch(spec)
    if not match or match["host"].startswith("-") or (match["user"] or "").startswith("-"):
        raise UsageError(f"not a host: {spec!r} (use an ssh alias or [user@]hostname[:port])")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"not a port: {match['port']!r} in {spec!r}")
    return match["user"], match["host"].strip("[]"), port


def _ssh_g(
    host: str, user: str | None, port: int | None, config: str | None, extra: tuple[str, ...] = ()
) -> SshConfig:
    ssh = shutil.which("ssh")
    if ssh is None:
        raise UsageError("the OpenSSH client (ssh) is needed to read the ssh config; install it")
    argv = [ssh, "-G"]
    if config:
        with contextlib.suppress(OSError):  # (ssh would wait for ever on a fifo no one writes)
            mode = os.stat(config).st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise UsageError(f"cannot read the ssh config {config}: not a regular file")
        argv += ["-F", config]
    if user:
        argv += ["-l", user]
    if port:
        argv += ["-p", str(port)]
    argv += extra
    try:  # (ssh waits for ever on a config that is a fifo no one writes)
        proc = subprocess.run(
            [*argv, "--", host], capture_output=True, text=True, check=False,
            stdin=subprocess.DEVNULL, timeout=SSH_G_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise UsageError(
            f"cannot read the ssh config for {host}: ssh -G gave no answer in {SSH_G_TIMEOUT} s"
        ) from exc
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1:] or ["ssh -G failed"]
        raise UsageError(f"cannot read the ssh config for {host}: {reason[0]}")
    values: SshConfig = {}
    for line in proc.stdout.split("\n"):  # ssh's own line ends only: \x1c, \f are no line ends
        if not line:
            continue
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), []).append(value)
    return values


def ssh_config(spec: str, options: ConnectOptions) -> SshConfig:
    """What ``ssh -G`` says for ``spec`` with -F/-l/-p of ``options``."""
    user, host, port = parse_spec(spec)
    return _ssh_g(host, options.login or user, options.port or port, options.config_file)


# Keywords that change which key, account or host key ssh uses and that paramiko does not
# implement: with one of them, auto picks openssh and paramiko refuses (naming the keyword).
# (HostKeyAlias, UserKnownHostsFile, GlobalKnownHostsFile, HashKnownHosts, IdentityFile's
# tokens, HostKeyAlgorithms and PubkeyAuthentication are implemented; KnownHostsCommand,
# CheckHostIP, UpdateHostKeys, VerifyHostKeyDNS and StrictHostKeyChecking are overridden for
# both transports: see host_key_files. PubkeyAcceptedAlgorithms: see paramiko_refuses.)
_SET = "set"  # the keyword is in use when it is present at all (and not "none")
_DEFAULT = "default"  # ... when its value differs from ssh's own default
_KEY_KEYWORDS = {
    "proxycommand": ("ProxyCommand", _SET),
    "certificatefile": ("CertificateFile", _SET),
    "identityagent": ("IdentityAgent", _SET),
    "pkcs11provider": ("PKCS11Provider", _SET),
    "revokedhostkeys": ("RevokedHostKeys", _SET),
    "hostbasedauthentication": ("HostbasedAuthentication", _DEFAULT),
}


@functools.lru_cache(maxsize=1)
def _ssh_defaults() -> SshConfig:
    """What ``ssh -G`` says with no config at all: ssh's own defaults."""
    return _ssh_g("sp-deploy-defaults.invalid", None, None, "/dev/null")


# the key algorithms paramiko signs with (paramiko 3+): a PubkeyAcceptedAlgorithms that leaves
# one out would make ssh skip keys paramiko would offer
_PARAMIKO_PUBKEYS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)


def paramiko_refuses(values: SshConfig) -> list[str]:
    """The keywords of the resolved config that change which key, account or host key ssh
    uses and that paramiko does not implement (empty: paramiko connects as ssh would)."""
    found = []
    for key in ("pubkeyacceptedalgorithms", "pubkeyacceptedkeytypes"):
        accepted = ",".join(values.get(key, [])).split(",")
        if key in values and any(a not in accepted for a in _PARAMIKO_PUBKEYS):
            found.append("PubkeyAcceptedAlgorithms")
            break
    # paramiko authenticates with keys alone: a config that has ssh try no key logs in as ssh
    # would not (or is denied where ssh would not be)
    preferred = ",".join(values.get("preferredauthentications", [])).split(",")
    if "preferredauthentications" in values and "publickey" not in preferred:
        found.append("PreferredAuthentications (without publickey)")
    for key, (name, rule) in _KEY_KEYWORDS.items():
        value = values.get(key)
        if value is None:
            continue
        if rule == _SET:
            if key == "identityagent" and value[0] in ("none", "SSH_AUTH_SOCK"):
                continue  # no agent / the usual one: paramiko does the same
            if key == "identityagent" and value[0] == os.environ.get("SSH_AUTH_SOCK"):
                continue
            if value[0] != "none":
                found.append(name)
        elif value != _ssh_defaults().get(key, value):
            found.append(name)
    return found


def paramiko_cannot(values: SshConfig) -> list[str]:
    """What the resolved config asks for that only OpenSSH can do (empty: paramiko can)."""
    first = {key: found[0] for key, found in values.items()}
    reasons = paramiko_refuses(values)
    if first.get("controlmaster", "false") != "false":
        reasons.append("ControlMaster")
    keys = [os.path.expanduser(path) for path in values.get("identityfile", [])]
    if any(_is_sk_key(key) for key in keys):
        reasons.append("a FIDO (sk-) key")
    if first.get("gssapiauthentication") == "yes" and _kerberos_ticket():
        reasons.append("GSSAPI (a Kerberos ticket is present)")
    return reasons


def _is_sk_key(path: str) -> bool:
    """A FIDO key that exists (its public half says sk-...; ssh lists id_*_sk by default)."""
    try:
        return read_start(f"{path}.pub", 3) == b"sk-" and os.path.exists(path)
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
    refused = paramiko_refuses(values)
    if "ProxyCommand" in refused:
        raise UsageError(
            f"{spec}: the paramiko transport cannot use ProxyCommand; use --transport openssh "
            "(or auto), or ProxyJump"
        )
    if refused:
        raise UsageError(
            f"{spec}: the paramiko transport does not implement {', '.join(refused)} (in this "
            "host's ssh config), which changes the key, account or host key ssh would use; use "
            "--transport openssh (or auto)"
        )
    hostname, port_text, remote_user = one("hostname", host), one("port", "22"), one("user")
    alias = one("hostkeyalias", "none")
    tokens = {
        "h": hostname,
        "n": host,
        "p": port_text,
        "r": remote_user,
        "j": "" if jump == "none" else jump,
        "k": host if alias == "none" else alias,
    }
    if options.identity:  # -i: that key alone (the config's are not read)
        identity_files: tuple[str, ...] = (os.path.expanduser(options.identity),)
        check_identity(identity_files[0])
    else:
        identity_files = tuple(values.get("identityfile", []))
        if any("%C" in path for path in identity_files):
            tokens["C"] = _connection_hash(spec, options)
        identity_files = tuple(expand_path_tokens(p, tokens) for p in identity_files)
    user_files, global_files = host_key_files(values, options)
    authority = paramiko_cannot_check(spec, values, options)
    if authority:
        raise UsageError(
            f"{spec}: the paramiko transport does not implement {authority[0]}, which ssh "
            "checks this host's key against; use --transport openssh (or auto)"
        )
    return Target(
        hostname=hostname,
        port=int(port_text),
        user=remote_user,
        identity_files=identity_files,
        identities_only=one("identitiesonly", "no") == "yes"
        or one("identityagent", "") == "none"
        or bool(options.identity),
        proxy_jump=() if jump == "none" else tuple(j.strip() for j in jump.split(",")),
        known_hosts=user_files[0],
        known_hosts_files=user_files + global_files,
        host_key_name=host_key_name(spec, values),
        port_less_name=hostname if alias == "none" and int(port_text) != 22 else "",
        host_key_algorithms=tuple(filter(None, one("hostkeyalgorithms").split(","))),
        pubkey_authentication=one("pubkeyauthentication", "yes") not in ("no", "false"),
        hash_known_hosts=one("hashknownhosts", "no") == "yes",
    )


def _connection_hash(spec: str, options: ConnectOptions) -> str:
    """ssh's %C for ``spec`` (a hash whose inputs vary with the ssh version): ssh says it."""
    user, host, port = parse_spec(spec)
    config = options.config_file
    login, port = options.login or user, options.port or port
    said = _ssh_g(host, login, port, config, ("-o", "ControlPath=%C"))
    return said.get("controlpath", [""])[0]


_NO_FILE = ("/dev/null", "none")


def host_key_files(
    values: SshConfig, options: ConnectOptions
) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The known_hosts files a host key is checked against, the user's (the first is where
    ``--accept-new`` records) and the global ones: ``--known-hosts FILE`` or the config's
    UserKnownHostsFile (all its files), then its GlobalKnownHostsFile, as ssh reads them.
    What would turn the check off does not: a UserKnownHostsFile of /dev/null (or none)
    means ssh's default files, and StrictHostKeyChecking, KnownHostsCommand, CheckHostIP,
    UpdateHostKeys, VerifyHostKeyDNS and NoHostAuthenticationForLocalhost are not read (the
    openssh transport overrides them on its command line).
    """

    def listed(key: str) -> list[str]:
        words = " ".join(values.get(key, [])).split()
        return [os.path.expanduser(w) for w in words if w not in _NO_FILE]

    if options.known_hosts is not None:
        user = [str(options.known_hosts)]
    else:
        user = listed("userknownhostsfile") or [
            os.path.expanduser(p) for p in ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
        ]
    return tuple(map(Path, user)), tuple(map(Path, listed("globalknownhostsfile")))


def host_key_check_weakened(values: SshConfig, options: ConnectOptions) -> str:
    """Why a connection ssh made with this config (the user's own ControlMaster) may not
    have checked the host key as sp-deploy does ("" when it did)."""
    if options.known_hosts is not None:
        return "--known-hosts names other known hosts than it was checked against"

    def said(key: str) -> str:
        return values.get(key, [""])[0]

    files = " ".join(values.get("userknownhostsfile", [])).split()
    weak = [
        ("StrictHostKeyChecking no", said("stricthostkeychecking") in ("false", "no", "off")),
        ("UserKnownHostsFile /dev/null", bool(files) and all(f in _NO_FILE for f in files)),
        ("a KnownHostsCommand", said("knownhostscommand") not in ("", "none")),
        (
            "NoHostAuthenticationForLocalhost",
            said("nohostauthenticationforlocalhost") in ("yes", "true"),
        ),
        ("VerifyHostKeyDNS", said("verifyhostkeydns") in ("yes", "true")),
    ]
    found = [name for name, on in weak if on]
    return f"your ssh config turns its host key check off ({', '.join(found)})" if found else ""


def check_known_hosts(files: tuple[Path, ...]) -> None:
    """A known_hosts file another user planted (or a link to one), or one every user can
    write, would make sp-deploy trust their key; one that is a fifo or endless (/dev/zero)
    would hold ssh for ever: HostKeyError."""
    from solverpilot_deploy.localfiles import check_trusted

    for path in files:
        try:
            check_trusted(path)
        except OutputError as exc:
            raise HostKeyError(str(exc)) from exc
        _known_lines(path)  # (read as the paramiko transport reads it: refused alike)


@functools.cache
def _local_tokens() -> dict[str, str]:
    """The %-tokens of this machine that hold for the whole run (u, i, l, L) and %%."""
    import getpass
    import socket

    return {
        "u": getpass.getuser(),
        "i": str(os.getuid()),
        "l": socket.gethostname(),  # ssh's %l: gethostname(), with its domain if it has one
        "L": socket.gethostname().split(".")[0],
        "%": "%",
    }


def expand_path_tokens(path: str, remote: dict[str, str]) -> str:
    """An IdentityFile path with OpenSSH's %-tokens, ``${NAME}`` (from the environment) and
    ``~`` expanded, as ssh does it.

    ``remote`` gives h (HostName), n (the host as given), p (port), r (remote user), j
    (ProxyJump), k (HostKeyAlias, else n) and C (ssh's connection hash); the local ones
    (d, u, i, l, L) are this machine's; %% is a percent sign.
    """
    values = {"d": os.path.expanduser("~"), **_local_tokens(), **remote}

    def token(match: re.Match[str]) -> str:
        if match[2] is not None:  # ${NAME}: the environment's, as ssh expands it
            if match[2] not in os.environ:
                raise UsageError(f"IdentityFile {path}: the environment has no {match[2]}")
            return os.environ[match[2]]
        key = match[1]
        if key not in values:
            raise UsageError(f"IdentityFile {path}: unknown token %{key}")
        return values[key]

    return os.path.expanduser(re.sub(r"%(.)|\$\{([A-Za-z_][A-Za-z0-9_]*)\}", token, path))


def check_identity(path: str) -> None:
    """``-i KEY`` must name a private key that exists: say so plainly when it does not."""
    if not os.path.exists(path):
        raise AuthenticationError(f"no such key {path}")
    if os.path.isdir(path):
        raise AuthenticationError(f"{path} is a folder, not a key")
    try:
        head = read_start(path, 64)
        if not os.path.isfile(path):  # (a device: paramiko and ssh would read it for ever)
            raise OSError(errno.EINVAL, "not a regular file")
    except OSError as exc:
        raise AuthenticationError(f"cannot read key {path}: {exc.strerror}") from exc
    if re.match(rb"^(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ AAAA", head):
        raise AuthenticationError(f"{path} is a public key; give its private key to -i")
    if not key_permissions_ok(path):
        mode = os.stat(path).st_mode & 0o777
        raise AuthenticationError(
            f"{path}: permissions {mode:04o} are too open: ssh ignores such a key (chmod 600 it)"
        )


def key_permissions_ok(path: str) -> bool:
    """ssh's rule for a private key file: one of this user's that others may read or write
    is ignored ("UNPROTECTED PRIVATE KEY FILE"). The paramiko transport skips it too."""
    try:
        found = os.stat(path)
    except OSError:
        return True  # reading it will say why
    return found.st_uid != os.getuid() or not found.st_mode & 0o077


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (time.monotonic), never less than 0.1."""
    return max(deadline - time.monotonic(), 0.1)


def known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


def host_key_name(spec: str, values: SshConfig) -> str:
    """The name ssh looks a host's key up under: HostKeyAlias, else [HostName]:Port."""
    _, host, _ = parse_spec(spec)
    alias = values.get("hostkeyalias", ["none"])[0]
    if alias != "none":
        return alias
    port = values.get("port", ["22"])[0]
    return known_hosts_name(values.get("hostname", [host])[0], int(port))


@dataclass(frozen=True)
class KnownHost:
    """One known_hosts line that names a host: its marker ("", "@cert-authority",
    "@revoked"), key type and base64 key, and the file it is in."""

    marker: str
    kind: str
    blob: str
    path: Path


def _pattern_matches(patterns: str, name: str) -> bool:
    """ssh's match of a known_hosts host field: hashed (|1|salt|hash), or a comma list of
    patterns with * and ?, a !pattern excluding."""
    if patterns.startswith("|1|"):
        try:
            salt, digest = (base64.b64decode(p) for p in patterns[3:].split("|"))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), "sha1").digest(), digest)
    found = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _glob(pattern[1:] if negated else pattern).fullmatch(name):
            if negated:
                return False
            found = True
    return found


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    """A known_hosts pattern (* and ?) as a regex, compiled once (every host of a fleet is
    matched against every line)."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(regex, re.IGNORECASE)


def known_host_entries(files: tuple[Path, ...], name: str) -> list[KnownHost]:
    """The lines of ``files`` (in order) that name ``name`` as ssh matches them; lines ssh
    could not read either are skipped, as ssh skips them."""
    found = []
    for path in files:
        lines, plain = _known_lines(path)
        # the lines naming ``name`` plainly (no hash, wildcard or !), then every other line
        indices = [*plain.get(name.lower(), ()), *plain.get("", ())]
        for index in sorted(indices):
            marker, patterns, kind, blob = lines[index]
            if _pattern_matches(patterns, name):
                found.append(KnownHost(marker, kind, blob, path))
    return found


_KnownLines = tuple[tuple[tuple[str, str, str, str], ...], dict[str, tuple[int, ...]]]


def _known_lines(path: Path) -> _KnownLines:
    """The host lines of a known_hosts file as (marker, hosts, key type, key), and their
    indices by the names they give plainly (lowercased; "": a line with a hashed name, a
    wildcard or a negation, which must be matched)."""
    try:
        data = read_start(path, MAX_KNOWN_HOSTS, whole=True)  # (a fifo is never waited on)
    except FileNotFoundError:
        return (), {}
    except OSError as exc:
        raise HostKeyError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _parse_known(data.decode("utf-8", errors="replace"))


@functools.lru_cache(maxsize=16)
def _parse_known(text: str) -> _KnownLines:
    """(parsed once for the same text: a push to 100 hosts looks each one up in it)"""
    lines: list[tuple[str, str, str, str]] = []
    plain: dict[str, list[int]] = {}
    # as ssh reads it: lines end at \n alone, words part at spaces and tabs alone
    # (str.splitlines and str.split also break at \x1c-\x1f, \v, \f, U+0085, U+2028)
    for line in text.split("\n"):
        words = [word for word in re.split(r"[ \t]+", line.strip(" \t\r")) if word]
        if not words or words[0].startswith("#"):
            continue
        marker = words.pop(0) if words[0].startswith("@") else ""
        if len(words) < 3 or marker not in ("", "@cert-authority", "@revoked"):
            continue
        names = words[0].split(",")
        odd = words[0].startswith("|") or any(c in words[0] for c in "*?!")
        for key in {""} if odd else {name.lower() for name in names}:
            plain.setdefault(key, []).append(len(lines))
        lines.append((marker, words[0], words[1], words[2]))
    return tuple(lines), {key: tuple(found) for key, found in plain.items()}


def paramiko_cannot_check(spec: str, values: SshConfig, options: ConnectOptions) -> list[str]:
    """What the host's known_hosts lines ask for that paramiko cannot do: a host certificate
    checked against a @cert-authority line (empty: paramiko can)."""
    user, known = host_key_files(values, options)
    entries = known_host_entries(user + known, host_key_name(spec, values))
    if any(entry.marker == "@cert-authority" for entry in entries):
        return ["@cert-authority (in known_hosts)"]
    return []

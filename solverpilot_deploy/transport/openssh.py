"""The openssh transport: the system ``ssh`` client makes the connection.

Everything the user's ssh does applies, since ssh itself reads the config (Include, Match,
ProxyJump, ProxyCommand, CertificateFile, known hosts, the agent, FIDO keys, GSSAPI).
All steps of one command go through one master connection (ControlMaster): the user's own
when one is already up for the host (no new login, no new 2FA prompt), else one this module
opens with its own ControlPath in a private 0700 folder and closes at the end. Only that
master logs in; each step is one ``ssh`` through it. Without a terminal, ssh runs with
BatchMode=yes, so a host that would prompt fails at once ("authentication failed") instead
of waiting for an answer nobody can give; with one, prompts come one host at a time.
Failures are read from ssh's exit status 255 and its last words on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import select
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from solverpilot_deploy.errors import (
    AuthenticationError,
    HostError,
    HostKeyError,
    HostTimeoutError,
    OutputError,
    UnreachableError,
    UsageError,
)
from solverpilot_deploy.localfiles import append_line
from solverpilot_deploy.ssh import (
    MAX_STDERR,
    ConnectOptions,
    SshConfig,
    check_identity,
    check_known_hosts,
    host_key_check_weakened,
    host_key_files,
    known_hosts_name,
    parse_spec,
    ssh_config,
)
from solverpilot_deploy.transport import Answer, Session, Started

BANNER_RETRIES = 2
TERM_WAIT = 0.2  # seconds our master has to go on TERM before KILL (see _end_master)
_NO_BANNER = "kex_exchange_identification"
_PROMPTS = threading.Lock()  # with a terminal: one login (and its prompts) at a time
_MASTER_PID = re.compile(r"Master running \(pid=(\d+)\)")
_SSH_WORDS = re.compile(
    r"^(ssh: |ssh_|kex_|mux_|Control socket|Connection |Permission denied|Host key|"
    r"No .* host key|Bad |Too many auth|Received disconnect|Disconnected from|Timeout|"
    r"Could not|Unable to|command-line)",
    re.MULTILINE,
)
_SHORT_PATH = 60  # a socket path must stay under 108 bytes with its tail


def terminal_attached() -> bool:
    """True when ssh could prompt: this process has a controlling terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _option(name: str, *values: str) -> list[str]:
    """``-o Name="value" ...`` for paths: ssh splits a value at blanks unless it is quoted,
    and expands %-tokens in it (a literal % is %%); a double quote cannot be passed at all."""
    for value in values:
        if '"' in value:
            raise UsageError(
                f"the openssh transport cannot pass a path with a double quote: {value}"
            )
    quoted = " ".join(f'"{value.replace("%", "%%")}"' for value in values)
    return ["-o", f"{name}={quoted}"]


@functools.lru_cache(maxsize=1)
def _client_version(ssh: str) -> tuple[int, int]:
    said = subprocess.run([ssh, "-V"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"OpenSSH_(\d+)\.(\d+)", said)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _neutral_options(ssh: str) -> list[str]:
    """Options that keep a user's config from changing what a step is: no forwardings, no
    LocalCommand run here, no RemoteCommand in place of the step (7.6+), stdin kept (8.7+).
    (The session type differs: the master has none, a step a command; see _session.)"""
    argv = ["-o", "ClearAllForwardings=yes", "-o", "PermitLocalCommand=no"]
    version = _client_version(ssh)
    if version >= (7, 6):
        argv += ["-o", "RemoteCommand=none"]
    if version >= (8, 7):
        argv += ["-o", "StdinNull=no"]
    return argv


def _session(ssh: str, kind: str) -> list[str]:
    """SessionType KIND (8.7+: a config's SessionType would win over -N or a command)."""
    if _client_version(ssh) >= (8, 7):
        return ["-o", f"SessionType={kind}"]
    return ["-N"] if kind == "none" else []


def _host_key_options(ssh: str, values: SshConfig, options: ConnectOptions) -> list[str]:
    """The host key check, on the command line (where it wins over any config): the same
    known_hosts files as the paramiko transport (ssh.host_key_files), an unknown key refused
    unless --accept-new, a changed one always; nothing else may vouch for a key (DNS, a
    KnownHostsCommand, "localhost needs none") or rewrite the files (UpdateHostKeys)."""
    user, known = host_key_files(values, options)
    check_known_hosts(user + known)
    if options.accept_new and not user[0].exists():
        # created here, exclusively: ssh would write through a link planted there meanwhile
        try:
            append_line(user[0], "")
        except OutputError as exc:
            raise HostKeyError(f"cannot record the host key: {exc}") from exc
    argv = _option("UserKnownHostsFile", *map(str, user))
    argv += _option("GlobalKnownHostsFile", *map(str, known or ["/dev/null"]))
    strict = "accept-new" if options.accept_new else "yes"
    argv += ["-o", f"StrictHostKeyChecking={strict}", "-o", "CheckHostIP=no"]
    argv += ["-o", "UpdateHostKeys=no", "-o", "VerifyHostKeyDNS=no"]
    argv += ["-o", "NoHostAuthenticationForLocalhost=no"]
    if _client_version(ssh) >= (8, 5):
        argv += ["-o", "KnownHostsCommand=none"]
    return argv


def base_argv(
    spec: str, options: ConnectOptions, batch: bool, values: SshConfig
) -> tuple[list[str], str]:
    """The ssh command line up to the destination, and the destination."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise UsageError("the openssh transport needs the OpenSSH client (ssh); install it")
    user, host, port = parse_spec(spec)
    argv = [ssh, *_neutral_options(ssh)]
    if options.config_file:
        argv += ["-F", options.config_file]
    if options.login or user:
        argv += ["-l", options.login or user or ""]
    if options.port or port:
        argv += ["-p", str(options.port or port)]
    if options.identity:
        key = os.path.expanduser(options.identity)
        check_identity(key)
        argv += [*_option("IdentityFile", key), "-o", "IdentitiesOnly=yes"]
    argv += _host_key_options(ssh, values, options)
    if batch:
        argv += ["-o", "BatchMode=yes"]
    jumps = values.get("proxyjump", ["none"])[0]
    if jumps != "none":
        argv += ["-o", f"ProxyCommand={_jump_command(ssh, jumps.split(','), options, batch)}"]
    return argv, host


def _jump_command(ssh: str, jumps: list[str], options: ConnectOptions, batch: bool) -> str:
    """A ProxyCommand that reaches %h:%p as ProxyJump ``jumps`` would (each hop through the
    ones before it), but with every hop's host key checked as the destination's is: ssh's own
    ProxyJump runs ``ssh -W`` with none of our -o, so a jump host's config could turn its
    check off. Jump hosts take their account, port and key from the config, not -l/-p/-i,
    as with the paramiko transport. The command is run by a shell once the ssh that runs it
    has expanded its %-tokens: every word but the -W target is escaped for that (%% for %),
    so a hop's command inside the next one is escaped once more."""
    hop_options = dataclasses.replace(options, identity=None, login=None, port=None)
    command = ""
    for jump in (j.strip() for j in jumps):
        user, host, port = parse_spec(jump)
        values = ssh_config(jump, hop_options)
        argv = [ssh, *_neutral_options(ssh)[2:]]  # -W: no ClearAllForwardings
        if options.config_file:
            argv += ["-F", options.config_file]
        if user:
            argv += ["-l", user]
        if port:
            argv += ["-p", str(port)]
        argv += _host_key_options(ssh, values, hop_options)
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        if batch:
            argv += ["-o", "BatchMode=yes"]
        if command:
            argv += ["-o", f"ProxyCommand={command}"]
        words = [shlex.quote(word.replace("%", "%%")) for word in [*argv, "-W"]]
        words += ["'[%h]:%p'", "--", shlex.quote(host.replace("%", "%%"))]
        command = " ".join(words)
    return command


def ssh_failed(stderr: str) -> bool:
    """Whether stderr holds ssh's own words of failure (exit 255 is also a remote status)."""
    return bool(_SSH_WORDS.search(stderr))


def classify(stderr: str, name: str) -> HostError:
    """The HostError that ssh's own words (exit status 255) describe; with its debug lines
    (a login's), the host key and the address it had are named too."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = ([line for line in lines if not line.startswith("debug")] or ["ssh failed"])[-1]
    key = re.search(r"^debug1: Server host key: (\S+ \S+)", stderr, re.MULTILINE)
    where = re.search(r"^debug1: Connecting to \S+ \[(\S+)\] port (\d+)", stderr, re.MULTILINE)
    if where:
        name = known_hosts_name(where[1], int(where[2]))
    # a jump host's (the ssh of the ProxyCommand) names itself
    named = re.search(r"^(?:Host key for|No \S+ host key is known for) (\S+)", stderr, re.M)
    if named:
        name = named[1]
    fingerprint = f" ({key[1]})" if key else ""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return HostKeyError(
            f"host key for {name} has CHANGED (now{fingerprint or ' different'}); refusing to "
            "connect: if the change is expected, remove the old entry from known_hosts "
            f"(ssh-keygen -R '{name}')"
        )
    if "REVOKED HOST KEY" in stderr:
        return HostKeyError(
            f"host key for {name}{fingerprint} is REVOKED in known_hosts; refusing to connect"
        )
    if "Host key verification failed" in stderr:
        return HostKeyError(
            f"unknown host key for {name}{fingerprint}; check it, then re-run with --accept-new "
            "to trust and record it"
        )
    if re.search(r"Permission denied|Too many authentication failures|No more auth", stderr):
        return AuthenticationError(f"{name}: {said}")
    if _NO_BANNER in stderr:
        return UnreachableError(f"{name}: no SSH banner from the server ({said})")
    if re.search(r"timed out", stderr, re.IGNORECASE):
        return HostTimeoutError(f"no answer from {name}: {said}")
    return UnreachableError(f"{name}: {said}")


def _socket_not_yours(path: str) -> str:
    """Why the master socket at ``path`` may be another user's ("" when it is this user's):
    ssh talks to whatever listens there. The socket must be this user's, in a folder no one
    else can write, or a sticky one (where no one else can replace what the user owns)."""
    if not path or path == "none":
        return "it has no ControlPath"
    try:
        found = os.lstat(path)
        folder = os.stat(os.path.dirname(path) or ".")
    except OSError as exc:
        return f"its ControlPath {path} cannot be read ({exc.strerror})"
    if not stat.S_ISSOCK(found.st_mode) or found.st_uid != os.geteuid():
        return f"its ControlPath {path} is not a socket of yours"
    if folder.st_uid not in (os.geteuid(), 0) or (
        folder.st_mode & 0o022 and not folder.st_mode & stat.S_ISVTX
    ):
        return f"the folder of its ControlPath {path} can be written by others"
    return ""


class OpenSSHSession(Session):
    """Steps through one master connection; ``abort`` kills what runs and the master."""

    def __init__(
        self, argv: list[str], host: str, batch: bool, weakened: str = "", user_path: bool = True
    ) -> None:
        super().__init__()
        self.argv, self.host, self.batch = argv, host, batch
        self.may_prompt = not batch
        self.weakened = weakened  # why the user's own master may not have checked the key
        self.user_path = user_path  # the config names a ControlPath: the user's master may be up
        self.through = ["-o", "ControlMaster=no"]  # how each step reaches the master
        self.folder: str | None = None  # our own master's, when we opened one
        self.master_pid: int | None = None
        self.running: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()
        self.closing = threading.Lock()
        self.closed = False

    def open(self, deadline: float) -> None:
        # (without a ControlPath in the config there is no master of the user's to ask for:
        # one ssh process less per host)
        up = self._check([*self.argv, "-o", "LogLevel=ERROR"], deadline) if self.user_path else None
        if up is not None:
            if self.weakened:
                self.warnings.append(
                    f"openssh: your ControlMaster for this host is not used: {self.weakened}, "
                    "so it may be connected to a host whose key sp-deploy would refuse"
                )
            elif theirs := _socket_not_yours(self._control_path()):
                self.warnings.append(
                    f"openssh: your ControlMaster for this host is not used: {theirs}, so "
                    "another user may have put their own master there"
                )
            elif not self._path_names_the_login():
                self.warnings.append(
                    "openssh: your ControlMaster for this host is not used: its ControlPath "
                    "does not name the user and port (%r and %p, or %C), so it may be logged "
                    "in as someone else"
                )
            elif (changed := self._host_key_refused(deadline)) is None:
                return  # the user's own master is up: every step goes through it
            else:
                raise changed  # the host shows a key sp-deploy refuses: no master of ours either
        base = tempfile.gettempdir()
        self.folder = tempfile.mkdtemp(  # 0700
            prefix="sp-ssh-", dir=base if len(base) < _SHORT_PATH else "/tmp"
        )
        path = os.path.join(self.folder, "master")
        self.through += _option("ControlPath", path)
        # LogLevel DEBUG1, to a file: the address and host key it had, should it fail
        master = [*self.argv, "-o", "LogLevel=DEBUG1", *_option("ControlPath", path)]
        master += ["-o", "ControlMaster=yes"]
        master += ["-o", "ControlPersist=no", *_session(self.argv[0], "none"), "-f"]
        errors = os.path.join(self.folder, "master.err")
        for attempt in range(BANNER_RETRIES + 1):
            wait = math.ceil(max(deadline - time.monotonic(), 1))
            with contextlib.nullcontext() if self.batch else _PROMPTS:
                # -f: ssh goes to the background once logged in; its stderr (a file, not a
                # pipe that would stay open) holds why it could not
                with open(errors, "wb") as err:
                    proc = self._start(
                        [*master, "-o", f"ConnectTimeout={wait}", "--", self.host],
                        stdin=subprocess.DEVNULL,
                        stderr=err,
                        own_group=False,
                    )
                try:
                    code = self._wait(proc, deadline)
                except BaseException:  # a Ctrl-C in a one-host command: no login left behind
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    self._forget(proc)
            if code == 0:
                break
            with open(errors, encoding="utf-8", errors="replace") as err:
                said = err.read()
            # a server at its MaxStartups drops new connections before its banner: retried,
            # a bounded number of times, as the paramiko transport does
            if _NO_BANNER not in said or attempt == BANNER_RETRIES:
                raise classify(said, self.host)
            time.sleep(min(0.5 * (attempt + 1), max(deadline - time.monotonic(), 0)))
        self.master_pid = self._check(self.steps_argv(), deadline)
        if self.master_pid is None:
            raise UnreachableError(f"{self.host}: the master connection did not come up")

    def _host_key_refused(self, deadline: float) -> HostError | None:
        """The user's own master may have been opened under other options than this config's
        (another alias with the same ControlPath, -o on ssh's command line) that let a changed
        key in: a fresh connection, checked as sp-deploy checks host keys, shows the key the
        host has now. No authentication is tried (no key, password or Duo prompt): "Permission
        denied" after the key exchange means the key was accepted. None: accepted."""
        argv = [*self.argv, "-o", "ControlMaster=no", "-o", "ControlPath=none"]
        argv += ["-o", "BatchMode=yes", "-o", "PreferredAuthentications=none"]
        wait = math.ceil(max(deadline - time.monotonic(), 1))
        proc = self._start(
            [*argv, "-o", f"ConnectTimeout={wait}", "--", self.host, "true"],
            stdin=subprocess.DEVNULL,
        )
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return HostTimeoutError(f"{self.host}: no answer to a key exchange in time")
        finally:
            self._forget(proc)
        said = err.decode("utf-8", "replace")
        accepted = proc.returncode == 0 or "Permission denied" in said  # 0: "none" let it in
        return None if accepted else classify(said, self.host)

    def _control_path(self, *extra: str) -> str:
        """The ControlPath ssh would use for this login (``extra``: other options)."""
        argv = [*self.argv, *extra, "-G", "--", self.host]
        said = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        found = re.search(r"^controlpath (.*)$", said, re.MULTILINE)
        return found[1] if found else ""

    def _path_names_the_login(self) -> bool:
        """The user's ControlPath differs for another user and for another port: the master
        it names was logged in as this command would log in."""
        mine = self._control_path()
        return (
            bool(mine)
            and mine != self._control_path("-l", "sp-deploy-other")
            and mine != self._control_path("-p", "1")
        )

    def _check(self, argv: list[str], deadline: float) -> int | None:
        """The pid of the master ``argv`` reaches (ssh -O check), None when there is none."""
        proc = self._start(
            [*argv, "-O", "check", "--", self.host], stdin=subprocess.DEVNULL, stdout=None
        )
        try:
            _, err = proc.communicate(timeout=min(max(deadline - time.monotonic(), 0.1), 10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
        finally:
            self._forget(proc)
        found = _MASTER_PID.search(err.decode("utf-8", "replace"))
        return int(found[1]) if proc.returncode == 0 and found else None

    def _start(
        self,
        argv: list[str],
        stdin: int | None = subprocess.PIPE,
        stdout: int | None = subprocess.PIPE,
        stderr: int | object = subprocess.PIPE,
        own_group: bool = True,
    ) -> subprocess.Popen[bytes]:
        with self.lock:
            if self.aborted.is_set():
                raise UnreachableError("connection aborted")
            # own_group: a Ctrl-C on the terminal reaches sp-deploy alone, which decides
            # what stops (a step in flight finishes); a login keeps the terminal for prompts
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                stderr=stderr,  # type: ignore[arg-type]
                process_group=0 if own_group else None,
            )
            self.running.add(proc)
            return proc

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.running.discard(proc)

    def _wait(self, proc: subprocess.Popen[bytes], deadline: float) -> int:
        try:
            return proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HostTimeoutError(f"no connection to {self.host} within the deadline") from None

    def steps_argv(self) -> list[str]:
        """ssh through the master; LogLevel ERROR: no banner, still every error."""
        argv = [*self.argv, "-o", "LogLevel=ERROR", *self.through, "-o", "BatchMode=yes"]
        return [*argv, *_session(self.argv[0], "default")]

    def run(
        self,
        command: str,
        stdin: bytes = b"",
        timeout: float = 60.0,
        framed: bytes = b"",
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[int, str, str]:
        argv = [*self.steps_argv(), "-T", "--", self.host, command]
        proc = self._start(argv)
        try:
            out, err = _exchange(proc, stdin, Answer(framed, timeout, on_line))
            status = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._forget(proc)
        if self.aborted.is_set():
            raise UnreachableError("connection aborted")
        text, said = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if status == 255 and " @end " not in text and ssh_failed(said):
            raise classify(said, self.host)  # ssh's own failure, not the step's
        return status, text, said

    def abort(self) -> None:
        with self.lock:
            self.aborted.set()
            for proc in self.running:
                with contextlib.suppress(OSError):
                    proc.kill()
        self.close()

    def close(self) -> None:
        """Stop our master and remove its folder. A second call (the deadline's timer and the
        host's own thread) waits until the first is done: the process may exit right after."""
        with self.closing:
            if self.closed:
                return
            self.closed = True
            if self.folder is None:
                return
            # a master that went to the background as its login was cut short has no pid
            # here yet, but its socket answers
            if self.master_pid is not None and self._end_master(self.master_pid):
                pass
            elif self.master_pid is not None or os.path.exists(os.path.join(self.folder, "master")):
                stop = [*self.steps_argv(), "-O", "exit", "--", self.host]
                done = subprocess.run(stop, capture_output=True, timeout=10, check=False)
                if done.returncode != 0 and self.master_pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(self.master_pid, 15)
            shutil.rmtree(self.folder, ignore_errors=True)

    def _end_master(self, pid: int) -> bool:
        """TERM to our master, by a pidfd, then wait until it has gone: no ssh process to start
        for it (ssh -O exit). A master that has not gone within TERM_WAIT gets KILL (some take
        seconds over a TERM that comes as a session closes; every step is done by now, so
        nothing is lost). False, and nothing sent, when the pid is no longer our master's (it
        died: the pid may be another process's now)."""
        assert self.folder is not None
        try:
            handle = os.pidfd_open(pid)
        except (AttributeError, OSError):  # gone, or a kernel before 5.3: ssh -O exit
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as found:  # (the pidfd holds the pid)
                if os.path.join(self.folder, "master").encode() not in found.read():
                    return False
            signal.pidfd_send_signal(handle, signal.SIGTERM)
            if not select.select([handle], [], [], TERM_WAIT)[0]:  # readable: it has exited
                signal.pidfd_send_signal(handle, signal.SIGKILL)
                select.select([handle], [], [], 5)
            return True
        except OSError:
            return False
        finally:
            os.close(handle)


def _exchange(proc: subprocess.Popen[bytes], data: bytes, answer: Answer) -> tuple[bytes, bytes]:
    """Write ``data`` to the step's stdin while reading its stdout (into ``answer``, which
    keeps the time) and stderr to their end."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    err = bytearray()
    out = answer.data
    written = 0
    with selectors.DefaultSelector() as selector:
        if data:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            left = answer.left()
            if left <= 0:
                raise answer.timed_out()
            for key, _ in selector.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        written += os.write(key.fd, data[written : written + 65536])
                    except BrokenPipeError:
                        written = len(data)  # the step ended before reading it all
                    if written >= len(data):
                        selector.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    answer.add(chunk)
                else:
                    err += chunk
                    del err[:-MAX_STDERR]  # only its end is ever shown
    return bytes(out), bytes(err)


@contextmanager
def connect_openssh(
    spec: str,
    options: ConnectOptions,
    deadline: float,
    values: SshConfig | None,
    started: Started,
) -> Iterator[Session]:
    """A Session to ``spec`` through one master connection; closed on exit."""
    batch = not terminal_attached()
    if values is None:
        values = ssh_config(spec, options)
    argv, host = base_argv(spec, options, batch, values)
    session = OpenSSHSession(
        argv, host, batch, host_key_check_weakened(values, options),
        user_path=values.get("controlpath", ["none"])[0] != "none",
    )  # fmt: skip
    started(session)
    try:
        session.open(deadline)
        yield session
    finally:
        session.close()

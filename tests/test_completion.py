"""Shell completion: the scripts of `sp-deploy completion SHELL` loaded in real bash, zsh and
fish on a pty, completing through the installed sp-deploy; the host aliases read from the ssh
config; the completion request's own protocol (COMP_LINE, _ARGCOMPLETE) without a shell."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

from solverpilot_deploy import cli
from solverpilot_deploy.completion import SHELLS, ssh_host_aliases
from solverpilot_deploy.profiles import profile_names

DEADLINE = 30.0  # seconds for each expected answer (one TAB runs sp-deploy; CI is loaded)
# CSI and OSC sequences, charset and keypad switches, carriage returns: what shells draw with
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r"
)


def _sp_deploy() -> str:
    found = shutil.which("sp-deploy")
    assert found, "sp-deploy is not on PATH (pip install -e . in the venv on PATH)"
    return found


# ---- a real shell on a pty ----


class Shell:
    """An interactive shell on a pty of its own (it is the session leader); ``expect`` polls
    its output until a text shows or the deadline passes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec the shell, or die without running pytest's code
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.output = ""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read(self, until: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, min(0.2, until - time.monotonic())))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError as exc:  # EIO: the shell has exited
            if exc.errno != errno.EIO:
                raise
            return False
        if not data:
            return False
        self.output += data.decode(errors="replace")
        if "\x1b[c" in self.output[-len(data) - 3 :]:  # a terminal query (newer fish): answer
            self.send("\x1b[?62;22c")
        return True

    def text(self, start: int = 0) -> str:
        return _ESCAPES.sub("", self.output[start:])

    def expect(self, *wanted: str, start: int = 0) -> str:
        """The output from ``start`` (escapes removed) once it holds every one of ``wanted``."""
        until = time.monotonic() + DEADLINE
        while not all(word in self.text(start) for word in wanted):
            if time.monotonic() >= until or not self._read(until):
                missing = [w for w in wanted if w not in self.text(start)]
                raise AssertionError(f"no {missing} within {DEADLINE} s; got:\n{self.text(start)}")
        return self.text(start)

    def close(self) -> None:
        for sig in (signal.SIGHUP, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)  # its process group: the shell and what it started
            except ProcessLookupError:
                break
            until = time.monotonic() + 5
            while time.monotonic() < until:
                if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                    break
                time.sleep(0.05)
            else:
                continue
            break
        os.close(self.fd)


# how each shell starts without the user's start-up files, loads the script, and echoes a
# marker whose typed form differs from its output (so the marker proves the line ran)
_START = {
    "bash": (
        ["--norc", "--noprofile", "-i"],
        [
            "PS1='$ '",
            "bind 'set show-all-if-ambiguous on'",
            "bind 'set page-completions off'",
            'eval "$(sp-deploy completion bash)"',
        ],
        "echo READY-$((40+2))",
    ),
    "zsh": (
        ["-f", "-i"],
        [
            "PS1='$ '",
            "autoload -Uz compinit && compinit -u -D",
            'eval "$(sp-deploy completion zsh)"',
        ],
        "echo READY-$((40+2))",
    ),
    "fish": (  # the README's way: a file in ~/.config/fish/completions (not --no-config)
        ["-i"],
        [
            "function fish_prompt; echo '$ '; end",
            "set -g fish_autosuggestion_enabled 0",  # only a TAB may show a completion
            "sp-deploy completion fish > ~/.config/fish/completions/sp-deploy.fish",
        ],
        "echo READY-(math 40+2)",
    ),
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home whose ~/.ssh/config has aliases, patterns, a catch-all and an Include."""
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        "# comment\n"
        "Host alpha beta\n"
        "    HostName 127.0.0.1\n"
        "Host web-* !negated-name wild?card\n"
        "    User nobody\n"
        "Include conf.d/*.conf\n"
        "Host *\n"
        "    ServerAliveInterval 30\n"
    )
    (home / ".ssh" / "conf.d" / "extra.conf").write_text("host=included-host\n")
    (tmp_path / "other_config").write_text("Host only-in-f\n")
    (home / ".config" / "fish" / "completions").mkdir(parents=True)
    (home / ".config" / "fish" / "config.fish").write_text("set -g fish_greeting ''\n")
    return home


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest, home: Path) -> Iterator[Shell]:
    name: str = request.param
    found = shutil.which(name)
    require(found is not None, f"needs {name} (apt-get install {name})")
    assert found
    args, setup, ready = _START[name]
    sp_bin = str(Path(_sp_deploy()).parent)
    env = {
        "HOME": str(home),
        "PATH": f"{sp_bin}:/usr/local/bin:/usr/bin:/bin",
        "TERM": "xterm",
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    session = Shell([found, *args], env)
    try:
        for line in setup:
            session.send(line + "\n")
        session.send(ready + "\n")
        session.expect("READY-42")
        yield session
    finally:
        session.close()


def _complete(session: Shell, line: str, *wanted: str) -> str:
    """Type ``line`` and TAB: the output once it shows every one of ``wanted``."""
    start = len(session.output)
    session.send(line + "\t")
    return session.expect(*wanted, start=start)


def test_completes_a_command(shell: Shell) -> None:
    _complete(shell, "sp-deploy pu", "sp-deploy push")


def test_completes_an_option(shell: Shell) -> None:
    _complete(shell, "sp-deploy push --dis", "--distro")


def test_completes_the_profiles(shell: Shell) -> None:
    names = profile_names()
    assert set(names) >= {"ubuntu", "debian", "rhel", "alpine"}
    _complete(shell, "sp-deploy push --distro ", *names)


def test_completes_the_ssh_config_aliases_without_patterns(shell: Shell) -> None:
    shown = _complete(shell, "sp-deploy status ", "alpha", "beta", "included-host")
    for pattern in ("web-", "negated-name", "wild"):
        assert pattern not in shown


def test_completes_the_aliases_of_an_F_file_given_before(shell: Shell, home: Path) -> None:
    other = home.parent / "other_config"
    shown = _complete(shell, f"sp-deploy status -F {other} ", "only-in-f")
    assert "alpha" not in shown


def test_completes_the_shells(shell: Shell) -> None:
    _complete(shell, "sp-deploy completion ", "bash", "zsh", "fish")


# ---- the completion request itself (what the scripts run on each TAB) ----


def _request(
    line: str, tmp_path: Path, home: Path, extra: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run sp-deploy as the scripts do on a TAB at the end of ``line``: its candidates, one a
    line (argcomplete writes them to _ARGCOMPLETE_STDOUT_FILENAME when that is set)."""
    answer = tmp_path / "answer"
    env = {
        **os.environ,
        "HOME": str(home),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        **(extra or {}),
    }
    done = subprocess.run(
        [_sp_deploy()], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return done, [c.strip() for c in answer.read_text().split("\n") if c.strip()]


def test_a_request_answers_before_the_commands_modules_are_imported(
    tmp_path: Path, home: Path
) -> None:
    done, candidates = _request(
        "sp-deploy status ", tmp_path, home, {"PYTHONPROFILEIMPORTTIME": "1"}
    )
    assert done.returncode == 0 and done.stdout == ""
    assert candidates[:3] == ["alpha", "beta", "included-host"]
    imported = {ln.split("|")[-1].strip() for ln in done.stderr.splitlines() if "|" in ln}
    assert "argcomplete" in imported
    assert not imported & {"paramiko", "jinja2", "solverpilot_deploy.ssh", "cryptography"}


@pytest.mark.parametrize(
    "config",
    ["missing", "folder", "fifo", "binary"],
)
def test_a_bad_ssh_config_gives_no_candidates_and_no_traceback(
    tmp_path: Path, home: Path, config: str
) -> None:
    path = tmp_path / config
    if config == "folder":
        path.mkdir()
    elif config == "fifo":
        os.mkfifo(path)  # never waited on: completing must not hang
    elif config == "binary":
        path.write_bytes(b"\xff\xfe\x00Host \xc3(\n\x00" * 100)
    done, candidates = _request(f"sp-deploy status -F {path} ", tmp_path, home)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert candidates == [] or config == "binary"
    assert "Traceback" not in done.stderr


def test_a_huge_ssh_config_keeps_a_tab_quick(tmp_path: Path, home: Path) -> None:
    """An Include matching 16 generated configs of 1 MiB (9,000 hosts each): a TAB reads 4 MiB
    in all, splits only Host and Include lines, and offers the first thousand hosts that
    start with what is typed, in well under the time a person waits (it read 16 MiB with a
    shlex.split per line and passed 37,000 hosts on: over ten seconds a TAB; helper-25's
    finding 9)."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    for n in range(16):
        block = "".join(
            f"Host node{n:02d}-{i:05d}.cluster.example.org\n"
            f"    HostName 10.{n}.{i // 250}.{i % 250}\n    User solver\n"
            "    IdentityFile ~/.ssh/id_cluster\n"
            for i in range(9000)
        )
        (folder / f"{n:02d}.conf").write_text(block[: 1 << 20])
    config = tmp_path / "config"
    config.write_text(f"Host first\nInclude {folder}/*.conf\n")
    began = time.monotonic()
    done, candidates = _request(f"sp-deploy status -F {config} ", tmp_path, home)
    took = time.monotonic() - began
    assert (done.returncode, done.stderr) == (0, "")
    assert candidates[:2] == ["first", "node00-00000.cluster.example.org"]
    assert len(candidates) == 1000  # the first thousand (argcomplete's own handling of
    assert took < 3, took  # 37,000 took 14 s)
    # a prefix reaches the hosts past the first thousand; the 4 MiB read cover four files
    done, candidates = _request(f"sp-deploy status -F {config} node02-0899", tmp_path, home)
    assert candidates == [f"node02-0899{i}.cluster.example.org" for i in range(10)]
    done, candidates = _request(f"sp-deploy status -F {config} node05-", tmp_path, home)
    assert (done.returncode, done.stderr, candidates) == (0, "", [])  # past the 4 MiB


def test_inventory_names_are_not_taken_for_ssh_aliases(tmp_path: Path, home: Path) -> None:
    _, candidates = _request("sp-deploy push --inventory inv.ini ", tmp_path, home)
    assert "alpha" not in candidates


# ---- the ssh config reader ----


def test_ssh_host_aliases_follow_includes_and_skip_patterns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # relative Includes are taken from ~/.ssh
    ssh = tmp_path / ".ssh"
    (ssh / "d").mkdir(parents=True)
    (ssh / "config").write_text(
        'Host one "two" # a comment\n'
        "  Include d/*.conf ~/.ssh/absent\n"
        "HOST = three\n"
        "Match host four\n"
        "Host *.example !five s?x\n"
        "Host one\n"
        "Include loop\n"
        "Host 'unbalanced\n"
    )
    (ssh / "d" / "b.conf").write_text("Host in-b\n")
    (ssh / "d" / "a.conf").write_text("Host in-a\n")
    (ssh / "loop").write_text("Host looped\nInclude loop\n")  # ssh stops at depth 16; so do we
    aliases = ssh_host_aliases(str(ssh / "config"))
    assert aliases == ["one", "two", "in-a", "in-b", "three", "looped", "'unbalanced"]


def test_ssh_host_aliases_of_a_missing_config_are_none(tmp_path: Path) -> None:
    assert ssh_host_aliases(str(tmp_path / "none")) == []
    assert ssh_host_aliases(str(tmp_path / "a\0b")) == []


# ---- sp-deploy completion SHELL ----


@pytest.mark.parametrize("name", SHELLS)
def test_completion_prints_the_script(capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert cli.main(["completion", name]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "sp-deploy" in out and out.endswith("\n")


@pytest.mark.parametrize("argv", [["completion"], ["completion", "tcsh"], ["completion", ""]])
def test_completion_without_a_known_shell_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("sp-deploy: error: ") and "sp-deploy completion bash|zsh|fish" in err

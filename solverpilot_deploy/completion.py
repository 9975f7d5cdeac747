"""Shell completion for sp-deploy (bash, zsh, fish), from argcomplete.

``sp-deploy completion SHELL`` prints argcomplete's script for the shell; on each TAB that
script runs ``sp-deploy`` again with the command line in ``COMP_LINE`` and ``_ARGCOMPLETE`` set,
and ``answer`` (the first thing ``cli.main`` does after building the parser) prints the
candidates and exits, before any command runs or anything slow is imported.

Why argcomplete and not shtab: argcomplete (kislyuk/argcomplete, releases several times a year)
has supported bash, zsh, fish, tcsh and PowerShell for years, and completes from the live
argparse parser in Python, so one Python function serves every shell: the host aliases read
from the ssh config (the ``-F FILE`` given earlier on the line included), the profiles. shtab
writes static scripts (no Python on TAB, so faster), but anything dynamic (the ssh config's
hosts) must be written by hand as shell code, once per shell, which is what this feature is not
to do; and its fish generator is new (shtab 1.13.0; tqdm/shtab#134 asked for it from 2024),
while argcomplete's fish support is long established. The price is one Python start per TAB
(55-110 ms on the loaded 2-core test VM, about as long as ``sp-deploy --version``), kept low
by answering before the commands' modules (paramiko, jinja2) are imported.

Completers are attached by the arguments' ``dest`` names (``attach_completers``), so
``cli.build_parser`` declares its arguments without knowing about completion.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from solverpilot_deploy.errors import UsageError

SHELLS = ("bash", "zsh", "fish")
PROG = "sp-deploy"
_MAX_CONFIG_BYTES = 1 << 20  # an ssh config larger than this is read only this far
_MAX_INCLUDE_DEPTH = 16  # OpenSSH's own limit (READCONF_MAX_DEPTH)
_MAX_CONFIG_FILES = 256  # files read per TAB, whatever an Include's glob matches
_MAX_TOTAL_BYTES = 4 << 20  # bytes read per TAB in all (a TAB stays well under a second)
_MAX_CANDIDATES = 1000  # host candidates offered a TAB (bash asks before it lists even 100)


# ---- the command: sp-deploy completion SHELL ----


def add_command(sub: Any) -> None:
    """Add ``completion SHELL`` to the subcommands (``sub``: build_parser's add_subparsers)."""
    parser = sub.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description="Print the completion script for SHELL. Enable it with: "
        'bash: eval "$(sp-deploy completion bash)" in ~/.bashrc; '
        'zsh: eval "$(sp-deploy completion zsh)" in ~/.zshrc, after compinit; '
        "fish: sp-deploy completion fish > ~/.config/fish/completions/sp-deploy.fish.",
    )
    parser.add_argument("shell", nargs="?", metavar="SHELL", help="bash, zsh or fish")
    parser.set_defaults(func=cmd_completion)


def script(shell: str | None) -> str:
    """The completion script for ``shell``; UsageError (exit 2) for a missing or unknown one."""
    if shell not in SHELLS:
        given = "no SHELL" if shell is None else f"unknown shell {shell!r}"
        raise UsageError(f"{given}: sp-deploy completion {'|'.join(SHELLS)}")
    from argcomplete.shell_integration import shellcode

    # use_defaults=False: no fallback to file names where sp-deploy offers nothing (a job id,
    # a remote folder); the file options complete files through argcomplete itself
    code = shellcode([PROG], use_defaults=False, shell=shell)
    return code if code.endswith("\n") else code + "\n"


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return 0


# ---- answering a TAB ----


def answer(parser: argparse.ArgumentParser) -> None:
    """When the shell's completion script runs sp-deploy (``_ARGCOMPLETE`` set), write the
    candidates for its ``COMP_LINE`` to fd 8 and end the process; otherwise return at once.
    Nothing else runs for a completion request, whatever a completer does."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
        from argcomplete.completers import SuppressCompleter

        attach_completers(parser)
        # options only once a "-" is typed; an argument without a completer of its own (a job
        # id, a remote folder, free text) offers nothing
        argcomplete.autocomplete(
            parser, always_complete_options=False, default_completer=SuppressCompleter()
        )
    except Exception:  # a bug of ours: no candidates (stderr is the shell's /dev/null)
        if os.environ.get("_ARC_DEBUG"):
            import traceback

            traceback.print_exc()
    os._exit(1)  # autocomplete exits itself (0) once it has answered


def attach_completers(parser: argparse.ArgumentParser) -> None:
    """Give each argument of ``parser`` and of its subcommands, found by its dest, the
    completer that fits it (argcomplete reads an action's ``completer`` attribute)."""
    from argcomplete.completers import FilesCompleter

    files = FilesCompleter()
    by_dest: dict[str, Callable[..., Iterable[str]]] = {
        "distro": profile_candidates,
        "host": host_candidates,
        "hosts": host_candidates,
        "shell": lambda **_: SHELLS,
        # local files (every other value names something on the host, or is free text)
        "config_file": files,
        "identity": files,
        "known_hosts": files,
        "inventory": files,
        "output": files,
    }
    seen: set[int] = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.dest in by_dest:
                setattr(action, "completer", by_dest[action.dest])  # noqa: B010


def profile_candidates(action: argparse.Action, **_: object) -> list[str]:
    """The profile names; with ``auto`` where it is the option's default (push, verify)."""
    from solverpilot_deploy.profiles import profile_names

    names = profile_names()
    return [*names, "auto"] if action.default == "auto" else names


def host_candidates(prefix: str, parsed_args: argparse.Namespace, **_: object) -> list[str]:
    """The Host aliases of the ssh config (of ``-F FILE`` when the line gives one before the
    cursor) that start with ``prefix``, the first _MAX_CANDIDATES of them (argcomplete's own
    handling of tens of thousands took seconds a TAB); none when the line gives
    ``--inventory`` (its names are Ansible's)."""
    if getattr(parsed_args, "inventory", None):
        return []
    config = getattr(parsed_args, "config_file", None)
    found = (name for name in ssh_host_aliases(config) if name.startswith(prefix))
    return list(itertools.islice(found, _MAX_CANDIDATES))


# ---- the ssh config's Host aliases ----


def ssh_host_aliases(config_file: str | None = None) -> list[str]:
    """The Host names of the ssh config, in order, each once: ``config_file`` (as ssh -F) or
    ~/.ssh/config then /etc/ssh/ssh_config, following Include (globs, ~, paths relative to
    ~/.ssh or /etc/ssh as ssh takes them). Patterns (``*``, ``?``, ``!``) are left out. A file
    that is missing, unreadable, not a regular file or not text gives nothing; this never
    raises for what a file holds."""
    home_ssh = os.path.expanduser("~/.ssh")
    if config_file:
        roots = [(os.path.expanduser(config_file), home_ssh)]
    else:
        roots = [(os.path.join(home_ssh, "config"), home_ssh), ("/etc/ssh/ssh_config", "/etc/ssh")]
    found: dict[str, None] = {}
    budget = [_MAX_CONFIG_FILES, _MAX_TOTAL_BYTES]  # files, bytes
    for path, base in roots:
        _read_config(path, base, 0, found, budget)
    return list(found)


def _read_config(
    path: str, base: str, depth: int, found: dict[str, None], budget: list[int]
) -> None:
    if depth > _MAX_INCLUDE_DEPTH or budget[0] <= 0 or budget[1] <= 0:
        return
    budget[0] -= 1
    text = _read_text(path, min(_MAX_CONFIG_BYTES, budget[1]))
    budget[1] -= len(text)
    for line in text.splitlines():
        keyword, words = _config_line(line)
        if keyword == "host":
            for name in words:
                if name and not any(c in name for c in "*?!"):
                    found.setdefault(name, None)
        elif keyword == "include":
            import glob

            for word in words:
                pattern = os.path.expanduser(word)
                if not os.path.isabs(pattern):
                    pattern = os.path.join(base, pattern)
                for included in sorted(glob.glob(pattern)):
                    _read_config(included, base, depth + 1, found, budget)


def _read_text(path: str, most: int = _MAX_CONFIG_BYTES) -> str:
    """The file's first ``most`` bytes as text, or "" for anything but a readable regular
    file (a fifo is never waited on: localfiles.read_start opens it non-blocking)."""
    from solverpilot_deploy.localfiles import read_start

    if not os.path.isfile(path):  # (a device too gives nothing; isfile is False for a NUL)
        return ""
    try:
        return read_start(path, most).decode("utf-8", errors="replace")
    except OSError:
        return ""


_KEYWORD = re.compile(r"\s*([^\s=#]+)\s*(?:=\s*)?")


def _config_line(line: str) -> tuple[str, list[str]]:
    """An ssh_config line as (lower-case keyword, arguments): ``Keyword args`` or
    ``Keyword=args``, arguments split as ssh splits them (quotes; ``#`` starts a comment);
    only for Host and Include, the keywords read here (the others: no arguments)."""
    match = _KEYWORD.match(line)
    if match is None:  # blank, or a comment
        return "", []
    keyword = match[1].lower()
    if keyword not in ("host", "include"):
        return keyword, []
    rest = line[match.end() :].strip()
    if not any(c in rest for c in "\"'#\\"):  # plain words: no quote, comment or escape
        return keyword, rest.split()
    import shlex

    try:
        return keyword, shlex.split(rest, comments=True)
    except ValueError:  # an unbalanced quote: plain words
        return keyword, rest.split()

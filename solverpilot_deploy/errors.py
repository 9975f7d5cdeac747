"""The errors sp-deploy knows how to report: one line each, with an exit code."""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error the CLI reports as one line; ``exit_code`` is what it exits with."""

    exit_code = 1


class UsageError(DeployError):
    """The command line asked for something that does not exist (e.g. an unknown profile)."""

    exit_code = 2


class ProfileError(DeployError):
    """A profile data file is missing a field or cannot be parsed."""


class OutputError(DeployError):
    """A rendered file could not be written; nothing was left half-written."""


class ToolMissingError(DeployError):
    """An external tool (shellcheck) is not installed."""


class HostError(DeployError):
    """One host failed; ``kind`` names the failure in its one-line message."""

    kind = "error"

    def __str__(self) -> str:
        return f"{self.kind}: {super().__str__()}"


class HostFailedError(DeployError):
    """The one host a command talks to failed; the message names the host and the kind."""


class UnreachableError(HostError):
    kind = "unreachable"


class AuthenticationError(HostError):
    kind = "authentication failed"


class HostKeyError(HostError):
    kind = "host key"


class RequirementError(HostError):
    kind = "missing requirement"


class ChecksumError(HostError):
    kind = "checksum mismatch"


class HostTimeoutError(HostError):
    kind = "timeout"
    partial = ""  # what the command had printed on stdout when the time ran out
    answered: tuple[str, ...] = ()  # of that, a step's own lines (remote.run_step)


class RemoteCommandError(HostError):
    kind = "remote command failed"


class UnsafeServerDirError(HostError):
    """The server folder (or a subfolder) is not the user's alone: another user owns it, can
    write to it, or a subfolder is a symbolic link. A step answers it with exit 21."""

    kind = "unsafe server folder"


class StepInterrupted(DeployError):
    """Ctrl-C came before this host was changed; it is reported "skipped"."""

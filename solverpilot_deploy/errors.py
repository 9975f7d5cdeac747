"""The errors sp-deploy knows how to report: one line each, with an exit code."""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error the CLI reports as one line; ``exit_code`` is what it exits with,
    ``code`` the error's kind in --json (README: "Errors in JSON"; each subclass names its own)."""

    exit_code = 1
    code = "failed"


class UsageError(DeployError):
    """The command line asked for something that does not exist (e.g. an unknown profile)."""

    code = "usage"
    exit_code = 2


class ProfileError(DeployError):
    """A profile data file is missing a field or cannot be parsed."""

    code = "profile"


class OutputError(DeployError):
    """A rendered file could not be written; nothing was left half-written."""

    code = "output"


class ToolMissingError(DeployError):
    """An external tool (shellcheck) is not installed."""

    code = "missing_tool"


class HostError(DeployError):
    """One host failed; ``kind`` names the failure in its one-line message."""

    kind = "error"

    def __str__(self) -> str:
        return f"{self.kind}: {super().__str__()}"


class HostFailedError(DeployError):
    """The one host a command talks to failed; the message names the host and the kind (its
    ``code`` is that of its cause)."""

    @property
    def code(self) -> str:  # type: ignore[override]
        cause = self.__cause__
        return cause.code if isinstance(cause, DeployError) else "failed"


class UnreachableError(HostError):
    code = "unreachable"
    kind = "unreachable"


class AuthenticationError(HostError):
    code = "authentication"
    kind = "authentication failed"


class HostKeyError(HostError):
    code = "host_key"
    kind = "host key"


class RequirementError(HostError):
    code = "missing_requirement"
    kind = "missing requirement"


class ChecksumError(HostError):
    code = "checksum"
    kind = "checksum mismatch"


class HostTimeoutError(HostError):
    code = "timeout"
    kind = "timeout"
    partial = ""  # what the command had printed on stdout when the time ran out
    answered: tuple[str, ...] = ()  # of that, a step's own lines (remote.run_step)


class RemoteCommandError(HostError):
    code = "remote_command"
    kind = "remote command failed"


class UnsafeServerDirError(HostError):
    """The server folder (or a subfolder) is not the user's alone: another user owns it, can
    write to it, or a subfolder is a symbolic link. A step answers it with exit 21."""

    code = "unsafe_server_dir"
    kind = "unsafe server folder"


class NoJobError(HostError):
    """The host has no record of the job (nor a log): exit 1 in every command."""

    code = "no_job"
    kind = "job"


class NoWrapperError(HostError):
    """The host has no wrapper installed (sp-deploy push installs it)."""

    code = "no_wrapper"
    kind = "job"


class StepInterrupted(DeployError):
    """Ctrl-C came before this host was changed; it is reported "skipped"."""

    code = "interrupted"

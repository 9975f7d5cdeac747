"""The JSON that --json prints: one shape per object, the schema's version on every document.

README, "JSON output", documents it. Every command prints either one document (an object with
"schema" and "command") or, for streams (watch, logs, reconcile), one object per line, each
with "schema". A job is JobState.as_json() wherever it appears, a host result is ``host_result``
wherever one appears, an error is ``error_object``.
"""

from __future__ import annotations

from typing import Any

from solverpilot_deploy.errors import DeployError

SCHEMA = 1  # raised when a field changes meaning or goes; new fields keep it

# every kind an error object may name (errors.py's ``code``s, and the CLI's own)
ERROR_KINDS = (
    "usage",  # the command line: exit 2
    "profile",
    "output",
    "missing_tool",
    "unreachable",
    "authentication",
    "host_key",
    "missing_requirement",
    "checksum",
    "timeout",
    "remote_command",
    "unsafe_server_dir",
    "job",
    "no_job",
    "no_wrapper",
    "reconcile",
    "interrupted",
    "skipped",  # a fleet host never started (--max-fail, --canary, Ctrl-C)
    "verify",  # verify: the host's wrapper is missing or not the render's
    "failed",
    "internal",
)


def error_object(kind: str, message: str) -> dict[str, str]:
    return {"kind": kind, "message": message}


def error_of(exc: BaseException) -> dict[str, str]:
    """An exception as an error object: its kind, and the line stderr shows."""
    if isinstance(exc, DeployError):
        return error_object(exc.code, str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return error_object("interrupted", "interrupted")
    return error_object("internal", f"{type(exc).__name__}: {exc}")


def document(command: str, **payload: Any) -> dict[str, Any]:
    """One command's whole --json answer."""
    return {"schema": SCHEMA, "command": command, **payload}


def line(**payload: Any) -> dict[str, Any]:
    """One line of a stream (watch, logs, reconcile)."""
    return {"schema": SCHEMA, **payload}


def host_result(
    host: str,
    status: str,
    error: dict[str, str] | None = None,
    warnings: tuple[str, ...] | list[str] = (),
    **fields: Any,
) -> dict[str, Any]:
    """One host's result: in push and verify (distro, sha256...), in status (jobs)."""
    return {"host": host, "status": status, "error": error, "warnings": list(warnings), **fields}

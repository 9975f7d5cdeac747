"""sp-deploy: argument parsing and dispatch; maps errors to exit codes.

Exit codes: 0 success; 1 lint findings, a host that failed or did not verify, a job that does
not exist, or another failure; 2 usage error or unknown profile; 124 wait --timeout ran out;
130 interrupted (README "Exit codes" gives each command's).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from solverpilot_deploy import __version__, completion, signals
from solverpilot_deploy.errors import DeployError, HostFailedError, UsageError
from solverpilot_deploy.safe import printable

if TYPE_CHECKING:
    from threading import Event

    from solverpilot_deploy.deploy import HostResult
    from solverpilot_deploy.fleet import Operation
    from solverpilot_deploy.inventory import HostTarget
    from solverpilot_deploy.ssh import ConnectOptions
    from solverpilot_deploy.transport import Session

T = TypeVar("T")


STREAMS = ("watch", "logs", "reconcile")  # their --json: one object per line
_EMITTED: list[str] = []  # a --json document has begun on stdout (no error document after it)


def _emit(doc: dict[str, Any]) -> None:
    """One --json document on stdout (shapes.document), whole: INT and TERM (and SIGALRM, which
    raises an owed one: signals.py) wait until it is written (a reader that is slow to take a
    large one must not get half of it)."""
    import json
    import signal

    text = json.dumps(doc, indent=2) + "\n"
    _EMITTED.append(doc["command"])
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGALRM})
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _emit_line(doc: dict[str, Any]) -> None:
    """One line of a --json stream (watch, logs, reconcile), at once."""
    import json

    _EMITTED.append("line")
    print(json.dumps(doc), flush=True)


def cmd_render(args: argparse.Namespace) -> int:
    import hashlib

    from solverpilot_deploy.render_cache import cached_render
    from solverpilot_deploy.shapes import document

    text = cached_render(args.distro)
    to_file = args.output is not None and args.output != "-"
    if to_file:
        from solverpilot_deploy.render import write_output

        write_output(Path(args.output), text)
    if args.json:
        digest = hashlib.sha256(text.encode()).hexdigest()
        _emit(document(
            "render", distro=args.distro, sha256=digest, output=args.output if to_file else None,
            script=None if to_file else text,
        ))  # fmt: skip
    elif not to_file:
        sys.stdout.write(text)
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from solverpilot_deploy.profiles import load_profiles
    from solverpilot_deploy.shapes import document

    profiles = load_profiles()
    if args.json:
        shown = [
            {"name": p.name, "targets": p.targets, "description": p.description,
             "userland": p.userland}
            for p in profiles
        ]  # fmt: skip
        _emit(document("profiles", profiles=shown))
        return 0
    for profile in profiles:
        print(f"{profile.name:<8} {profile.targets:<28} {profile.description}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from solverpilot_deploy.lint import lint_script
    from solverpilot_deploy.profiles import load_profile, profile_names
    from solverpilot_deploy.remote import step_names, step_script
    from solverpilot_deploy.render import render_wrapper
    from solverpilot_deploy.slurm import batch_script

    names = args.distro or profile_names()
    profiles = [load_profile(name) for name in names]  # every name checked before any work
    scripts = [
        (profile.name, lint_script(f"job_wrapper.{profile.name}.sh", render_wrapper(profile)))
        for profile in profiles
    ]
    scripts += [
        (f"remote/{step}", lint_script(f"{step}.sh", step_script(step), shell="sh"))
        for step in step_names()
    ]
    batch = batch_script("lint", "", ["true"])
    scripts.append(("slurm/batch", lint_script("batch.sh", batch, shell="sh")))
    dirty = sum(not result.clean for _, result in scripts)
    if args.json:
        from solverpilot_deploy.shapes import document

        shown = [
            {"name": label, "clean": result.clean, "findings": result.findings or None}
            for label, result in scripts
        ]
        _emit(document("lint", clean=not dirty, scripts=shown))
        return 1 if dirty else 0
    for label, result in scripts:
        if result.clean:
            print(f"{label}: clean")
        else:
            print(f"{label}: shellcheck findings\n{result.findings}")
    return 1 if dirty else 0


def _connect_options(args: argparse.Namespace) -> ConnectOptions:
    from solverpilot_deploy.ssh import TRANSPORTS, ConnectOptions

    if args.transport not in TRANSPORTS:  # from $SP_DEPLOY_TRANSPORT, which argparse trusts
        raise UsageError(f"no such transport: {args.transport!r} (use {', '.join(TRANSPORTS)})")
    return ConnectOptions(
        config_file=args.config_file,
        identity=args.identity,
        login=args.login,
        port=args.port,
        known_hosts=Path(args.known_hosts).expanduser() if args.known_hosts else None,
        accept_new=getattr(args, "accept_new", False),
        timeout=args.timeout,
        transport=args.transport,
    )


def _targets(args: argparse.Namespace, names: Sequence[str]) -> list[HostTarget]:
    """The hosts ``names`` stand for: inventory names with --inventory, else host specs.
    Every name is checked before any connection."""
    from solverpilot_deploy.inventory import HostTarget, inventory_targets
    from solverpilot_deploy.ssh import parse_spec

    options = _connect_options(args)
    if args.inventory:
        return inventory_targets(args.inventory, names, options)
    if not names:
        raise UsageError("no HOST given (name hosts, or groups with --inventory FILE)")
    for name in names:
        parse_spec(name)
    return [HostTarget(name, name, options) for name in names]


def _warn(host: str, warning: str) -> None:
    """A host's warning on stderr, safe for a terminal (its words may come from the host)."""
    print(f"sp-deploy: {printable(f'{host}: warning: {warning}')}", file=sys.stderr)


def _print_table(rows: Sequence[Sequence[str]], wrap: bool = False) -> None:
    """tables.render on stdout: on a terminal, fitted to its width (the last column cut, or
    with ``wrap`` wrapped onto lines of its own) and coloured (unless NO_COLOR)."""
    import shutil

    from solverpilot_deploy.tables import render, use_colour

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    sys.stdout.write(render(rows, width, use_colour(sys.stdout), wrap))


def _run_fleet(
    args: argparse.Namespace,
    operation: Operation,
    good: set[str],
    untouched: str | None = None,
    report: Callable[[list[HostResult]], None] | None = None,
) -> int:
    """``operation`` on every host of ``args``; a host whose operation never returned a result
    (no connection, an interrupt, a failed probe) gets outcome ``untouched``. On a terminal
    (stderr), a live progress line; -q: only the hosts that did not succeed; -v: each host's
    steps with their times as it ends. ``report`` prints the results (default: the deploy
    table, or with --json their document)."""
    import dataclasses
    import time

    from solverpilot_deploy.fleet import all_skipped, run_fleet
    from solverpilot_deploy.progress import Progress
    from solverpilot_deploy.shapes import document

    progress: Progress | None = None
    began: dict[str, float] = {}

    def say(text: str) -> None:
        if progress is not None:
            progress.say(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def on_start(host: str) -> None:
        began[host] = time.monotonic()
        if progress is not None:
            progress.started(host)

    def on_done(result: HostResult) -> None:
        if progress is not None:
            progress.finished(result.host, result.status)
        if not getattr(args, "quiet", False):
            for warning in result.warnings:
                say(f"sp-deploy: {printable(f'{result.host}: warning: {warning}')}")
        if getattr(args, "verbose", False):
            took = time.monotonic() - began.get(result.host, time.monotonic())
            steps = ", ".join(f"{name} {sec:.2f}s" for name, sec in getattr(result, "steps", ()))
            said = f"{result.host}: {result.status} in {took:.2f}s" + (
                f" ({steps})" if steps else ""
            )
            say(f"  {printable(said)}")

    def on_interrupt(count: int) -> None:
        if count == 1:
            say(
                "sp-deploy: interrupted: hosts not yet changed are given up, the others end "
                "their step (another Ctrl-C aborts them)"
            )
        else:
            say("sp-deploy: interrupted again: aborting the connections")

    # from the first host to the last line of the report, INT and TERM are only counted
    # (signals.py): the fleet acts on them, and none cuts the report short
    with signals.counted():
        before = signals.received()
        targets = _targets(args, args.hosts)  # (an inventory is read): an interrupt is counted
        # (a dumb terminal takes no escapes: no line redrawn in place there, as no colours)
        if sys.stderr.isatty() and not args.json and os.environ.get("TERM") != "dumb":
            progress = Progress(sys.stderr, len(targets), good)
        try:
            if signals.received() != before:
                raise KeyboardInterrupt
            with progress or contextlib.nullcontext():
                fleet = run_fleet(
                    targets, operation, args.jobs, on_done, frozenset(good), args.max_fail,
                    args.canary, on_interrupt, on_start,
                )  # fmt: skip
        except KeyboardInterrupt:  # before the fleet could take it: no host was touched
            fleet = all_skipped(targets, "interrupted before any change", True)
        results = [
            r if r.outcome or not untouched else dataclasses.replace(r, outcome=untouched)
            for r in fleet.results
        ]
        if report is not None:
            report(results)
        elif args.json:
            _emit(document(args.command, hosts=[r.as_json() for r in results]))
        else:
            shown = [r for r in results if not args.quiet or r.status not in good]
            rows: list[tuple[str, ...]]
            if args.command == "verify" or getattr(args, "dry_run", False):
                # what is there, what the render is, what push would do about it
                rows = [("HOST", "STATUS", "DISTRO", "HOST_SHA256", "RENDER_SHA256", "PUSH_WOULD",
                         "ERROR")]  # fmt: skip
                rows += [
                    (r.host, r.status, r.distro or "-", (r.current_sha256 or "-")[:12],
                     (r.render_sha256 or "-")[:12], r.action or "-", r.error or "")
                    for r in shown
                ]  # fmt: skip
            else:
                rows = [("HOST", "STATUS", "DISTRO", "SHA256", "ERROR")]
                rows += [
                    (r.host, r.status, r.distro or "-", (r.sha256 or "-")[:12], r.error or "")
                    for r in shown
                ]
            if len(rows) > 1:
                _print_table(rows, wrap=True)
        sys.stdout.flush()
        if fleet.interrupted or signals.received() != before:
            print("sp-deploy: interrupted", file=sys.stderr)
            return 130
    return 0 if all(r.status in good for r in results) else 1


def cmd_push(args: argparse.Namespace) -> int:
    from solverpilot_deploy.deploy import push_host
    from solverpilot_deploy.host_facts import Memory

    _require_profile(args.distro)

    def operation(session: Session, host: str, deadline: float, stop: Event) -> HostResult:
        return push_host(
            session, host, args.distro, deadline, args.dry_run, not args.no_smoke, stop,
            Memory(host),
        )  # fmt: skip

    # a host the push never reached its install step on keeps its old wrapper
    return _run_fleet(args, operation, {"deployed", "unchanged", "would-deploy"}, "old")


def cmd_verify(args: argparse.Namespace) -> int:
    from solverpilot_deploy.deploy import verify_host
    from solverpilot_deploy.host_facts import Memory

    _require_profile(args.distro)

    def operation(session: Session, host: str, deadline: float, stop: Event) -> HostResult:
        return verify_host(session, host, args.distro, deadline, Memory(host))

    return _run_fleet(args, operation, {"ok"})


def _on_host(args: argparse.Namespace, work: Callable[[Session, float], T], sent: str = "") -> T:
    """Connect to the one host of ``args``, run ``work(session, deadline)``, name the host in
    its error. A malformed HOST is a usage error before any connection. ``sent``: what may
    have happened on the host once ``work`` began (said with its error, or on Ctrl-C)."""
    import time

    from solverpilot_deploy.transport import connect

    targets = _targets(args, [args.host])
    if len(targets) != 1:
        raise UsageError(f"{args.host} names {len(targets)} hosts of {args.inventory}; name one")
    (target,) = targets
    deadline = time.monotonic() + target.options.timeout
    began = False
    try:
        with connect(target.spec, target.options, deadline) as session:
            for warning in session.warnings:
                _warn(args.host, warning)
            began = True
            return work(session, deadline)
    except UsageError as exc:  # the host said the command line named what is not there
        raise UsageError(f"{args.host}: {exc}") from exc
    except DeployError as exc:
        from solverpilot_deploy.errors import HostTimeoutError, RemoteCommandError

        # said only when no answer came (or the host had begun), not with the host's own "no"
        unknown = isinstance(exc, HostTimeoutError | RemoteCommandError)
        said = (
            f"; {sent}" if began and sent and (unknown or getattr(exc, "maybe_done", False)) else ""
        )
        raise HostFailedError(f"{args.host}: {exc}{said}") from exc
    except KeyboardInterrupt:
        if began and sent:
            print(
                f"sp-deploy: {printable(args.host)}: interrupted; {printable(sent)}",
                file=sys.stderr,
            )
        raise


PREFIX_LEAST = 4  # the shortest prefix a command takes for a job id


def _resolve(session: Session, timeout: float, job_id: str) -> str:
    """The one job of the host whose id begins with ``job_id`` (a short id of status's
    table), for a command that found no job of that exact id; NoJobError when none does, a
    usage error naming them when several do."""
    from solverpilot_deploy.errors import NoJobError
    from solverpilot_deploy.status import read_status

    if len(job_id) >= PREFIX_LEAST:
        jobs, _ = read_status(session, timeout)
        found = [job.id for job in jobs if job.id.startswith(job_id) and job.status != "unreadable"]
        if len(found) == 1:
            return found[0]
        if found:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise UsageError(f"{job_id} begins {len(found)} job ids ({shown}): give more of it")
    raise NoJobError(f"no job {job_id} on this host")


def _either(session: Session, timeout: float, job_id: str, work: Callable[[str], T]) -> T:
    """``work(job_id)``, or when the host has no job of that id, ``work`` of the one whose id
    it begins (_resolve)."""
    from solverpilot_deploy.errors import NoJobError

    try:
        return work(job_id)
    except NoJobError:
        full = _resolve(session, timeout, job_id)
    return work(full)


def _job_ids(ids: Sequence[str]) -> tuple[str, ...]:
    from solverpilot_deploy.status import JOB_ID

    for job_id in ids:
        if not JOB_ID.match(job_id):
            raise UsageError(f"not a job id: {job_id!r} (1-128 of A-Z a-z 0-9 . _ -)")
    return tuple(dict.fromkeys(ids))


def cmd_status(args: argparse.Namespace) -> int:
    from solverpilot_deploy.shapes import document, error_object, host_result
    from solverpilot_deploy.ssh import remaining
    from solverpilot_deploy.tables import job_rows

    for word in args.job_ids:  # status HOST1 HOST2: the second is no job id
        if "@" in word or ":" in word:
            raise UsageError(
                f"{word!r} is not a job id; it looks like a host: status takes its hosts "
                f"comma-separated (status {args.host},{word})"
            )
    wanted = _job_ids(args.job_ids)
    names = list(dict.fromkeys(name for name in args.host.split(",") if name)) or [args.host]
    args.host = names[0] if len(names) == 1 else args.host
    if len(names) > 1 or (args.inventory and len(_targets(args, names)) > 1):
        return _status_of_hosts(args, names, wanted)
    jobs, warnings, missing = _on_host(  # (the answer's silence gets the whole --timeout,
        # not what the login left of it: README "one that stops for --timeout seconds")
        args,
        lambda session, end: _read_wanted(session, max(remaining(end), args.timeout), wanted),
    )
    for warning in warnings:
        _warn(args.host, warning)
    for job_id in missing:  # as cancel and logs say it; the jobs found are listed still
        hint = (
            " (the words after HOST are job ids; several hosts go comma-separated: H1,H2)"
            if job_id == wanted[0]
            else ""
        )
        print(f"sp-deploy: error: no job {job_id} on {printable(args.host)}{hint}", file=sys.stderr)
    if args.json:  # as for several hosts: the host answered (no error of its own), the ids
        # it lacks in its missing, and those on no host as the document's error
        shown = host_result(
            args.host, "ok", None, warnings, jobs=[job.as_json() for job in jobs], missing=missing
        )
        error = error_object("no_job", f"no job {', '.join(missing)} on {args.host}")
        _emit(document("status", hosts=[shown], **({"error": error} if missing else {})))
        return 1 if missing else 0
    if missing and not jobs:
        return 1
    _print_table(job_rows(jobs, args.wide))
    return 1 if missing else 0


def _read_wanted(
    session: Session, timeout: float, wanted: tuple[str, ...]
) -> tuple[list[Any], tuple[str, ...], list[str]]:
    """status's jobs (``wanted`` only, when given; a short id of its table, a prefix, stands
    for the one job it begins), its warnings, and the ids given that are no job."""
    from solverpilot_deploy.errors import NoJobError
    from solverpilot_deploy.status import read_status

    jobs, warnings = read_status(session, timeout, wanted)
    found = {job.id for job in jobs}
    missing, whole = [], []
    for job_id in (job_id for job_id in wanted if job_id not in found):
        try:
            whole.append(_resolve(session, timeout, job_id))
        except NoJobError:
            missing.append(job_id)
    if whole:
        jobs, warnings = read_status(session, timeout, tuple(dict.fromkeys((*found, *whole))))
    return jobs, warnings, missing


def _status_of_hosts(args: argparse.Namespace, names: list[str], wanted: tuple[str, ...]) -> int:
    """status of many hosts (HOST,HOST... or an inventory group): a fleet command, one table
    with a HOST column, or --json's host results; exit 1 when a host failed, or a job asked
    for is on none of them."""
    from solverpilot_deploy.deploy import HostResult
    from solverpilot_deploy.shapes import document, error_object, host_result
    from solverpilot_deploy.ssh import remaining
    from solverpilot_deploy.status import read_status
    from solverpilot_deploy.tables import job_rows

    found: dict[str, list[Any]] = {}

    def operation(session: Session, host: str, deadline: float, stop: Event) -> HostResult:
        jobs, warnings = read_status(session, remaining(deadline), wanted)
        found[host] = jobs
        return HostResult(host, "ok", warnings=warnings)

    missing: list[str] = []
    where = "any of these hosts"

    def report(results: list[HostResult]) -> None:
        nonlocal where
        seen = {job.id for jobs in found.values() for job in jobs}
        missing.extend(job_id for job_id in wanted if job_id not in seen)
        if any(r.status != "ok" for r in results):
            where = "the hosts that answered"
        for job_id in missing:  # (with --json too, as for one host)
            print(f"sp-deploy: error: no job {job_id} on {where}", file=sys.stderr)
        if args.json:
            shown = []
            for r in results:
                here = found.get(r.host, [])
                gone = [i for i in wanted if r.status == "ok" and i not in {j.id for j in here}]
                shown.append(host_result(
                    r.host, r.status, r.as_json()["error"], r.warnings,
                    jobs=[job.as_json() for job in here], missing=gone,
                ))  # fmt: skip
            error = None
            if missing:
                error = error_object("no_job", f"no job {', '.join(missing)} on {where}")
            _emit(document("status", hosts=shown, **({"error": error} if error else {})))
            return
        rows = [["HOST", *job_rows([], args.wide)[0]]]
        for r in results:
            if r.status != "ok":
                print(f"sp-deploy: {printable(f'{r.host}: {r.error}')}", file=sys.stderr)
                continue
            rows += [[r.host, *row] for row in job_rows(found.get(r.host, []), args.wide)[1:]]
        _print_table(rows)

    args.hosts = names
    code = _run_fleet(args, operation, {"ok"}, report=report)
    return code if code else (1 if missing else 0)


def _describe(state: dict[str, Any]) -> str:
    """One line for a job's state: status, exit code, signal."""
    words = [str(state.get("id", "?")), str(state.get("status", "?"))]
    if state.get("exit_code") is not None:
        words.append(f"exit {state['exit_code']}")
    if state.get("signal"):
        words.append(f"signal {state['signal']}")
    return " ".join(words)


SLURM_ONLY = ("partition", "mem", "cpus")


def _time_limit(text: str) -> int:
    """--time: MINUTES or MINUTES:SECONDS (as Slurm reads it), in seconds above 0."""
    minutes, _, seconds = text.partition(":")
    if not (minutes.isascii() and minutes.isdigit()) or (
        seconds and not (seconds.isascii() and seconds.isdigit() and int(seconds) < 60)
    ):
        raise argparse.ArgumentTypeError(
            f"must be MINUTES or MINUTES:SECONDS, e.g. 90 or 0:30: {text!r}"
        )
    total = int(minutes) * 60 + int(seconds or 0)
    if not 0 < total <= 10**7 * 60:
        raise argparse.ArgumentTypeError(f"must be a number above 0, at most {10**7}: {text!r}")
    return total


def _job_spec(args: argparse.Namespace) -> Any:
    from solverpilot_deploy.jobs import JobSpec

    after = tuple(word for part in args.after or () for word in part.split(",") if word)
    _job_ids(after)
    try:
        return JobSpec(
            tuple(args.command_argv), args.cwd or "", args.name, args.queue, after,
            args.time, args.save_before,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_run(args: argparse.Namespace) -> int:
    from solverpilot_deploy.jobs import new_job_id, run_job
    from solverpilot_deploy.ssh import remaining

    if not args.command_argv:
        raise UsageError(
            "no command: it goes after '--': sp-deploy run HOST [options] -- COMMAND [ARG...]"
        )
    (job_id,) = _job_ids([args.id or new_job_id()])
    if args.name is not None and (len(args.name) > 200 or not args.name.isprintable()):
        raise UsageError("--name: at most 200 printable characters")
    if args.via == "slurm":
        return _run_slurm(args, job_id)
    given = [name for name in SLURM_ONLY if getattr(args, name) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise UsageError(f"{option} is for --via slurm")
    spec = _job_spec(args)
    started = _on_host(
        args,
        lambda session, end: run_job(
            session, job_id, spec.cwd, list(spec.argv), remaining(end), spec
        ),
        f"job {job_id} may have started: see sp-deploy status {args.host} {job_id}",
    )
    _started(args, job_id, started, spec)
    return 0


def _started(args: argparse.Namespace, job_id: str, started: Any, spec: Any) -> None:
    """What run and restart print: the id (on a terminal, how to follow the job), or the
    job's object."""
    from solverpilot_deploy.shapes import document
    from solverpilot_deploy.status import recorded_job

    for warning in started.warnings:
        _warn(args.host, warning)
    job = recorded_job(job_id, started.state, spec.json_head() + "}")
    if args.json:
        _emit(document(args.command, host=args.host, job=job.as_json(), warnings=started.warnings))
        return
    print(job_id)
    if sys.stdout.isatty():
        import shlex

        given = (
            ("-F", args.config_file), ("-i", args.identity), ("-l", args.login),
            ("-p", args.port), ("--known-hosts", args.known_hosts),
            ("--inventory", args.inventory),
            # (paramiko, the default, cannot go through what made the user choose another)
            ("--transport", args.transport if args.transport != "paramiko" else None),
        )  # fmt: skip
        opts = "".join(f" {flag} {shlex.quote(str(v))}" for flag, v in given if v)
        at = printable(f"{shlex.quote(args.host)} {job_id}{opts}")
        print(
            f"  {job.status}; follow it: sp-deploy logs -f {at}\n"
            f"  its end: sp-deploy wait {at}\n  stop it: sp-deploy cancel {at}"
        )


def _run_slurm(args: argparse.Namespace, job_id: str) -> int:
    from solverpilot_deploy.shapes import document
    from solverpilot_deploy.slurm import SlurmOptions, submit_job
    from solverpilot_deploy.ssh import remaining
    from solverpilot_deploy.status import JobState

    if args.queue is not None:
        raise UsageError("--queue is for tmux jobs: under --via slurm, Slurm queues the job")
    if args.name is not None:
        raise UsageError("--name is for tmux jobs; Slurm's job name is solverpilot_USER_ID")
    try:
        after = _job_ids([word for part in args.after or () for word in part.split(",") if word])
        options = SlurmOptions(
            args.partition, args.time, args.mem, args.cpus, args.save_before, after
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    done = _on_host(
        args,
        lambda session, end: submit_job(
            session, job_id, args.cwd or "", args.command_argv, options, remaining(end)
        ),
    )
    for warning in done.warnings:
        _warn(args.host, warning)
    if args.json:
        job = JobState(job_id, "submitted", slurm_job_id=done.slurm_job_id)
        _emit(document("run", host=args.host, job=job.as_json(), warnings=done.warnings))
    else:
        print(printable(f"{job_id} {done.slurm_job_id}"))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    import contextlib

    from solverpilot_deploy.jobs import cancel_job
    from solverpilot_deploy.shapes import document
    from solverpilot_deploy.ssh import remaining
    from solverpilot_deploy.status import read_status, recorded_job

    (given,) = _job_ids([args.job_id])
    ids = [given]  # the job's whole id once known (a prefix given)
    read: list[Any] = []  # the job as status reads it after the cancel (--json)

    def cancel(session: Session, end: float, job_id: str) -> Any:
        ids.append(job_id)
        # on top of the usual deadline: --wait for a start, then --wait for the stop (or
        # for --force's TERM, then 5 s after its KILL)
        done = cancel_job(
            session, job_id, int(args.wait), remaining(end) + 2 * int(args.wait) + 5, args.force
        )
        if args.json:  # the whole job object, as status and wait give it (name, argv, tmux...)
            with contextlib.suppress(DeployError):
                read.extend(read_status(session, max(remaining(end), 10.0), (job_id,))[0])
        return done

    done = _on_host(
        args,
        lambda session, end: _either(
            session, remaining(end), given, lambda job_id: cancel(session, end, job_id)
        ),
        f"job {given} may have been stopped: see sp-deploy status {args.host} {given}",
    )
    job_id = ids[-1]
    for warning in done.warnings:
        _warn(args.host, warning)
    if args.json:
        job = read[0] if read and read[0].id == job_id else recorded_job(job_id, done.state)
        _emit(document(
            "cancel", host=args.host, job=job.as_json(),
            already_ended=done.was is not None, recorded_by_sp_deploy=done.wrote,
            signalled=list(done.signalled), warnings=list(done.warnings),
        ))  # fmt: skip
        return 0
    said = printable(_describe(done.state))
    named = ", ".join(done.signalled)
    if done.signalled and done.wrote:
        said += f" (its wrapper was gone: sp-deploy signalled {named} and wrote this record)"
    elif done.signalled:
        said += f" (it had ended; sp-deploy signalled what it left: {named})"
    elif done.never_started:
        said += " (it never started: sp-deploy wrote this record)"
    elif done.wrote:
        said += " (its wrapper could not record it: sp-deploy did)"
    elif done.was is not None:
        said += " (it had already ended: nothing changed)"
    print(said)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from solverpilot_deploy.jobs import queues
    from solverpilot_deploy.shapes import document
    from solverpilot_deploy.ssh import remaining

    if args.slots is not None and args.name is None:
        raise UsageError("--slots needs a queue NAME: sp-deploy queue HOST NAME --slots N")
    found = _on_host(
        args, lambda session, end: queues(session, remaining(end), args.name, args.slots)
    )
    if args.json:
        _emit(document("queue", host=args.host, queues=[queue.as_json() for queue in found]))
        return 0
    if args.name and not found:  # a queue never set nor used: its default
        print(f"{args.name}: 1 slot (the default), nothing queued")
        return 0
    rows = [("QUEUE", "SLOTS", "RUNNING", "WAITING")]
    rows += [(q.name, str(q.slots), str(q.running), str(q.waiting)) for q in found]
    if len(rows) > 1:
        _print_table(rows)
    return 0


ENDED = ("completed", "failed", "lost", "unreadable")  # wait: these will not change


def exit_code_of(jobs: Sequence[Any]) -> int:
    """wait's (and logs -f's) exit status: one job's own exit code (1 when it has none, e.g.
    lost or never started); for several, 0 when all completed, else 1."""
    if len(jobs) == 1:
        job = jobs[0]
        if job.status == "completed":
            return 0
        code = job.exit_code
        return code if isinstance(code, int) and 0 < code < 256 else 1
    return 0 if all(job.status == "completed" for job in jobs) else 1


def cmd_wait(args: argparse.Namespace) -> int:
    import time

    from solverpilot_deploy.shapes import document
    from solverpilot_deploy.status import read_status
    from solverpilot_deploy.tables import status_words

    wanted = _job_ids(args.job_ids)
    end = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    if args.wait_timeout is not None:  # the login too gives up by then (a host that hangs)
        args.timeout = min(STEP_TIMEOUT, max(args.wait_timeout, 1.0))
    told: set[str] = set()

    def bound() -> float:
        """Each look's deadline: within --timeout (a second past it at most), else 60 s."""
        left = STEP_TIMEOUT if end is None else end - time.monotonic() + 1.0
        return min(STEP_TIMEOUT, max(left, 1.0))

    def on_end(jobs: list[Any]) -> None:  # each job's end once, as soon as it is seen
        import contextlib
        import signal

        from solverpilot_deploy.watch import run_on_end

        for job in jobs:
            if not args.on_end or job.status not in ENDED or job.id in told:
                continue
            told.add(job.id)
            running: list[Any] = []
            try:
                failure = run_on_end(args.on_end, args.host, job, args.json, running.append)
            except KeyboardInterrupt:  # the command, in a session of its own, ends too
                for proc in running:
                    with contextlib.suppress(OSError):
                        os.killpg(proc.pid, signal.SIGTERM)
                raise
            if failure:
                print(f"sp-deploy: wait: {printable(failure)}", file=sys.stderr)

    def watch(session: Session, _deadline: float) -> tuple[list[Any], bool]:
        nonlocal wanted
        while True:
            jobs, _ = read_status(session, bound(), wanted)
            found = {job.id for job in jobs}
            missing = [job_id for job_id in wanted if job_id not in found]
            if missing:  # short ids (prefixes) of status's table, made whole once
                full = {i: _resolve(session, bound(), i) for i in missing}
                wanted = tuple(dict.fromkeys(full.get(i, i) for i in wanted))
                continue
            on_end(jobs)
            if all(job.status in ENDED for job in jobs):
                return jobs, True
            if end is not None and time.monotonic() >= end:
                return jobs, False
            pause = 1.0 if end is None else max(0.0, min(1.0, end - time.monotonic()))
            time.sleep(pause)

    jobs, ended = _on_host(args, watch)
    if args.json:
        _emit(document("wait", host=args.host, ended=ended, jobs=[job.as_json() for job in jobs]))
    else:
        for job in jobs:
            words = f"{job.id} {status_words(job)}"
            if job.exit_code is not None:
                words += f" exit {job.exit_code}"
            print(printable(words))
    if not ended:
        print(
            f"sp-deploy: {printable(args.host)}: timeout: not all ended after "
            f"{args.wait_timeout:g} s",
            file=sys.stderr,
        )
        return WAIT_TIMEOUT
    return exit_code_of(jobs)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from solverpilot_deploy.reconcile import reconcile
    from solverpilot_deploy.shapes import line
    from solverpilot_deploy.ssh import remaining

    changes = _on_host(
        args,  # (the step may wait --db-wait for the DB, whatever --timeout says)
        lambda session, end: reconcile(
            session, max(remaining(end), args.db_wait + 30), args.db_wait
        ),
    )
    for change in changes:
        if args.json:
            _emit_line(line(host=args.host, **change.as_json()))
        else:
            print(change.words())
    if not args.json and not changes:
        print(f"{printable(args.host)}: the DB already agrees with the jobs' records")
    return 0


def _event_words(event: Any) -> str:
    """One event as a line for people: time, host, id, what happened, the job's status."""
    from solverpilot_deploy.tables import status_words

    clock = event.time[11:19]
    if event.job is None:
        said = f": {event.error}" if event.error else ""
        return printable(f"{clock} {event.host} {event.event}{said}")
    words = status_words(event.job)
    if event.job.exit_code is not None:
        words += f" exit {event.job.exit_code}"
    if event.job.signal:
        words += f" {event.job.signal}"
    return printable(f"{clock} {event.host} {event.job.id} {event.event}: {words}")


def cmd_watch(args: argparse.Namespace) -> int:
    import json
    import threading
    import time

    from solverpilot_deploy.watch import ENDS, HostWatch, OnEnd

    targets = _targets(args, args.hosts)
    said = threading.Lock()
    stop = threading.Event()

    def report(text: str) -> None:
        with said:
            print(f"sp-deploy: watch: {printable(text)}", file=sys.stderr, flush=True)

    on_end = OnEnd(args.on_end, report, args.json) if args.on_end else None

    def emit(event: Any) -> None:
        with said:
            if stop.is_set():
                return
            try:
                print(json.dumps(event.as_json()) if args.json else _event_words(event), flush=True)
            except OSError:  # the reader has gone (watch | head): the watch ends, quietly
                stop.set()
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return
        if event.event in ("disconnected", "reconnected", "failed") and args.json:
            report(f"{event.host}: {event.event}" + (f": {event.error}" if event.error else ""))
        if on_end is not None and event.event in ENDS and event.job is not None:
            on_end(event.host, event.job)

    watches = [HostWatch(target, emit, stop, beat=args.beat) for target in targets]
    threads = [threading.Thread(target=w.run, name=w.target.name, daemon=True) for w in watches]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads) and not stop.is_set():
            time.sleep(0.2)
        if stop.is_set():  # stdout was closed
            for watch in watches:
                watch.abort()
            return 1
    except KeyboardInterrupt:
        stop.set()
        for watch in watches:
            watch.abort()
        for thread in threads:
            thread.join(5)
        if on_end is not None:
            on_end.close(wait=False)
        return 130
    if on_end is not None:
        on_end.close(wait=True)
    return 1  # every host's watch failed for good (a server folder refused)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> int:
    """--older-than: a whole number and a unit (s m h d w), e.g. 7d or 12h; in seconds."""
    number, unit = text[:-1], text[-1:]
    if not (number.isascii() and number.isdigit() and unit in DURATION_UNITS):
        raise argparse.ArgumentTypeError(
            f"must be a number and a unit (s m h d w), e.g. 7d: {text!r}"
        )
    seconds = int(number) * DURATION_UNITS[unit]
    if seconds > MAX_AGE:  # the host's sh counts in 64 bits; no job is older than this
        raise argparse.ArgumentTypeError(f"at most 520w (10 years): {text!r}")
    return seconds


MAX_AGE = 520 * 604800


def cmd_clean(args: argparse.Namespace) -> int:
    import contextlib

    from solverpilot_deploy.errors import NoJobError
    from solverpilot_deploy.jobs import CLEANABLE, Cleaned, clean_jobs
    from solverpilot_deploy.shapes import document
    from solverpilot_deploy.ssh import remaining

    wanted = _job_ids(args.job_ids)
    statuses = tuple(dict.fromkeys(args.status or CLEANABLE))

    def clean(session: Session, end: float) -> Cleaned:
        done = clean_jobs(session, remaining(end), wanted, args.older_than or 0, statuses)
        # a short id (prefix) of status's table, as every command that names a job takes it
        full: dict[str, str] = {}
        for job_id, why in done.kept:
            if why == "no record":
                with contextlib.suppress(NoJobError):
                    full[job_id] = _resolve(session, remaining(end), job_id)
        if not full:
            return done
        more = clean_jobs(
            session, remaining(end), tuple(full.values()), args.older_than or 0, statuses
        )
        return Cleaned(
            done.removed + more.removed,
            tuple(kept for kept in done.kept if kept[0] not in full) + more.kept,
            done.warnings + more.warnings,
        )

    done = _on_host(args, clean)
    for warning in done.warnings:
        _warn(args.host, warning)
    if args.json:
        removed = [{"id": i, "status": s} for i, s in done.removed]
        kept = [{"id": i, "why": why} for i, why in done.kept]
        _emit(document("clean", host=args.host, removed=removed, kept=kept))
    else:
        for job_id, status in done.removed:
            print(f"removed {job_id} ({status})")
    for job_id, why in done.kept:
        print(f"sp-deploy: {printable(args.host)}: kept {job_id}: {why}", file=sys.stderr)
    return 1 if done.kept else 0


def cmd_restart(args: argparse.Namespace) -> int:
    from solverpilot_deploy.jobs import JobError, JobSpec, new_job_id, run_job
    from solverpilot_deploy.ssh import remaining
    from solverpilot_deploy.status import read_status

    (old,) = _job_ids([args.job_id])
    (job_id,) = _job_ids([args.id or new_job_id()])

    specs: list[Any] = []  # the spec restart made, for its output

    def restart(session: Session, end: float) -> Any:
        nonlocal old
        jobs, _ = read_status(session, remaining(end), (old,))
        if not jobs:  # a short id (prefix) of status's table
            old = _resolve(session, remaining(end), old)
            jobs, _ = read_status(session, remaining(end), (old,))
        (job,) = jobs
        if job.status not in ENDED or job.status == "unreadable":
            raise JobError(f"job {old} is {job.status}: restart runs an ended job again")
        if job.argv is None:
            raise JobError(
                f"job {old} has no recorded command (it was run before sp-deploy kept one, or "
                "not through sp-deploy run)"
            )
        try:
            spec = JobSpec(
                job.argv, job.cwd or "", job.name, job.queue, (), job.time_limit_s,
                job.save_before_s, restart_of=old,
            )  # fmt: skip
        except ValueError as exc:  # a spec another version, or a full disk, wrote
            raise JobError(f"job {old}'s recorded command cannot be run again: {exc}") from exc
        specs.append(spec)
        try:
            return run_job(session, job_id, spec.cwd, list(spec.argv), remaining(end), spec)
        except (DeployError, KeyboardInterrupt) as exc:
            said = f"job {job_id} may have started: see sp-deploy status {args.host} {job_id}"
            if isinstance(exc, KeyboardInterrupt):
                print(f"sp-deploy: {printable(args.host)}: interrupted; {said}", file=sys.stderr)
                raise
            raise type(exc)(f"{exc.args[0] if exc.args else exc}; {said}") from exc

    started = _on_host(args, restart)
    _started(args, job_id, started, specs[-1])
    return 0


STEP_TIMEOUT = 60.0  # wait: the deadline of each look at the jobs
WAIT_TIMEOUT = 124  # wait --timeout ran out (as timeout(1) says it)
SLURM_UNANSWERED_READS = 5  # logs -f: reads of a final record Slurm cannot confirm, at most


def cmd_logs(args: argparse.Namespace) -> int:
    import codecs
    import time

    from solverpilot_deploy.errors import NoJobError
    from solverpilot_deploy.jobs import JobError, read_log

    (job_id,) = _job_ids([args.job_id])
    out = sys.stdout.buffer
    chunk_most = 4 * 1024 * 1024

    emitted = 0  # the job's bytes printed so far (--json's offset)
    # (--json's text: a character cut between two reads goes with the second, whole)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(data: bytes, final: bool = False) -> None:
        """The job's bytes as they are, or (--json) as a line: base64, and as text."""
        nonlocal emitted
        emitted += len(data)
        if not args.json:
            view = memoryview(data)
            while view:  # a reader gone mid-chunk: a short count, then BrokenPipeError
                written = out.write(view)
                if not written:
                    raise BrokenPipeError("stdout was closed")
                view = view[written:]
            out.flush()
        elif data or final:
            import base64

            from solverpilot_deploy.shapes import line

            text = decoder.decode(data, final)
            if not data and not text:
                return
            _emit_line(line(
                host=args.host, id=job_id, offset=emitted - len(data),
                data=base64.b64encode(data).decode("ascii"), text=text,
            ))  # fmt: skip

    def follow(session: Session, _deadline: float) -> None:
        nonlocal job_id
        offset = 0
        resolved = False
        unanswered = False  # Slurm could not answer at the last read: said once
        ended_unanswered = 0  # reads in a row of a final record Slurm could not confirm
        while True:
            try:
                chunk = read_log(session, job_id, offset, chunk_most, args.timeout)
            except NoJobError:
                if offset or resolved:
                    raise
                job_id, resolved = _resolve(session, args.timeout, job_id), True  # a short id
                continue
            if args.follow and chunk.slurm == "unknown" and not unanswered:
                why = f" ({chunk.slurm_error})" if chunk.slurm_error else ""
                print(
                    f"sp-deploy: {args.host}: warning: Slurm could not answer{why}; "
                    "still following",
                    file=sys.stderr,
                )
            unanswered = chunk.slurm == "unknown"
            if chunk.size < offset:  # truncated (rotated in place): from its new start
                offset = 0
                continue
            write(chunk.data)
            offset += len(chunk.data)
            if offset < chunk.size:
                continue  # more is there already
            if not args.follow:
                return
            if chunk.tmux_lost:
                raise JobError(
                    f"job {job_id} is lost: its wrapper is gone (see status); the log ends here"
                )
            if not chunk.more_to_come:
                # a final record while Slurm cannot answer may be an attempt's end before a
                # requeue: a few more reads (Slurm busy for a moment) before it counts as the end
                if chunk.slurm != "unknown" or ended_unanswered >= SLURM_UNANSWERED_READS:
                    return
                ended_unanswered += 1
            else:
                ended_unanswered = 0
            time.sleep(0.5)

    def follow_to_end(session: Session, deadline: float) -> int:
        from solverpilot_deploy.status import read_status

        follow(session, deadline)
        write(b"", final=True)  # (--json: a character the log ends inside of, replaced)
        if not args.follow:
            return 0
        jobs, _ = read_status(session, args.timeout, (job_id,))  # how it ended: the exit code
        if args.json and jobs:
            from solverpilot_deploy.shapes import line

            _emit_line(line(host=args.host, id=job_id, event="ended", job=jobs[0].as_json()))
        return exit_code_of(jobs) if jobs else 1

    return _on_host(args, follow_to_end)


def _positive(kind: type[int] | type[float], most: int) -> Callable[[str], int | float]:
    """A parser of a finite number in (0, most]: inf, nan and the like are usage errors."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text) if text.isascii() else 0  # int("٣") is 3
        except ValueError:
            value = 0
        if not math.isfinite(value) or not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"must be a number above 0, at most {most}: {text!r}")
        return value

    return parse


def _require_profile(name: str) -> None:
    """An unknown --distro is a usage error before any connection is made."""
    from solverpilot_deploy.profiles import load_profile

    if name != "auto":
        load_profile(name)


def _add_ssh_options(
    parser: argparse.ArgumentParser, accept_new: bool = True, timeout: bool = True
) -> None:
    group = parser.add_argument_group("ssh")
    group.add_argument("-F", dest="config_file", metavar="FILE", help="ssh config file")
    group.add_argument("-i", dest="identity", metavar="KEY", help="identity (private key) file")
    group.add_argument("-l", dest="login", metavar="USER", help="remote user")
    group.add_argument(
        "-p", dest="port", type=_positive(int, 65535), metavar="PORT", help="remote port"
    )
    group.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="known_hosts file (default: the config's UserKnownHostsFile and "
        "GlobalKnownHostsFile; /dev/null there means ~/.ssh/known_hosts)",
    )
    group.add_argument(
        "--transport",
        choices=("paramiko", "openssh", "auto"),
        default=os.environ.get("SP_DEPLOY_TRANSPORT") or "paramiko",
        help="paramiko (default, or $SP_DEPLOY_TRANSPORT); openssh: the system ssh "
        "(ControlMaster, ProxyCommand, 2FA prompts, certificates, FIDO keys); auto: openssh "
        "where the ssh config needs it",
    )
    group.add_argument(
        "--inventory",
        metavar="FILE",
        help="an Ansible inventory; HOST names its hosts or groups (needs ansible-core)",
    )
    if accept_new:
        group.add_argument(
            "--accept-new",
            action="store_true",
            help="trust and record the key of a host not yet known (a changed key is refused)",
        )
    if timeout:  # (wait's --timeout is how long to wait)
        group.add_argument(
            "--timeout",
            type=_positive(float, 86400),
            default=60.0,
            metavar="SECONDS",
            help="deadline per host (default 60)",
        )
    parser.add_argument("--json", action="store_true", help="print only JSON on stdout")


def _add_fleet_options(parser: argparse.ArgumentParser) -> None:
    said = parser.add_mutually_exclusive_group()
    said.add_argument(
        "-q", "--quiet", action="store_true", help="list only the hosts that did not succeed"
    )
    said.add_argument(
        "-v", "--verbose", action="store_true", help="each host's steps and times as it ends"
    )
    parser.add_argument(
        "-j", dest="jobs", type=_positive(int, 1024), default=8, metavar="N", help="hosts at once"
    )
    parser.add_argument(
        "--max-fail",
        type=_positive(int, 1 << 20),
        metavar="N",
        help="start no new host once N hosts have failed (those are reported skipped)",
    )
    parser.add_argument(
        "--canary",
        type=_positive(int, 1 << 20),
        metavar="K",
        help="the first K hosts alone first; the rest only if all of them succeed",
    )


class ArgumentsError(Exception):
    """A command line argparse refused: ``parser`` is the command's own (its usage)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors main() reports (with the command's own usage) instead
    of exiting from inside argparse. No abbreviated options (--js for --json): a word either
    is an option or is refused."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required: "):
            optional = {a.metavar for a in self._actions if a.nargs in ("*", "?")}
            needed = [w for w in message.split(": ", 1)[1].split(", ") if w not in optional]
            message = f"the following arguments are required: {', '.join(needed)}"
        if message.startswith("argument COMMAND: invalid choice: "):
            import difflib

            word = message.split("'")[1] if "'" in message else ""
            names = list(COMMANDS)
            close = difflib.get_close_matches(word, names, 1, 0.6)
            message = f"no command {word!r}" + (f"; did you mean {close[0]}?" if close else "")
            message += f" (commands: {', '.join(names)})"
        raise ArgumentsError(self, message)


COMMANDS: dict[str, argparse.ArgumentParser] = {}  # each command's parser, by build_parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sp-deploy",
        description="Render, lint and deploy the SolverPilot job wrapper.",
        epilog="Exit codes: 0 ok, 1 failure, lint findings or no such job, 2 usage error, 124 "
        "wait --timeout ran out, 130 interrupted (README: each command's).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = sub.add_parser("render", help="render job_wrapper.sh for one distro profile")
    render.add_argument("--distro", required=True, metavar="NAME", help="profile name")
    render.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write FILE atomically, executable as the umask allows (default, or -: stdout; "
        "a device or fifo is written directly; what another user planted in /tmp is refused)",
    )
    render.add_argument(
        "--json", action="store_true", help="print a JSON document: distro, sha256, the script"
    )
    render.set_defaults(func=cmd_render)

    profiles = sub.add_parser("profiles", help="list the distro profiles and what they target")
    profiles.add_argument("--json", action="store_true", help="print only JSON on stdout")
    profiles.set_defaults(func=cmd_profiles)

    lint = sub.add_parser(
        "lint", help="run shellcheck on rendered wrappers (all by default) and the remote steps"
    )
    lint.add_argument(
        "--distro",
        action="append",
        metavar="NAME",
        help="a profile to lint; repeat it for more (--distro debian --distro alpine)",
    )
    lint.add_argument("--json", action="store_true", help="print only JSON on stdout")
    lint.set_defaults(func=cmd_lint)

    push = sub.add_parser("push", help="deploy the wrapper to hosts over SSH")
    push.add_argument(
        "hosts",
        nargs="*",
        metavar="HOST",
        help="ssh alias or [user@]host[:port]; with --inventory, hosts or groups (default all)",
    )
    push.add_argument("--distro", default="auto", metavar="NAME", help="profile (default auto)")
    push.add_argument("--dry-run", action="store_true", help="connect and probe, change nothing")
    push.add_argument("--no-smoke", action="store_true", help="skip the smoke run")
    _add_fleet_options(push)
    _add_ssh_options(push)
    push.set_defaults(func=cmd_push, more_positionals="hosts")

    verify = sub.add_parser("verify", help="compare each host's wrapper with the render")
    verify.add_argument("hosts", nargs="*", metavar="HOST")
    verify.add_argument("--distro", default="auto", metavar="NAME", help="profile (default auto)")
    _add_fleet_options(verify)
    _add_ssh_options(verify)
    verify.set_defaults(func=cmd_verify, more_positionals="hosts")

    status = sub.add_parser("status", help="list the jobs recorded on a host")
    status.add_argument(
        "host",
        metavar="HOST",
        help="a host; or several, comma-separated, or an inventory group: one table of all",
    )
    status.add_argument(
        "job_ids", nargs="*", metavar="JOB_ID", help="only these jobs (a unique prefix will not do)"
    )
    status.add_argument(
        "-w",
        "--wide",
        action="store_true",
        help="whole ids, commands and times (ISO 8601), the signal and tmux columns",
    )
    status.add_argument(
        "-j", dest="jobs", type=_positive(int, 1024), default=8, metavar="N", help="hosts at once"
    )
    _add_ssh_options(status)
    status.set_defaults(func=cmd_status, more_positionals="job_ids", max_fail=None, canary=None)

    run = sub.add_parser(
        "run",
        help="start a job under the wrapper in a detached tmux session",
        usage="sp-deploy run HOST [--id ID] [--cwd DIR] [--via slurm ...] [options] -- COMMAND "
        "[ARG...]",
    )
    run.add_argument("host", metavar="HOST")
    run.add_argument("--id", metavar="ID", help="the job id (default: a new UUID)")
    run.add_argument("--cwd", metavar="DIR", help="the job's working folder (default: home)")
    run.add_argument(
        "--via",
        choices=("tmux", "slurm"),
        default="tmux",
        help="tmux (default): on HOST itself; slurm: sbatch on HOST, a login node",
    )
    run.add_argument("--name", metavar="LABEL", help="a label status shows")
    run.add_argument(
        "--queue",
        metavar="NAME",
        help="wait on the host for a free slot of queue NAME (sp-deploy queue), then start; "
        "a queue's jobs start in the order they were submitted",
    )
    run.add_argument(
        "--after",
        action="append",
        metavar="ID[,ID...]",
        help="start only once these jobs have completed (exit 0); if one ends otherwise, this "
        "job never runs and is recorded failed (Slurm: --dependency=afterok)",
    )
    run.add_argument(
        "--time",
        type=_time_limit,
        metavar="MINUTES[:SECONDS]",
        help="the time limit: the job is stopped at it (TERM, then KILL after the grace)",
    )
    run.add_argument(
        "--save-before",
        type=_positive(int, 65535),
        metavar="SECONDS",
        help="INT to the job this long before the time limit, so it can save its work",
    )
    slurm = run.add_argument_group("slurm (with --via slurm; default: the cluster's)")
    slurm.add_argument("--partition", metavar="NAME", help="the partition")
    slurm.add_argument("--mem", metavar="SIZE", help="memory per node, e.g. 4000M or 16G")
    slurm.add_argument("--cpus", type=_positive(int, 100000), metavar="N", help="CPUs for the job")
    _add_ssh_options(run)
    run.set_defaults(func=cmd_run)

    cancel = sub.add_parser("cancel", help="stop a running job (TERM, KILL after the grace)")
    cancel.add_argument("host", metavar="HOST")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument(
        "--wait",
        type=_positive(int, 86400),
        default=60,
        metavar="SECONDS",
        help="how long to wait for the job's end (default 60); the wrapper KILLs the job "
        "at its own grace after the TERM (SOLVERPILOT_KILL_GRACE, 10 s by default)",
    )
    cancel.add_argument(
        "--force",
        action="store_true",
        help="a lost job (its wrapper gone) whose processes still hold its lock, or an ended "
        "one that left such processes: stop them through their process groups (TERM, KILL "
        "after --wait); a lost job's end is recorded",
    )
    _add_ssh_options(cancel)
    cancel.set_defaults(func=cmd_cancel)

    queue = sub.add_parser("queue", help="list a host's queues, or set the number of slots of one")
    queue.add_argument("host", metavar="HOST")
    queue.add_argument("name", nargs="?", metavar="NAME", help="only this queue")
    queue.add_argument(
        "--slots",
        type=_positive(int, 100000),
        metavar="N",
        help="how many of NAME's jobs may run at once (default 1; kept on the host; lowering "
        "it stops nothing that runs)",
    )
    _add_ssh_options(queue)
    queue.set_defaults(func=cmd_queue)

    wait = sub.add_parser(
        "wait",
        help="return once the jobs have ended: one job's own exit code; for several, 0 when "
        "all completed, else 1",
    )
    wait.add_argument("host", metavar="HOST")
    wait.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    wait.add_argument(
        "--timeout",
        dest="wait_timeout",
        type=_positive(float, 10**9),
        metavar="SECONDS",
        help="give up after this long (exit 124); default: wait as long as it takes",
    )
    wait.add_argument(
        "--on-end",
        metavar="CMD",
        help="run CMD (with /bin/sh) once for each job as soon as it is seen ended (already "
        "ended ones too): SP_HOST, SP_JOB_ID, SP_STATUS, SP_EXIT_CODE, SP_SIGNAL",
    )
    _add_ssh_options(wait, timeout=False)
    wait.set_defaults(func=cmd_wait, more_positionals="job_ids", timeout=STEP_TIMEOUT)

    restart = sub.add_parser(
        "restart",
        help="run an ended job's command again (same folder, name, queue, time limit) as a new job",
    )
    restart.add_argument("host", metavar="HOST")
    restart.add_argument("job_id", metavar="JOB_ID")
    restart.add_argument("--id", metavar="NEW", help="the new job's id (default: a new UUID)")
    _add_ssh_options(restart)
    restart.set_defaults(func=cmd_restart)

    clean = sub.add_parser(
        "clean",
        help="remove ended jobs' records (state, lock, log, DB row); never a queued or "
        "running one, nor one a waiting job waits for",
    )
    clean.add_argument("host", metavar="HOST")
    clean.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="only these jobs")
    clean.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only jobs that ended longer ago than this: 90s, 30m, 12h, 7d, 2w",
    )
    clean.add_argument(
        "--status",
        action="append",
        choices=("completed", "failed"),
        help="only jobs that ended so (repeatable; default both)",
    )
    _add_ssh_options(clean)
    clean.set_defaults(func=cmd_clean, more_positionals="job_ids")

    watch = sub.add_parser(
        "watch",
        help="print the jobs of hosts, then one line per change, until Ctrl-C (one connection "
        "per host, kept; a lost one is made again)",
    )
    watch.add_argument("hosts", nargs="*", metavar="HOST")
    watch.add_argument(
        "--on-end",
        metavar="CMD",
        help="run CMD (with /bin/sh) for each job that ends or is lost, SP_HOST, SP_JOB_ID, "
        "SP_STATUS, SP_EXIT_CODE, SP_SIGNAL in its environment",
    )
    watch.add_argument(
        "--beat",
        type=_positive(int, 300),
        default=5,
        metavar="SECONDS",
        help="how often a quiet host says it is there (default 5); a connection silent for 3 "
        "beats and 5 s is made again",
    )
    _add_ssh_options(watch)
    watch.set_defaults(func=cmd_watch, more_positionals="hosts")

    reconcile = sub.add_parser(
        "reconcile",
        help="bring the host's DB in line with the jobs' records and with what status knows "
        "(lost jobs recorded lost); prints each change",
    )
    reconcile.add_argument("host", metavar="HOST")
    reconcile.add_argument(
        "--db-wait",
        type=_positive(int, 3600),
        default=30,
        metavar="SECONDS",
        help="how long to wait for another process holding the DB (default 30)",
    )
    _add_ssh_options(reconcile)
    reconcile.set_defaults(func=cmd_reconcile)

    logs = sub.add_parser("logs", help="print a job's output (its tmux pane)")
    logs.add_argument("host", metavar="HOST")
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    _add_ssh_options(logs)
    logs.set_defaults(func=cmd_logs)
    completion.add_command(sub)
    COMMANDS.clear()
    COMMANDS.update(sub.choices)
    return parser


def _extra_words(args: argparse.Namespace, extra: list[str]) -> str:
    """What to say of words a command does not take: the mistake and its fix."""
    if args.command == "run" and not args.command_argv:
        return (
            f"unrecognized arguments: {' '.join(extra)}: the command goes after '--': "
            f"sp-deploy run {args.host} [options] -- {' '.join(extra)}"
        )
    if args.command == "lint" and args.distro and not extra[0].startswith("-"):
        again = " ".join(f"--distro {word}" for word in [*args.distro, *extra])
        return f"one profile per --distro: repeat it: sp-deploy lint {again}"
    if "--json" in extra:
        return f"{args.command} has no --json: it prints a shell script for people's shells"
    return f"unrecognized arguments: {' '.join(extra)}"


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command_argv: list[str] = []
    if "--" in words:  # run's COMMAND [ARG...]: taken as they are
        at = words.index("--")
        words, command_argv = words[:at], words[at + 1 :]
    as_json = "--json" in words
    # (the first word: the top-level parser has no option that takes a value)
    command = words[0] if words and not words[0].startswith("-") else "sp-deploy"
    _EMITTED.clear()
    try:
        parser = build_parser()
        completion.answer(parser)  # a shell's TAB (argcomplete): candidates printed, exits
        args, extra = parser.parse_known_args(words)
        command, as_json = args.command, bool(getattr(args, "json", as_json))
        own = COMMANDS.get(args.command, parser)
        if command_argv and args.command != "run":
            raise ArgumentsError(own, "'--' COMMAND is for run only")
        args.command_argv = command_argv
        # argparse will not take positionals after options ("push h1 -i key h2"): the list
        # positional of push/verify (hosts) and status (job ids) gets them
        dest = getattr(args, "more_positionals", None)
        if extra and dest and not any(word.startswith("-") for word in extra):
            setattr(args, dest, [*getattr(args, dest), *extra])
        elif extra:
            raise ArgumentsError(own, _extra_words(args, extra))
        if dest == "hosts" and not args.hosts and not args.inventory:
            raise ArgumentsError(
                own, "the following arguments are required: HOST (or --inventory FILE)"
            )
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except ArgumentsError as exc:
        sys.stderr.write(exc.parser.format_usage())
        print(f"{exc.parser.prog}: error: {printable(exc.message)}", file=sys.stderr)
        return _failed(as_json, command, UsageError(exc.message))
    except DeployError as exc:
        print(f"sp-deploy: error: {printable(str(exc))}", file=sys.stderr)
        return _failed(as_json, command, exc)
    except KeyboardInterrupt as exc:
        print("sp-deploy: interrupted", file=sys.stderr)
        _failed(as_json, command, exc)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # an unknown failure: a short report, not a traceback
        print(
            f"sp-deploy: internal error: {printable(f'{type(exc).__name__}: {exc}')}",
            file=sys.stderr,
        )
        return _failed(as_json, command, exc)


def _failed(as_json: bool, command: str, exc: BaseException) -> int:
    """With --json, the error's document on stdout too (README "JSON output"; for a stream
    one line), unless a document has begun there; the exit code."""
    if as_json and (command in STREAMS or not _EMITTED):
        from solverpilot_deploy.shapes import document, error_of

        doc = document(command, error=error_of(exc))
        with contextlib.suppress(OSError):
            _emit_line(doc) if command in STREAMS else _emit(doc)
    return exc.exit_code if isinstance(exc, DeployError) else 1

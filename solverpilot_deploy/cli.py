"""sp-deploy: argument parsing and dispatch; maps errors to exit codes.

Exit codes: 0 success; 1 lint findings, a host that failed or did not verify, or another
failure; 2 usage error or unknown profile; 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from solverpilot_deploy import __version__
from solverpilot_deploy.errors import DeployError, HostFailedError, UsageError

if TYPE_CHECKING:
    from threading import Event

    from solverpilot_deploy.deploy import HostResult
    from solverpilot_deploy.fleet import Operation
    from solverpilot_deploy.ssh import ConnectOptions, Session


def cmd_render(args: argparse.Namespace) -> int:
    from solverpilot_deploy.render_cache import cached_render

    text = cached_render(args.distro)
    if args.output is None or args.output == "-":
        sys.stdout.write(text)
    else:
        from solverpilot_deploy.render import write_output

        write_output(Path(args.output), text)
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from solverpilot_deploy.profiles import load_profiles

    for profile in load_profiles():
        print(f"{profile.name:<8} {profile.targets:<28} {profile.description}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from solverpilot_deploy.lint import lint_script
    from solverpilot_deploy.profiles import load_profile, profile_names
    from solverpilot_deploy.remote import step_names, step_script
    from solverpilot_deploy.render import render_wrapper

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
    dirty = 0
    for label, result in scripts:
        if result.clean:
            print(f"{label}: clean")
        else:
            dirty += 1
            print(f"{label}: shellcheck findings\n{result.findings}")
    return 1 if dirty else 0


def _connect_options(args: argparse.Namespace) -> ConnectOptions:
    from solverpilot_deploy.ssh import ConnectOptions

    return ConnectOptions(
        config_file=args.config_file,
        identity=args.identity,
        login=args.login,
        port=args.port,
        known_hosts=Path(args.known_hosts).expanduser(),
        accept_new=getattr(args, "accept_new", False),
        timeout=args.timeout,
    )


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _run_fleet(args: argparse.Namespace, operation: Operation, good: set[str]) -> int:
    import json

    from solverpilot_deploy.fleet import run_fleet
    from solverpilot_deploy.ssh import parse_spec

    for host in args.hosts:
        parse_spec(host)  # a malformed HOST is a usage error before any connection

    progress = sys.stderr.isatty() and not args.json

    def on_done(result: HostResult) -> None:
        for warning in result.warnings:
            print(f"sp-deploy: {result.host}: warning: {warning}", file=sys.stderr)
        if progress:
            print(f"  {result.host}: {result.status}", file=sys.stderr)

    try:
        fleet = run_fleet(args.hosts, _connect_options(args), operation, args.jobs, on_done)
    except KeyboardInterrupt:  # before the fleet could take it: no host was touched
        from solverpilot_deploy.deploy import HostResult
        from solverpilot_deploy.fleet import FleetRun

        skipped = "interrupted before any change"
        fleet = FleetRun([HostResult(h, "skipped", error=skipped) for h in args.hosts], True)
    results = fleet.results
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    else:
        rows: list[tuple[str, ...]] = [("HOST", "STATUS", "DISTRO", "SHA256", "ERROR")]
        rows += [
            (r.host, r.status, r.distro or "-", (r.sha256 or "-")[:12], r.error or "")
            for r in results
        ]
        _print_table(rows)
    if fleet.interrupted:
        print("sp-deploy: interrupted", file=sys.stderr)
        return 130
    return 0 if all(r.status in good for r in results) else 1


def cmd_push(args: argparse.Namespace) -> int:
    from solverpilot_deploy.deploy import push_host

    _require_profile(args.distro)

    def operation(session: Session, host: str, deadline: float, stop: Event) -> HostResult:
        return push_host(
            session, host, args.distro, deadline, args.dry_run, not args.no_smoke, stop
        )

    return _run_fleet(args, operation, {"deployed", "unchanged", "would-deploy"})


def cmd_verify(args: argparse.Namespace) -> int:
    from solverpilot_deploy.deploy import verify_host

    _require_profile(args.distro)

    def operation(session: Session, host: str, deadline: float, stop: Event) -> HostResult:
        return verify_host(session, host, args.distro, deadline)

    return _run_fleet(args, operation, {"ok"})


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from solverpilot_deploy.ssh import connect, parse_spec, remaining
    from solverpilot_deploy.status import JOB_ID, read_status

    options = _connect_options(args)
    deadline = time.monotonic() + options.timeout
    parse_spec(args.host)  # a malformed HOST is a usage error, not a host failure
    for job_id in args.job_ids:
        if not JOB_ID.match(job_id):
            raise UsageError(f"not a job id: {job_id!r} (1-128 of A-Z a-z 0-9 . _ -)")
    try:
        with connect(args.host, options, deadline) as session:
            jobs = read_status(session, remaining(deadline), tuple(dict.fromkeys(args.job_ids)))
    except DeployError as exc:
        raise HostFailedError(f"{args.host}: {exc}") from exc
    if args.json:
        print(json.dumps([job.as_json() for job in jobs], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [
        ("ID", "STATUS", "EXIT", "SIGNAL", "STARTED_AT", "COMPLETED_AT", "CPU_S", "WALL_S", "TMUX")
    ]
    for job in jobs:
        cpu = None
        if job.cpu_user_s is not None and job.cpu_sys_s is not None:
            cpu = f"{job.cpu_user_s + job.cpu_sys_s:.2f}"
        status = f"{job.status} ({job.lost_reason})" if job.lost_reason else job.status
        wall = None if job.wall_s is None else f"{job.wall_s:.2f}"
        values = (job.id, status, job.exit_code, job.signal, job.started_at, job.completed_at)
        rows.append(tuple("-" if v is None else str(v) for v in (*values, cpu, wall, job.tmux)))
    _print_table(rows)
    return 0


def _positive(kind: type[int] | type[float], most: int) -> Callable[[str], int | float]:
    """A parser of a finite number in (0, most]: inf, nan and the like are usage errors."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
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


def _add_ssh_options(parser: argparse.ArgumentParser, accept_new: bool = True) -> None:
    group = parser.add_argument_group("ssh")
    group.add_argument("-F", dest="config_file", metavar="FILE", help="ssh config file")
    group.add_argument("-i", dest="identity", metavar="KEY", help="identity (private key) file")
    group.add_argument("-l", dest="login", metavar="USER", help="remote user")
    group.add_argument(
        "-p", dest="port", type=_positive(int, 65535), metavar="PORT", help="remote port"
    )
    group.add_argument(
        "--known-hosts",
        default="~/.ssh/known_hosts",
        metavar="FILE",
        help="known_hosts file (default ~/.ssh/known_hosts)",
    )
    if accept_new:
        group.add_argument(
            "--accept-new",
            action="store_true",
            help="trust and record the key of a host not yet known (a changed key is refused)",
        )
    group.add_argument(
        "--timeout",
        type=_positive(float, 86400),
        default=60.0,
        metavar="SECONDS",
        help="deadline per host (default 60)",
    )
    parser.add_argument("--json", action="store_true", help="print only JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sp-deploy",
        description="Render, lint and deploy the SolverPilot job wrapper.",
        epilog="Exit codes: 0 ok, 1 failure or lint findings, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = sub.add_parser("render", help="render job_wrapper.sh for one distro profile")
    render.add_argument("--distro", required=True, metavar="NAME", help="profile name")
    render.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write FILE atomically, mode 0755 (default, or -: stdout; a device or fifo is "
        "written directly)",
    )
    render.set_defaults(func=cmd_render)

    profiles = sub.add_parser("profiles", help="list the distro profiles and what they target")
    profiles.set_defaults(func=cmd_profiles)

    lint = sub.add_parser(
        "lint", help="run shellcheck on rendered wrappers (all by default) and the remote steps"
    )
    lint.add_argument(
        "--distro", action="append", metavar="NAME", help="profile to lint; repeatable"
    )
    lint.set_defaults(func=cmd_lint)

    push = sub.add_parser("push", help="deploy the wrapper to hosts over SSH")
    push.add_argument("hosts", nargs="+", metavar="HOST", help="ssh alias or [user@]host[:port]")
    push.add_argument("--distro", default="auto", metavar="NAME", help="profile (default auto)")
    push.add_argument("--dry-run", action="store_true", help="connect and probe, change nothing")
    push.add_argument("--no-smoke", action="store_true", help="skip the smoke run")
    push.add_argument(
        "-j", dest="jobs", type=_positive(int, 1024), default=8, metavar="N", help="hosts at once"
    )
    _add_ssh_options(push)
    push.set_defaults(func=cmd_push, more_positionals="hosts")

    verify = sub.add_parser("verify", help="compare each host's wrapper with the render")
    verify.add_argument("hosts", nargs="+", metavar="HOST")
    verify.add_argument("--distro", default="auto", metavar="NAME", help="profile (default auto)")
    verify.add_argument(
        "-j", dest="jobs", type=_positive(int, 1024), default=8, metavar="N", help="hosts at once"
    )
    _add_ssh_options(verify)
    verify.set_defaults(func=cmd_verify, more_positionals="hosts")

    status = sub.add_parser("status", help="list the jobs recorded on a host")
    status.add_argument("host", metavar="HOST")
    status.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="only these jobs")
    _add_ssh_options(status)
    status.set_defaults(func=cmd_status, more_positionals="job_ids")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # argparse will not take positionals after options ("push h1 -i key h2"): the list
        # positional of push/verify (hosts) and status (job ids) gets them
        dest = getattr(args, "more_positionals", None)
        if extra and dest and not any(word.startswith("-") for word in extra):
            setattr(args, dest, [*getattr(args, dest), *extra])
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except DeployError as exc:
        print(f"sp-deploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sp-deploy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # an unknown failure: a short report, not a traceback
        print(f"sp-deploy: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

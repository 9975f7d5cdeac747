"""sp-deploy: argument parsing and dispatch; maps errors to exit codes.

Exit codes: 0 success; 1 lint findings or an operation failed; 2 usage error or unknown
profile; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from solverpilot_deploy import __version__
from solverpilot_deploy.errors import DeployError


def cmd_render(args: argparse.Namespace) -> int:
    from solverpilot_deploy.profiles import load_profile
    from solverpilot_deploy.render import render_wrapper, write_atomically

    text = render_wrapper(load_profile(args.distro))
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomically(Path(args.output), text)
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from solverpilot_deploy.profiles import load_profiles

    for profile in load_profiles():
        print(f"{profile.name:<8} {profile.targets:<28} {profile.description}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from solverpilot_deploy.lint import lint_script
    from solverpilot_deploy.profiles import load_profile, profile_names
    from solverpilot_deploy.render import render_wrapper

    names = args.distro or profile_names()
    profiles = [load_profile(name) for name in names]  # every name checked before any work
    dirty = 0
    for profile in profiles:
        result = lint_script(f"job_wrapper.{profile.name}.sh", render_wrapper(profile))
        if result.clean:
            print(f"{profile.name}: clean")
        else:
            dirty += 1
            print(f"{profile.name}: shellcheck findings\n{result.findings}")
    return 1 if dirty else 0


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
        "-o", "--output", metavar="FILE", help="write FILE atomically, mode 0755 (default stdout)"
    )
    render.set_defaults(func=cmd_render)

    profiles = sub.add_parser("profiles", help="list the distro profiles and what they target")
    profiles.set_defaults(func=cmd_profiles)

    lint = sub.add_parser("lint", help="run shellcheck on rendered wrappers (all by default)")
    lint.add_argument(
        "--distro", action="append", metavar="NAME", help="profile to lint; repeatable"
    )
    lint.set_defaults(func=cmd_lint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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

"""Per host: probe, pick a profile, upload-verify-swap the wrapper, smoke-test, verify.

Every remote step works on one Session. The live wrapper is never rewritten in place: the
new bytes go to a temporary file in the same folder, are checked there (mode, ``bash -n``,
sha256 with the host's own tool) and only then renamed over the old file.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from solverpilot_deploy.errors import (
    ChecksumError,
    DeployError,
    HostError,
    HostTimeoutError,
    RemoteCommandError,
    RequirementError,
    StepInterrupted,
)
from solverpilot_deploy.filesystems import server_dir_warning
from solverpilot_deploy.host_facts import Memory, facts_of, facts_sha256
from solverpilot_deploy.profiles import Profile, load_profile, load_profiles
from solverpilot_deploy.remote import StepResult, run_step, unsafe_server_dir
from solverpilot_deploy.resources import schema_sql, schema_version
from solverpilot_deploy.safe import host_object
from solverpilot_deploy.shapes import error_object, host_result
from solverpilot_deploy.ssh import remaining
from solverpilot_deploy.transport import Session

WRAPPER_DIR = ".solverpilot/bin"  # relative to the remote home
WRAPPER_PATH = f"{WRAPPER_DIR}/job_wrapper.sh"
SERVER_DIR = ".solverpilot-server"
SHA256_TOOLS = ("sha256sum", "busybox sha256sum", "shasum -a 256", "openssl dgst -sha256 -r")
# the host must still have this much of the deadline left when it renames the new wrapper in:
# a rename later than that could land after sp-deploy has reported a timeout. The host counts
# from when the step starts there, up to three one-way delays after sp-deploy sent the budget
# (the channel's open, its confirmation, the command), so half the login's time is added: a
# login is at least eight of them (TCP, banners, key exchange, authentication). A login that
# may have waited for a person (a password or Duo prompt) counts up to LATENCY_CAP.
COMMIT_MARGIN = 3.0
LATENCY_CAP = 10.0
LOGOUT_WARNING = (
    "systemd-logind kills this user's processes at logout (KillUserProcesses=yes) and linger "
    "is off: jobs in tmux die when you log out; run 'loginctl enable-linger' on the host"
)


@dataclass(frozen=True)
class Probe:
    os_id: str
    os_like: tuple[str, ...]
    bash: str | None
    flock: bool
    setsid: bool
    sqlite3: str | None
    sha256: str | None
    wrapper_sha256: str | None
    has_db: bool
    server_dir: str = "~/.solverpilot-server"
    server_fs: str = ""
    logout_kills: bool = False
    server_relative: bool = False
    server_unsafe: str | None = None  # the path and why, when another user has a hold on it
    server_open: tuple[str, ...] = ()  # "PATH MODE" of the user's own folders not yet 0700
    # what about ~/.solverpilot, its bin or the wrapper push must repair ("~/PATH is ...")
    issues: tuple[str, ...] = ()
    facts: str = ""  # the answer's facts, as host_facts keeps them and push.sh hashes them
    # push.sh's short answer (probing.sh's sp_current): the wrapper is the one push sends and
    # needs nothing; its tools were not run (bash, flock, setsid and sqlite3 are not known)
    current: bool = False

    def warnings(self) -> tuple[str, ...]:
        """What the host's set-up puts at risk, whatever the profile."""
        shared = server_dir_warning(self.server_dir, self.server_fs)
        found: tuple[str, ...] = (shared,) if shared else ()
        if self.server_relative:
            found += (
                f"SOLVERPILOT_SERVER_DIR is relative ({self.server_dir}): the wrapper takes it "
                "from each job's folder, status and the DB set-up from the home; make it absolute",
            )
        return (*found, LOGOUT_WARNING) if self.logout_kills else found

    def wrapper_issues(self) -> tuple[str, ...]:
        """The issues of the wrapper file itself (not of its folders): it is there."""
        return tuple(i for i in self.issues if i.startswith(f"~/{WRAPPER_PATH} "))

    def open_warning(self) -> tuple[str, ...]:
        """verify's word on folders push would make 0700 (push says what it did instead)."""
        if not self.server_open:
            return ()
        mine = ", ".join(self.server_open)
        return (
            f"folders of the server folder are open to other users: {mine}; push makes them 0700",
        )


# what push does (or, with --dry-run, and for verify, would do) to the host's wrapper: INSTALL
# where there is none, REPLACE other bytes, REPAIR (the same bytes, but a fresh copy for a
# wrapper that cannot run or that others could replace, or only the server folders made 0700),
# NONE: nothing to change
INSTALL, REPLACE, REPAIR, NONE = "install", "replace", "repair", "none"

# push's "outcome": which wrapper the host has after it. "old": it was not changed (the push
# failed before the install step was sent, or the host's answer proved it kept its wrapper);
# "new": the rendered wrapper is in place; "unknown": the install step was sent and no answer
# proved which (a stalled connection, a timeout, a second Ctrl-C): either may be in place
OLD, NEW, UNKNOWN = "old", "new", "unknown"


@dataclass(frozen=True)
class HostResult:
    """The outcome for one host, as --json prints it."""

    host: str
    status: str
    distro: str | None = None
    sha256: str | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()
    outcome: str | None = None  # push only: OLD, NEW or UNKNOWN (see above)
    error_kind: str | None = None  # the error's kind (shapes.ERROR_KINDS), else by status
    current_sha256: str | None = None  # the host's wrapper as the probe found it (None: none)
    render_sha256: str | None = None  # the render for the host's profile
    action: str | None = None  # INSTALL, REPLACE, REPAIR or NONE (see above); None: no probe
    # each step run for the host and its seconds: "connect" (the login), then the remote steps
    # as sp-deploy timed them; the install step's parts done on the host ("init_db", "smoke")
    # as the host timed them, its "install" the rest of its round trip
    steps: tuple[tuple[str, float], ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The host result of shapes.py (README "JSON output")."""
        error = None
        if self.error is not None:
            kind = self.error_kind or STATUS_KINDS.get(self.status, "failed")
            error = error_object(kind, self.error)
        return host_result(
            self.host, self.status, error, self.warnings,
            distro=self.distro, sha256=self.sha256, outcome=self.outcome,
            current_sha256=self.current_sha256, render_sha256=self.render_sha256,
            action=self.action,
            steps=[{"name": name, "seconds": round(took, 3)} for name, took in self.steps],
        )  # fmt: skip


# the error kind of a result whose error names no kind of its own
STATUS_KINDS = {
    "skipped": "skipped",
    "missing": "verify",
    "mismatch": "verify",
    "needs-repair": "verify",
}


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """``"5.2"`` or ``"3.40.1"`` as numbers; None when it is not a version."""
    parts = (text or "").split(".")
    # ASCII digits alone ("²" is a digit to str.isdigit, not to int), and few of them
    if not all(part.isascii() and part.isdigit() and len(part) <= 9 for part in parts):
        return None
    return tuple(int(part) for part in parts)


def probe(session: Session, timeout: float) -> Probe:
    result = run_step(session, "probe", timeout=timeout)
    if result.status != 0:
        raise RemoteCommandError(f"probe failed: {result.error()}")
    return probe_of(result)


def probe_of(result: StepResult) -> Probe:
    """The probe's part of an answer (probe.sh's, push.sh's; templates/remote/probing.sh)."""
    found = result.values()
    server = found.get("server", "")
    return Probe(
        os_id=found.get("os_id", ""),
        os_like=tuple(found.get("os_like", "").split()),
        bash=found.get("bash") if version_tuple(found.get("bash")) else None,
        flock=found.get("flock") == "ok",
        setsid=found.get("setsid") == "ok",
        sqlite3=found.get("sqlite3") or None,
        sha256=found.get("sha256") if found.get("sha256") in SHA256_TOOLS else None,
        wrapper_sha256=found.get("wrapper") or None,
        has_db=found.get("db") == "yes",
        server_dir="~/" + server[2:] if server.startswith("./") else server,
        server_fs=found.get("fs_server", ""),
        logout_kills=found.get("logout_kills") == "yes",
        server_relative=found.get("server_relative") == "yes",
        server_unsafe=found.get("server_unsafe") or None,
        server_open=result.all_of("server_open"),
        issues=result.all_of("issue"),
        facts=facts_of(result.lines),
        current=found.get("current") == "yes",
    )


def pick_profile(found: Probe, requested: str) -> Profile:
    """``requested`` by name, or for "auto" the profile whose os_ids has ID, then ID_LIKE."""
    if requested != "auto":
        return load_profile(requested)
    return profile_for_os(found.os_id, found.os_like)


def profile_for_os(os_id: str, os_like: tuple[str, ...]) -> Profile:
    """The profile whose os_ids has os-release's ID, then one of its ID_LIKE."""
    profiles = load_profiles()
    for name in (os_id, *os_like):
        for profile in profiles:
            if name in profile.os_ids:
                return profile
    raise RequirementError(
        f"unsupported distro (ID={os_id or '?'}, ID_LIKE={' '.join(os_like) or '?'})"
        "; name a profile with --distro"
    )


def distro_warning(found: Probe, requested: str, profile: Profile) -> tuple[str, ...]:
    """A warning when ``--distro`` named a profile other than the one os-release picks."""
    if requested == "auto":
        return ()
    try:
        picked = profile_for_os(found.os_id, found.os_like)
    except RequirementError:  # no profile fits the host: the one named is the user's choice
        return ()
    if picked.name == profile.name:
        return ()
    like = f", ID_LIKE={' '.join(found.os_like)}" if found.os_like else ""
    return (
        f"--distro {profile.name} given, but the host's os-release (ID={found.os_id}{like}) "
        f"picks the {picked.name} profile",
    )


def planned_action(found: Probe, digest: str) -> str:
    """What push does to the wrapper the probe ``found``, for a render of sha256 ``digest``."""
    if found.wrapper_sha256 is None and not found.issues:
        return INSTALL
    if found.wrapper_sha256 != digest:
        return REPLACE
    return REPAIR if found.issues or found.server_open else NONE


def check_requirements(found: Probe, profile: Profile) -> tuple[str, ...]:
    """Raise RequirementError for what the wrapper cannot run without; return warnings.

    The profile's minimums are the rule: bash below min_bash fails, sqlite3 below min_sqlite
    (or absent) only warns, since the state files still record every job.
    """
    missing = []
    bash = version_tuple(found.bash)
    need_bash = version_tuple(profile.min_bash) or ()
    if bash is None:
        missing.append(f"bash >= {profile.min_bash} as /bin/bash (none found)")
    elif bash < need_bash:
        missing.append(f"bash >= {profile.min_bash} as /bin/bash (found {found.bash})")
    if not found.flock:
        missing.append("flock")
    if not found.setsid:
        missing.append("setsid")
    if not found.sha256:
        missing.append("a sha256 tool (sha256sum, busybox, shasum or openssl)")
    if missing:
        raise RequirementError(f"{', '.join(missing)}; install: {profile.install_hint}")
    if not found.sqlite3:
        return (
            f"sqlite3 missing: jobs will be recorded in state files only ({profile.install_hint})",
        )
    sqlite = version_tuple(found.sqlite3)
    if sqlite is None or sqlite < (version_tuple(profile.min_sqlite) or ()):
        return (
            f"sqlite3 {found.sqlite3} is older than the {profile.name} profile's "
            f"{profile.min_sqlite}: the DB may not be updated ({profile.install_hint})",
        )
    return ()


_RENDERING = threading.Lock()


def wrapper_for(profile: Profile) -> tuple[str, str]:
    """The rendered wrapper for ``profile`` and its sha256: once per run, however many hosts
    ask at once (each would render it anew while the first has not finished), from the
    user's render cache when it holds it (render_cache.py: no Jinja2 then)."""
    with _RENDERING:
        return _wrapper_and_sha256(profile)


@functools.cache
def _wrapper_and_sha256(profile: Profile) -> tuple[str, str]:
    from solverpilot_deploy.render_cache import cached_render

    text = cached_render(profile.name)  # (every Profile comes from the profiles folder)
    return text, hashlib.sha256(text.encode()).hexdigest()


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise StepInterrupted("interrupted before any change")


def _cause(session: Session, exc: Exception) -> str:
    """What ended a step: the reason the connection was aborted (a timeout, a second
    Ctrl-C), else the error itself."""
    if session.aborted.is_set():
        return session.abort_reason or "the connection was aborted"
    return str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Plan:
    """What a push sends to a host whose facts it knows: probe and install in one step."""

    profile: Profile
    text: str
    digest: str
    db: bool
    facts_sha256: str


def _plan(known: str | None, requested: str) -> _Plan | None:
    """The install for a host whose facts were ``known`` (host_facts), or None: none known, or
    these facts pick no profile or lack what the wrapper needs (the probe then says so)."""
    if not known:
        return None
    found = probe_of(StepResult(0, tuple(known.split("\n")[:-1]), ""))
    try:
        profile = pick_profile(found, requested)
        check_requirements(found, profile)
    except RequirementError:
        return None
    text, digest = wrapper_for(profile)
    # a new wrapper gets the DB (its set-up or migration), as below when it is sent apart
    return _Plan(profile, text, digest, bool(found.sqlite3), facts_sha256(known))


def push_host(
    session: Session,
    host: str,
    requested: str,
    deadline: float,
    dry_run: bool = False,
    smoke: bool = True,
    stop: threading.Event | None = None,
    memory: Memory | None = None,
) -> HostResult:
    """Probe, then (unless unchanged) one step that installs, sets up the DB and smoke-tests;
    for a host whose facts ``memory`` knows, both in one step (push.sh), which installs only
    if the host's facts are still those, and answers from the wrapper's hash alone (no tool
    run: Probe.current) when that wrapper is the render already. ``stop`` set means an
    interrupt: no new step starts, and a host not yet changed raises StepInterrupted. Every
    result says which wrapper the host has (``outcome``)."""
    plan = None if dry_run or memory is None else _plan(memory.known(), requested)
    answer = None  # the install's answer, when push.sh installed in its step
    smoke_id = f"sp-smoke-{secrets.token_hex(4)}" if smoke else None
    if plan is not None:
        session.changing = True  # from here on a Ctrl-C lets the host end its step
        _check_stop(stop)
        sent = HostResult(
            host, "deployed", plan.profile.name, plan.digest, outcome=NEW,
            render_sha256=plan.digest,
        )  # fmt: skip
        try:
            step = send_install(
                session, plan.text, plan.digest, deadline, plan.db, smoke_id, plan.facts_sha256
            )
        except Exception as exc:
            return _install_failed(sent, session, exc, host)
        answer = step if "install=begun" in step.lines else None
        if answer is None and step.status != 0:  # (a whole answer: no install began)
            raise RemoteCommandError(f"probe failed: {step.error()}")
        found = probe_of(step)
        if found.current and pick_profile(found, requested).name != plan.profile.name:
            found = probe(session, remaining(deadline))  # its os-release picks another now
    else:
        found = probe(session, remaining(deadline))
    if memory is not None:
        memory.learn(found.facts)
    if found.server_unsafe:  # the wrapper would refuse every job: nothing is installed
        raise unsafe_server_dir(found.server_unsafe)
    profile = pick_profile(found, requested)
    warnings = (
        distro_warning(found, requested, profile)
        + found.warnings()
        + (() if found.current else check_requirements(found, profile))
    )
    text, digest = wrapper_for(profile)
    action = planned_action(found, digest)
    result = HostResult(
        host, "deployed", profile.name, digest, warnings=warnings, outcome=NEW,
        current_sha256=found.wrapper_sha256, render_sha256=digest, action=action,
    )  # fmt: skip
    if action == NONE:
        return replace(result, status="unchanged")
    if dry_run:
        return replace(
            result,
            status="would-deploy",
            outcome=OLD,
            sha256=None,
            warnings=warnings + found.issues,
        )
    session.changing = True  # from here on a Ctrl-C lets the host end its step
    # a new wrapper may bring new columns: the DB gets them (migration) at once
    new = found.wrapper_sha256 != digest
    db = (bool(found.sqlite3) and (not found.has_db or new)) or bool(found.server_open)
    if answer is None:
        _check_stop(stop)
        if found.wrapper_sha256 == digest and not found.issues:  # only the folders' modes
            try:
                warnings += init_database(session, deadline)
            except Exception as exc:
                return replace(result, status="failed", error=one_line(_cause(session, exc)))
            return replace(result, status="unchanged", warnings=warnings)
        try:
            answer = send_install(session, text, digest, deadline, db, smoke_id if new else None)
        except Exception as exc:
            return _install_failed(result, session, exc, host)
    try:
        check_install(answer, digest)
    except (InstallRefused, Installed) as exc:
        return _install_failed(result, session, exc, host)
    # a fresh copy replaced the wrapper: what was wrong with the old one is gone
    fixed = tuple(f"{issue}: replaced" for issue in found.wrapper_issues())
    warnings += fixed + answer.all_of("repaired") + (db_warnings(answer) if db else ())
    try:
        if smoke_id is not None and new:
            check_smoke(answer)
    except RemoteCommandError as exc:
        error = f"the new wrapper is installed (sha256 {digest[:12]}...), then: {exc}"
        return replace(result, status="failed", error=one_line(error), warnings=warnings)
    return replace(result, warnings=warnings)


def _install_failed(result: HostResult, session: Session, exc: Exception, host: str) -> HostResult:
    """``result`` failed in its install step (send_install, check_install): InstallRefused,
    the host keeps its old wrapper (nothing was sent, or the host said so); Installed, the new
    one is in and what followed failed; anything else, the step was sent and no answer proved
    which wrapper the host has."""
    digest = result.render_sha256 or ""
    if isinstance(exc, InstallRefused):
        return replace(result, status="failed", sha256=None, error=str(exc), outcome=OLD)
    if isinstance(exc, Installed):
        error = f"the new wrapper is installed (sha256 {digest[:12]}...), then: {exc}"
        return replace(result, status="failed", error=one_line(error))
    error = (
        f"{_cause(session, exc)}; the install step had been sent: either wrapper may be "
        f"in place (the new one is sha256 {digest[:12]}...); check with: sp-deploy "
        f"verify {host}"
    )
    return replace(result, status="failed", error=one_line(error), outcome=UNKNOWN)


def one_line(text: str) -> str:
    """``text`` on one line: every run of blanks and line ends becomes one space."""
    return " ".join(text.split())


class InstallRefused(Exception):
    """The host's answer (or the clock, before anything was sent) proved that the install
    step did not rename the new wrapper in; ``error`` says why."""

    def __init__(self, error: HostError) -> None:
        super().__init__(str(error))
        self.error = error


class Installed(Exception):
    """The host's answer said the new wrapper is in place, and that what followed it in the
    install step (the DB set-up, the smoke run) failed, as the message says."""


def send_install(
    session: Session,
    text: str,
    digest: str,
    deadline: float,
    db: bool = False,
    smoke_id: str | None = None,
    facts: str | None = None,
) -> StepResult:
    """Upload, check and rename the wrapper in one step (templates/remote/installing.sh), then,
    in the same step, set up the DB (``db``) and run the new wrapper once as job ``smoke_id``;
    returns the step's answer (its repaired=, the DB's and the smoke run's lines), for
    check_install. With ``facts`` (the sha256 of the host's facts as last seen), the step is
    push.sh: the probe, then the install only if the host's facts hash to ``facts`` (its
    answer then has "install=begun"; without it, the probe's answer alone).

    The host renames only while COMMIT_MARGIN seconds of the deadline remain, and only
    while sp-deploy still listens, so a push reported as failed (timeout, Ctrl-C) never
    replaces the wrapper later. InstallRefused: nothing was sent; Installed: the answer said
    the new wrapper is in place and the rest of the step ran out of time; any other error:
    the step was sent and either wrapper may be in place.
    """
    delays = session.login_seconds / 2
    margin = COMMIT_MARGIN + (min(delays, LATENCY_CAP) if session.may_prompt else delays)
    budget = int(deadline - time.monotonic() - margin)
    if budget < 1:
        raise InstallRefused(HostTimeoutError("no time left to install within the deadline"))
    args = (digest, str(budget), "db" if db else "-", smoke_id or "-", *([facts] if facts else []))
    try:
        # its own timeout comes just before the fleet's at the deadline, so that what the host
        # said so far is still there to be read
        step_timeout = max(0.1, remaining(deadline) - 0.5)
        result = run_step(
            session, "push" if facts else "install", *args, timeout=step_timeout,
            payload=_schema_line() + text,
        )  # fmt: skip
    except HostTimeoutError as exc:
        if "installed" in exc.answered:  # the rename was done: the DB set-up or smoke run
            raise Installed(f"the rest of the install step: {exc}") from exc  # took too long
        if "checked" in exc.partial.split("\n"):  # the host had begun the rename (slow disk?)
            raise HostTimeoutError(
                "the host was renaming the new wrapper in when the time ran out"
            ) from exc
        raise HostTimeoutError("no answer to the install step in time") from exc
    _split_install_time(session, result)
    return result


def check_install(result: StepResult, digest: str) -> None:
    """The answer of an install of ``digest`` that was done (exit 0), else InstallRefused (the
    host keeps its old wrapper) or Installed (the new one is in, what followed failed)."""
    if result.status == 0:
        return
    if result.status == 17:
        raise Installed(f"cannot create the server database: {result.error()}")
    if result.status == 18:
        raise Installed(f"smoke run failed: no folder for it: {result.error()}")
    if result.status == 10:
        raise InstallRefused(
            RemoteCommandError(f"bash -n rejected the uploaded wrapper: {result.error()}")
        )
    if "installed" in result.lines:  # the host said the rename was done, then its step died
        raise Installed(f"the rest of the install step ended with exit {result.status}")
    if result.status == 11:  # (its sha256= is the install's: the last; a probe's came first)
        got = (result.all_of("sha256") or ("",))[-1]
        raise InstallRefused(
            ChecksumError(f"uploaded {digest[:12]}..., host computed {got[:12] or '?'}...")
        )
    if result.status == 13:
        raise InstallRefused(
            HostTimeoutError("the host was too slow to check the wrapper; nothing changed")
        )
    if result.status == 15:  # the writer's own words (No space left on device) came first
        said = [line for line in result.lines if not re.match(r"^[a-z_]+=", line)]
        why = f": {said[-1].rsplit(': ', 1)[-1]}" if said else ""
        raise InstallRefused(
            RemoteCommandError(
                f"{result.error()}{why} (is the disk full?); the old wrapper is kept"
            )
        )
    raise InstallRefused(RemoteCommandError(f"cannot install ~/{WRAPPER_PATH}: {result.error()}"))


@functools.cache
def _schema_line() -> str:
    """The DB's schema and its version as one line of SQL (the first of the install step's
    payload, the whole of init_db's)."""
    return f"{schema_sql()} PRAGMA user_version = {schema_version()};\n"


def _split_install_time(session: Session, result: StepResult) -> None:
    """The install step's time in session.steps, split into its parts as the host timed them
    (seconds_init_db=, seconds_smoke=): "install" keeps the rest of the round trip."""
    if not session.steps or session.steps[-1][0] not in ("install", "push"):
        return
    found = result.values()
    parts = []
    for part in ("init_db", "smoke"):
        try:
            parts.append((part, float(found[f"seconds_{part}"])))
        except (KeyError, ValueError):
            continue
    name, whole = session.steps.pop()
    session.steps += [(name, max(whole - sum(s for _, s in parts), 0.0)), *parts]


def init_database(session: Session, deadline: float) -> tuple[str, ...]:
    """Create the DB when absent, after making the user's own server folders 0700; the
    warnings say which folders were made so (the step push runs when only they change)."""
    result = run_step(session, "init_db", timeout=remaining(deadline), payload=_schema_line())
    if result.status != 0:
        raise RemoteCommandError(f"cannot create the server database: {result.error()}")
    return db_warnings(result)


def db_warnings(result: StepResult) -> tuple[str, ...]:
    """The warnings of server_db.sh's sp_init_db in a step's answer: a migration that could
    not be done, the folders it made 0700."""
    migrated = tuple(f"the database keeps its columns: {w}" for w in result.all_of("warning"))
    return migrated + tuple(
        f"made {found.rpartition(' ')[0]} 0700 (it was {found.rpartition(' ')[2]}: other users "
        "could reach its files)"
        for found in result.all_of("tightened")
    )


def check_smoke(result: StepResult) -> None:
    """The smoke run (server_db.sh's sp_smoke) in a step's answer must have completed."""
    found = result.values()
    rc = found.get("rc", "?")
    state = host_object(found.get("state", "")) or {}
    if rc != "0" or state.get("status") != "completed":
        raise RemoteCommandError(
            f"smoke run failed (exit {rc}, state {state.get('status')!r}): {result.stderr.strip()}"
        )


def verify_host(
    session: Session, host: str, requested: str, deadline: float, memory: Memory | None = None
) -> HostResult:
    found = probe(session, remaining(deadline))
    if memory is not None:  # for the next push (host_facts)
        memory.learn(found.facts)
    profile = pick_profile(found, requested)
    _, digest = wrapper_for(profile)
    if found.server_unsafe:
        raise unsafe_server_dir(found.server_unsafe)
    # what the wrapper cannot run without fails the host, as in push (which, when it finds the
    # wrapper in place, does not run the tools again); the wrapper's own verdict (a wrapper
    # another user can replace, say) and the shas are kept with it, never hidden by it
    needs: RequirementError | None = None
    try:
        told = check_requirements(found, profile)
    except RequirementError as exc:
        needs, told = exc, ()
    warnings = (
        distro_warning(found, requested, profile) + found.warnings() + found.open_warning() + told
    )
    seen = HostResult(
        host, "ok", profile.name, digest, warnings=warnings,
        current_sha256=found.wrapper_sha256, render_sha256=digest,
        action=planned_action(found, digest),
    )  # fmt: skip
    verdict = _wrapper_verdict(seen, found, host, profile.name, digest)
    if needs is None:
        return verdict
    if not found.sha256:  # no tool to hash it: the wrapper's bytes are not known, nor its verdict
        also = "; the wrapper's bytes cannot be compared without one" + "".join(
            f"; {issue}" for issue in found.issues
        )
        verdict = replace(verdict, current_sha256=None, action=None)
    else:
        also = f"; and {verdict.status}: {verdict.error}" if verdict.error else ""
    return replace(
        verdict, status="failed", error=f"{needs}{also}", error_kind=needs.code,
        sha256=found.wrapper_sha256,
    )  # fmt: skip


def _wrapper_verdict(
    seen: HostResult, found: Probe, host: str, profile: str, digest: str
) -> HostResult:
    """verify's verdict on the wrapper the probe found: ``seen`` when it is the render and
    sound, else missing, mismatch or needs-repair with why."""
    # the right bytes are not enough: a wrapper that cannot run, or that another user can
    # replace, is "needs-repair" (push repairs what it can and refuses the rest)
    issues = "; ".join(found.issues)
    # (there, but not readable or not a regular file: not hashed)
    if found.wrapper_sha256 is None and found.wrapper_issues():
        why = f"{issues}; sp-deploy push {host} replaces it"
        return replace(seen, status="needs-repair", sha256=None, error=why)
    if found.wrapper_sha256 is None:
        why = issues or f"no {WRAPPER_PATH}"
        return replace(seen, status="missing", sha256=None, error=why)
    if found.wrapper_sha256 != digest:
        why = (
            f"{WRAPPER_PATH} is {found.wrapper_sha256[:12]}..., the {profile} render is "
            f"{digest[:12]}..." + (f"; {issues}" if issues else "")
        )
        return replace(seen, status="mismatch", sha256=found.wrapper_sha256, error=why)
    if issues:
        why = f"{issues}; sp-deploy push {host} repairs it"
        return replace(seen, status="needs-repair", error=why)
    return seen

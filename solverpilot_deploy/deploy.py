"""Per host: probe, pick a profile, upload-verify-swap the wrapper, smoke-test, verify.

Every remote step works on one Session. The live wrapper is never rewritten in place: the
new bytes go to a temporary file in the same folder, are checked there (mode, ``bash -n``,
sha256 with the host's own tool) and only then renamed over the old file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import secrets
import shlex
from dataclasses import dataclass

from solverpilot_deploy.errors import ChecksumError, RemoteCommandError, RequirementError
from solverpilot_deploy.profiles import Profile, load_profile, load_profiles
from solverpilot_deploy.render import render_wrapper
from solverpilot_deploy.resources import schema_sql
from solverpilot_deploy.ssh import Session, remaining

WRAPPER_DIR = ".solverpilot/bin"  # relative to the remote home, for SFTP and the shell alike
WRAPPER_PATH = f"{WRAPPER_DIR}/job_wrapper.sh"
SERVER_DIR = ".solverpilot-server"
MIN_BASH = (4, 2)
SHA256_OF_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SHA256_TOOLS = ("sha256sum", "busybox sha256sum", "shasum -a 256", "openssl dgst -sha256 -r")

# One round trip: what the host is and what its tools can do (each checked by using it).
PROBE_SCRIPT = f"""
cd || exit 1
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${{ID:-}}"
echo "os_like=${{ID_LIKE:-}}"
echo "bash=$(bash -c 'echo "${{BASH_VERSINFO[0]}}.${{BASH_VERSINFO[1]}}"' 2>/dev/null)"
t=$(mktemp 2>/dev/null) || t=/tmp/.sp-probe.$$
: >"$t"
(exec 9>"$t" && flock -n 9) 2>/dev/null && echo flock=ok
rm -f "$t"
setsid sh -c : </dev/null 2>/dev/null && echo setsid=ok
[ "$(sqlite3 :memory: 'SELECT 1;' 2>/dev/null)" = 1 ] &&
  echo "sqlite3=$(sqlite3 -version 2>/dev/null | cut -d' ' -f1)"
for c in {" ".join(shlex.quote(tool) for tool in SHA256_TOOLS)}; do
  if [ "$(printf abc | $c 2>/dev/null | cut -d' ' -f1)" = {SHA256_OF_ABC} ]; then
    echo "sha256=$c"
    [ -f {WRAPPER_PATH} ] && echo "wrapper=$($c <{WRAPPER_PATH} | cut -d' ' -f1)"
    break
  fi
done
[ -e {SERVER_DIR}/server.db ] && echo db=yes
exit 0
"""


@dataclass(frozen=True)
class Probe:
    os_id: str
    os_like: tuple[str, ...]
    bash: tuple[int, int] | None
    flock: bool
    setsid: bool
    sqlite3: str | None
    sha256: str | None
    wrapper_sha256: str | None
    has_db: bool


@dataclass(frozen=True)
class HostResult:
    """The outcome for one host, as --json prints it."""

    host: str
    status: str
    distro: str | None = None
    sha256: str | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()

    def as_json(self) -> dict[str, str | None]:
        return {
            "host": self.host,
            "status": self.status,
            "distro": self.distro,
            "sha256": self.sha256,
            "error": self.error,
        }


def probe(session: Session, timeout: float) -> Probe:
    status, out, err = session.run("sh -s", stdin=PROBE_SCRIPT.encode(), timeout=timeout)
    if status != 0:
        raise RemoteCommandError(f"probe failed: {err.strip() or status}")
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    bash = None
    if found.get("bash", "").count(".") == 1:
        major, minor = found["bash"].split(".")
        if major.isdigit() and minor.isdigit():
            bash = (int(major), int(minor))
    return Probe(
        os_id=found.get("os_id", ""),
        os_like=tuple(found.get("os_like", "").split()),
        bash=bash,
        flock=found.get("flock") == "ok",
        setsid=found.get("setsid") == "ok",
        sqlite3=found.get("sqlite3") or None,
        sha256=found.get("sha256") if found.get("sha256") in SHA256_TOOLS else None,
        wrapper_sha256=found.get("wrapper") or None,
        has_db=found.get("db") == "yes",
    )


def pick_profile(found: Probe, requested: str) -> Profile:
    """``requested`` by name, or for "auto" the profile whose os_ids has ID, then ID_LIKE."""
    if requested != "auto":
        return load_profile(requested)
    profiles = load_profiles()
    for os_id in (found.os_id, *found.os_like):
        for profile in profiles:
            if os_id in profile.os_ids:
                return profile
    raise RequirementError(
        f"unsupported distro (ID={found.os_id or '?'}, ID_LIKE={' '.join(found.os_like) or '?'})"
        "; name a profile with --distro"
    )


def check_requirements(found: Probe, profile: Profile) -> tuple[str, ...]:
    """Raise RequirementError for what the wrapper cannot run without; return warnings."""
    missing = []
    if found.bash is None or found.bash < MIN_BASH:
        missing.append(f"bash >= {MIN_BASH[0]}.{MIN_BASH[1]}")
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
    return ()


@functools.cache
def wrapper_for(profile: Profile) -> tuple[bytes, str]:
    """The rendered wrapper for ``profile`` and its sha256, rendered once per run."""
    data = render_wrapper(profile).encode()
    return data, hashlib.sha256(data).hexdigest()


def push_host(
    session: Session,
    host: str,
    requested: str,
    deadline: float,
    dry_run: bool = False,
    smoke: bool = True,
) -> HostResult:
    found = probe(session, remaining(deadline))
    profile = pick_profile(found, requested)
    warnings = check_requirements(found, profile)
    data, digest = wrapper_for(profile)
    if found.wrapper_sha256 == digest:
        return HostResult(host, "unchanged", profile.name, digest, warnings=warnings)
    if dry_run:
        return HostResult(host, "would-deploy", profile.name, digest, warnings=warnings)
    assert found.sha256 is not None  # check_requirements made sure
    upload(session, data, digest, found.sha256, deadline)
    if not found.has_db and found.sqlite3:
        init_database(session, deadline)
    if smoke:
        smoke_run(session, deadline)
    return HostResult(host, "deployed", profile.name, digest, warnings=warnings)


def upload(session: Session, data: bytes, digest: str, sha256_cmd: str, deadline: float) -> None:
    """Temporary file beside the live one, 0755, ``bash -n``, sha256, then rename over it."""
    tmp = f"{WRAPPER_DIR}/.job_wrapper.sh.{secrets.token_hex(8)}.tmp"
    sftp = session.client.open_sftp()
    sftp.get_channel().settimeout(remaining(deadline))
    try:
        try:
            for folder in (".solverpilot", WRAPPER_DIR):
                try:
                    sftp.stat(folder)
                except FileNotFoundError:
                    sftp.mkdir(folder, 0o755)
            sftp.putfo(io.BytesIO(data), tmp, file_size=len(data), confirm=True)
            sftp.chmod(tmp, 0o755)
        except OSError as exc:
            message = f"cannot upload to ~/{WRAPPER_DIR}: {exc.strerror or exc}"
            raise RemoteCommandError(message) from exc
        check = (
            f"cd && bash -n {tmp} || exit 10; "
            f"h=$({sha256_cmd} <{tmp} | cut -d' ' -f1); "
            f'[ "$h" = {digest} ] || {{ echo "$h"; exit 11; }}; '
            f"[ ! -d {WRAPPER_PATH} ] || exit 12; "  # mv would move the file into it
            f"mv -f {tmp} {WRAPPER_PATH} || exit 12"
        )
        status, out, err = session.run(check, timeout=remaining(deadline))
        if status == 10:
            raise RemoteCommandError(f"bash -n rejected the uploaded wrapper: {err.strip()}")
        if status == 11:
            raise ChecksumError(f"uploaded {digest[:12]}..., host computed {out.strip()[:12]}...")
        if status != 0:
            reason = err.strip() or ("a folder is in the way" if status == 12 else f"exit {status}")
            raise RemoteCommandError(f"cannot install ~/{WRAPPER_PATH}: {reason}")
    finally:
        with contextlib.suppress(OSError):
            sftp.remove(tmp)  # gone already after a successful rename
        sftp.close()


def init_database(session: Session, deadline: float) -> None:
    command = (
        f"cd && mkdir -p {SERVER_DIR} && "
        f"sqlite3 -init /dev/null -bail {SERVER_DIR}/server.db {shlex.quote(schema_sql())}"
    )
    status, _, err = session.run(command, timeout=remaining(deadline))
    if status != 0:
        raise RemoteCommandError(f"cannot create the server database: {err.strip() or status}")


def smoke_run(session: Session, deadline: float) -> None:
    """Run the deployed wrapper on the host in a throwaway server folder; it must complete."""
    job_id = f"sp-smoke-{secrets.token_hex(4)}"
    command = (
        "d=$(mktemp -d) || exit 90; "
        f'SOLVERPILOT_SERVER_DIR="$d" "$HOME/{WRAPPER_PATH}" {job_id} sh -c : </dev/null; rc=$?; '
        f'cat "$d/jobs/{job_id}.status"; rm -rf "$d"; exit "$rc"'
    )
    status, out, err = session.run(command, timeout=remaining(deadline))
    try:
        state = json.loads(out)
    except ValueError:
        state = {}
    if status != 0 or state.get("status") != "completed":
        raise RemoteCommandError(
            f"smoke run failed (exit {status}, state {state.get('status')!r}): {err.strip()}"
        )


def verify_host(session: Session, host: str, requested: str, deadline: float) -> HostResult:
    found = probe(session, remaining(deadline))
    profile = pick_profile(found, requested)
    _, digest = wrapper_for(profile)
    if not found.sha256:
        raise RequirementError(f"no sha256 tool on the host; install: {profile.install_hint}")
    if found.wrapper_sha256 is None:
        return HostResult(host, "missing", profile.name, None, f"no {WRAPPER_PATH}")
    if found.wrapper_sha256 != digest:
        return HostResult(
            host,
            "mismatch",
            profile.name,
            found.wrapper_sha256,
            f"{WRAPPER_PATH} is {found.wrapper_sha256[:12]}..., the {profile.name} render is "
            f"{digest[:12]}...",
        )
    return HostResult(host, "ok", profile.name, digest)

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

from sshlab import SSHD, TEST_USERS, Sshd, authorize, clean_home, ensure_test_user, keygen  # noqa: E402

from solverpilot_deploy import cli  # noqa: E402

PROFILE_NAMES = ["alpine", "debian", "rhel", "ubuntu"]


@pytest.fixture(autouse=True)
def private_render_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own empty render cache (also seen by its subprocesses)."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands act as without a terminal (as in CI), whatever the developer's:
    ssh never prompts there. The terminal case runs sp-deploy on a real pty."""
    from solverpilot_deploy.transport import openssh

    monkeypatch.setattr(openssh, "terminal_attached", lambda: False)


@pytest.fixture(params=PROFILE_NAMES)
def profile_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# ---- both transports ----

TRANSPORTS = ("paramiko", "openssh")
# bash tests/run_all.sh --quick (SP_QUICK set): the contributors' inner loop, under 3 minutes.
# It leaves out what needs a cluster, a build or a filesystem of its own, the stress loops, and
# the openssh half of the transport-parametrized tests; the full run (CI) has them all.
QUICK = bool(os.environ.get("SP_QUICK"))
QUICK_LEAVES_OUT = (
    "test_slurm.py", "test_slurm_states.py", "test_wheel.py", "test_bench.py",
    "test_dockerfile.py", "test_shared_home.py", "test_filesystems.py", "test_deploy_faults.py",
    "test_hardening.py", "test_jobs_truth.py", "test_queues.py", "test_openssh.py",
    "test_login_shells.py", "test_host_keys.py", "test_watch.py", "test_reconcile.py",
    "test_completion.py", "test_hostile_host.py", "test_server_dir.py", "test_inventory.py",
)  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not QUICK:
        return
    kept, left = [], []
    for item in items:
        out = item.path.name in QUICK_LEAVES_OUT or "[openssh" in item.name or "stress" in item.name
        (left if out else kept).append(item)
    items[:] = kept
    config.hook.pytest_deselected(items=left)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses ``transport`` runs once per transport, or only for those its
    ``transports`` mark names (what only one of them can do)."""
    if "transport" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("transports")
        metafunc.parametrize("transport", marker.args if marker else TRANSPORTS, indirect=True)


@pytest.fixture
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The transport every sp-deploy command of the test uses (through its environment)."""
    name: str = request.param
    monkeypatch.setenv("SP_DEPLOY_TRANSPORT", name)
    return name


# ---- real sshd servers (see sshlab.py) ----


def require(condition: bool, why: str) -> None:
    """Skip a test that cannot run here; in CI (CI set) fail it instead."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"cannot run in CI: {why}")
    pytest.skip(why)


@dataclass
class Lab:
    user: pwd.struct_passwd  # the user of hosts a and jump
    users: dict[str, pwd.struct_passwd]
    client_key: Path
    wrong_key: Path
    a: Sshd
    b: Sshd
    jump: Sshd
    limited: Sshd
    limited_bin: Path


def _limited_bin(folder: Path) -> Path:
    """A PATH folder with the basics but no flock and no sqlite3."""
    folder.mkdir(parents=True, exist_ok=True)
    basics = ("sh", "bash", "cat", "cut", "mktemp", "rm", "mv", "setsid", "sha256sum", "mkdir")
    for tool in (*basics, "date", "chmod", "head", "sed", "tr", "wc", "grep", "stat"):
        found = shutil.which(tool)
        assert found, tool
        (folder / tool).symlink_to(found)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require(os.geteuid() == 0, "the ssh tests need root (a test user and sshd)")
    require(Path(SSHD).exists() and bool(shutil.which("ssh-keygen")), "needs openssh-server")
    require(bool(shutil.which("ssh")), "needs the OpenSSH client (ssh -G)")
    base = tmp_path_factory.mktemp("sshlab")
    base.chmod(0o755)
    users = {name: ensure_test_user(name) for name in TEST_USERS}
    client_key = keygen(base / "client")
    wrong_key = keygen(base / "wrong")
    for user in users.values():
        authorize(user, base / "client.pub")
    # outside pytest's tmp tree, which other users cannot enter
    limited_bin = _limited_bin(Path(tempfile.mkdtemp(prefix="sp-limited-bin-")))
    a_user, b_user, limited_user, _ = TEST_USERS  # the last: hosts a test starts itself
    servers = {
        "a": Sshd(base / "a", a_user),
        "b": Sshd(base / "b", b_user),
        "jump": Sshd(base / "jump", a_user, log_level="DEBUG1"),
        "limited": Sshd(
            base / "limited", limited_user, extra_config=f"SetEnv PATH={limited_bin}\n"
        ),
    }
    try:
        for server in servers.values():
            server.start()
        yield Lab(users[a_user], users, client_key, wrong_key, limited_bin=limited_bin, **servers)
    finally:
        for server in servers.values():
            server.stop()
        for user in users.values():
            clean_home(user)
        shutil.rmtree(limited_bin, ignore_errors=True)


@pytest.fixture
def home(lab: Lab) -> Iterator[Path]:
    """Host a's home; every test host's home starts without a wrapper or server folder."""
    for user in lab.users.values():
        clean_home(user)
    yield Path(lab.user.pw_dir)
    for user in lab.users.values():
        clean_home(user)


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    return tmp_path / "known_hosts"


@pytest.fixture
def trusted(lab: Lab, known_hosts: Path) -> Path:
    """A known_hosts file that already trusts every lab server."""
    known_hosts.write_text(
        "".join(s.known_hosts_line for s in (lab.a, lab.b, lab.jump, lab.limited))
    )
    return known_hosts


def sp(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def payload(out: str) -> Any:
    """The part of a --json document a test looks at: the host results of push and verify,
    the one host's jobs of status, the queues of queue, else the document (README "JSON
    output"); every document says its schema."""
    try:
        doc = json.loads(out)
    except ValueError:
        pytest.fail(f"not JSON: {out!r}")
    assert doc["schema"] == 1, doc
    # (status's error of an id on no host comes with its hosts' jobs: those are looked at)
    if "error" in doc and doc["command"] not in ("cancel",) and "hosts" not in doc:
        return doc
    if doc["command"] in ("push", "verify"):
        return doc["hosts"]
    if doc["command"] == "status":
        (host,) = doc["hosts"]
        return host["jobs"]
    if doc["command"] == "queue":
        return doc["queues"]
    return doc


def error_text(result: Any) -> str | None:
    """A host result's (or an event's) error message; its kind must be a documented one."""
    from solverpilot_deploy.shapes import ERROR_KINDS

    error = result["error"]
    if error is None:
        return None
    assert set(error) == {"kind", "message"} and error["kind"] in ERROR_KINDS, error
    message: str = error["message"]
    return message


def sp_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, err = sp(capsys, *argv, "--json")
    try:
        json.loads(out)
    except ValueError:
        pytest.fail(f"not JSON (exit {code}): {out!r}; stderr: {err!r}")
    return code, payload(out)


def poll(condition: object, seconds: float, what: str) -> None:
    """Wait until ``condition()`` is true, failing the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def job_state(home: Path, job_id: str) -> dict[str, object]:
    """The state file the wrapper keeps for ``job_id`` in ``home``'s server folder."""
    path = home / ".solverpilot-server" / "jobs" / f"{job_id}.status"
    data: dict[str, object] = json.loads(path.read_text())
    return data


def sp_deploy(*args: str) -> subprocess.Popen[str]:
    """sp-deploy as its own process (for real signals), output piped. SIGINT is reset to its
    default, as a terminal gives it: a test run started in the background of a script inherits
    it ignored, and Python then never raises KeyboardInterrupt."""
    return subprocess.Popen(
        [sys.executable, "-m", "solverpilot_deploy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_wrapper(lab: Lab, job_id: str, *command: str) -> subprocess.Popen[str]:
    """Host a's deployed wrapper run as its user, apart (its own session), as tmux would run it."""
    home = lab.user.pw_dir
    env = {"HOME": home, "USER": lab.user.pw_name, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    return subprocess.Popen(
        ["setpriv", f"--reuid={lab.user.pw_uid}", f"--regid={lab.user.pw_gid}", "--init-groups",
         f"{home}/.solverpilot/bin/job_wrapper.sh", job_id, *command],
        env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip

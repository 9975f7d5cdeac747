"""Homes shared between hosts: the probe names a server folder on a network or FUSE filesystem.

The shared filesystem here is real: a FUSE mount (bindfs) over the test user's server folder,
which statfs reports as FUSE, as it would an sshfs home. NFS itself needs a kernel server this
machine does not have; its magic number takes the same path (test_filesystems.py).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, require, sp_json

SERVER = ".solverpilot-server"


def connect_args(lab: Lab, trusted: Path) -> tuple[str, ...]:
    return ("-i", str(lab.client_key), "--known-hosts", str(trusted), "--timeout", "30")


@pytest.fixture
def fuse_server_dir(lab: Lab, home: Path) -> Iterator[Path]:
    """The test user's ~/.solverpilot-server as a FUSE mount of a folder elsewhere."""
    require(bool(shutil.which("bindfs")), "needs bindfs (Debian package bindfs) for a FUSE mount")
    require(Path("/dev/fuse").exists(), "needs /dev/fuse")
    backing = Path(tempfile.mkdtemp(prefix="sp-fuse-backing-"))
    shutil.chown(backing, lab.user.pw_uid, lab.user.pw_gid)
    mount = home / SERVER
    mount.mkdir()
    shutil.chown(mount, lab.user.pw_uid, lab.user.pw_gid)
    subprocess.run(["bindfs", str(backing), str(mount)], check=True)
    try:
        kind = subprocess.run(
            ["stat", "-f", "-c", "%T", str(mount)], capture_output=True, text=True, check=True
        )
        assert kind.stdout.strip() in {"fuse", "fuseblk"}
        yield backing
    finally:
        subprocess.run(["fusermount", "-u", str(mount)], check=False)
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        shutil.rmtree(backing, ignore_errors=True)


def test_a_server_folder_on_fuse_is_named_in_push_and_verify_warnings(
    capsys: pytest.CaptureFixture[str], lab: Lab, fuse_server_dir: Path, trusted: Path
) -> None:
    code, results = sp_json(capsys, "push", lab.a.spec, *connect_args(lab, trusted))
    assert code == 0, results
    assert results[0]["status"] == "deployed"
    (warning,) = results[0]["warnings"]  # type: ignore[misc]
    assert warning.startswith("the server folder ~/.solverpilot-server is on fuse, shared")
    assert "SOLVERPILOT_SERVER_DIR" in warning
    assert (fuse_server_dir / "server.db").is_file()  # the DB went through the mount
    code, results = sp_json(capsys, "verify", lab.a.spec, *connect_args(lab, trusted))
    assert code == 0
    assert results[0]["status"] == "ok"
    assert results[0]["warnings"] == [warning]


def test_solverpilot_server_dir_from_the_login_shell_moves_the_db_and_ends_the_warning(
    capsys: pytest.CaptureFixture[str], lab: Lab, fuse_server_dir: Path, trusted: Path
) -> None:
    """The fix the warning names: the start-up file exports a local server folder."""
    home = Path(lab.user.pw_dir)
    local = Path(tempfile.mkdtemp(prefix="sp-local-server-")) / "server"
    shutil.chown(local.parent, lab.user.pw_uid, lab.user.pw_gid)
    bashrc = home / ".bashrc"
    saved = bashrc.read_bytes() if bashrc.exists() else None
    bashrc.write_text(f"export SOLVERPILOT_SERVER_DIR={local}\n")
    try:
        code, results = sp_json(capsys, "push", lab.a.spec, *connect_args(lab, trusted))
        assert code == 0, results
        assert results[0]["warnings"] == []
        with sqlite3.connect(local / "server.db") as conn:
            assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        assert not (fuse_server_dir / "server.db").exists()
        # status reads the same folder: a job recorded there is listed
        wrapper = home / ".solverpilot/bin/job_wrapper.sh"
        env = {"HOME": str(home), "USER": lab.user.pw_name, "PATH": "/usr/bin:/bin"}
        env["SOLVERPILOT_SERVER_DIR"] = str(local)
        subprocess.run(
            ["setpriv", f"--reuid={lab.user.pw_uid}", f"--regid={lab.user.pw_gid}",
             "--init-groups", str(wrapper), "job-local", "true"],
            env=env,
            check=True,
        )  # fmt: skip
        code, jobs = sp_json(capsys, "status", lab.a.spec, *connect_args(lab, trusted))
        assert code == 0
        assert [(j["id"], j["status"]) for j in jobs] == [("job-local", "completed")]
    finally:
        if saved is None:
            bashrc.unlink()
        else:
            bashrc.write_bytes(saved)
        shutil.rmtree(local.parent, ignore_errors=True)

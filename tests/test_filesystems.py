"""The shared-filesystem rule, on the reports GNU stat and busybox give for each kind."""

from __future__ import annotations

import pytest

from solverpilot_deploy.filesystems import server_dir_warning, shared_filesystem


@pytest.mark.parametrize(
    ("reported", "name"),
    [
        ("6969 nfs", "nfs"),
        ("bd00bd0 lustre", "lustre"),
        ("47504653 gpfs", "gpfs"),
        ("ff534d42 cifs", "cifs"),
        ("fe534d42 smb2", "smb2"),
        ("65735546 fuseblk", "fuse"),
        ("65735546 UNKNOWN", "fuse"),  # busybox names few kinds; the magic number decides
        ("c36400 ceph", "ceph"),
        ("ef53 ext2/ext3", None),
        ("794c7630 overlayfs", None),
        ("1021994 tmpfs", None),
        ("58465342 xfs", None),
        ("", None),  # stat failed
        ("zz nfs", None),  # not a number: nothing is guessed from the name
    ],
)
def test_shared_filesystem_by_magic_number(reported: str, name: str | None) -> None:
    assert shared_filesystem(reported) == name


def test_the_warning_names_the_folder_the_kind_and_the_fix() -> None:
    warning = server_dir_warning("/home/u/.solverpilot-server", "6969 nfs")
    assert warning is not None
    assert warning.startswith("the server folder /home/u/.solverpilot-server is on nfs")
    assert "SOLVERPILOT_SERVER_DIR" in warning
    assert server_dir_warning("/home/u/.solverpilot-server", "ef53 ext2/ext3") is None

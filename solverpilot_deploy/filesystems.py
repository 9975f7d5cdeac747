"""Filesystems shared between hosts, where SQLite's file locking cannot be trusted.

The probe reports each folder's filesystem as ``stat -f -c '%t %T'`` prints it: the magic
number in hex (GNU stat and busybox agree on it) and GNU's name for it (busybox often says
UNKNOWN), so the magic number decides.
"""

from __future__ import annotations

# magic number (statfs f_type) -> name, for the network and cluster filesystems
SHARED_FILESYSTEMS = {
    0x6969: "nfs",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x65735546: "fuse",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x00C36400: "ceph",
    0x19830326: "beegfs",
    0xAAD7AAEA: "panfs",
    0x01021997: "9p",
}


def shared_filesystem(reported: str) -> str | None:
    """The name of the shared filesystem in a ``"HEX NAME"`` report, else None."""
    magic, _, _ = reported.strip().partition(" ")
    try:
        return SHARED_FILESYSTEMS.get(int(magic, 16))
    except ValueError:
        return None


def server_dir_warning(server_dir: str, reported: str) -> str | None:
    """The warning for a server folder on a shared filesystem, else None."""
    name = shared_filesystem(reported)
    if name is None:
        return None
    return (
        f"the server folder {server_dir} is on {name}, shared between hosts: SQLite's locking "
        "across hosts is unreliable there; set SOLVERPILOT_SERVER_DIR, in the login shell's "
        "start-up file, to a folder on a local disk that only you can write: your node-local "
        "scratch folder if the site gives one, else one you create yourself with "
        "`mkdir -m 700 /var/tmp/$USER.sp` (without -p: it fails if another user made it first); "
        "sp-deploy refuses a folder another user owns or can write"
    )

"""Facts about the host a store lives on: its filesystem, and whether a process on it is alive."""

from __future__ import annotations

import os
from pathlib import Path

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph",
                       "glusterfs", "fuse.glusterfs", "9p", "afs", "fuse.sshfs", "panfs", "wekafs"}


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the network filesystem `path` is on (from /proc/mounts), or None for a local one.

    SQLite's WAL needs every process of a database on one host: drivers on several hosts must not share a
    run folder there (shards + merge instead).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target, best, kind = str(path.resolve()), "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = fields[1]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host; a zombie (dead, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state follows the parenthesised command name, which may itself hold spaces
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

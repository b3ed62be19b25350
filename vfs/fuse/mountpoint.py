"""The mount point as the system sees it: is something mounted here, is it alive, clear it."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

DEAD = (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)


def mounts() -> Iterator[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            yield fields[4].encode().decode("unicode_escape"), fields[fields.index("-") + 1]


def fuse_mounted(path: str) -> bool:
    """True if a FUSE filesystem is mounted exactly at `path` (live or dead)."""
    target = os.path.abspath(path)
    return any(mnt == target and fstype.startswith("fuse") for mnt, fstype in mounts())


def is_dead(path: str) -> bool:
    try:
        os.statvfs(path)  # always reaches the daemon; stat may be answered from the kernel's cache
    except OSError as e:
        return e.errno in DEAD
    return False


def lazy_unmount(path: str) -> None:
    subprocess.run(["fusermount3", "-u", "-z", path], check=False, capture_output=True)


def clear_stale(path: str) -> bool:
    """Replace a mount whose daemon died (ENOTCONN) by an empty mount point. True if one was."""
    if fuse_mounted(path) and is_dead(path):
        lazy_unmount(path)
        return True
    return False


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def daemon_pid(path: str) -> int | None:
    """The pid a live vfs mount reports in its root `status`."""
    try:
        text = (Path(path) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "pid" and value.isdigit():
            return int(value)
    return None


def binds_table() -> Path:
    """Where `vfs-bind` remembers its binds (mount point, path inside, target, ro)."""
    return Path(os.environ.get("VFS_BINDS", "/run/vfs/binds"))


def rebind(mountpoint: str) -> list[str]:
    """Bind again every remembered subtree of `mountpoint` (its binds pointed at the mount of a
    daemon now gone: ENOTCONN). Under a shared parent the new binds reach containers given
    that parent with `rslave`. Returns what could not be bound, with why."""
    try:
        lines = binds_table().read_text().splitlines()
    except OSError:
        return []
    problems = []
    mounted = {mnt for mnt, _ in mounts()}
    for line in lines:
        fields = line.split("\t")
        if len(fields) != 4 or fields[0] != mountpoint:
            continue
        _, inside, target, ro = fields
        src = mountpoint + inside
        if target in mounted:
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        steps = [["mount", "--bind", src, target]]
        if ro == "1":
            steps.append(["mount", "-o", "remount,bind,ro", target])
        for argv in steps:
            r = subprocess.run(argv, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                problems.append(f"{src} -> {target}: {r.stderr.strip()}")
                break
    return problems

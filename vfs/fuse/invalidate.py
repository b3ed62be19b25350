"""Telling the kernel that a name or attributes it may have cached changed (the daemon changed
them itself).

Uses pyfuse3's async invalidation: the synchronous one deadlocks when called from inside a
related request (reference: pyfuse3 #2). Without a session (unit tests) there is nothing to tell.
"""

from __future__ import annotations

import logging
import os

import pyfuse3

log = logging.getLogger("vfs.fuse.invalidate")


def forget_name(parent_ino: int, name: str) -> None:
    if not parent_ino or pyfuse3.trio_token is None:
        return
    try:
        pyfuse3.invalidate_entry_async(parent_ino, os.fsencode(name), ignore_enoent=True)
    except Exception:  # the kernel not knowing the name is fine; anything else is only logged
        log.exception("invalidating %s failed", name)


def forget_attributes(ino: int) -> None:
    """Attributes only: no page cache to drop, so no inode lock is taken and it cannot block."""
    if pyfuse3.trio_token is None:
        return
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError:  # the kernel no longer holds the inode
        pass
